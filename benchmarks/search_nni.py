"""NNI tuners beside Optuna's samplers on digits, at the same budget and seeds.

Each run is a fresh study (its own SQLite file) on the ``digits`` task with the same
number of trials, the same seed and the same evaluation settings as
``benchmarks/search.py``, whose metric it reuses:

- **hypervolume** of the (accuracy, latency relative to the baseline timed in the same
  measurement) front of the complete trials, reference accuracy 0.5 and 1.2x the
  baseline latency, normalised to [0, 1];
- **wall_s**: the whole run; **overhead_s**: wall time not spent inside trials
  (proposing, replaying, the database), i.e. what the backend itself costs;
- complete / stopped-early / failed trial counts.

NNI tuners are single-objective: they maximize the scalarisation given with
``--scalarize`` (default ``accuracy - 0.05*log2(latency_ms)``), while the hypervolume
scores the whole two-objective front.  NNI is imported once before the runs (its import
time is printed, not charged to a run).

Usage::

    PYTHONPATH=. python benchmarks/search_nni.py                     # nni-tpe, optuna-tpe, optuna-random
    PYTHONPATH=. python benchmarks/search_nni.py --configs nni-tpe,nni-evolution,nni-random,optuna-tpe \\
        --seeds 0,1,2 --scalarize "latency_ms<=0.03,penalty=2"

Config names: ``optuna-<sampler>`` (``tpe`` is Optuna's default here, ``nsga2``,
``gp``, ``random``) or ``nni-<tuner>`` (``tpe``, ``random``, ``evolution``,
``gridsearch``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _search_benchmark():
    """benchmarks/search.py (the other search benchmark), for its hypervolume metric."""
    spec = importlib.util.spec_from_file_location("slimtune_benchmark_search", HERE / "search.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def run_one(config: str, seed: int, args: argparse.Namespace, workdir: Path, hv) -> dict:
    from slimtune.studies import Study

    backend, _, method = config.partition("-")
    options = {"tuner": method, "scalarization": args.scalarize} if backend == "nni" else {}
    storage = f"sqlite:///{workdir / f'{config}-seed{seed}.db'}"
    study = Study.create_or_load(
        "bench", storage=storage, task="digits", seed=seed, sampler=method if backend == "optuna" else None,
        settings={"epochs": args.epochs, "latency_repeats": args.latency_repeats, "latency_warmup": 5},
    )
    started = time.perf_counter()
    rows = study.optimize(n_trials=args.trials, backend=backend, progress=False, **options)
    wall = time.perf_counter() - started
    study.close()
    states = [r["state"] for r in rows]
    trial_s = sum(r.get("total_seconds") or 0.0 for r in rows)
    return {
        "config": config, "seed": seed, "hypervolume": hv(rows),
        "best_accuracy": max((r["accuracy"] for r in rows if r["state"] == "COMPLETE"), default=float("nan")),
        "complete": states.count("COMPLETE"), "stopped": states.count("PRUNED"), "failed": states.count("FAIL"),
        "trial_s": trial_s, "overhead_s": wall - trial_s, "wall_s": wall,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="nni-tpe,optuna-tpe,optuna-random")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--latency-repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2, help="torch threads for training")
    parser.add_argument("--scalarize", default=None, help="what NNI maximizes (default: accuracy - 0.05*log2(latency_ms))")
    parser.add_argument("--json", type=Path, default=None, help="also write the per-run results here")
    args = parser.parse_args(argv)

    import optuna
    import torch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(args.threads)
    bench = _search_benchmark()
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    seeds = [int(s) for s in args.seeds.split(",")]
    if any(c.startswith("nni-") for c in configs):
        from slimtune.search._backends.nni_backend import require_nni

        started = time.perf_counter()
        require_nni()
        import nni.algorithms.hpo.tpe_tuner  # noqa: F401
        print(f"import nni: {time.perf_counter() - started:.1f} s (once per process, not charged to a run)")
    results = []
    with tempfile.TemporaryDirectory(prefix="slimtune-bench-nni-") as tmp:
        for seed in seeds:  # seeds outermost: load bursts spread over every config
            for config in configs:
                result = run_one(config, seed, args, Path(tmp), bench.relative_hypervolume)
                results.append(result)
                print(f"{config:<15} seed {seed}: hv {result['hypervolume']:.4f}  best {result['best_accuracy']:.4f}  "
                      f"{result['complete']} complete / {result['stopped']} stopped / {result['failed']} failed  "
                      f"wall {result['wall_s']:.1f} s (overhead {result['overhead_s']:.2f} s)", flush=True)

    print()
    print(f"digits, {args.trials} trials per run, seeds {seeds}, {args.epochs} distillation epochs, latency repeats "
          f"{args.latency_repeats}, early stopping on; hypervolume reference: accuracy {bench.ACCURACY_REF}, "
          f"{bench.LATENCY_REF}x baseline latency (normalised to [0, 1])")
    header = f"{'config':<15} {'hv mean':>8} {'hv min':>7} {'hv max':>7} {'best acc':>8} {'stopped':>7} {'wall_s':>7} {'overhead_s':>10}"
    print(header)
    print("-" * len(header))
    summary = {}
    for config in configs:
        rs = [r for r in results if r["config"] == config]
        hv = [r["hypervolume"] for r in rs]
        summary[config] = s = {
            "hv": statistics.mean(hv), "best_accuracy": statistics.mean(r["best_accuracy"] for r in rs),
            "stopped": statistics.mean(r["stopped"] for r in rs), "wall_s": statistics.mean(r["wall_s"] for r in rs),
            "overhead_s": statistics.mean(r["overhead_s"] for r in rs),
        }
        print(f"{config:<15} {s['hv']:>8.4f} {min(hv):>7.4f} {max(hv):>7.4f} {s['best_accuracy']:>8.4f} "
              f"{s['stopped']:>7.1f} {s['wall_s']:>7.1f} {s['overhead_s']:>10.2f}")
    for reference in ("optuna-random", "optuna-tpe"):
        if reference not in summary:
            continue
        base = summary[reference]
        for config, s in summary.items():
            if config != reference and config.startswith("nni-"):
                print(f"{config} vs {reference}: hypervolume {s['hv'] - base['hv']:+.4f} "
                      f"({(s['hv'] / base['hv'] - 1) * 100 if base['hv'] else float('nan'):+.1f}%), "
                      f"wall time x{s['wall_s'] / base['wall_s']:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "runs": results,
                                         "summary": summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    raise SystemExit(main())
