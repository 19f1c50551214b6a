"""``slimtune eval``: build, train and measure one candidate beside the baseline, with
nothing stored in a study (the trained baseline is cached).

Example:
    >>> report = evaluate_one("digits", {"quant.bits": 8}, epochs=1)
    >>> report["latency_ms"], report["baseline"]["latency_ms"]
"""

from __future__ import annotations

import time
from typing import Any, Mapping

from slimtune.tasks._registry import get_task
from slimtune.tasks._task import Task


def measurement_row(m) -> dict[str, Any]:
    """A measurement in the JSON row fields (``accuracy`` = ``val_accuracy``)."""
    return {"accuracy": m.accuracy, "val_accuracy": m.accuracy, "test_accuracy": m.test_accuracy,
            "latency_ms": m.latency_ms, "latency_p95_ms": m.latency_p95_ms, "latency_kind": m.latency_kind,
            "latency_clock": m.latency_clock, "latency_wall_ms": m.latency_wall_ms,
            "reference_latency_ms": m.reference_latency_ms, "speedup": m.speedup,
            "size_bytes": m.size_bytes, "artifact_bytes": m.artifact_bytes, "macs": m.macs,
            "exit_rates": list(m.exit_rates) if m.exit_rates else None,
            "kernel_bits": m.kernel_bits, "runtime": m.runtime, "target": m.target(), "flags": list(m.flags)}


def evaluate_one(task_spec: "str | Task", values: Mapping[str, Any], *, epochs: int | None = None,
                 runtime: str = "onnxruntime", threads: int = 1, batch_size: int = 1, seed: int = 0,
                 progress: bool = False, use_cache: bool = True, device: str = "auto",
                 amp: str = "off") -> dict[str, Any]:
    """Build, train and measure one candidate beside the baseline (``slimtune eval``;
    ``use_cache=False`` retrains the baseline instead of reading the cache), trained on
    ``device`` (with mixed precision ``amp``), timed on ``runtime``."""
    from slimtune.search._baseline import get_baseline
    from slimtune.search._device import TrainingDevice
    from slimtune.search._pipeline import EvalSettings, Evaluator
    from slimtune.search._task_space import build_space

    settings = EvalSettings(runtime=runtime, threads=threads, batch_size=batch_size, epochs=epochs, seed=seed,
                            device=device, amp=amp)
    place = TrainingDevice.resolve(device, amp)  # a device this machine lacks fails before any work
    task = get_task(task_spec)
    space = build_space(task, runtime=runtime, batch_size=batch_size)  # the families that run on this target
    checked = space.complete(values)  # bad names/values fail here, before any work
    started = time.perf_counter()
    if progress:
        given = ", ".join(f"{k}={checked[k]}" for k in values) or "none"
        print(f"Evaluating one candidate of task {task.name}: set {given}; every other parameter at its default. "
              f"Runtime {runtime}, {threads} thread(s), batch {batch_size}, "
              f"{task.finetune_epochs if epochs is None else epochs} distillation epoch(s), seed {seed}; "
              f"training on {place.device}" + (f" ({settings.amp} mixed precision)" if place.amp else "") + ".",
              flush=True)
        print("[baseline] loading or training the baseline (the teacher)...", flush=True)
    baseline = get_baseline(task, seed=seed, progress=progress, use_cache=use_cache, place=place)
    evaluator = Evaluator(task, space, settings, baseline, place=place)
    if progress:
        words = {"train": "distilling from the baseline", "compress": "pruning / quantizing",
                 "measure": f"timing on {runtime} beside the baseline"}
        evaluator.on_phase = lambda phase: print(f"[{phase}] {words.get(phase, phase)}... "
                                                 f"({time.perf_counter() - started:.1f} s)", flush=True)
    result = evaluator.evaluate(checked)
    base = evaluator.baseline_measurement()
    m = result.measurement
    return {
        "task": task.name, "task_notes": task.notes, "metric": task.metric.name, "params": result.params, **measurement_row(m),
        "train_seconds": round(result.train_seconds, 3), "total_seconds": round(result.total_seconds, 3),
        "fingerprint": m.fingerprint,
        "trained_on": result.info.get("trained_on"), "timed_on": result.info.get("timed_on"),
        "baseline": measurement_row(base),
    }
