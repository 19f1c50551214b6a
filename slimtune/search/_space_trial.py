"""Each knob family tried on the model before a space offers it.

A family is offered only when its representative settings
(:meth:`~slimtune.spaces.base.Knob.trial_values`, e.g. channel and weight pruning at
0.45, every DS-conv switch on, every exit enabled) build a model that runs: the knobs
transform a copy of the model (structure only: instead of training, two forward and
backward passes on a few training samples, which also catches a weight that a layer
reads from a graph built once), the result maps the samples to class logits, and it
compiles for the runtime and predicts there.  A family that fails is left out of the
space with a one-line reason (``Space.omitted``), the way DS-conv says "no eligible
conv".

Example:
    >>> failing_families(space, model, x_train[:8], num_classes=10)
    {'dsconv': 'dsconv 3 fails on this model: AttributeError: ...'}
"""

from __future__ import annotations

import copy
import warnings
from typing import Any, Callable, Mapping

import torch
from torch import nn

from slimtune.search._trainer import model_outputs
from slimtune.spaces._lowering import lower
from slimtune.spaces.base import LOWERED_STAGES, STAGES, KnobContext, TrainingHooks
from slimtune.spaces._space import Space

__all__ = ["failing_families", "tried_space"]

#: Training samples the trials run on (at least two: BatchNorm in training mode needs them).
TRIAL_SAMPLES = 8

_TRIED: dict[tuple, dict[str, str]] = {}  # (task fingerprint, space fingerprint, runtime, batch) -> failures


def tried_space(space: Space, model_factory: Callable[[], nn.Module], example: torch.Tensor, *, num_classes: int,
                key: str | None = None, runtime: str = "onnxruntime", batch_size: int = 1) -> Space:
    """``space`` without the families that fail on the model (see :func:`failing_families`);
    with ``key`` (e.g. the task's fingerprint) the outcome is remembered in this process."""
    memo = (key, space.fingerprint(), runtime, batch_size) if key is not None else None
    if memo is not None and memo in _TRIED:
        failures = _TRIED[memo]
    else:
        failures = failing_families(space, model_factory(), example, num_classes=num_classes, runtime=runtime,
                                    batch_size=batch_size)
        if memo is not None:
            _TRIED[memo] = failures
    return space.without(failures)


def failing_families(space: Space, model: nn.Module, example: torch.Tensor, *, num_classes: int,
                     runtime: str = "onnxruntime", batch_size: int = 1) -> dict[str, str]:
    """``{family: one-line reason}`` for each family of ``space`` whose representative
    settings do not give a model that runs (the other families at their defaults)
    compiled for ``runtime`` at ``batch_size`` (e.g. early exits, batch 1 only, at a
    larger batch; a runtime without early exits)."""
    x = example[:TRIAL_SAMPLES]
    if len(x) < 2:
        x = torch.cat([x, x])
    failures: dict[str, str] = {}
    for knob in space.knobs:
        params = [p for p in space.knob_params(knob) if p.name not in space.fixed]
        if not params:
            continue
        for setting in knob.trial_values(params):
            values = space.complete(setting)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    _try(space, model, values, x, num_classes, runtime, batch_size)
            except Exception as exc:  # noqa: BLE001 - any failure leaves the family out, with its reason
                what = knob.summary(space.knob_values(knob, values)) or knob.family
                failures[knob.family] = f"{what} fails on this model: {_one_line(exc)}"
                break
    return failures


def _try(space: Space, model: nn.Module, values: Mapping[str, Any], x: torch.Tensor, num_classes: int,
         runtime: str, batch_size: int = 1) -> None:
    from slimtune.search._runtimes import compile_model

    candidate = copy.deepcopy(model).eval()
    ctx = KnobContext(example_input=x[:1], calibration=x, finetune=_probe(space.training_hooks(values), x),
                      finetune_epochs=1, info={"num_classes": num_classes, "flags": []})
    for stage in STAGES:
        if stage == LOWERED_STAGES[0]:  # the core lowering, as the pipeline runs it
            lower(candidate, ctx.example_input)
        for knob in space.knobs:
            if knob.stage == stage:
                candidate = knob.apply(candidate, space.knob_values(knob, values), ctx)
    candidate.eval()
    with torch.no_grad():
        out = candidate(x)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (len(x), num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"the built model outputs {shape}, not ({len(x)}, {num_classes}) logits")
    compiled = compile_model(candidate, runtime=runtime, bits=space.weight_bits(values), calibration=x,
                             encoding=space.weight_encoding(values), batch_size=batch_size)
    logits = compiled.predict(x[:2])
    if tuple(logits.shape) != (2, num_classes):
        raise ValueError(f"the {runtime} artifact outputs {tuple(logits.shape)}, not (2, {num_classes}) logits")


def _probe(hooks: TrainingHooks, x: torch.Tensor) -> Callable[..., None]:
    """A stand-in for fine-tuning: two forward and backward passes (no update), as
    training runs them (every output the knobs train on)."""

    def finetune(model: nn.Module, epochs: int | None = None, lr: float | None = None) -> None:
        was_training = model.training
        model.train()
        try:
            for _ in range(2):  # the second backward fails where a weight was computed once, outside the forward
                outputs = model_outputs(model, x, hooks)
                sum(o.float().mean() for o in outputs).backward()
        finally:
            model.zero_grad(set_to_none=True)
            model.train(was_training)

    return finetune


def _one_line(exc: BaseException, limit: int = 240) -> str:
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."
