"""The baseline: the frontier's reference point and the teacher of every candidate.

A task built from a factory has its baseline trained once per (task fingerprint,
seed) and cached; a task built with :meth:`Task.from_model` *is* the user's trained
model, which is never retrained: its metric is measured and its logits on the training
split computed (cheap, so never cached).  On a training split that streams from a
loader the teacher's logits are computed per batch instead (:meth:`Baseline.teacher`),
never held for the whole split."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from slimtune.search._baseline_cache import CACHE_ENV, baselines_dir, clear_baselines
from slimtune.search._trainer import TrainConfig, predict_logits, score, train
from slimtune.search._weights import WeightsError, load_weights
from slimtune.tasks._task import Task

logger = logging.getLogger(__name__)
__all__ = ["CACHE_ENV", "Baseline", "cache_dir", "clear_cache", "get_baseline"]
_announced: set[Path] = set()  # cache files already named to the user in this process


def cache_dir() -> Path:
    """The baseline cache folder (created): ``$SLIMTUNE_CACHE_DIR/baselines`` or
    ``~/.cache/slimtune/baselines``."""
    return baselines_dir(create=True)


def clear_cache(task: str | None = None) -> int:
    """Delete the cached baselines (of ``task`` only, when given); how many were removed."""
    return len(clear_baselines(task))


def _announce(path: Path, text: str) -> None:
    """Say once per process where the baseline came from (``run`` and ``eval``)."""
    if path not in _announced:
        _announced.add(path)
        print(text, flush=True)


@dataclass
class Baseline:
    """A baseline with its teacher logits on the training split (``None`` when that
    split streams: :meth:`teacher` then runs the model on each batch).

    ``val_accuracy`` and ``test_accuracy`` hold the task's metric (accuracy unless the
    task says otherwise), computed with the torch model."""

    task: Task
    model: nn.Module
    teacher_logits: torch.Tensor | None
    val_accuracy: float
    test_accuracy: float
    seed: int
    cached: bool
    trained: bool = True  # False: the user's model as given (Task.from_model)
    path: Path | None = None  # its cache file

    @torch.no_grad()
    def teacher(self, x: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
        """The teacher's logits of a training batch: the precomputed ones of the
        samples at ``index`` (an in-memory split), or the model's forward in eval mode
        on ``x`` (a streaming split, whose batches may be augmented)."""
        if self.teacher_logits is not None and index is not None:
            return self.teacher_logits[index]
        self.model.eval()
        return self.model(x)


def _measured(task: Task, model: nn.Module, seed: int, *, cached: bool, trained: bool,
              path: Path | None = None) -> Baseline:
    """The baseline's teacher logits (in-memory training split: they line up with
    ``task.data.x_train`` in its current order; ``None`` when it streams) and val/test
    metric, computed now."""
    data = task.data
    model.eval()
    teacher = None if data.train.streaming else predict_logits(model, data.x_train)
    val = score(model, data.val, task.metric)
    test = score(model, data.test, task.metric)
    return Baseline(task, model, teacher, val, test, seed, cached=cached, trained=trained, path=path)


def get_baseline(task: Task, *, seed: int = 0, use_cache: bool = True, progress: bool = False) -> Baseline:
    """The baseline of ``task``.

    ``Task.from_model`` tasks: the given model, never trained.  Other tasks: trained
    (or loaded from the cache, keyed by task fingerprint and seed; ``use_cache=False``
    retrains and overwrites the cached file).  Cached files hold tensors only and are
    read with ``weights_only=True``; a tampered or unreadable one is retrained.
    """
    if task.pretrained:
        return _measured(task, task.build_model(), seed, cached=False, trained=False)
    path = cache_dir() / f"{task.name}-{task.fingerprint()}-seed{seed}.pt"
    if use_cache and path.exists():
        try:
            blob = load_weights(path, what=f"The baseline cache file {str(path)!r}")
            model = task.build_model()
            model.load_state_dict(blob["state_dict"])
            if progress:
                _announce(path, f"Baseline of {task.name} (seed {seed}): from the cache {path}")
            return _measured(task, model, seed, cached=True, trained=True, path=path)
        except WeightsError as exc:  # a tampered or damaged cache file is retrained (and replaced)
            logger.warning("%s Retraining the baseline.", exc)
        except Exception as exc:  # noqa: BLE001 - a cache file of another shape is retrained
            logger.warning("Ignoring the baseline cache %s (%s); retraining the baseline.", path, type(exc).__name__)
    torch.manual_seed(seed)
    model = task.build_model()
    data = task.data
    config = TrainConfig(epochs=task.epochs, lr=task.lr, batch_size=task.batch_size, seed=seed)
    if progress:
        print(f"Training the {task.name} baseline ({task.epochs} epochs, {len(data.train):,} images)...", flush=True)
    started = time.perf_counter()
    train(model, data.train, config)
    baseline = _measured(task, model, seed, cached=False, trained=True, path=path)
    tmp = path.with_suffix(".tmp")
    torch.save({"state_dict": model.state_dict(), "val_accuracy": baseline.val_accuracy,
                "test_accuracy": baseline.test_accuracy}, tmp)
    os.replace(tmp, path)
    if progress:
        _announce(path, f"Baseline of {task.name} (seed {seed}): trained in {time.perf_counter() - started:.1f} s, "
                        f"saved to the cache {path}")
    return baseline
