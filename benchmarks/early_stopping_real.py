"""A small REAL paired check of early stopping (digits, or ``--task fashion-mnist``): slimtune's default search
(full space, the task's settings) with and without the shipped rule, same seed, real
training and timing (no replay).  Prints training / CPU / wall time saved and the
hypervolume of (test accuracy, latency ratio) with and without (the benchmarks'
reference: accuracy 0.5, 1.2x the baseline's latency), the loss of the rule's
decisions alone (:func:`decision_loss`: the same models' measurements from the run
without the rule, since two runs time the same model differently), and the fastest
trial within 1 validation point of the baseline in each.  Trials the rule rejects before training do
not use up ``--trials`` (both searches train that many).

Usage::

    PYTHONPATH=. python benchmarks/early_stopping_real.py --trials 20 --seeds 0,1,2   # ~5 min on 2 busy cores
    # Fashion-MNIST, the search with and without the rule side by side (one core each)
    PYTHONPATH=. python benchmarks/early_stopping_real.py --task fashion-mnist --trials 12 --seeds 0 --parallel
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # benchmarks/: the shared hypervolume
from _hypervolume import normalised_hypervolume  # noqa: E402


def run(trials: int, seed: int, early_stopping: bool, task: str = "digits") -> dict[str, Any]:
    """One search in a temporary SQLite study; its times, hypervolume and stops."""
    import optuna
    import torch

    from slimtune import Study

    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tmp = tempfile.mkdtemp(prefix="slimtune-es-real-")
    study = Study.create_or_load("es", storage=f"sqlite:///{tmp}/es.db", task=task, seed=seed,
                                 early_stopping=early_stopping)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    try:
        study.optimize(n_trials=trials, progress=False)
        rows = study.trials()
        base = float(study.baseline.accuracy)
    finally:
        study.close()
    done = [r for r in rows if r["state"] == "COMPLETE"]
    near = [r for r in done if r["val_accuracy"] >= base - 0.01]  # within 1 val point of the baseline
    fastest = min(near, key=lambda r: r["latency_ms"], default=None)
    return {"points": [(json.dumps(r["params"], sort_keys=True, default=str), r["test_accuracy"],
                        r["latency_ms"] / r["reference_latency_ms"]) for r in done],
            "fastest_near": None if fastest is None else (fastest["trial"], fastest["latency_ms"] / fastest["reference_latency_ms"]),
            "train_s": sum(r.get("train_seconds") or 0.0 for r in rows), "cpu_s": time.process_time() - cpu0,
            "wall_s": time.perf_counter() - wall0, "complete": len(done),
            "hv": normalised_hypervolume((r["test_accuracy"], r["latency_ms"] / r["reference_latency_ms"]) for r in done),
            "stopped": [r.get("stopped_reason") or "" for r in rows if r["state"] == "PRUNED"]}


def decision_loss(on: dict[str, Any], off: dict[str, Any]) -> float | None:
    """The hypervolume loss of the rule's decisions alone: the run without the rule's
    own measurements of the configurations the run with it completed, against all of
    its trials (``None`` when the run with the rule completed a configuration the other
    never trained).  Two runs time the same model differently (side by side on 2 cores
    a Fashion-MNIST int8 model read 1.27x in one and 1.72x in the other), so their
    hypervolumes differ by noise the rule did not cause."""
    measured = {key: (acc, ratio) for key, acc, ratio in off["points"]}
    if any(key not in measured for key, _, _ in on["points"]) or not off["points"]:
        return None
    kept = normalised_hypervolume(measured[key] for key, _, _ in on["points"])
    return 1 - kept / normalised_hypervolume(measured.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--task", default="digits", choices=["digits", "fashion-mnist"])
    parser.add_argument("--parallel", action="store_true",
                        help="run the searches with and without the rule at once, one process (and core) each")
    args = parser.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        print(f"--seeds must be comma-separated integers, but got {args.seeds!r}.", file=sys.stderr)
        return 2
    from slimtune.search._early_stopping import BEFORE_TRAINING

    for seed in seeds:
        if args.parallel:
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(2) as pool:
                jobs = [pool.submit(run, args.trials, seed, flag, args.task) for flag in (True, False)]
                on, off = (job.result() for job in jobs)
        else:
            on, off = run(args.trials, seed, True, args.task), run(args.trials, seed, False, args.task)
        before = sum(r.startswith(BEFORE_TRAINING) for r in on["stopped"])
        recovery = sum("recovery epoch" in r for r in on["stopped"])
        print(f"REAL {args.task}, {args.trials} trials{' (side by side)' if args.parallel else ''}, seed {seed}: training time "
              f"{100 * (on['train_s'] / off['train_s'] - 1):+.0f}% ({on['train_s']:.1f} s vs {off['train_s']:.1f} s), "
              f"CPU {100 * (on['cpu_s'] / off['cpu_s'] - 1):+.0f}%, wall {100 * (on['wall_s'] / off['wall_s'] - 1):+.0f}% "
              f"({on['wall_s']:.0f} s vs {off['wall_s']:.0f} s); "
              f"hypervolume loss {100 * (1 - on['hv'] / off['hv']):.1f}% ({on['hv']:.4f} vs {off['hv']:.4f}; "
              f"of the rule's decisions alone, both measured in the run without it: "
              f"{'n/a' if (loss := decision_loss(on, off)) is None else f'{100 * loss:.1f}%'}); "
              f"{len(on['stopped'])} stopped ({before} before training, {recovery} in recovery), "
              f"{on['complete']} complete; fastest within 1 val point of the baseline (trial, latency ratio): "
              f"{on['fastest_near']} with, {off['fastest_near']} without", flush=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    raise SystemExit(main())
