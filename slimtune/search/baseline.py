"""The trained baseline: trained once per (task, seed), cached, the teacher of every
candidate and the frontier's reference point."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from slimtune.search.baseline_cache import CACHE_ENV, baselines_dir
from slimtune.search.trainer import TrainConfig, accuracy, predict_logits, train
from slimtune.search.weights import WeightsError, load_weights
from slimtune.tasks.base import Task

logger = logging.getLogger(__name__)
__all__ = ["CACHE_ENV", "Baseline", "cache_dir", "get_baseline"]
_announced: set[Path] = set()  # cache files already named to the user in this process


def cache_dir() -> Path:
    """The baseline cache folder (created): ``$SLIMTUNE_CACHE_DIR/baselines`` or
    ``~/.cache/slimtune/baselines``."""
    return baselines_dir(create=True)


def _announce(path: Path, text: str) -> None:
    """Say once per process where the baseline came from (``run`` and ``eval``)."""
    if path not in _announced:
        _announced.add(path)
        print(text, flush=True)


@dataclass
class Baseline:
    """A trained baseline with its teacher logits on the training split."""

    task: Task
    model: nn.Module
    teacher_logits: torch.Tensor
    val_accuracy: float
    test_accuracy: float
    seed: int
    cached: bool
    path: Path | None = None  # its cache file


def get_baseline(task: Task, *, seed: int = 0, use_cache: bool = True, progress: bool = False) -> Baseline:
    """Train ``task``'s baseline (or load it from the cache, keyed by task fingerprint
    and seed).  Cached files hold tensors only and are read with ``weights_only=True``."""
    path = cache_dir() / f"{task.name}-{task.fingerprint()}-seed{seed}.pt"
    model = task.build_model()
    if use_cache and path.exists():
        try:
            blob = load_weights(path, what=f"The baseline cache file {str(path)!r}")
            model.load_state_dict(blob["state_dict"])
            model.eval()
            if progress:
                _announce(path, f"Baseline of {task.name} (seed {seed}): from the cache {path}")
            return Baseline(task, model, blob["teacher_logits"], float(blob["val_accuracy"]),
                            float(blob["test_accuracy"]), seed, cached=True, path=path)
        except WeightsError as exc:  # a tampered or damaged cache file is retrained (and replaced)
            logger.warning("%s Retraining the baseline.", exc)
        except Exception as exc:  # noqa: BLE001 - a cache file of another shape is retrained
            logger.warning("Ignoring the baseline cache %s (%s); retraining the baseline.", path, type(exc).__name__)
    torch.manual_seed(seed)
    model = task.build_model()
    data = task.data
    config = TrainConfig(epochs=task.epochs, lr=task.lr, batch_size=task.batch_size, seed=seed)
    if progress:
        print(f"Training the {task.name} baseline ({task.epochs} epochs, {len(data.x_train):,} images)...", flush=True)
    started = time.perf_counter()
    train(model, data.x_train, data.y_train, config)
    model.eval()
    teacher = predict_logits(model, data.x_train)
    val_acc = accuracy(model, data.x_val, data.y_val)
    test_acc = accuracy(model, data.x_test, data.y_test)
    tmp = path.with_suffix(".tmp")
    torch.save({"state_dict": model.state_dict(), "teacher_logits": teacher, "val_accuracy": val_acc,
                "test_accuracy": test_acc}, tmp)
    os.replace(tmp, path)
    if progress:
        _announce(path, f"Baseline of {task.name} (seed {seed}): trained in {time.perf_counter() - started:.1f} s, "
                        f"saved to the cache {path}")
    return Baseline(task, model, teacher, val_acc, test_acc, seed, cached=False, path=path)
