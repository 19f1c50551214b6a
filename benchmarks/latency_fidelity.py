"""How far a latency can be trusted, and what a MACs reduction buys in time.

1. Repeatability: one candidate (and the baseline) is measured ``--runs`` times in this
   process with the study's own procedure (``slimtune.search._profiling.measure``:
   warm-up, interleaved rounds, median) — the coefficient of variation of those
   medians is the *within-run* fidelity (target <= 3%).  The same is done in
   ``--processes`` fresh processes (each rebuilds the same structure from the same baseline), giving the
   *across-run* figure a user sees between two ``slimtune run`` commands.
2. Speed-up against MACs reduction: for channel pruning, DS-conv, low-rank and int8,
   the same-run speed-up (baseline timed interleaved, on its runtime) next to the MACs
   ratio, at batch 1 and batch 64.  Untrained structures suffice here (latency does not
   depend on the weights' values), so nothing is trained.

    PYTHONPATH=. python benchmarks/latency_fidelity.py [--task digits] [--runs 10] [--processes 3]

3. Under load (``--under-load``): the same artifacts (int8 models of several sizes, each
   against its fp32 baseline: the digits CNN, a ResNet-8 at widths 16 and 32, two
   ``transformers`` ViTs) timed in ``--processes`` fresh processes, one after the other,
   while two busy processes (numpy matrix products, one thread each) compete for the
   cores.  Each process reads every speed-up with slimtune's procedure
   (``slimtune.search._timing.static_latencies`` on the measurement's clock) and with the
   one it replaced (wall clock, median of 100 calls in 10 rounds: ``before``).  The
   disagreement of a model is ``max / min - 1`` of its speed-ups across processes;
   target: <= 10% where the baseline takes >= 0.5 ms, <= 15% below.

    PYTHONPATH=. python benchmarks/latency_fidelity.py --under-load --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

KNOBS = {
    "channel prune 0.5": {"prune.ratio": 0.5, "prune.granularity": "channel"},
    "DS-conv (all)": "dsconv",
    "low-rank 0.25 (all)": "lowrank",
    "int8 (8-bit ptq)": {"quant.bits": 8, "quant.mode": "ptq"},
}


def _evaluator(task_name: str, repeats: int):
    import torch

    from slimtune.search._task_space import build_space
    from slimtune.search._baseline import get_baseline
    from slimtune.search._pipeline import EvalSettings, Evaluator
    from slimtune.tasks import get_task

    torch.set_num_threads(1)
    task = get_task(task_name)
    space = build_space(task)
    evaluator = Evaluator(task, space, EvalSettings(latency_repeats=repeats), get_baseline(task))
    return task, space, evaluator


def _values(space, spec):
    if spec in ("dsconv", "lowrank"):
        return {p.name: (True if spec == "dsconv" else 0.25) for p in space.params if p.family == spec}
    return dict(spec)


def _structure(evaluator, values):
    """The compressed structure of ``values`` without training (as pre-measurement builds it)."""
    import torch

    ctx = evaluator._context(values)  # noqa: SLF001 - benchmark reads the pipeline's stages
    ctx.finetune = lambda *a, **k: None
    with torch.random.fork_rng():
        model = evaluator.build_architecture(values, ctx)
        for stage in ("compression", "quantization"):
            model = evaluator._apply_stage(stage, model, values, ctx)  # noqa: SLF001
    return model.eval()


def _measure_once(evaluator, model, bits: int):
    compiled = evaluator._compile(model, bits)  # noqa: SLF001
    return evaluator._measure(model, compiled, bits)  # noqa: SLF001


def repeatability(task_name: str, runs: int, processes: int, repeats: int) -> None:
    task, space, evaluator = _evaluator(task_name, repeats)
    values = space.complete(_values(space, KNOBS["channel prune 0.5"]))
    model = _structure(evaluator, values)
    medians, refs = [], []
    for _ in range(runs):
        m = _measure_once(evaluator, model, 32)
        medians.append(m.latency_ms)
        refs.append(m.reference_latency_ms)
    cv = statistics.stdev(medians) / statistics.mean(medians)
    cv_ref = statistics.stdev(refs) / statistics.mean(refs)
    speedups = [r / m for r, m in zip(refs, medians)]
    cv_speedup = statistics.stdev(speedups) / statistics.mean(speedups)
    print(f"\n## Repeatability ({task_name}, channel-pruned 50% candidate, ORT, 1 thread, batch 1, "
          f"{repeats} timed repeats per measurement)")
    print(f"within one process, {runs} measurements: candidate CV {cv:.1%}, baseline CV {cv_ref:.1%}, "
          f"same-run speed-up CV {cv_speedup:.1%} (target <= 3%)")
    # fresh processes rebuild the same structure from the same values (same baseline)
    script = (
        "import json, sys\n"
        "sys.path.insert(0, sys.argv[2])\n"
        "from benchmarks.latency_fidelity import KNOBS, _evaluator, _measure_once, _structure, _values\n"
        "task, space, ev = _evaluator(sys.argv[1], int(sys.argv[3]))\n"
        "model = _structure(ev, space.complete(_values(space, KNOBS['channel prune 0.5'])))\n"
        "m = _measure_once(ev, model, 32)\n"
        "print(json.dumps([m.latency_ms, m.reference_latency_ms]))\n"
    )
    across = []
    for _ in range(processes):
        done = subprocess.run([sys.executable, "-c", script, task_name, str(Path(__file__).resolve().parents[1]),
                               str(repeats)], capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            print(f"a fresh process failed: {done.stderr.strip().splitlines()[-1:]}")
            return
        across.append(json.loads(done.stdout.strip().splitlines()[-1]))
    lat = [a for a, _ in across]
    ratio = [b / a for a, b in across]
    print(f"across {processes} fresh processes: candidate {', '.join(f'{v:.4f}' for v in lat)} ms "
          f"(CV {statistics.stdev(lat) / statistics.mean(lat):.1%}); same-run speed-up "
          f"{', '.join(f'{v:.2f}x' for v in ratio)} (CV {statistics.stdev(ratio) / statistics.mean(ratio):.1%})")


def speedup_vs_macs(task_name: str, repeats: int) -> None:
    from slimtune.search._macs import count_macs
    from slimtune.search._profiling import measure_latency

    task, space, evaluator = _evaluator(task_name, repeats)
    base_model = evaluator.baseline.model.eval()
    base_macs = count_macs(base_model, evaluator.example_input)
    reference = evaluator.reference()
    x1, x64 = task.data.x_val[:1], task.data.x_val[:64]
    print(f"\n## Same-run speed-up against MACs reduction ({task_name}, ORT, 1 thread, untrained structures)")
    print("| knob | MACs ratio | speed-up bs1 | speed-up bs64 | kernel bits |")
    print("|---|---|---|---|---|")
    for label, spec in KNOBS.items():
        values = space.complete(_values(space, spec))
        model = _structure(evaluator, values)
        bits = int(values.get("quant.bits", 32))
        compiled = evaluator._compile(model, bits)  # noqa: SLF001
        macs = count_macs(model, evaluator.example_input)
        row = []
        for x in (x1, x64):
            c, r = compiled.prepare(x), reference.prepare(x)
            t = measure_latency({"c": lambda: compiled.run_one(c), "r": lambda: reference.run_one(r)},
                                warmup=10, repeats=repeats, rounds=10)
            row.append(statistics.median(t["r"]) / statistics.median(t["c"]))
        print(f"| {label} | {macs / base_macs:.3f} | {row[0]:.2f}x | {row[1]:.2f}x | {compiled.kernel_bits} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="digits")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--processes", type=int, default=None, help="fresh processes (default 3; 2 under load)")
    parser.add_argument("--repeats", type=int, default=None, help="timed samples (default 100; the study's under load)")
    parser.add_argument("--under-load", action="store_true", help="time under two busy processes (section 3)")
    parser.add_argument("--json", action="store_true", help="with --under-load: print one JSON object")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        from benchmarks._under_load import worker

        worker(args.worker, args.repeats)
        return
    if args.under_load:
        from benchmarks._under_load import under_load

        under_load(processes=args.processes or 2, repeats=args.repeats, as_json=args.json)
        return
    repeatability(args.task, args.runs, args.processes or 3, args.repeats or 100)
    speedup_vs_macs(args.task, args.repeats or 100)


if __name__ == "__main__":
    main()
