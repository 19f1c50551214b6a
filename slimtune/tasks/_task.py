"""A task: a baseline model (a factory to train, or the user's trained model), its
data, its metric, and how to train it."""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn
from torch.utils.data import DataLoader

from slimtune.tasks._data import Split, TensorSplit, as_split
from slimtune.tasks._from_model import scaled_epochs
from slimtune.tasks._digests import data_digest, sample_digests  # noqa: F401  (their home before _data)
from slimtune.tasks._metrics import Metric, MetricError, get_metric
from slimtune.tasks._outputs import LogitsOutput, OutputSpec, describe_output
from slimtune.tasks._task_error import TaskError


class TaskData:
    """A task's train/val/test :class:`~slimtune.tasks._data.Split` s.

    Built from six tensors (``TaskData(x_train, y_train, x_val, y_val, x_test,
    y_test)``: held in memory, so that teacher logits computed once line up with the
    training samples in every epoch of every trial) or from splits
    (:meth:`from_splits`), some of which may stream from DataLoaders.  ``x_train``
    and its kin are the tensors of an in-memory split."""

    def __init__(self, x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor,
                 x_test: torch.Tensor, y_test: torch.Tensor) -> None:
        self.train: Split = TensorSplit(x_train, y_train, "train")
        self.val: Split = TensorSplit(x_val, y_val, "val")
        self.test: Split = TensorSplit(x_test, y_test, "test")

    @classmethod
    def from_splits(cls, train: Split, val: Split, test: Split) -> "TaskData":
        """Data whose splits are given (tensors or streaming)."""
        data = cls.__new__(cls)
        data.train, data.val, data.test = train, val, test
        return data

    @property
    def streaming(self) -> bool:
        """Whether any split streams from a loader (then no split is all held as tensors)."""
        return any(s.streaming for s in (self.train, self.val, self.test))

    def _tensors(self, split: str) -> TensorSplit:
        held = getattr(self, split)
        if not isinstance(held, TensorSplit):
            raise TaskError(f"The {split} split streams from a DataLoader: it has no tensors "
                            f"(iterate `task.data.{split}.chunks()` instead).")
        return held

    x_train = property(lambda self: self._tensors("train").x)
    y_train = property(lambda self: self._tensors("train").y)
    x_val = property(lambda self: self._tensors("val").x)
    y_val = property(lambda self: self._tensors("val").y)
    x_test = property(lambda self: self._tensors("test").x)
    y_test = property(lambda self: self._tensors("test").y)

    def summary(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def _digest_tensor(h: "hashlib._Hash", t: torch.Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(f"{t.dtype}|{tuple(t.shape)}|".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def weights_digest(model: nn.Module) -> str:
    """sha256 of every parameter and buffer of ``model`` (names, dtypes, shapes, values)."""
    h = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        h.update(name.encode())
        if isinstance(value, torch.Tensor):
            _digest_tensor(h, value)
        else:
            h.update(repr(value).encode())
    return h.hexdigest()


def _splits(train: Any, val: Any, test: Any, streaming: bool | None) -> TaskData:
    """:class:`TaskData` from what a user gave for each split (see :func:`as_split`)."""
    for name, source in (("train", train), ("val", val), ("test", test)):
        if isinstance(source, TaskData):
            raise TaskError(f"`{name}` must be a DataLoader or an (inputs, labels) pair of tensors, but got TaskData.")
    return TaskData.from_splits(as_split(train, "train", streaming=streaming), as_split(val, "val", streaming=streaming),
                                as_split(test, "test", streaming=streaming))


@dataclass
class Task:
    """Everything slimtune needs to search a classifier.

    Args:
        name: how studies refer to the task.
        build_model: returns a *fresh, untrained* baseline model (slimtune trains it),
            or, for a task made by :meth:`from_model`, a copy of the user's *trained*
            model (``pretrained=True``: never retrained).
        data: train/val/test splits, tensors or streaming loaders (see
            :meth:`from_loaders`).
        num_classes: number of output logits.
        epochs: baseline training epochs (unused when ``pretrained``).
        finetune_epochs: default distillation epochs for a candidate.
        recovery_epochs: default fine-tune epochs after pruning and for QAT.
        lr, batch_size: training settings.
        notes: what a user should know when reading results (e.g. a training subset).
        preprocessing: how raw inputs become the tensors the model takes (written into
            exported models, e.g. ``pixels / 16``); empty when the task does not say.
        metric: the metric to maximize: a name (``accuracy``, ``top5``,
            ``balanced_accuracy``, ``f1_macro``) or a callable ``(logits, labels) ->
            float``; it is what ``Measurement.accuracy`` and ``test_accuracy`` hold.
        output: where the logits are when the model's forward returns something else
            than a tensor: ``"logits"`` (attribute or key, e.g. Hugging Face
            ``transformers`` outputs), a tuple position, or a callable; the model is
            wrapped once in :class:`~slimtune.tasks._outputs.LogitsOutput`.
        pretrained: ``build_model`` returns trained weights: the baseline is that
            model as given (its metrics measured, its logits the teacher's).
    """

    name: str
    build_model: Callable[[], nn.Module]
    data: TaskData
    num_classes: int
    epochs: int = 10
    finetune_epochs: int = 3
    recovery_epochs: int = 1
    lr: float = 2e-3
    batch_size: int = 64
    notes: str = ""
    preprocessing: str = ""
    extra: dict = field(default_factory=dict)
    metric: Any = "accuracy"
    output: Any = None
    pretrained: bool = False
    _fingerprint: str | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            self.metric = get_metric(self.metric)
        except MetricError as exc:
            raise TaskError(f"Task {self.name!r}: {exc}") from None
        if self.output is not None and not getattr(self.build_model, "_wraps_output", False):
            raw, spec = self.build_model, self.output

            def build() -> nn.Module:
                return LogitsOutput(raw(), spec)

            build._wraps_output = True  # type: ignore[attr-defined]  # dataclasses.replace: wrap once
            self.build_model = build

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.data.train.input_shape)

    def example_input(self, batch_size: int = 1) -> torch.Tensor:
        return self.data.train.head(batch_size).clone()

    def fingerprint(self) -> str:
        """Hash of what determines the baseline: the architecture and weights of
        ``build_model()`` (built under a fixed seed, so a random init hashes the same
        every time and a factory loading other weights does not), every sample of
        every split (order-independent: see :func:`data_digest`), the metric, the
        output adapter and the training settings.  Computed once per task."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                model = self.build_model()
            h.update(repr(model).encode())
            h.update(weights_digest(model).encode())
            for split in ("train", "val", "test"):
                h.update(f"{split}:{getattr(self.data, split).digest()}".encode())
            h.update(f"{self.num_classes}|{self.epochs}|{self.lr}|{self.batch_size}|{self.pretrained}|"
                     f"{self.metric.name}|{describe_output(self.output)}".encode())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    def legacy_fingerprint(self) -> str:
        """The fingerprint slimtune 0.1.0 stored (architecture, the first 4,096 values of
        three tensors, settings): a study it created is recognised by it once, and its
        stored fingerprint replaced by :meth:`fingerprint`.  Empty for streaming data
        (0.1.0 read every loader into memory: no study of it streamed)."""
        if self.data.streaming:
            return ""
        h = hashlib.sha256()
        h.update(repr(self.build_model()).encode())
        for t in (self.data.x_train, self.data.y_train, self.data.x_test):
            h.update(str(tuple(t.shape)).encode())
            h.update(t.flatten()[:4096].numpy().tobytes())
        h.update(f"{self.num_classes}|{self.epochs}|{self.lr}|{self.batch_size}".encode())
        return h.hexdigest()[:16]

    def check_model(self) -> None:
        """Raise :class:`TaskError` unless the model maps inputs to class logits."""
        try:
            model = self.build_model().eval()
        except Exception as exc:  # noqa: BLE001 - the user's factory
            raise TaskError(f"Task {self.name!r}: building the model raised {one_line(exc)}") from None
        x = self.example_input(2)
        try:
            with torch.no_grad():
                out = model(x)
        except ValueError as exc:  # an output adapter that does not fit
            raise TaskError(f"Task {self.name!r}: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - the user's model
            raise TaskError(f"Task {self.name!r}: the model fails on {_describe_input(x)}: {one_line(exc)}"
                            f"{_integer_hint(x)}") from None
        if not isinstance(out, torch.Tensor) or out.shape != (len(x), self.num_classes):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            hint = "" if isinstance(out, torch.Tensor) or self.output is not None else \
                " Declare where the logits are with output= (e.g. output='logits')."
            raise TaskError(
                f"Task {self.name!r}: the model must output class logits of shape (batch, {self.num_classes}), "
                f"but got {shape}.{hint}"
            )

    @classmethod
    def from_model(
        cls,
        model: "nn.Module | Mapping[str, torch.Tensor]",
        *,
        train: Any,
        val: Any,
        test: Any,
        metric: "str | Callable | Metric" = "accuracy",
        output: OutputSpec | None = None,
        factory: Callable[[], nn.Module] | None = None,
        name: str = "user-model",
        num_classes: int | None = None,
        finetune_epochs: int | None = None,
        recovery_epochs: int | None = None,
        lr: float = 1e-3,
        batch_size: int = 64,
        notes: str = "",
        exits_after: "Iterable[str] | None" = None,
        streaming: bool | None = None,
        warm_starts: "Iterable[Mapping[str, Any]] | None" = None,
    ) -> "Task":
        """A task whose baseline and teacher is the user's **trained** model.

        The model is never retrained: its validation and test metric are measured,
        its logits on the training split are the distillation targets, and the hash
        of its weights is part of :meth:`fingerprint` (a study made with other
        weights is not resumed with these).

        Args:
            model: the trained ``nn.Module`` (copied now: later changes to it do not
                leak into the task), or a state dict with ``factory``.
            train, val, test: DataLoaders yielding ``(inputs, labels)`` batches (their
                order does not matter; shuffling and augmentation are fine), or
                ``(inputs, labels)`` pairs of tensors.  Inputs keep their kind:
                floating point as float32, integers (token ids) as int64, never cast
                to float (training, calibration, timing and the exported model alike).
            metric: a name or a callable ``(logits, labels) -> float`` to maximize.
            output: where the logits are when the forward does not return a tensor
                (``"logits"`` for Hugging Face models, a tuple position, a callable).
            factory: builds the architecture a state-dict ``model`` loads into.
            num_classes: default: the width of the model's output.
            finetune_epochs, recovery_epochs, lr, batch_size: how candidates are
                trained (distilled from this model); the epochs default to what the
                training split needs (:func:`scaled_epochs`: about 40 distillation and
                200 recovery steps at ``batch_size``).
            exits_after: module names of ``model`` to offer early exits after
                (default: found automatically where a single tensor flows).
            warm_starts: a new study's first trials, ``{parameter: value}`` each
                (default: :func:`slimtune.tasks._builtin.model_warm_starts`, the built-in tasks' well-known
                recipes adapted to this model; ``[]``: none).
            streaming: ``True``: the loaders are read batch by batch on every use,
                never held (for data larger than memory: candidates train on the
                loader's batches, the teacher's logits are computed per batch);
                ``False``: read once into memory; ``None``: in memory when a split's
                samples take at most 1 GiB (:data:`~slimtune.tasks._data.MAX_IN_MEMORY_BYTES`).

        Example:
            >>> task = Task.from_model(trained_resnet, train=train_loader, val=val_loader,
            ...                        test=test_loader, metric="f1_macro", output="logits")
        """
        if isinstance(model, Mapping):
            if factory is None:
                raise TaskError("`model` is a state dict: give `factory=` that builds the architecture it loads into.")
            module = factory()
            try:
                module.load_state_dict(dict(model))
            except (RuntimeError, KeyError) as exc:
                first = str(exc).strip().splitlines()[0]
                raise TaskError(f"The state dict does not load into `factory()`'s model: {first}") from None
            model = module
        if not isinstance(model, nn.Module):
            raise TaskError(f"`model` must be a trained torch.nn.Module (or a state dict with factory=), but got "
                            f"{type(model).__name__}.")
        trained = copy.deepcopy(model).cpu().eval()
        data = _splits(train, val, test, streaming)
        scaled = scaled_epochs(data.train.steps(batch_size))
        finetune_epochs = scaled[0] if finetune_epochs is None else finetune_epochs
        recovery_epochs = scaled[1] if recovery_epochs is None else recovery_epochs
        task = cls(name=name, build_model=lambda: copy.deepcopy(trained), data=data, num_classes=num_classes or 1,
                   epochs=0, finetune_epochs=finetune_epochs, recovery_epochs=recovery_epochs, lr=lr,
                   batch_size=batch_size, notes=notes, metric=metric, output=output, pretrained=True,
                   extra={"exits_after": list(exits_after)} if exits_after is not None else {})
        if num_classes is None:
            task.num_classes = _output_width(task)
        task.check_model()
        _check_labels(task)
        if warm_starts is None:
            from slimtune.tasks._builtin import model_warm_starts  # the recipes name knobs; the task does not

            warm_starts = model_warm_starts(task.build_model())
        task.extra["warm_starts"] = [dict(w) for w in warm_starts]
        return task

    @classmethod
    def from_loaders(
        cls,
        name: str,
        build_model: Callable[[], nn.Module],
        train: DataLoader,
        val: DataLoader,
        test: DataLoader,
        *,
        num_classes: int | None = None,
        streaming: bool | None = None,
        **kwargs,
    ) -> "Task":
        """Build a task from DataLoaders yielding ``(inputs, labels)`` batches.

        Each loader is read once: checked, its labels' range taken, every sample
        hashed; then held in memory in a canonical order (``streaming=False``, or
        ``None`` and at most 1 GiB) or streamed on every use (``streaming=True``).
        Either way a shuffling loader gives the same task (and fingerprint) every
        time.
        """
        data = _splits(train, val, test, streaming)
        if num_classes is None:
            num_classes = max(s.label_range()[1] for s in (data.train, data.val, data.test)) + 1
        return cls(name=name, build_model=build_model, data=data, num_classes=num_classes, **kwargs)


def _output_width(task: Task) -> int:
    """The number of logits the task's model outputs (checked to be ``(N, C)``)."""
    x = task.example_input(2)
    model = task.build_model().eval()
    try:
        with torch.no_grad():
            out = model(x)
    except ValueError as exc:
        raise TaskError(f"Task {task.name!r}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - the user's model
        raise TaskError(f"Task {task.name!r}: the model fails on {_describe_input(x)}: {exc}{_integer_hint(x)}") from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != len(x):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        hint = "" if isinstance(out, torch.Tensor) or task.output is not None else \
            " Declare where the logits are with output= (e.g. output='logits')."
        raise TaskError(f"Task {task.name!r}: the model must output class logits of shape (batch, classes), "
                        f"but got {shape}.{hint}")
    return int(out.shape[1])


def _describe_input(x: torch.Tensor) -> str:
    """``an input of shape (2, 1, 8, 8)`` (float32) or ``an int64 input of shape (2, 65)``."""
    kind = "" if x.dtype == torch.float32 else f"{str(x.dtype).replace('torch.', '')} "
    return f"{'an' if not kind or kind[0] in 'aeiou' else 'a'} {kind}input of shape {tuple(x.shape)}"


def _integer_hint(x: torch.Tensor) -> str:
    if x.is_floating_point():
        return ""
    return (" (slimtune keeps integer inputs as int64, as token ids need; if the model wants floats, give float "
            "tensors or convert in its forward)")


def _check_labels(task: Task) -> None:
    for split in ("train", "val", "test"):
        low, high = getattr(task.data, split).label_range()
        if low < 0 or high >= task.num_classes:
            raise TaskError(f"The {split} labels must lie in [0, {task.num_classes - 1}] (the model has "
                            f"{task.num_classes} outputs), but range over [{low}, {high}].")


def one_line(exc: BaseException) -> str:
    """``ExcType: first line of its message`` (at most 300 characters)."""
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
