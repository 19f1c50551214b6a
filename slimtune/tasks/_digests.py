"""Digests of a split's samples, for the task's fingerprint: one 64-bit digest per
sample, combined into a hash of the *multiset* of samples (their order does not count,
so a shuffling loader gives the same digest).

Example:
    >>> data_digest(x, y) == data_digest(x.flip(0), y.flip(0))
    True
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

__all__ = ["combine_digests", "data_digest", "sample_digests"]


def sample_digests(x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """One 64-bit digest per ``(x[i], y[i])`` sample (blake2b of its bytes)."""
    xs = x.detach().cpu().contiguous().reshape(len(x), -1)
    xb = xs.view(torch.uint8).numpy() if xs.numel() else np.zeros((len(x), 0), np.uint8)
    yb = y.detach().cpu().contiguous().reshape(len(y), -1).view(torch.uint8).numpy()
    out = np.empty(len(x), dtype=np.uint64)
    for i in range(len(x)):
        h = hashlib.blake2b(xb[i].tobytes(), digest_size=8)
        h.update(yb[i].tobytes())
        out[i] = int.from_bytes(h.digest(), "little")
    return out


def combine_digests(x_dtype: torch.dtype, sample_shape: tuple[int, ...], y_dtype: torch.dtype,
                    digests: np.ndarray) -> str:
    """The order-independent hash of a multiset of sample digests."""
    h = hashlib.sha256(f"{x_dtype}|{tuple(sample_shape)}|{y_dtype}|{len(digests)}|".encode())
    h.update(np.sort(digests).tobytes())
    return h.hexdigest()


def data_digest(x: torch.Tensor, y: torch.Tensor) -> str:
    """A hash of the *multiset* of samples: every sample counts, their order does not
    (a shuffling loader gives the same digest)."""
    return combine_digests(x.dtype, tuple(x.shape[1:]), y.dtype, sample_digests(x, y))
