"""Each knob alone vs the baseline, measured in one run.

Prints, per knob setting: MACs ratio, measured latency ratio at batch 1 and batch 64
(ONNX Runtime, 1 thread, interleaved with the baseline), size ratio and accuracy delta
on the test split.  Usage::

    python benchmarks/knobs.py [--tasks digits,fashion-mnist] [--repeats 200]
"""

from __future__ import annotations

import argparse
import statistics

import torch

from slimtune.search._task_space import build_space
from slimtune.search._baseline import get_baseline
from slimtune.search._pipeline import EvalSettings, Evaluator
from slimtune.search._profiling import measure_latency
from slimtune.search._runtimes import compile_model
from slimtune.tasks import TaskError, get_task

SETTINGS = {
    "prune channel 0.5": {"prune.ratio": 0.5, "prune.granularity": "channel"},
    "prune weight 0.7": {"prune.ratio": 0.7, "prune.granularity": "weight"},
    "quant 8-bit ptq": {"quant.bits": 8, "quant.mode": "ptq"},
    "quant 4-bit qat": {"quant.bits": 4, "quant.mode": "qat"},
    "quant 2-bit ptq": {"quant.bits": 2, "quant.mode": "ptq"},
    "quant 2-bit qat": {"quant.bits": 2, "quant.mode": "qat"},
    "distill T=4 a=0.7": {"distill.temperature": 4.0, "distill.alpha": 0.7},
    "dsconv (all eligible)": "dsconv",
    "lowrank 0.25 (every group)": "lowrank",
    "exit after block 1 @0.9": {"exits.1.enabled": True, "exits.1.threshold": 0.9},
}


def batch_latency(evaluator: Evaluator, result, x: torch.Tensor, repeats: int) -> tuple[float, float]:
    """Median latency of candidate and baseline at batch ``len(x)``, interleaved."""
    model = evaluator.rebuild(result.recipe, result.state_dict)
    bits = int(result.params["quant.bits"])
    cand = compile_model(model, runtime="onnxruntime", bits=bits, calibration=evaluator.calibration, threads=1)
    ref = evaluator.reference()
    t = measure_latency({"c": lambda: cand.run_one(x), "b": lambda: ref.run_one(x)}, warmup=5, repeats=repeats, rounds=10)
    return statistics.median(t["c"]), statistics.median(t["b"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", default="digits,fashion-mnist")
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--only", default="", help="comma-separated substrings of knob labels to run")
    args = parser.parse_args()
    torch.set_num_threads(2)
    for name in args.tasks.split(","):
        try:
            task = get_task(name)
        except TaskError as exc:
            print(f"skipping {name}: {exc}")
            continue
        space = build_space(task)
        baseline = get_baseline(task, progress=True)
        evaluator = Evaluator(task, space, EvalSettings(latency_repeats=args.repeats), baseline)
        base = evaluator.baseline_measurement()
        x64 = task.data.x_test[:64]
        print(f"\n## {name}: baseline val accuracy {base.accuracy:.4f}, test {base.test_accuracy:.4f}, "
              f"{base.latency_ms:.4f} ms (bs1, ORT, 1 thread), "
              f"{base.size_bytes:,} B, {base.macs:,} MACs.  {task.notes}")
        print("| knob | MACs ratio | speed-up bs1 (same run) | speed-up bs64 | size ratio | val acc delta | test acc delta "
              "| kernel bits | exit rates | train s |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for label, values in SETTINGS.items():
            if args.only and not any(part in label for part in args.only.split(",")):
                continue
            if values == "dsconv":  # every switch of the family on
                values = {p.name: True for p in space.params if p.family == "dsconv"}
            elif values == "lowrank":
                values = {p.name: 0.25 for p in space.params if p.family == "lowrank"}
            r = evaluator.evaluate(values)
            m = r.measurement
            c64, b64 = batch_latency(evaluator, r, x64, max(20, args.repeats // 5))
            rates = ", ".join(f"{v:.2f}" for v in m.exit_rates) if m.exit_rates else ""
            print(f"| {label} | {m.macs / base.macs:.3f} | {m.speedup:.2f}x | {b64 / c64:.2f}x "
                  f"| {m.size_bytes / base.size_bytes:.3f} | {m.accuracy - base.accuracy:+.4f} "
                  f"| {m.test_accuracy - base.test_accuracy:+.4f} | {m.kernel_bits} | {rates} | {r.train_seconds:.1f} |",
                  flush=True)


if __name__ == "__main__":
    main()
