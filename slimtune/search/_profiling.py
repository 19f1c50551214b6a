"""Measuring a compiled candidate: accuracy, latency, real file sizes, MACs.

Latency is always measured on the runtime that executes the candidate (the
:class:`~slimtune.search._runtimes.CompiledModel`), after warm-up, with timings
interleaved in rounds against a reference so that machine noise does not favour
either, and stored with a fingerprint of the machine and runtime.

Example:
    >>> compiled = compile_model(model, bits=8, calibration=x_train[:256])
    >>> m = measure(model, compiled, x_val, y_val, x_test=x_test, y_test=y_test, bits=8,
    ...             example_input=x_val[:1])
    >>> m.accuracy, m.test_accuracy, m.latency_ms, m.size_bytes, m.artifact_bytes

Sizes are lengths of files, never formulas: ``size_bytes`` is the length of the packed
model file of the timed artifact (:mod:`slimtune.search.packed`, what
``export --format packed`` writes), ``artifact_bytes`` the length of the artifact
itself (the ONNX model or TorchScript archive the runtime loads).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from slimtune.search._agreement import (AGREEMENT_SAMPLES, AGREEMENT_STEP, agreeing_count, agreement_flag,
                                        agreement_settled, fake_quant_reference)
from slimtune.search._fingerprint import machine_fingerprint
from slimtune.search._measurement import Measurement
from slimtune.search import _timing  # called through the module: one place to wrap (benchmarks/overhead.py)
from slimtune.search._timing import LATENCY_PERCENTILE, ROUNDS, latency_clock, measure_latency, percentile  # noqa: F401
from slimtune.spaces._lowering import QUANTIZABLE
from slimtune.tasks._data import Split, TensorSplit, model_input

if TYPE_CHECKING:  # pragma: no cover
    from slimtune.search._runtimes import CompiledModel

MAX_TIMED_INPUTS = 16  # distinct held-out batches cycled through while timing a static model


# -- latency ----------------------------------------------------------------------
# measure_latency lives in _timing (the clocks, calibrated loops, interleaved rounds)


def mean_of_path_medians(timings_ms: Sequence[float], paths: Sequence[int], q: float = 50) -> float:
    """The latency of an early-exit model over timed samples: each sample counts with
    the median (``q``-th percentile) timing of the exit path it took (``paths[k]``: the
    exit of the sample timed in ``timings_ms[k]``), i.e. ``sum_e share_e * median_e``.
    Robust to a few slow calls (a loaded machine) as a plain mean is not, and still
    weighted by how often each path runs on real data."""
    if len(timings_ms) != len(paths) or not timings_ms:
        raise ValueError(f"`timings_ms` and `paths` must be non-empty and of one length, but got "
                         f"{len(timings_ms)} and {len(paths)}.")
    by_path: dict[int, list[float]] = {}
    for ms, path in zip(timings_ms, paths):
        by_path.setdefault(int(path), []).append(float(ms))
    return float(sum(len(v) * np.percentile(v, q) for v in by_path.values()) / len(timings_ms))


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


# -- size -------------------------------------------------------------------------
def params_count(model: nn.Module) -> int:
    """Parameters stored: non-zero Conv/Linear weights plus every other parameter."""
    total, seen = 0, set()
    for module in model.modules():
        if isinstance(module, QUANTIZABLE):
            seen.add(id(module.weight))
            total += int(torch.count_nonzero(module.weight.detach()))
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


# -- the measurement --------------------------------------------------------------
def _cycler(inputs: list[Any], run: Callable[[Any], object]) -> Callable[[], object]:
    """A zero-argument runner stepping through ``inputs`` one call at a time."""
    state = {"i": 0}
    count = len(inputs)

    def step() -> object:
        i = state["i"]
        state["i"] = i + 1 if i + 1 < count else 0
        return run(inputs[i])

    return step


def _batches(x: torch.Tensor, batch_size: int, limit: int) -> list[torch.Tensor]:
    if len(x) < batch_size:
        x = x.repeat((math.ceil(batch_size / len(x)),) + (1,) * (x.dim() - 1))
    n = min(limit, len(x) // batch_size)
    return [x[i * batch_size:(i + 1) * batch_size] for i in range(n)]


def _accuracy(compiled: "CompiledModel", data: Split, eval_batch: int,
              metric: Callable[[torch.Tensor, torch.Tensor], float] | None = None,
              reference: nn.Module | None = None) -> tuple[float, np.ndarray | None, float | None, int]:
    """The task's metric (top-1 accuracy when ``metric`` is None) of ``compiled``'s
    logits on every sample of ``data`` (accumulated over its batches; early-exit models
    run one sample at a time, as deployed), the exit each sample took (``None`` for a
    static model) and, with a torch ``reference``, the share of the first
    validation samples read (steps of :data:`AGREEMENT_STEP` until :func:`agreement_settled`, at most
    :data:`AGREEMENT_SAMPLES`) on which the two agree (:func:`runtime_agreement`), and how many were read."""
    logits, labels, exits, agreeing, checked = [], [], [], 0, 0
    for x, y in data.chunks():
        if compiled.has_exits:
            chunk_logits, chunk_exits = compiled.predict_with_exits(x)
            exits.append(np.asarray(chunk_exits))
        else:
            chunk_logits, chunk_exits = compiled.predict(x, batch_size=eval_batch), None
        at = 0  # steps of AGREEMENT_STEP samples until settled, at most AGREEMENT_SAMPLES
        while reference is not None and not (checked and checked % AGREEMENT_STEP == 0
                                             and agreement_settled(checked, agreeing)):
            take = min(len(x) - at, AGREEMENT_SAMPLES - checked, AGREEMENT_STEP - checked % AGREEMENT_STEP)
            if take <= 0:
                break
            agreeing += agreeing_count(reference, model_input(x[at:at + take]),
                                  np.asarray(chunk_logits)[at:at + take],
                                  None if chunk_exits is None else np.asarray(chunk_exits)[at:at + take])
            checked, at = checked + take, at + take
        logits.append(np.asarray(chunk_logits))
        labels.append(np.asarray(y))
    all_logits, all_labels = np.concatenate(logits), np.concatenate(labels)
    all_exits = np.concatenate(exits) if exits else None
    agreement = agreeing / checked if reference is not None and checked else None
    if metric is not None:
        value = float(metric(torch.from_numpy(all_logits), torch.from_numpy(all_labels)))
    else:
        value = float((all_logits.argmax(-1) == all_labels).mean())
    return value, all_exits, agreement, checked


def _split(x: "torch.Tensor | Split | None", y: torch.Tensor | None, name: str) -> Split | None:
    """``x`` as a :class:`Split`: itself, or the tensors ``(x, y)`` (checked non-empty and aligned)."""
    if x is None and y is not None:
        raise ValueError(f"`x_{name}` and `y_{name}` must be given together, but got only `y_{name}`.")
    if x is None or isinstance(x, Split):
        return x
    if y is None or len(x) != len(y) or len(x) == 0:
        got = "no labels" if y is None else f"{len(x)} and {len(y)}"
        raise ValueError(f"`x_{name}` and `y_{name}` must be given together, non-empty and aligned, but got {got}.")
    return TensorSplit(torch.as_tensor(x), torch.as_tensor(y), name)


def measure(
    model: nn.Module,
    compiled: "CompiledModel",
    x_val: "torch.Tensor | Split",
    y_val: torch.Tensor | None,
    *,
    bits: int,
    example_input: torch.Tensor,
    x_test: "torch.Tensor | Split | None" = None,
    y_test: torch.Tensor | None = None,
    reference: "CompiledModel | None" = None,
    batch_size: int = 1,
    threads: int = 1,
    warmup: int = 20,
    repeats: int = 200,
    eval_batch: int = 256,
    seed: int = 0,
    metric: Callable[[torch.Tensor, torch.Tensor], float] | None = None,
) -> Measurement:
    """Measure ``compiled`` (built from ``model``).

    ``accuracy`` (the search objective) comes from ``compiled`` itself, i.e. the
    artifact that is timed and exported, on the **validation** split ``(x_val,
    y_val)``; early-exit models run sample by sample there, giving ``exit_rates``.
    ``test_accuracy`` is the same artifact on ``(x_test, y_test)`` when given: it is
    reported, never used to choose anything.  A split may also be given as a
    :class:`~slimtune.tasks._data.Split` in ``x_val`` / ``x_test`` (its ``y_`` left
    ``None``): its batches are read one at a time and only the logits kept.

    Latency is timed on validation inputs (a split's first ones), on the clock of
    :func:`~slimtune.search._timing.latency_clock` (the calling thread's on-CPU time at
    one thread; ``latency_clock``), with the wall-clock figure of the same calls in
    ``latency_wall_ms``.  Static models: the :data:`LATENCY_PERCENTILE`-th percentile of
    ``repeats`` calibrated samples of ``compiled.run_one`` at ``batch_size``, interleaved
    in rounds with ``reference.run_one`` on the same inputs (its percentile in
    ``reference_latency_ms``; :func:`~slimtune.search._timing.static_latencies`).
    Early-exit models: the dynamic model is timed one sample at a time over ``repeats``
    real validation samples (a seeded random order), latency = the mean over those
    samples of the same percentile of the exit path each one took
    (``latency_kind="mean_of_path_p10"``, :func:`mean_of_path_medians`: a plain mean let
    a few load spikes decide); the reference is timed interleaved on the same samples,
    its percentile in ``reference_latency_ms``.  ``size_bytes`` is the length of the packed file
    of ``compiled.artifact`` (``bits`` recorded in its header), ``artifact_bytes`` the
    length of the artifact; MACs and params come from ``model``.  ``metric``
    (``(logits, labels) -> float``, the task's) replaces top-1 accuracy in ``accuracy``
    and ``test_accuracy``.

    ``runtime_agreement`` is the share of the first validation samples (steps of :data:`AGREEMENT_STEP`
    until :func:`agreement_settled`, at most :data:`AGREEMENT_SAMPLES`) on which
    ``compiled`` predicts the class that ``model`` predicts in torch with its weights
    on the b-bit grid and float activations (:func:`runtime_agreement`; one extra
    torch forward pass); below 99% the measurement is flagged, since then the
    runtime (e.g. saturating int8 kernels), not the compressed model, costs accuracy.
    """
    from slimtune.search._macs import count_macs
    from slimtune.search.packed import packed_size

    val = _split(x_val, y_val, "val")
    test = _split(x_test, y_test, "test")
    flags = list(compiled.flags)
    exit_rates: tuple[float, ...] | None = None
    accuracy, exits, agreement, checked = _accuracy(compiled, val, eval_batch, metric,
                                                    fake_quant_reference(model, bits))
    if exits is not None:
        counts = np.bincount(exits, minlength=compiled.num_exits + 1)
        exit_rates = tuple(float(c) / len(exits) for c in counts)
    test_accuracy = _accuracy(compiled, test, eval_batch, metric)[0] if test is not None else None
    note = agreement_flag(agreement, checked, compiled.int8_format) \
        if agreement is not None else None
    if note:
        flags.append(note)

    for timed in (compiled, reference):
        if timed is not None:
            _runtime_of(timed).pin_threads(threads)
    if compiled.has_exits:
        if batch_size != 1:
            flags.append(f"early-exit model timed one sample at a time (batch_size {batch_size} requested)")
        batch_size = 1
        chosen = val.sample(repeats, seed)  # a seeded random order of real samples
        samples = [chosen[i:i + 1] for i in range(len(chosen))]
    else:
        samples = _batches(val.head(batch_size * MAX_TIMED_INPUTS), batch_size, MAX_TIMED_INPUTS)
    runners = {"candidate": _cycler([compiled.prepare(s) for s in samples], compiled.run_one)}
    if reference is not None:
        runners["reference"] = _cycler([reference.prepare(s) for s in samples], reference.run_one)
    clock = latency_clock(threads, all(_runtime_of(c).calls_on_caller_thread for c in (compiled, reference) if c))
    if compiled.has_exits:  # one real sample per call: the path it takes is known (loops of 1)
        timings = _timing.time_runners(runners, warmup=warmup, repeats=repeats, rounds=min(ROUNDS, repeats), loops=1,
                               clock=clock)
        samples_ms = timings.on(clock)["candidate"]
        # the k-th timed call ran sample (warmup + k) mod n: the cycler steps on through the warmup calls
        taken = compiled.predict_with_exits(chosen)[1]
        paths = [int(taken[(warmup + k) % len(samples)]) for k in range(len(samples_ms))]
        q = LATENCY_PERCENTILE
        latency, kind = mean_of_path_medians(samples_ms, paths, q), f"mean_of_path_p{q}"
        wall_ms = mean_of_path_medians(timings.wall["candidate"], paths, q)
        latencies = {name: percentile(v) for name, v in timings.on(clock).items()}
    else:
        latencies, timings = _timing.static_latencies(runners, warmup=warmup, repeats=repeats, clock=clock)
        samples_ms = timings.on(clock)["candidate"]
        latency, kind, wall_ms = latencies["candidate"], f"p{LATENCY_PERCENTILE}", percentile(timings.wall["candidate"])
    reference_ms = latencies["reference"] if reference is not None else None

    fingerprint, fingerprint_id = machine_fingerprint(compiled.runtime, threads, batch_size)
    example = example_input[:1]
    return Measurement(
        accuracy=accuracy,
        test_accuracy=test_accuracy,
        latency_ms=latency,
        size_bytes=packed_size(compiled.artifact, artifact_format=compiled.artifact_format, bits=bits,
                               encoding=compiled.weight_encoding),
        artifact_bytes=len(compiled.artifact),
        macs=int(count_macs(model, example, exit_rates)),
        latency_p95_ms=_percentile(samples_ms, 95),
        latency_samples_ms=tuple(samples_ms),
        params_count=params_count(model),
        runtime=compiled.runtime,
        batch_size=batch_size,
        threads=threads,
        latency_kind=kind,
        latency_clock=clock,
        latency_wall_ms=wall_ms,
        fingerprint=fingerprint,
        fingerprint_id=fingerprint_id,
        kernel_bits=compiled.kernel_bits,
        int8_format=compiled.int8_format,
        int8_layout=compiled.info.get("int8_layout") if compiled.kernel_bits == 8 else None,
        int8_layout_ms=compiled.info.get("int8_layout_ms") if compiled.kernel_bits == 8 else None,
        precision=compiled.precision,
        runtime_agreement=agreement,
        exit_rates=exit_rates,
        reference_latency_ms=reference_ms,
        flags=tuple(dict.fromkeys(flags)),
    )


def _runtime_of(compiled: "CompiledModel"):
    """The registered runtime that compiled ``compiled``."""
    from slimtune.search._runtimes import get_runtime

    return get_runtime(compiled.engine or compiled.runtime)


def export_artifact(compiled: "CompiledModel", path: str | os.PathLike) -> Path:
    """Write the very artifact that was measured (``.onnx`` or TorchScript bytes), as
    the runtime that compiled it exports it."""
    return _runtime_of(compiled).export(compiled, path)
