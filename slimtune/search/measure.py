"""Measuring a compiled candidate: accuracy, latency, real file sizes, MACs.

Latency is always measured on the runtime that executes the candidate (the
:class:`~slimtune.search.runtime.CompiledModel`), after warm-up, with timings
interleaved in rounds against a reference so that machine noise does not favour
either, and stored with a fingerprint of the machine and runtime.

Example:
    >>> compiled = compile_model(model, bits=8, calibration=x_train[:256])
    >>> m = measure(model, compiled, x_test, y_test, bits=8, example_input=x_test[:1])
    >>> m.accuracy, m.latency_ms, m.size_bytes, m.artifact_bytes

Sizes are lengths of files, never formulas: ``size_bytes`` is the length of the packed
model file of the timed artifact (:mod:`slimtune.search.packed`, what
``export --format packed`` writes), ``artifact_bytes`` the length of the artifact
itself (the ONNX model or TorchScript archive the runtime loads).
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import os
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
from torch import nn

from slimtune.search.measurement import Measurement
from slimtune.spaces.quantization import QUANTIZABLE

if TYPE_CHECKING:  # pragma: no cover
    from slimtune.search.runtime import CompiledModel

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


def measure(
    model: nn.Module,
    compiled: "CompiledModel",
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    *,
    bits: int,
    example_input: torch.Tensor,
    reference: "CompiledModel | None" = None,
    batch_size: int = 1,
    threads: int = 1,
    warmup: int = 20,
    repeats: int = 200,
    eval_batch: int = 256,
    seed: int = 0,
) -> Measurement:
    """Measure ``compiled`` (built from ``model``) on held-out data.

    Accuracy comes from ``compiled`` itself, i.e. the artifact that is timed and
    exported (early-exit models run sample by sample, giving ``exit_rates``).
    Static models: latency is the median of ``repeats`` timings of
    ``compiled.run_one`` at ``batch_size``, interleaved with ``reference.run_one``
    (median stored in ``reference_latency_ms``).  Early-exit models: the dynamic
    model is timed one sample at a time over ``repeats`` real held-out samples (a
    seeded random order), latency = their mean (``latency_kind="mean_over_samples"``),
    the reference timed interleaved on the same samples.  ``size_bytes`` is the length
    of the packed file of ``compiled.artifact`` (``bits`` recorded in its header),
    ``artifact_bytes`` the length of the artifact; MACs and params come from ``model``.
    """
    from slimtune.search.macs import count_macs
    from slimtune.search.packed import packed_size

    if len(x_test) != len(y_test) or len(x_test) == 0:
        raise ValueError(f"`x_test` and `y_test` must be non-empty and aligned, but got {len(x_test)} and {len(y_test)}.")
    flags = list(compiled.flags)
    labels = np.asarray(torch.as_tensor(y_test))
    exit_rates: tuple[float, ...] | None = None
    if compiled.has_exits:
        logits, exits = compiled.predict_with_exits(x_test)
        counts = np.bincount(exits, minlength=compiled.num_exits + 1)
        exit_rates = tuple(float(c) / len(exits) for c in counts)
    else:
        logits = compiled.predict(x_test, batch_size=eval_batch)
    accuracy = float((logits.argmax(-1) == labels).mean())

    if compiled.runtime == "torch" or (reference is not None and reference.runtime == "torch"):
        torch.set_num_threads(threads)
    if compiled.has_exits:
        if batch_size != 1:
            flags.append(f"early-exit model timed one sample at a time (batch_size {batch_size} requested)")
        batch_size = 1
        order = torch.randperm(len(x_test), generator=torch.Generator().manual_seed(seed))[:repeats]
        samples = [x_test[int(i):int(i) + 1] for i in order]
    else:
        samples = _batches(x_test, batch_size, MAX_TIMED_INPUTS)
    runners = {"candidate": _cycler([compiled.prepare(s) for s in samples], compiled.run_one)}
    if reference is not None:
        runners["reference"] = _cycler([reference.prepare(s) for s in samples], reference.run_one)
    timings = measure_latency(runners, warmup=warmup, repeats=repeats, rounds=min(10, repeats))
    samples_ms = timings["candidate"]
    if compiled.has_exits:
        latency, kind = float(np.mean(samples_ms)), "mean_over_samples"
    else:
        latency, kind = float(np.median(samples_ms)), "median"
    reference_ms = float(np.median(timings["reference"])) if reference is not None else None

    fingerprint, fingerprint_id = machine_fingerprint(compiled.runtime, threads, batch_size)
    example = example_input[:1]
    return Measurement(
        accuracy=accuracy,
        latency_ms=latency,
        size_bytes=packed_size(compiled.artifact, artifact_format=compiled.artifact_format, bits=bits),
        artifact_bytes=len(compiled.artifact),
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
