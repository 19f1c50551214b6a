"""Search benchmark (digits by default, ``--task``): samplers and early stopping at the
same budget and seeds.

Each run is a fresh study (its own SQLite file) on the task (``--task``, default
``digits``) with the same
number of trials, the same sampler seed and the same evaluation settings.  For every
run it reports

- **hv**: hypervolume of the (accuracy, latency) front of its complete trials, with
  latency taken *relative to the baseline timed in the same measurement*
  (``latency_ms / reference_latency_ms``, which cancels most of the machine's load
  noise).  Reference point: accuracy 0.5 and 1.2x the baseline's latency; the
  value is normalised by the box (1.0 - 0.5) x 1.2, so 1.0 would be a perfect,
  instantaneous model;
- **hv_macs**: the same with MACs / baseline MACs instead of relative latency
  (reference 1.2x the baseline's MACs): the found candidates scored without timing
  noise (accuracy and MACs are deterministic for given values and seeds);
- **epochs**: distillation epochs actually run, summed over trials (a stopped
  candidate also skips pruning fine-tuning, QAT, compilation and the measurement);
- **train_s**: seconds spent training candidates (distillation epochs, pruning
  fine-tuning, QAT), summed over trials, and **wall_s**: the whole run (both move
  with the machine's load: compare runs made side by side);
- complete / stopped-early / failed trial counts.

Usage::

    PYTHONPATH=. python benchmarks/search.py                       # default (gp) vs random, ES on/off
    PYTHONPATH=. python benchmarks/search.py --configs gp,tpe,nsga2,random --seeds 0,1,2 --trials 24
    PYTHONPATH=. python benchmarks/search.py --task fashion-mnist --configs random,random-noes --seeds 0 --trials 8

Config names: a sampler (``gp``, ``tpe``, ``nsga2``, ``random``), optionally with
``-noes`` (early stopping off) or ``-prior`` (the rule without the margin learned from
learning curves), e.g. ``gp-noes``.  With ``random`` every config proposes the same
candidates for a seed, so early stopping's cost is measured exactly (``hv_macs``,
and how many stopped candidates were on the frontier of the run without it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # benchmarks/: the shared hypervolume
from _hypervolume import ACCURACY_REF, LATENCY_REF, normalised_hypervolume  # noqa: E402


def relative_hypervolume(rows: list[dict], baseline_macs: int | None = None) -> float:
    """Normalised hypervolume of (accuracy, relative latency) of complete rows; with
    ``baseline_macs``, of (accuracy, MACs / baseline MACs) instead (no timing noise)."""
    points = []
    for r in rows:
        if r.get("state") != "COMPLETE":
            continue
        if baseline_macs:
            cost = float(r["macs"]) / baseline_macs
        elif r.get("reference_latency_ms"):
            cost = float(r["latency_ms"]) / float(r["reference_latency_ms"])
        else:
            continue
        points.append((float(r["accuracy"]), cost))
    return normalised_hypervolume(points)


def run_one(config: str, seed: int, args: argparse.Namespace, workdir: Path) -> dict:
    from slimtune.search._early_stopping import FrontierEarlyStopping
    from slimtune.studies import Study

    sampler, _, flag = config.partition("-")
    if flag not in ("", "noes", "prior"):
        raise SystemExit(f"Unknown config {config!r}: use SAMPLER, SAMPLER-noes or SAMPLER-prior.")
    early = False if flag == "noes" else FrontierEarlyStopping(learn_margin=flag != "prior")
    storage = f"sqlite:///{workdir / f'{config}-seed{seed}.db'}"
    study = Study.create_or_load(
        "bench", storage=storage, task=args.task, seed=seed, sampler=sampler, early_stopping=early,
        settings={"epochs": args.epochs or None, "latency_repeats": args.latency_repeats, "latency_warmup": 5},
    )
    started = time.perf_counter()
    rows = study.optimize(n_trials=args.trials, progress=False)
    wall = time.perf_counter() - started
    baseline_macs = study.baseline.macs
    final = {r["trial"]: r["pareto"] for r in study.trials()}  # the frontier at the end of the run
    study.close()
    states = [r["state"] for r in rows]
    return {
        "config": config, "sampler": sampler, "early_stopping": flag or "learned", "seed": seed,
        "hypervolume": relative_hypervolume(rows),
        "hv_macs": relative_hypervolume(rows, baseline_macs),
        "best_accuracy": max((r["accuracy"] for r in rows if r["state"] == "COMPLETE"), default=float("nan")),
        "complete": states.count("COMPLETE"), "stopped": states.count("PRUNED"), "failed": states.count("FAIL"),
        "epochs": sum(len(r.get("val_accuracy_per_epoch") or ()) for r in rows),
        "train_s": sum(r.get("train_seconds") or 0.0 for r in rows),
        "trial_s": sum(r.get("total_seconds") or 0.0 for r in rows),
        "wall_s": wall,
        "trials": [{"trial": r["trial"], "state": r["state"], "pareto": final[r["trial"]], "params": r["params"]}
                   for r in rows],
    }


def false_stops(on: dict, off: dict) -> tuple[int, int]:
    """(stopped candidates of run ``on`` that, proposed identically in run ``off``
    without early stopping, ended on its frontier; stopped candidates that could be
    matched).  With the random sampler every proposal matches (the same seed proposes
    the same values whatever happened before)."""
    key = lambda params: json.dumps(params, sort_keys=True)  # noqa: E731
    off_by_params = {key(t["params"]): t for t in off["trials"]}
    matched = wrong = 0
    for t in on["trials"]:
        if t["state"] == "PRUNED" and key(t["params"]) in off_by_params:
            matched += 1
            wrong += bool(off_by_params[key(t["params"])]["pareto"])
    return wrong, matched


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="digits", help="built-in task or package.module:callable (default: digits)")
    parser.add_argument("--configs", default="gp,gp-noes,random,random-noes")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=2, help="distillation epochs (0: the task's default)")
    parser.add_argument("--latency-repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for training (1: no spinning on a shared machine)")
    parser.add_argument("--json", type=Path, default=None, help="also write the per-run results here")
    parser.add_argument("--keep", type=Path, default=None, help="keep the study databases in this directory")
    args = parser.parse_args(argv)

    import optuna
    import torch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(args.threads)
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    seeds = [int(s) for s in args.seeds.split(",")]
    results = []
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="slimtune-bench-") as tmp:
        tmp = str(args.keep) if args.keep else tmp
        # seeds outermost: a config's runs are spread over the whole benchmark, so a
        # burst of machine load does not fall on one config only
        for seed in seeds:
            for config in configs:
                result = run_one(config, seed, args, Path(tmp))
                results.append(result)
                print(f"{config:<12} seed {seed}: hv {result['hypervolume']:.4f}  hv_macs {result['hv_macs']:.4f}  best {result['best_accuracy']:.4f}  "
                      f"{result['complete']} complete / {result['stopped']} stopped / {result['failed']} failed  "
                      f"train {result['train_s']:.1f} s  wall {result['wall_s']:.1f} s", flush=True)

    print()
    print(f"{args.task}, {args.trials} trials per run, seeds {seeds}, {args.epochs} distillation epochs, "
          f"latency repeats {args.latency_repeats}; hypervolume reference: accuracy {ACCURACY_REF}, "
          f"{LATENCY_REF}x baseline latency (normalised to [0, 1])")
    header = (f"{'config':<12} {'hv mean':>8} {'hv min':>7} {'hv max':>7} {'hv_macs':>8} {'stopped':>7} {'epochs':>7} "
              f"{'train_s':>8} {'wall_s':>7}")
    print(header)
    print("-" * len(header))
    summary = {}
    for config in configs:
        rs = [r for r in results if r["config"] == config]
        hv = [r["hypervolume"] for r in rs]
        summary[config] = {
            "hv": statistics.mean(hv), "hv_macs": statistics.mean(r["hv_macs"] for r in rs), "train_s": statistics.mean(r["train_s"] for r in rs),
            "wall_s": statistics.mean(r["wall_s"] for r in rs), "stopped": statistics.mean(r["stopped"] for r in rs),
            "epochs": statistics.mean(r["epochs"] for r in rs),
        }
        s = summary[config]
        print(f"{config:<12} {s['hv']:>8.4f} {min(hv):>7.4f} {max(hv):>7.4f} {s['hv_macs']:>8.4f} {s['stopped']:>7.1f} "
              f"{s['epochs']:>7.1f} {s['train_s']:>8.1f} "
              f"{s['wall_s']:>7.1f}")
    for sampler in sorted({c.split("-")[0] for c in configs}):
        for variant in ("", "-prior"):
            on, off = summary.get(sampler + variant), summary.get(f"{sampler}-noes")
            if not (on and off):
                continue
            wrong = matched = 0
            for seed in seeds:
                run_on = next(r for r in results if r["config"] == sampler + variant and r["seed"] == seed)
                run_off = next(r for r in results if r["config"] == f"{sampler}-noes" and r["seed"] == seed)
                w, m = false_stops(run_on, run_off)
                wrong, matched = wrong + w, matched + m
            label = "prior margin" if variant else "learned margin"
            print(f"early stopping ({label}) with {sampler}: distillation epochs x{on['epochs'] / off['epochs']:.2f}, "
                  f"train time x{on['train_s'] / off['train_s']:.2f}, "
                  f"wall time x{on['wall_s'] / off['wall_s']:.2f}, hypervolume {on['hv'] - off['hv']:+.4f} "
                  f"({(on['hv'] / off['hv'] - 1) * 100 if off['hv'] else float('nan'):+.1f}%), "
                  f"hv_macs {on['hv_macs'] - off['hv_macs']:+.4f}; "
                  f"{wrong} of {matched} stopped candidates that the run without early stopping also proposed "
                  "ended on its frontier there")
    with_es = {c: s for c, s in summary.items() if "-" not in c}
    if "random" in with_es:
        for config, s in with_es.items():
            if config != "random":
                base = with_es["random"]["hv"]
                print(f"{config} vs random (both with early stopping): hypervolume {s['hv'] - base:+.4f} "
                      f"({(s['hv'] / base - 1) * 100 if base else float('nan'):+.1f}%), "
                      f"hv_macs {s['hv_macs'] - with_es['random']['hv_macs']:+.4f}")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                                         "runs": results,
                                         "summary": summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    raise SystemExit(main())
