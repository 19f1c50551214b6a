"""ONNX Runtime against OpenVINO: the baseline and its int8 version on each, at batch 1 and 64.

For each task, the baseline model is compiled four ways at each batch size: fp32 on
ONNX Runtime, slimtune's int8 on ONNX Runtime (QDQ), fp32 on OpenVINO (the precision
OpenVINO chooses: bf16 on a CPU with bf16 kernels) and NNCF int8 on OpenVINO, all
through ``slimtune.search._runtimes.compile_model`` (what a trial times).  The four are
timed interleaved in this one process with slimtune's own procedure
(``slimtune.search._timing.static_latencies``: calibrated samples, rotating rounds,
10th percentile, one thread, on the calling thread's on-CPU clock), on the same
validation batches.  Printed: each one's latency, its speed-up over the fp32 ONNX
Runtime baseline and over the fp32 model on its own runtime (what a study on that
runtime reports), and its top-1 validation accuracy.

Latency does not depend on the weights' values, so ``--untrained`` times the untrained
structure (no baseline training: the Fashion-MNIST ResNet trains for minutes); the
int8 models are calibrated on real training inputs either way.

    PYTHONPATH=. python benchmarks/runtimes.py [--tasks digits,fashion-mnist] [--batches 1,64] [--repeats 200]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: (label, runtime, bits) of the four compiled models, the first being the reference.
VARIANTS = (("ORT fp32", "onnxruntime", 32), ("ORT int8", "onnxruntime", 8),
            ("OpenVINO fp32", "openvino", 32), ("OpenVINO int8", "openvino", 8))


def _model(task_name: str, untrained: bool):
    import torch

    from slimtune.search._baseline import get_baseline
    from slimtune.tasks import get_task

    task = get_task(task_name)
    if untrained:
        torch.manual_seed(0)
        return task, task.build_model().eval(), False
    return task, get_baseline(task, progress=True).model.eval(), True


def run_task(task_name: str, batches: list[int], repeats: int, untrained: bool) -> list[dict]:
    """One row per (batch, variant): latency, both speed-ups, accuracy, precision."""
    import numpy as np

    from slimtune.search._runtimes import compile_model
    from slimtune.search._timing import latency_clock, static_latencies

    task, model, trained = _model(task_name, untrained)
    calibration = task.data.train.head(256)
    x_val = task.data.val.head(512)
    y_val = np.concatenate([np.asarray(y) for _, y in task.data.val.chunks()])[:len(x_val)]
    rows = []
    for batch in batches:
        compiled = {label: compile_model(model, runtime=runtime, bits=bits, calibration=calibration, batch_size=batch)
                    for label, runtime, bits in VARIANTS}
        n = max(1, min(16, len(x_val) // batch))
        inputs = [x_val[i * batch:(i + 1) * batch] for i in range(n)]
        runners = {}
        for label, c in compiled.items():
            prepared = [c.prepare(x) for x in inputs]
            state = {"i": 0}

            def step(c=c, prepared=prepared, state=state):
                i = state["i"]
                state["i"] = (i + 1) % len(prepared)
                return c.run_one(prepared[i])

            runners[label] = step
        clock = latency_clock(1, True)  # both runtimes compute on the calling thread at one thread
        ms, _ = static_latencies(runners, warmup=20, repeats=repeats, clock=clock)
        for label, runtime, bits in VARIANTS:
            own = "ORT fp32" if runtime == "onnxruntime" else "OpenVINO fp32"
            acc = float((compiled[label].predict(x_val).argmax(-1) == y_val).mean()) if trained else None
            rows.append({"task": task_name, "batch": batch, "model": label, "precision": compiled[label].precision,
                         "latency_ms": ms[label], "speedup_vs_ort_fp32": ms["ORT fp32"] / ms[label],
                         "speedup_vs_own_fp32": ms[own] / ms[label], "val_accuracy": acc})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="digits", help="comma-separated built-in tasks")
    parser.add_argument("--batches", default="1,64")
    parser.add_argument("--repeats", type=int, default=200, help="timed samples per model")
    parser.add_argument("--untrained", action="store_true", help="time the untrained structure (no accuracy)")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    batches = [int(b) for b in args.batches.split(",")]
    print("| task | batch | model | precision | latency ms | x vs ORT fp32 | x vs own fp32 | val acc |")
    print("|---|---|---|---|---|---|---|---|")
    for task_name in args.tasks.split(","):
        for r in run_task(task_name, batches, args.repeats, args.untrained):
            acc = "-" if r["val_accuracy"] is None else f"{r['val_accuracy']:.4f}"
            print(f"| {r['task']} | {r['batch']} | {r['model']} | {r['precision']} | {r['latency_ms']:.4f} | "
                  f"{r['speedup_vs_ort_fp32']:.2f} | {r['speedup_vs_own_fp32']:.2f} | {acc} |", flush=True)


if __name__ == "__main__":
    main()
