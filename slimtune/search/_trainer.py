"""Training a student against the baseline teacher's logits, with what the knobs
change in training (:class:`~slimtune.spaces.base.TrainingHooks`: the loss, e.g.
distillation's; learning-rate multipliers and extra outputs, e.g. early exits'), on the
device of :class:`TrainConfig` (batches moved there keeping their dtype, mixed precision
where it is asked for); the scores read after each epoch run where the model is."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from slimtune.search._device import TrainingDevice, device_of, off_device
from slimtune.spaces.base import TrainingHooks
from slimtune.tasks._data import Split


@dataclass
class TrainConfig:
    epochs: int
    lr: float
    batch_size: int = 64
    weight_decay: float = 1e-4
    seed: int = 0
    hooks: TrainingHooks = field(default_factory=TrainingHooks)  # the candidate's knobs' (Space.training_hooks)
    place: TrainingDevice = field(default_factory=TrainingDevice)  # where it trains (the model must be there)


#: ``callback(epoch, model) -> reason or None``: return a string to stop training.
EpochCallback = Callable[[int, nn.Module], "str | None"]

#: ``teacher(inputs, index) -> logits`` of a training batch: ``index`` the samples'
#: positions in an in-memory split (precomputed logits), ``None`` when it streams; both
#: on the training device, and the logits returned there.
Teacher = Callable[[torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def model_outputs(model: nn.Module, x: torch.Tensor, hooks: TrainingHooks | None = None) -> list[torch.Tensor]:
    """Every output a student is trained on, the final head's last: the knobs' (e.g.
    each early exit, then the final head), else ``[model(x)]``."""
    outputs = hooks.outputs(model, x) if hooks is not None and hooks.outputs is not None else None
    return list(outputs) if outputs is not None else [model(x)]


def _cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, labels: torch.Tensor) -> torch.Tensor:
    """The loss when no knob sets one: cross-entropy on the labels."""
    return F.cross_entropy(student_logits, labels)


def _param_groups(model: nn.Module, config: TrainConfig) -> list[dict]:
    """The trainable parameters by learning rate (``config.lr`` times the knobs'
    multiplier), the unscaled group first."""
    scale_of = config.hooks.lr_scale or (lambda name: None)
    groups: dict[float, list[nn.Parameter]] = {1.0: []}
    for name, param in model.named_parameters():
        if param.requires_grad:
            scale = scale_of(name)
            groups.setdefault(1.0 if scale is None else float(scale), []).append(param)
    return [{"params": params, "lr": config.lr * scale} for scale, params in groups.items() if params or scale == 1.0]


def train(
    model: nn.Module,
    data: Split,
    config: TrainConfig,
    *,
    teacher: Teacher | None = None,
    callback: EpochCallback | None = None,
) -> tuple[int, str | None]:
    """Train ``model`` in place (Adam, cosine schedule) on the batches of ``data``
    with the knobs' loss (e.g. distillation against ``teacher``'s logits of each
    batch; default cross-entropy), averaged over the model's outputs.

    ``model`` must be on ``config.place.device`` already (a tensor left elsewhere, e.g.
    a module a knob created on the CPU, is refused by name); every batch is moved there.
    Pruning masks (``torch.nn.utils.prune``) stay in force since they are applied in the
    forward pass.  Returns (epochs run, stop reason or None).
    """
    if config.epochs <= 0:
        return 0, None
    place = config.place
    stray = off_device(model, place.device)
    if stray:
        raise ValueError(f"The model trains on {place.device}, but {len(stray)} of its tensors are elsewhere: "
                         + ", ".join(stray[:4]) + (", ..." if len(stray) > 4 else "") + ".")
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.Adam(_param_groups(model, config), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = max(1, data.steps(config.batch_size))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs * steps_per_epoch)
    loss_fn = config.hooks.loss or _cross_entropy
    # the teacher runs (or is looked up) only when a knob's loss may use it
    wants_teacher = teacher is not None and config.hooks.loss is not None
    scaler = place.grad_scaler()  # fp16 only; otherwise it passes the loss and the step through
    for epoch in range(config.epochs):
        model.train()
        for xb, yb, idx in data.batches(config.batch_size, generator=generator):
            if len(xb) < 2:  # BatchNorm needs two samples
                continue
            xb, yb, idx = place.move(xb, yb, idx)
            with place.autocast():
                tb = teacher(xb, idx) if wants_teacher else None
                outputs = model_outputs(model, xb, config.hooks)
                loss = sum(loss_fn(o, tb, yb) for o in outputs) / len(outputs)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
        if callback is not None:
            reason = callback(epoch, model)
            if reason:
                return epoch + 1, reason
    model.eval()
    return config.epochs, None


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Logits of the final head for every input (eval mode), computed where the model
    is, returned on the CPU."""
    model.eval()
    place = TrainingDevice(device_of(model))
    outs = []
    for start in range(0, len(x), batch_size):
        xb = place.to_device(x[start:start + batch_size])
        outs.append(model_outputs(model, xb)[-1].cpu())
    return torch.cat(outs)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model``'s own forward (dynamic exits applied)."""
    model.eval()
    place = TrainingDevice(device_of(model))
    correct = 0
    for start in range(0, len(x), batch_size):
        out = model(place.to_device(x[start:start + batch_size])).cpu()
        correct += int((out.argmax(-1) == y[start:start + batch_size]).sum())
    return correct / max(1, len(x))


@torch.no_grad()
def score(model: nn.Module, data: Split, metric: Callable[[torch.Tensor, torch.Tensor], float] | None = None,
          batch_size: int = 256) -> float:
    """``metric(logits, labels)`` of ``model``'s own forward (dynamic exits applied)
    on every sample of ``data``, logits accumulated batch by batch; top-1 accuracy
    when ``metric`` is None.  (Batches of 256, not 512: on Fashion-MNIST's ResNet-8 at
    one thread 512 took 1.9-2.9 s per 5,000 samples, 256 1.3-1.4 s, same logits.)"""
    return score_and_exit_rates(model, data, metric, batch_size)[0]


def score_and_exit_rates(model: nn.Module, data: Split,
                         metric: Callable[[torch.Tensor, torch.Tensor], float] | None = None,
                         batch_size: int = 256) -> tuple[float, tuple[float, ...] | None]:
    """:func:`score`, and for an early-exit model (``predict_with_exits`` and its
    ``thresholds``) the share of the samples that left at each exit, then at the final
    head, in the same pass; ``None`` for a static model."""
    model.eval()
    place = TrainingDevice(device_of(model))  # computed where the model is; the metric reads CPU tensors
    exits = callable(getattr(model, "predict_with_exits", None)) and hasattr(model, "thresholds")
    logits, labels, where = [], [], []
    for xb, yb in data.chunks(batch_size):
        xb = place.to_device(xb)
        if exits:
            out, taken = model.predict_with_exits(xb)
            where.append(taken.cpu())
        else:
            out = model(xb)
        logits.append(out.cpu())
        labels.append(yb)
    all_logits, all_labels = torch.cat(logits), torch.cat(labels)
    rates = None
    if exits:
        counts = torch.bincount(torch.cat(where), minlength=len(model.thresholds) + 1)
        rates = tuple(float(c) / len(all_labels) for c in counts)
    if metric is None:
        return int((all_logits.argmax(-1) == all_labels).sum()) / len(all_labels), rates
    return float(metric(all_logits, all_labels)), rates
