"""The baseline: the frontier's reference point and the teacher of every candidate.

A task built from a factory has its baseline trained once per (task fingerprint,
seed) and cached; a task built with :meth:`Task.from_model` *is* the user's trained
model, which is never retrained: its metric is measured and its logits on the training
split computed (cheap, so never cached).  On a training split that streams from a
loader the teacher's logits are computed per batch instead (:meth:`Baseline.teacher`),
never held for the whole split.

The baseline's model is kept on the CPU (what is cached, timed and compiled);
:meth:`Baseline.on` gives its copy and teacher on a training device."""

from __future__ import annotations

import hashlib
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimtune.search._baseline_cache import CACHE_ENV, baselines_dir, clear_baselines
from slimtune.search._device import TrainingDevice
from slimtune.search._trainer import TrainConfig, predict_logits, score, train
from slimtune.search._weights import WeightsError, load_weights
from slimtune.tasks._task import Task, weights_digest

logger = logging.getLogger(__name__)
__all__ = ["CACHE_ENV", "Baseline", "cache_dir", "clear_cache", "get_baseline", "teacher_key"]
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
    _placed: dict[Any, "PlacedBaseline"] = field(default_factory=dict, repr=False, compare=False)

    @torch.no_grad()
    def teacher(self, x: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
        """The teacher's logits of a training batch: the precomputed ones of the
        samples at ``index`` (an in-memory split), or the model's forward in eval mode
        on ``x`` (a streaming split, whose batches may be augmented); on the CPU."""
        return self.on(torch.device("cpu")).teacher(x, index)

    def on(self, device: "torch.device | str") -> "PlacedBaseline":
        """The baseline's model and teacher on ``device`` (copied there once; on the
        CPU, the baseline's own model and logits)."""
        device = torch.device(device)
        if device not in self._placed:
            if device.type == "cpu":
                self._placed[device] = PlacedBaseline(self.model, self.teacher_logits)
            else:
                import copy

                model = copy.deepcopy(self.model).to(device).eval()
                logits = None if self.teacher_logits is None else self.teacher_logits.to(device)
                self._placed[device] = PlacedBaseline(model, logits)
        return self._placed[device]


@dataclass(frozen=True)
class PlacedBaseline:
    """The baseline on one device: its model (candidates are copied from it) and the
    teacher logits of an in-memory training split (``None`` when it streams)."""

    model: nn.Module
    logits: torch.Tensor | None

    @torch.no_grad()
    def teacher(self, x: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
        """The teacher's logits of a training batch (``x`` and ``index`` on this device):
        the precomputed ones at ``index``, or the model's forward in eval mode on ``x``."""
        if self.logits is not None and index is not None:
            return self.logits[index]
        self.model.eval()
        return self.model(x)


def _measured(task: Task, model: nn.Module, seed: int, *, cached: bool, trained: bool,
              path: Path | None = None, place: TrainingDevice | None = None) -> Baseline:
    """The baseline's teacher logits (in-memory training split: they line up with
    ``task.data.x_train`` in its current order; ``None`` when it streams) and val/test
    metric, computed now on ``place``'s device (default the CPU); the model is left on
    the CPU."""
    data = task.data
    model.eval()
    if place is not None:
        model.to(place.device)
    try:
        teacher = None if data.train.streaming else predict_logits(model, data.x_train)
        val = score(model, data.val, task.metric)
        test = score(model, data.test, task.metric)
    finally:
        model.cpu()
    return Baseline(task, model, teacher, val, test, seed, cached=cached, trained=trained, path=path)


def teacher_key(model: nn.Module, task: Task) -> str:
    """What the cached teacher logits and val/test metric of ``model`` depend on beyond
    the cache file's name (which already holds the task fingerprint: every split's
    samples, the metric): the weights, the training inputs **in their order** (the
    logits line up with ``task.data.x_train``), and the torch version.  A streaming
    training split has no stored logits: only its flag counts."""
    h = hashlib.sha256()
    h.update(f"weights:{weights_digest(model)}|torch:{torch.__version__}|".encode())
    data = task.data
    if data.train.streaming:
        h.update(b"train:streaming")
    else:
        x = data.x_train.detach().cpu().contiguous()
        h.update(f"train:{x.dtype}|{tuple(x.shape)}|".encode())
        if x.numel():
            h.update(x.reshape(-1).view(torch.uint8).numpy())  # the buffer itself, not a copy
    return h.hexdigest()


def _from_blob(task: Task, model: nn.Module, seed: int, blob: dict, key: str, path: Path) -> Baseline | None:
    """The cached baseline with the teacher logits and metric stored in ``blob`` when
    they were computed under ``key`` (and fit the training split); ``None`` otherwise."""
    if not isinstance(blob, dict) or blob.get("teacher_key") != key:
        return None
    logits, val, test = blob.get("teacher_logits"), blob.get("val_accuracy"), blob.get("test_accuracy")
    if not isinstance(val, float) or not isinstance(test, float):
        return None
    if task.data.train.streaming:
        logits = None
    elif not isinstance(logits, torch.Tensor) or logits.dim() < 1 or len(logits) != len(task.data.x_train):
        return None
    return Baseline(task, model, logits, val, test, seed, cached=True, trained=True, path=path)


def _save(path: Path, baseline: Baseline, key: str) -> None:
    """Write the baseline's weights, metric and teacher logits (under ``key``) to
    ``path`` atomically (a unique temporary file, then a rename: concurrent workers
    never see half a file)."""
    tmp = path.with_name(f".{path.stem}-{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")  # the umask's mode, as before
    try:
        with open(tmp, "xb") as fh:
            torch.save({"state_dict": baseline.model.state_dict(), "val_accuracy": float(baseline.val_accuracy),
                        "test_accuracy": float(baseline.test_accuracy), "teacher_key": key,
                        "teacher_logits": baseline.teacher_logits}, fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load_cached(task: Task, seed: int, path: Path, place: TrainingDevice | None = None) -> Baseline:
    """The cached baseline at ``path``: its weights, and its teacher logits and metric
    when stored under the current :func:`teacher_key` (else computed now and written
    back, so the next load reuses them).  Raises what loading raises."""
    blob = load_weights(path, what=f"The baseline cache file {str(path)!r}")
    model = task.build_model()
    model.load_state_dict(blob["state_dict"])
    model.eval()
    key = teacher_key(model, task)
    baseline = _from_blob(task, model, seed, blob, key, path)
    if baseline is None:
        baseline = _measured(task, model, seed, cached=True, trained=True, path=path, place=place)
        try:
            _save(path, baseline, key)
        except OSError as exc:  # a read-only cache still serves; it recomputes next time
            logger.warning("Could not store the baseline's teacher logits in %s (%s).", path, exc)
    return baseline


def get_baseline(task: Task, *, seed: int = 0, use_cache: bool = True, progress: bool = False,
                 place: TrainingDevice | None = None) -> Baseline:
    """The baseline of ``task``, trained (and its teacher logits computed) on
    ``place``'s device (default the CPU); its model is returned on the CPU.

    ``Task.from_model`` tasks: the given model, never trained.  Other tasks: trained
    (or loaded from the cache, keyed by task fingerprint and seed; ``use_cache=False``
    retrains and overwrites the cached file).  Cached files hold tensors only and are
    read with ``weights_only=True``; a tampered or unreadable one is retrained.  The
    teacher logits and val/test metric stored with a cached file are reused when their
    :func:`teacher_key` matches.
    """
    if task.pretrained:
        return _measured(task, task.build_model(), seed, cached=False, trained=False, place=place)
    path = cache_dir() / f"{task.name}-{task.fingerprint()}-seed{seed}.pt"
    if use_cache and path.exists():
        try:
            baseline = _load_cached(task, seed, path, place)
            if progress:
                _announce(path, f"Baseline of {task.name} (seed {seed}): from the cache {path}")
            return baseline
        except WeightsError as exc:  # a tampered or damaged cache file is retrained (and replaced)
            logger.warning("%s Retraining the baseline.", exc)
        except Exception as exc:  # noqa: BLE001 - a cache file of another shape is retrained
            logger.warning("Ignoring the baseline cache %s (%s); retraining the baseline.", path, type(exc).__name__)
    place = place or TrainingDevice()
    torch.manual_seed(seed)
    model = task.build_model().to(place.device)
    data = task.data
    config = TrainConfig(epochs=task.epochs, lr=task.lr, batch_size=task.batch_size, seed=seed, place=place)
    if progress:
        on = "" if place.device.type == "cpu" else f" on {place.device}"
        print(f"Training the {task.name} baseline ({task.epochs} epochs, {len(data.train):,} images{on})...", flush=True)
    started = time.perf_counter()
    train(model, data.train, config)
    baseline = _measured(task, model, seed, cached=False, trained=True, path=path, place=place)
    _save(path, baseline, teacher_key(model, task))
    if progress:
        _announce(path, f"Baseline of {task.name} (seed {seed}): trained in {time.perf_counter() - started:.1f} s, "
                        f"saved to the cache {path}")
    return baseline
