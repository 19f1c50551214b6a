"""A task: a baseline model factory, its data, and how to train it."""

from __future__ import annotations

import hashlib
import importlib
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader

from slimtune.spaces.base import close_matches


class TaskError(ValueError):
    """A task cannot be built or does not fit slimtune (one clear line for the user)."""


@dataclass
class TaskData:
    """Held in memory as tensors so that teacher logits computed once line up with
    the training samples in every epoch of every trial."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    def __post_init__(self) -> None:
        for split in ("train", "val", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if len(x) != len(y):
                raise TaskError(f"The {split} split has {len(x)} inputs but {len(y)} labels.")
            if len(x) == 0:
                raise TaskError(f"The {split} split is empty.")

    def summary(self) -> dict[str, int]:
        return {"train": len(self.x_train), "val": len(self.x_val), "test": len(self.x_test)}


@dataclass
class Task:
    """Everything slimtune needs to search a classifier.

    Args:
        name: how studies refer to the task.
        build_model: returns a *fresh, untrained* baseline model.
        data: train/val/test tensors (see :meth:`from_loaders` for DataLoaders).
        num_classes: number of output logits.
        epochs: baseline training epochs.
        finetune_epochs: default distillation epochs for a candidate.
        recovery_epochs: default fine-tune epochs after pruning and for QAT.
        lr, batch_size: training settings.
        notes: what a user should know when reading results (e.g. a training subset).
        preprocessing: how raw inputs become the tensors the model takes (written into
            exported models, e.g. ``pixels / 16``); empty when the task does not say.
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

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.data.x_train.shape[1:])

    def example_input(self, batch_size: int = 1) -> torch.Tensor:
        return self.data.x_train[:batch_size].clone()

    def fingerprint(self) -> str:
        """Hash of what determines the baseline: architecture, data, training settings."""
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
            raise TaskError(f"Task {self.name!r}: building the model raised {_one_line(exc)}") from None
        try:
            with torch.no_grad():
                out = model(self.example_input(2))
        except Exception as exc:  # noqa: BLE001 - the user's model
            raise TaskError(f"Task {self.name!r}: the model fails on an input of shape "
                            f"{tuple(self.example_input(2).shape)}: {_one_line(exc)}") from None
        if not isinstance(out, torch.Tensor) or out.shape != (2, self.num_classes):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise TaskError(
                f"Task {self.name!r}: the model must output class logits of shape (batch, {self.num_classes}), but got {shape}."
            )

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
        **kwargs,
    ) -> "Task":
        """Build a task from DataLoaders yielding ``(inputs, labels)`` batches.

        The loaders are read once into memory (slimtune targets models whose data fit).
        """

        def collect(loader: DataLoader, split: str) -> tuple[torch.Tensor, torch.Tensor]:
            xs, ys = [], []
            for batch in loader:
                if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                    raise TaskError(f"The {split} loader must yield (inputs, labels) batches.")
                xs.append(torch.as_tensor(batch[0]).float())
                ys.append(torch.as_tensor(batch[1]).long())
            if not xs:
                raise TaskError(f"The {split} loader yields no batches.")
            return torch.cat(xs), torch.cat(ys)

        xtr, ytr = collect(train, "train")
        xva, yva = collect(val, "val")
        xte, yte = collect(test, "test")
        if num_classes is None:
            num_classes = int(max(ytr.max(), yva.max(), yte.max())) + 1
        return cls(name=name, build_model=build_model, data=TaskData(xtr, ytr, xva, yva, xte, yte), num_classes=num_classes, **kwargs)


_TASKS: dict[str, Callable[[], Task]] = {}
_DOCS: dict[str, str] = {}


def register_task(name: str, doc: str = "") -> Callable[[Callable[[], Task]], Callable[[], Task]]:
    """Register a built-in task factory under ``name``."""

    def decorator(factory: Callable[[], Task]) -> Callable[[], Task]:
        if name in _TASKS:
            import warnings

            warnings.warn(f"Task {name!r} is registered twice; the later one wins.", stacklevel=2)
        _TASKS[name] = factory
        _DOCS[name] = doc or (factory.__doc__ or "").strip().splitlines()[0]
        return factory

    return decorator


def list_tasks() -> dict[str, str]:
    """Built-in task names with a one-line description."""
    return dict(_DOCS)


def get_task(spec: "str | Task") -> Task:
    """A built-in task by name, or a user task given as ``package.module:callable``
    (the callable returns a :class:`Task`)."""
    if isinstance(spec, Task):
        return spec
    if not isinstance(spec, str) or not spec:
        raise TaskError(f"A task is a built-in name or 'package.module:callable', but got {spec!r}.")
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        if not module_name or not attr:
            raise TaskError(f"A user task is given as 'package.module:callable', but got {spec!r}.")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise TaskError(f"Cannot import the task module {module_name!r}: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - the user's module failed while importing
            raise TaskError(f"Importing the task module {module_name!r} raised {_one_line(exc)}") from None
        factory = getattr(module, attr, None)
        if factory is None:
            raise TaskError(f"Module {module_name!r} has no attribute {attr!r}.")
        try:
            task = factory() if callable(factory) and not isinstance(factory, Task) else factory
        except TaskError:
            raise
        except Exception as exc:  # noqa: BLE001 - the user's callable
            raise TaskError(f"The task callable {spec!r} raised {_one_line(exc)}") from None
        if not isinstance(task, Task):
            raise TaskError(f"{spec!r} must return a slimtune.Task, but returned {type(task).__name__}.")
        task.extra.setdefault("spec", spec)
        return task
    if spec not in _TASKS:
        raise TaskError(f"Unknown task {spec!r}." + close_matches(spec, list(_TASKS)) + " Or give 'package.module:callable'.")
    task = _TASKS[spec]()
    task.extra.setdefault("spec", spec)
    return task


def _one_line(exc: BaseException) -> str:
    """``ExcType: first line of its message`` (at most 300 characters)."""
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
