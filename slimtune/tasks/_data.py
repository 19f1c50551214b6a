"""A task's data: one :class:`Split` per split, either tensors in memory or a
DataLoader that streams.

Consumers iterate ``(inputs, labels)`` batches and never ask which one they hold:
training draws :meth:`Split.batches`, metrics accumulate logits over
:meth:`Split.chunks`, latency inputs, the example input and PTQ calibration take the
first few samples (:meth:`Split.head`).  A streaming split never holds the dataset:
what it keeps is one 8-byte digest per sample (for the fingerprint), its labels'
range and the few samples :meth:`~Split.head` was asked for.

Example:
    >>> split = as_split(train_loader, "train", streaming=True)
    >>> for x, y, index in split.batches(64):   # index is None when streaming
    ...     ...
    >>> split.digest() == as_split(train_loader, "train", streaming=True).digest()  # shuffling or not
    True
"""

from __future__ import annotations

import hashlib
import random
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

__all__ = ["MAX_IN_MEMORY_BYTES", "LoaderSplit", "Split", "TaskError", "TensorSplit", "as_split", "data_digest",
           "model_input", "sample_digests"]

#: With ``streaming=None`` a loader whose samples take more than this is streamed, not read into memory.
MAX_IN_MEMORY_BYTES = 1 << 30

#: ``(inputs, labels, index)``: ``index`` are the samples' positions in an in-memory split
#: (to look up precomputed teacher logits), ``None`` when the split streams.
Batch = tuple[torch.Tensor, torch.Tensor, "torch.Tensor | None"]


class TaskError(ValueError):
    """A task cannot be built or does not fit slimtune (one clear line for the user)."""


def model_input(x: Any) -> torch.Tensor:
    """Inputs as the model is fed them everywhere (training, calibration, timing,
    export): floating point as float32, integers (e.g. token ids) as int64, booleans
    as they are.  Integer inputs are never cast to float: an ``nn.Embedding`` needs
    its ids."""
    x = torch.as_tensor(x)
    if x.is_floating_point():
        return x if x.dtype == torch.float32 else x.float()
    if x.dtype == torch.bool or x.is_complex():
        return x
    return x if x.dtype == torch.int64 else x.long()


# -- digests ------------------------------------------------------------------------
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


def _combine(x_dtype: torch.dtype, sample_shape: tuple[int, ...], y_dtype: torch.dtype, digests: np.ndarray) -> str:
    """The order-independent hash of a multiset of sample digests."""
    h = hashlib.sha256(f"{x_dtype}|{tuple(sample_shape)}|{y_dtype}|{len(digests)}|".encode())
    h.update(np.sort(digests).tobytes())
    return h.hexdigest()


def data_digest(x: torch.Tensor, y: torch.Tensor) -> str:
    """A hash of the *multiset* of samples: every sample counts, their order does not
    (a shuffling loader gives the same digest)."""
    return _combine(x.dtype, tuple(x.shape[1:]), y.dtype, sample_digests(x, y))


# -- reading a loader ---------------------------------------------------------------
@contextmanager
def _fixed_seed(seed: int = 0) -> Iterator[None]:
    """torch, numpy and ``random`` seeded for the block, their states restored after
    (a loader's random augmentation then draws the same values every pass)."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def _sorted_indices(sampler: Iterable[Any]) -> list[Any]:
    """The indices ``sampler`` draws, sorted; drawing them leaves torch's global
    generator and the sampler's own as they were (a user's shuffles are not shifted)."""
    own = getattr(sampler, "generator", None)
    state = own.get_state() if isinstance(own, torch.Generator) else None
    with torch.random.fork_rng(devices=[]):
        items = list(sampler)
    if state is not None:
        own.set_state(state)
    try:
        return sorted(items)
    except TypeError:  # keys that do not sort: their order as drawn
        return items


def _canonical_loader(source: Any) -> Any:
    """A loader over the same samples as ``source`` in a fixed order (its sampler's
    indices sorted), so that a pass under :func:`_fixed_seed` reads the same values
    every time however ``source`` shuffles; ``source`` itself when that cannot be
    done (an ``IterableDataset``, a plain iterable of batches)."""
    if not isinstance(source, DataLoader) or isinstance(source.dataset, IterableDataset):
        return source
    if source.batch_size is not None:
        indices, batch_size = _sorted_indices(source.sampler), source.batch_size
    elif source.batch_sampler is not None:
        batches = [list(b) for b in _sorted_indices(source.batch_sampler)]
        indices, batch_size = sorted(i for b in batches for i in b), max(1, max(map(len, batches), default=1))
    else:  # automatic batching off: the user's collate_fn sees single samples
        return source
    return DataLoader(source.dataset, batch_size=batch_size, sampler=indices, num_workers=source.num_workers,
                      collate_fn=source.collate_fn, worker_init_fn=source.worker_init_fn,
                      multiprocessing_context=source.multiprocessing_context if source.num_workers else None)


def _as_batch(batch: Any, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, labels as int64)`` from one batch a loader yielded (inputs as
    :func:`model_input` makes them: float32, or int64 for integer ids)."""
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise TaskError(f"The {name} loader must yield (inputs, labels) batches, but yielded {type(batch).__name__}.")
    try:
        x, y = model_input(batch[0]), torch.as_tensor(batch[1]).long()
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TaskError(f"The {name} loader must yield (inputs, labels) tensors, but yielded "
                        f"({type(batch[0]).__name__}, {type(batch[1]).__name__}): {exc}") from None
    if x.dim() == 0 or y.dim() == 0 or len(x) != len(y):
        raise TaskError(f"The {name} loader yielded a batch of {tuple(x.shape)} inputs and {tuple(y.shape)} labels; "
                        "they must have the same first dimension.")
    return x, y


@dataclass
class _Scan:
    """What one pass over a loader learnt (see :func:`_scan`)."""

    count: int
    batches: int
    sample_shape: tuple[int, ...]
    dtype: torch.dtype
    digests: np.ndarray
    label_min: int
    label_max: int
    kept: tuple[torch.Tensor, torch.Tensor] | None  # the samples, when they were kept in memory


def _scan(source: Any, name: str, keep_bytes: float) -> _Scan:
    """One pass over ``source`` (in its canonical order, under a fixed seed): sample
    digests, count, labels' range; the samples themselves while they take at most
    ``keep_bytes`` (dropped, and no longer kept, once they take more)."""
    digests: list[np.ndarray] = []
    xs: list[torch.Tensor] | None = [] if keep_bytes > 0 else None
    kept_bytes, count, batches = 0, 0, 0
    shape: tuple[int, ...] | None = None
    dtype: torch.dtype | None = None
    low, high = None, None
    canonical = _canonical_loader(source)
    with _fixed_seed():
        for raw in canonical:
            x, y = _as_batch(raw, name)
            if shape is None:
                shape, dtype = tuple(x.shape[1:]), x.dtype
            elif tuple(x.shape[1:]) != shape:
                raise TaskError(f"The {name} loader yields inputs of shape {shape} and then {tuple(x.shape[1:])}: "
                                "every sample must have the same shape.")
            elif x.dtype != dtype:
                raise TaskError(f"The {name} loader yields {dtype} inputs and then {x.dtype}: every batch must have "
                                "the same dtype.")
            batches += 1
            count += len(x)
            digests.append(sample_digests(x, y))
            if len(y):
                low = int(y.min()) if low is None else min(low, int(y.min()))
                high = int(y.max()) if high is None else max(high, int(y.max()))
            if xs is not None:
                kept_bytes += x.element_size() * x.numel() + y.element_size() * y.numel()
                if kept_bytes > keep_bytes:
                    xs = None  # too big to hold: stream it
                else:
                    xs.extend((x, y))
    if count == 0 or shape is None or dtype is None or low is None or high is None:
        raise TaskError(f"The {name} loader yields no batches.")
    all_digests = np.concatenate(digests)
    kept = None
    if xs is not None:
        order = torch.from_numpy(np.argsort(all_digests, kind="stable").astype(np.int64))  # canonical order
        kept = torch.cat(xs[0::2])[order], torch.cat(xs[1::2])[order]
    return _Scan(count, batches, shape, dtype, all_digests, low, high, kept)


# -- splits -------------------------------------------------------------------------
class Split(ABC):
    """The samples of one split (``train``, ``val`` or ``test``), read in batches."""

    name: str
    streaming: bool = False

    @abstractmethod
    def __len__(self) -> int:
        """The number of samples."""

    @property
    @abstractmethod
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one input sample."""

    @abstractmethod
    def batches(self, batch_size: int, *, generator: torch.Generator | None = None) -> Iterator[Batch]:
        """One epoch of training batches ``(inputs, labels, index)``: in-memory splits
        shuffle with ``generator`` (in order without one) at ``batch_size``; a streaming
        split yields its loader's batches (the loader shuffles and augments)."""

    @abstractmethod
    def chunks(self, batch_size: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Every sample once, as ``(inputs, labels)`` batches of at most ``batch_size``
        (in-memory: ``None`` is everything at once; streaming: the loader's batches)."""

    @abstractmethod
    def head(self, n: int) -> torch.Tensor:
        """The first ``n`` inputs (fewer when the split is smaller), the same on every call."""

    @abstractmethod
    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        """``n`` inputs in a seeded random order (latency is timed on them)."""

    @abstractmethod
    def steps(self, batch_size: int) -> int:
        """Training batches per epoch."""

    @abstractmethod
    def digest(self) -> str:
        """:func:`data_digest` of the split's samples (order-independent)."""

    @abstractmethod
    def label_range(self) -> tuple[int, int]:
        """The smallest and largest label."""


class TensorSplit(Split):
    """A split held as ``(inputs, labels)`` tensors: shuffled by index, and teacher
    logits computed once line up with its samples."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, name: str) -> None:
        if len(x) != len(y):
            raise TaskError(f"The {name} split has {len(x)} inputs but {len(y)} labels.")
        if len(x) == 0:
            raise TaskError(f"The {name} split is empty.")
        self.x, self.y, self.name = x, y, name
        self._digest: str | None = None

    def __len__(self) -> int:
        return len(self.x)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def batches(self, batch_size: int, *, generator: torch.Generator | None = None) -> Iterator[Batch]:
        n = len(self.x)
        order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            yield self.x[idx], self.y[idx], idx

    def chunks(self, batch_size: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        step = len(self.x) if batch_size is None else batch_size
        for start in range(0, len(self.x), step):
            yield self.x[start:start + step], self.y[start:start + step]

    def head(self, n: int) -> torch.Tensor:
        return self.x[:n]

    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        return self.x[torch.randperm(len(self.x), generator=torch.Generator().manual_seed(seed))[:n]]

    def steps(self, batch_size: int) -> int:
        return (len(self.x) + batch_size - 1) // batch_size

    def digest(self) -> str:
        if self._digest is None:
            self._digest = data_digest(self.x, self.y)
        return self._digest

    def label_range(self) -> tuple[int, int]:
        return int(self.y.min()), int(self.y.max())


class LoaderSplit(Split):
    """A split that streams from a DataLoader (or any re-iterable of ``(inputs,
    labels)`` batches): never more than the loader's batches in memory.

    Built from one pass (:func:`as_split`) that checks every batch and keeps per
    sample an 8-byte digest.  The samples :meth:`head` returns come from the loader
    read in a canonical order under a fixed seed, so they are the same on every call
    and in every process."""

    streaming = True

    def __init__(self, loader: Any, name: str, scan: _Scan) -> None:
        self.loader, self.name = loader, name
        self._scan = scan
        self._head = torch.empty((0, *scan.sample_shape), dtype=scan.dtype)
        self._digest = _combine(scan.dtype, scan.sample_shape, torch.int64, scan.digests)

    def __len__(self) -> int:
        return self._scan.count

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self._scan.sample_shape

    def _stream(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for raw in self.loader:
            yield _as_batch(raw, self.name)

    def batches(self, batch_size: int, *, generator: torch.Generator | None = None) -> Iterator[Batch]:
        for x, y in self._stream():
            yield x, y, None

    def chunks(self, batch_size: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self._stream()

    def head(self, n: int) -> torch.Tensor:
        n = min(n, self._scan.count)
        if len(self._head) < n:
            taken, have = [], 0
            canonical = _canonical_loader(self.loader)
            with _fixed_seed():
                for raw in canonical:
                    x = _as_batch(raw, self.name)[0]
                    taken.append(x[:n - have].clone())  # a copy: the batch itself is released
                    have += len(taken[-1])
                    del x, raw
                    if have >= n:
                        break
            self._head = torch.cat(taken)
        return self._head[:n]

    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        x = self.head(n)
        return x[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))]

    def steps(self, batch_size: int) -> int:
        try:
            return len(self.loader)
        except TypeError:
            return self._scan.batches

    def digest(self) -> str:
        return self._digest

    def label_range(self) -> tuple[int, int]:
        return self._scan.label_min, self._scan.label_max


def as_split(source: Any, name: str, *, streaming: bool | None = None) -> Split:
    """The :class:`Split` of ``source``: an ``(inputs, labels)`` pair of tensors, or a
    DataLoader / re-iterable of ``(inputs, labels)`` batches.

    A loader is read once (its samples in a canonical order, under a fixed seed, so
    shuffling and random augmentation give the same split every time) and then either
    held in memory (``streaming=False``; ``None``: when its samples take at most
    :data:`MAX_IN_MEMORY_BYTES`) or streamed on every use (``streaming=True``).

    Raises:
        TaskError: ``source`` is not data, yields no batches, or not ``(inputs, labels)``.
    """
    if isinstance(source, Split):
        return source
    if isinstance(source, (tuple, list)) and len(source) == 2 and all(isinstance(t, torch.Tensor) for t in source):
        return TensorSplit(model_input(source[0]), source[1].long(), name)
    if isinstance(source, (str, bytes, dict)) or not isinstance(source, Iterable):
        raise TaskError(f"`{name}` must be a DataLoader or an (inputs, labels) pair of tensors, but got "
                        f"{type(source).__name__}.")
    one_pass = isinstance(source, Iterator)  # a generator: it can be read once, into memory
    if one_pass and streaming:
        raise TaskError(f"`{name}` must be re-iterable to stream (a DataLoader, not a one-pass "
                        f"{type(source).__name__}): slimtune reads it once per epoch.")
    keep = 0 if streaming else (float("inf") if streaming is False or one_pass else MAX_IN_MEMORY_BYTES)
    scan = _scan(source, name, keep)
    if scan.kept is None:
        return LoaderSplit(source, name, scan)
    split = TensorSplit(*scan.kept, name)
    split._digest = _combine(scan.dtype, scan.sample_shape, torch.int64, scan.digests)  # already hashed
    return split
