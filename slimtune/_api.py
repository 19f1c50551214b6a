"""Small public helpers shared by the CLI and the Python API."""

from __future__ import annotations

import time
from typing import Any, Mapping

from slimtune.spaces._registry import get_knob, knob_families
from slimtune.spaces._space import Space
from slimtune.tasks._task import Task, get_task


def build_space(task: Task, *, fixed: Mapping[str, Any] | None = None, families: list[str] | None = None,
                runtime: str = "onnxruntime") -> Space:
    """The joint space of ``task``'s baseline model (checks the model outputs logits),
    without the families that fail when tried on the model (structure only, on a few
    training samples, compiled for ``runtime``: :mod:`slimtune.search._space_trial`),
    each with its one-line reason in ``space.omitted``."""
    from slimtune.search._space_trial import tried_space

    task.check_model()
    names = families if families is not None else knob_families()
    options = {name: opts for name in names if (opts := get_knob(name).task_options(task.extra))}  # e.g. exits_after
    space = Space.for_model(task.build_model(), families=families, fixed=fixed, options=options)
    return tried_space(space, task.build_model, task.example_input(8), num_classes=task.num_classes,
                       key=task.fingerprint(), runtime=runtime)


def measurement_row(m) -> dict[str, Any]:
    """A measurement in the JSON row fields (``accuracy`` = ``val_accuracy``)."""
    return {"accuracy": m.accuracy, "val_accuracy": m.accuracy, "test_accuracy": m.test_accuracy,
            "latency_ms": m.latency_ms, "latency_p95_ms": m.latency_p95_ms, "latency_kind": m.latency_kind,
            "reference_latency_ms": m.reference_latency_ms, "speedup": m.speedup,
            "size_bytes": m.size_bytes, "artifact_bytes": m.artifact_bytes, "macs": m.macs,
            "exit_rates": list(m.exit_rates) if m.exit_rates else None,
            "kernel_bits": m.kernel_bits, "runtime": m.runtime, "flags": list(m.flags)}


def evaluate_one(task_spec: "str | Task", values: Mapping[str, Any], *, epochs: int | None = None,
                 runtime: str = "onnxruntime", threads: int = 1, batch_size: int = 1, seed: int = 0,
                 progress: bool = False, use_cache: bool = True) -> dict[str, Any]:
    """Build, train and measure one candidate beside the baseline (``slimtune eval``;
    ``use_cache=False`` retrains the baseline instead of reading the cache)."""
    from slimtune.search._baseline import get_baseline
    from slimtune.search._pipeline import EvalSettings, Evaluator

    task = get_task(task_spec)
    space = build_space(task)
    checked = space.complete(values)  # bad names/values fail here, before any work
    settings = EvalSettings(runtime=runtime, threads=threads, batch_size=batch_size, epochs=epochs, seed=seed)
    started = time.perf_counter()
    if progress:
        given = ", ".join(f"{k}={checked[k]}" for k in values) or "none"
        print(f"Evaluating one candidate of task {task.name}: set {given}; every other parameter at its default. "
              f"Runtime {runtime}, {threads} thread(s), batch {batch_size}, "
              f"{task.finetune_epochs if epochs is None else epochs} distillation epoch(s), seed {seed}.", flush=True)
        print("[baseline] loading or training the baseline (the teacher)...", flush=True)
    baseline = get_baseline(task, seed=seed, progress=progress, use_cache=use_cache)
    evaluator = Evaluator(task, space, settings, baseline)
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
        "baseline": measurement_row(base),
    }
