"""Measuring a compiled candidate: accuracy, latency, exact size, MACs.

Latency is always measured on the runtime that executes the candidate (the
:class:`~slimtune.search.runtime.CompiledModel`), after warm-up, with timings
interleaved in rounds against a reference so that machine noise does not favour
either, and stored with a fingerprint of the machine and runtime.

Example:
    >>> compiled = compile_model(model, bits=8, calibration=x_train[:256])
    >>> m = measure(model, compiled, x_val, y_val, x_test=x_test, y_test=y_test, bits=8,
    ...             example_input=x_val[:1])
    >>> m.accuracy, m.test_accuracy, m.latency_ms, m.size_bytes
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
from torch import nn

from slimtune.search.measurement import Measurement
from slimtune.spaces.quantization import QUANTIZABLE, conv_bn_pairs

if TYPE_CHECKING:  # pragma: no cover
    from slimtune.search.runtime import CompiledModel

_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
MAX_TIMED_INPUTS = 16  # distinct held-out batches cycled through while timing a static model


# -- latency ----------------------------------------------------------------------
def measure_latency(
    runners: dict[str, Callable[[], object]],
    *,
    warmup: int = 20,
    repeats: int = 200,
    rounds: int = 10,
) -> dict[str, list[float]]:
    """Time each runner ``repeats`` times (ms), interleaved across runners.

    After ``warmup`` untimed calls of each runner, the repeats are split into
    ``rounds`` rounds; in each round every runner runs its share back to back, the
    runner order rotating from round to round, so slow phases of a noisy machine
    hit all runners alike.  Each call is timed alone with ``time.perf_counter_ns``;
    the garbage collector is paused while timing.

    Returns:
        ``{name: [ms, ...]}`` with exactly ``repeats`` timings per runner.
    """
    if repeats < 1 or rounds < 1 or warmup < 0:
        raise ValueError(f"`repeats` and `rounds` must be >= 1 and `warmup` >= 0, but got {repeats}, {rounds}, {warmup}.")
    names = list(runners)
    rounds = min(rounds, repeats)
    shares = [repeats // rounds + (1 if r < repeats % rounds else 0) for r in range(rounds)]
    timings: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(warmup):
        for name in names:
            runners[name]()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        clock = time.perf_counter_ns
        for r, share in enumerate(shares):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                run, out = runners[name], timings[name]
                for _ in range(share):
                    start = clock()
                    run()
                    out.append((clock() - start) / 1e6)
    finally:
        if was_enabled:
            gc.enable()
    return timings


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


# -- fingerprint ------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except ImportError:
        return None


def machine_fingerprint(runtime: str, threads: int, batch_size: int) -> tuple[dict[str, Any], str]:
    """What latencies depend on: CPU model, core count, runtime versions, threads and
    batch size; and a short id (sha256 of the sorted JSON, 12 hex digits)."""
    fingerprint = {
        "cpu": _cpu_model(),
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "runtime": runtime,
        "torch": torch.__version__,
        "onnxruntime": _version("onnxruntime"),
        "threads": int(threads),
        "batch_size": int(batch_size),
    }
    digest = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:12]
    return fingerprint, digest


# -- size -------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerSize:
    """Stored bytes of one layer: ``weight_bytes`` (packed, or bitmask + packed
    non-zeros when that is smaller), ``scale_bytes`` (fp16 per output channel below 16
    bits), ``bias_bytes`` (fp32 per output channel, BatchNorm folded)."""

    name: str
    n_weights: int
    nonzero: int
    weight_bytes: int
    scale_bytes: int
    bias_bytes: int
    sparse: bool

    @property
    def total(self) -> int:
        return self.weight_bytes + self.scale_bytes + self.bias_bytes


def layer_sizes(model: nn.Module, bits: int) -> list[LayerSize]:
    """Per Conv/Linear layer, the bytes of its weights stored at ``bits``.

    Weights: dense ``ceil(n * bits / 8)``; when some are zero (weight pruning) the
    sparse format ``ceil(n / 8)`` (bitmask) ``+ ceil(nnz * bits / 8)`` is used if
    smaller.  Scales: 2 B (fp16) per output channel for integer grids (bits <= 8;
    fp16 and fp32 weights need none).  Bias: 4 B (fp32) per output channel when the
    layer has a bias or is followed by a not yet folded BatchNorm (which folds into
    one).
    """
    if bits not in (32, 16, 8, 6, 4, 2):
        raise ValueError(f"`bits` must be one of 32, 16, 8, 6, 4, 2, but got {bits!r}.")
    with_bn = {conv for conv, _ in conv_bn_pairs(model)}
    sizes = []
    for name, layer in model.named_modules():
        if not isinstance(layer, QUANTIZABLE):
            continue
        weight = layer.weight.detach()
        n, nnz, out = weight.numel(), int(torch.count_nonzero(weight)), weight.shape[0]
        dense = math.ceil(n * bits / 8)
        sparse = math.ceil(n / 8) + math.ceil(nnz * bits / 8)
        has_bias = layer.bias is not None or name in with_bn
        sizes.append(LayerSize(name, n, nnz, min(dense, sparse), 2 * out if bits <= 8 else 0,
                               4 * out if has_bias else 0, sparse < dense))
    return sizes


def model_size_bytes(model: nn.Module, bits: int) -> int:
    """Exact stored size of ``model`` with ``bits``-bit weights (see :func:`layer_sizes`).

    BatchNorms that follow no convolution count 8 B per channel (fp32 scale and
    shift); any other parameter counts 4 B (fp32).
    """
    total = sum(s.total for s in layer_sizes(model, bits))
    folded_bns = {bn for _, bn in conv_bn_pairs(model)}
    counted = {id(p) for m in model.modules() if isinstance(m, QUANTIZABLE) for p in m.parameters(recurse=False)}
    for name, module in model.named_modules():
        if isinstance(module, _BN_TYPES):
            for p in module.parameters(recurse=False):
                counted.add(id(p))
            if name not in folded_bns:
                total += 8 * module.num_features
    for p in model.parameters():
        if id(p) not in counted:
            counted.add(id(p))
            total += 4 * p.numel()
    return total


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


def _accuracy(compiled: "CompiledModel", x: torch.Tensor, y: torch.Tensor, eval_batch: int,
              metric: Callable[[torch.Tensor, torch.Tensor], float] | None = None) -> tuple[float, np.ndarray | None]:
    """The task's metric (top-1 accuracy when ``metric`` is None) of ``compiled``'s
    logits on ``(x, y)`` and, for early-exit models, the exit taken by every sample
    (run one sample at a time, as deployed)."""
    labels = np.asarray(torch.as_tensor(y))
    if compiled.has_exits:
        logits, exits = compiled.predict_with_exits(x)
    else:
        logits, exits = compiled.predict(x, batch_size=eval_batch), None
    if metric is not None:
        return float(metric(torch.from_numpy(np.asarray(logits)), torch.from_numpy(labels))), exits
    return float((logits.argmax(-1) == labels).mean()), exits


def measure(
    model: nn.Module,
    compiled: "CompiledModel",
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    *,
    bits: int,
    example_input: torch.Tensor,
    x_test: torch.Tensor | None = None,
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
    reported, never used to choose anything.

    Latency is timed on validation inputs.  Static models: the median of ``repeats``
    timings of ``compiled.run_one`` at ``batch_size``, interleaved with
    ``reference.run_one`` on the same inputs (its median in
    ``reference_latency_ms``).  Early-exit models: the dynamic model is timed one
    sample at a time over ``repeats`` real validation samples (a seeded random order),
    latency = their mean (``latency_kind="mean_over_samples"``); the reference is
    timed interleaved on the same samples and summarised by its mean as well, so the
    speed-up compares like with like.  Size, MACs and params come from ``model``.
    ``metric`` (``(logits, labels) -> float``, the task's) replaces top-1 accuracy in
    ``accuracy`` and ``test_accuracy``.
    """
    from slimtune.search.macs import count_macs

    if len(x_val) != len(y_val) or len(x_val) == 0:
        raise ValueError(f"`x_val` and `y_val` must be non-empty and aligned, but got {len(x_val)} and {len(y_val)}.")
    if (x_test is None) != (y_test is None) or (x_test is not None and (len(x_test) != len(y_test) or len(x_test) == 0)):
        raise ValueError("`x_test` and `y_test` must be given together, non-empty and aligned.")
    flags = list(compiled.flags)
    exit_rates: tuple[float, ...] | None = None
    accuracy, exits = _accuracy(compiled, x_val, y_val, eval_batch, metric)
    if exits is not None:
        counts = np.bincount(exits, minlength=compiled.num_exits + 1)
        exit_rates = tuple(float(c) / len(exits) for c in counts)
    test_accuracy = _accuracy(compiled, x_test, y_test, eval_batch, metric)[0] if x_test is not None else None

    if compiled.runtime == "torch" or (reference is not None and reference.runtime == "torch"):
        torch.set_num_threads(threads)
    if compiled.has_exits:
        if batch_size != 1:
            flags.append(f"early-exit model timed one sample at a time (batch_size {batch_size} requested)")
        batch_size = 1
        order = torch.randperm(len(x_val), generator=torch.Generator().manual_seed(seed))[:repeats]
        samples = [x_val[int(i):int(i) + 1] for i in order]
    else:
        samples = _batches(x_val, batch_size, MAX_TIMED_INPUTS)
    runners = {"candidate": _cycler([compiled.prepare(s) for s in samples], compiled.run_one)}
    if reference is not None:
        runners["reference"] = _cycler([reference.prepare(s) for s in samples], reference.run_one)
    timings = measure_latency(runners, warmup=warmup, repeats=repeats, rounds=min(10, repeats))
    summary, kind = (np.mean, "mean_over_samples") if compiled.has_exits else (np.median, "median")
    samples_ms = timings["candidate"]
    latency = float(summary(samples_ms))
    reference_ms = float(summary(timings["reference"])) if reference is not None else None

    fingerprint, fingerprint_id = machine_fingerprint(compiled.runtime, threads, batch_size)
    example = example_input[:1]
    return Measurement(
        accuracy=accuracy,
        test_accuracy=test_accuracy,
        latency_ms=latency,
        size_bytes=model_size_bytes(model, bits),
        macs=int(count_macs(model, example, exit_rates)),
        latency_p95_ms=_percentile(samples_ms, 95),
        latency_samples_ms=tuple(samples_ms),
        params_count=params_count(model),
        runtime=compiled.runtime,
        batch_size=batch_size,
        threads=threads,
        latency_kind=kind,
        fingerprint=fingerprint,
        fingerprint_id=fingerprint_id,
        kernel_bits=compiled.kernel_bits,
        exit_rates=exit_rates,
        reference_latency_ms=reference_ms,
        flags=tuple(dict.fromkeys(flags)),
    )


def export_artifact(compiled: "CompiledModel", path: str | os.PathLike) -> Path:
    """Write the very artifact that was measured (``.onnx`` or TorchScript bytes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(compiled.artifact)
    return path
