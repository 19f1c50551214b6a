"""Reading a user's loader the same way every time: its samples in a canonical order
(:func:`canonical_loader`: the sampler's indices sorted) under a fixed seed
(:func:`fixed_seed`), so shuffling and random augmentation give the same samples on
every pass and in every process; and the one pass (:func:`scan`) that checks every
batch and learns what a :class:`~slimtune.tasks._data.Split` needs.

Example:
    >>> found = scan(train_loader, "train", keep_bytes=1 << 30)
    >>> found.count == len(train_loader.dataset), found.kept is not None   # held: it fits
    (True, True)
"""

from __future__ import annotations

import random
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from slimtune.tasks._digests import sample_digests
from slimtune.tasks._inputs import as_batch
from slimtune.tasks._task_error import TaskError

__all__ = ["Scan", "canonical_loader", "fixed_seed", "scan"]


@contextmanager
def fixed_seed(seed: int = 0) -> Iterator[None]:
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


def canonical_loader(source: Any) -> Any:
    """A loader over the same samples as ``source`` in a fixed order (its sampler's
    indices sorted), so that a pass under :func:`fixed_seed` reads the same values
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


@dataclass
class Scan:
    """What one pass over a loader learnt (see :func:`scan`)."""

    count: int
    batches: int
    sample_shape: tuple[int, ...]
    dtype: torch.dtype
    digests: np.ndarray
    label_min: int
    label_max: int
    kept: tuple[torch.Tensor, torch.Tensor] | None  # the samples, when they were kept in memory


def scan(source: Any, name: str, keep_bytes: float) -> Scan:
    """One pass over ``source`` (in its canonical order, under a fixed seed): sample
    digests, count, labels' range; the samples themselves while they take at most
    ``keep_bytes`` (dropped, and no longer kept, once they take more).

    Raises:
        TaskError: a batch is not ``(inputs, labels)``, the samples' shape or dtype
            changes, or the loader yields no batches.
    """
    digests: list[np.ndarray] = []
    xs: list[torch.Tensor] | None = [] if keep_bytes > 0 else None
    kept_bytes, count, batches = 0, 0, 0
    shape: tuple[int, ...] | None = None
    dtype: torch.dtype | None = None
    low, high = None, None
    canonical = canonical_loader(source)
    with fixed_seed():
        for raw in canonical:
            x, y = as_batch(raw, name)
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
    return Scan(count, batches, shape, dtype, all_digests, low, high, kept)
