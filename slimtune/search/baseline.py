"""The baseline: the frontier's reference point and the teacher of every candidate.

A task built from a factory has its baseline trained once per (task fingerprint,
seed) and cached; a task built with :meth:`Task.from_model` *is* the user's trained
model, which is never retrained: its metric is measured and its logits on the training
split computed (cheap, so never cached)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from slimtune.search.trainer import TrainConfig, predict_logits, score, train
from slimtune.tasks.base import Task

logger = logging.getLogger(__name__)
CACHE_ENV = "SLIMTUNE_CACHE_DIR"


def cache_dir() -> Path:
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "slimtune")
    path = Path(root) / "baselines"
    path.mkdir(parents=True, exist_ok=True)
    return path


def clear_cache() -> int:
    """Delete every cached baseline; returns how many files were removed."""
    removed = 0
    for path in cache_dir().glob("*.pt"):
        path.unlink(missing_ok=True)
        removed += 1
    return removed


@dataclass
class Baseline:
    """A trained baseline with its teacher logits on the training split.

    ``val_accuracy`` and ``test_accuracy`` hold the task's metric (accuracy unless the
    task says otherwise), computed with the torch model."""

    task: Task
    model: nn.Module
    teacher_logits: torch.Tensor
    val_accuracy: float
    test_accuracy: float
    seed: int
    cached: bool
    trained: bool = True  # False: the user's model as given (Task.from_model)


def _measured(task: Task, model: nn.Module, seed: int, *, cached: bool, trained: bool) -> Baseline:
    """The baseline's teacher logits and val/test metric, computed now (the teacher
    logits line up with ``task.data.x_train`` in its current order)."""
    data = task.data
    model.eval()
    teacher = predict_logits(model, data.x_train)
    val = score(model, data.x_val, data.y_val, task.metric)
    test = score(model, data.x_test, data.y_test, task.metric)
    return Baseline(task, model, teacher, val, test, seed, cached=cached, trained=trained)


def get_baseline(task: Task, *, seed: int = 0, use_cache: bool = True, progress: bool = False) -> Baseline:
    """The baseline of ``task``.

    ``Task.from_model`` tasks: the given model, never trained.  Other tasks: trained
    (or loaded from the cache, keyed by task fingerprint and seed; ``use_cache=False``
    retrains and overwrites the cached file).  Cached files hold tensors only and are
    read with ``weights_only=True``.
    """
    if task.pretrained:
        return _measured(task, task.build_model(), seed, cached=False, trained=False)
    path = cache_dir() / f"{task.name}-{task.fingerprint()}-seed{seed}.pt"
    if use_cache and path.exists():
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            model = task.build_model()
            model.load_state_dict(blob["state_dict"])
            return _measured(task, model, seed, cached=True, trained=True)
        except Exception as exc:  # noqa: BLE001 - a broken cache file is retrained
            logger.warning("Ignoring unreadable baseline cache %s: %s", path, exc)
    torch.manual_seed(seed)
    model = task.build_model()
    data = task.data
    config = TrainConfig(epochs=task.epochs, lr=task.lr, batch_size=task.batch_size, seed=seed)
    if progress:
        print(f"Training the {task.name} baseline ({task.epochs} epochs, {len(data.x_train):,} images)...", flush=True)
    train(model, data.x_train, data.y_train, config)
    baseline = _measured(task, model, seed, cached=False, trained=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"state_dict": model.state_dict(), "val_accuracy": baseline.val_accuracy,
                "test_accuracy": baseline.test_accuracy}, tmp)
    os.replace(tmp, path)
    return baseline
