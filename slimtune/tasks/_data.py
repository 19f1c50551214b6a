"""A task's data: one :class:`Split` per split, either tensors in memory or a
DataLoader that streams.

Consumers iterate ``(inputs, labels)`` batches and never ask which one they hold:
training draws :meth:`Split.batches`, metrics accumulate logits over
:meth:`Split.chunks`, latency inputs, the example input and PTQ calibration take the
first few samples (:meth:`Split.head`).  A streaming split never holds the dataset:
what it keeps is one 8-byte digest per sample (for the fingerprint), its labels'
range and the few samples :meth:`~Split.head` was asked for.

What a batch becomes before the model sees it is :mod:`~slimtune.tasks._inputs`'s; the
samples' digests are :mod:`~slimtune.tasks._digests`'; reading a loader in a canonical
order is :mod:`~slimtune.tasks._loader_scan`'s.  ``TaskError``, ``model_input``,
``data_digest`` and ``sample_digests`` are importable from here too.

Example:
    >>> split = as_split(train_loader, "train", streaming=True)
    >>> for x, y, index in split.batches(64):   # index is None when streaming
    ...     ...
    >>> split.digest() == as_split(train_loader, "train", streaming=True).digest()  # shuffling or not
    True
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Iterable, Iterator

import torch

from slimtune.tasks._digests import combine_digests, data_digest, sample_digests
from slimtune.tasks._inputs import as_batch, model_input
from slimtune.tasks._loader_scan import Scan, canonical_loader, fixed_seed, scan
from slimtune.tasks._task_error import TaskError

__all__ = ["MAX_IN_MEMORY_BYTES", "LoaderSplit", "Split", "TaskError", "TensorSplit", "as_split", "data_digest",
           "model_input", "sample_digests"]

#: With ``streaming=None`` a loader whose samples take more than this is streamed, not read into memory.
MAX_IN_MEMORY_BYTES = 1 << 30

#: ``(inputs, labels, index)``: ``index`` are the samples' positions in an in-memory split
#: (to look up precomputed teacher logits), ``None`` when the split streams.
Batch = tuple[torch.Tensor, torch.Tensor, "torch.Tensor | None"]


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

    def __init__(self, loader: Any, name: str, found: Scan) -> None:
        self.loader, self.name = loader, name
        self._scan = found
        self._head = torch.empty((0, *found.sample_shape), dtype=found.dtype)
        self._digest = combine_digests(found.dtype, found.sample_shape, torch.int64, found.digests)

    def __len__(self) -> int:
        return self._scan.count

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self._scan.sample_shape

    def _stream(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for raw in self.loader:
            yield as_batch(raw, self.name)

    def batches(self, batch_size: int, *, generator: torch.Generator | None = None) -> Iterator[Batch]:
        for x, y in self._stream():
            yield x, y, None

    def chunks(self, batch_size: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self._stream()

    def head(self, n: int) -> torch.Tensor:
        n = min(n, self._scan.count)
        if len(self._head) < n:
            taken, have = [], 0
            canonical = canonical_loader(self.loader)
            with fixed_seed():
                for raw in canonical:
                    x = as_batch(raw, self.name)[0]
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
    found = scan(source, name, keep)
    if found.kept is None:
        return LoaderSplit(source, name, found)
    split = TensorSplit(*found.kept, name)
    split._digest = combine_digests(found.dtype, found.sample_shape, torch.int64, found.digests)  # already hashed
    return split
