"""What a trial spends outside training, and how fast a big study opens.

1. Overhead per trial (target: at most 5% of a trial's wall time is not training).
   A real digits study runs ``--trials`` trials (random sampler, no early stopping,
   the study's default evaluation settings unless ``--epochs`` is given).  For each
   trial the runner's own timings split its wall time into

   - training: distillation, pruning fine-tuning, QAT (``train_seconds``),
   - build + compile + measure: the rest of ``Evaluator.evaluate`` (architecture,
     ONNX export and quantization, accuracy on validation and test, latency timing
     interleaved with the baseline),
   - propose + record: the rest of the trial's wall time (Optuna ``ask``/``tell``, the
     study database writes), taken between consecutive trial callbacks.

2. Opening a study of 10,000 trials and computing its frontier (target: at most 1 s).
   The trials are **synthetic** (plausible figures, the space's real parameters, no
   model trained) but complete as a worker writes them: an Optuna trial with its
   parameters, values and user attributes, and slimtune's candidate record, written
   with a few bulk inserts (:func:`bulk_synthetic_study`).  The timed part is what a
   user runs: ``Study.load(name)`` then ``study.frontier()``.

    PYTHONPATH=. python benchmarks/overhead.py [--trials 8] [--epochs N] [--size 10000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def trial_overhead(directory: Path, trials: int, epochs: int | None) -> None:
    import optuna
    import torch

    from slimtune import Study

    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    settings = {"epochs": epochs} if epochs is not None else None
    study = Study.create_or_load("overhead", storage=f"sqlite:///{directory / 'overhead.db'}", task="digits",
                                 settings=settings, sampler="random", seed=0, early_stopping=False)
    stamps: list[float] = []
    start = time.perf_counter()
    cpu0 = time.process_time()
    rows = study.optimize(n_trials=trials, progress=False, callbacks=[lambda row: stamps.append(time.perf_counter())])
    cpu = time.process_time() - cpu0
    walls = [b - a for a, b in zip([start, *stamps[:-1]], stamps)]
    print(f"\n## Overhead per trial: digits, {len(rows)} trials, settings {study.settings.to_dict()}")
    print("| trial | state | wall s | training | build+compile+measure | propose+record | not training |")
    print("|---|---|---|---|---|---|---|")
    shares = []
    for row, wall in zip(rows, walls):
        train = row.get("train_seconds") or 0.0
        evaluate = row.get("total_seconds") or 0.0
        rest = max(0.0, wall - evaluate)
        share = 1.0 - train / wall if wall > 0 else float("nan")
        shares.append(share)
        print(f"| {row['trial']} | {row['state']} | {wall:.2f} | {train / wall:.1%} | {(evaluate - train) / wall:.1%} "
              f"| {rest / wall:.1%} | {share:.1%} |")
    print(f"\nnot training: median {statistics.median(shares):.1%} of a trial's wall time (target <= 5%); "
          f"total {sum(walls):.1f} s wall, {cpu:.1f} s CPU of this process")
    study.close()


def _trial_figures(rng: Any, base: Any) -> dict[str, Any]:
    """Plausible figures of one candidate: accuracy falls as latency falls."""
    squeeze = rng.betavariate(2, 2)  # 0 = like the baseline, 1 = heavily compressed
    reference = base["latency_ms"] * rng.uniform(0.9, 1.1)  # the baseline timed in the trial's run
    latency = reference * (1.15 - 0.8 * squeeze) * rng.uniform(0.9, 1.1)
    accuracy = max(0.1, base["accuracy"] - 0.25 * squeeze ** 3 - abs(rng.gauss(0, 0.01)))
    return {"accuracy": accuracy, "val_accuracy": accuracy, "test_accuracy": accuracy - abs(rng.gauss(0, 0.01)),
            "latency_ms": latency, "reference_latency_ms": reference, "latency_p95_ms": latency * 1.2,
            "size_bytes": int(base["size_bytes"] * (1.05 - 0.9 * squeeze)),
            "artifact_bytes": int(base["artifact_bytes"] * (1.05 - 0.9 * squeeze)),
            "macs": int(base["macs"] * (1.1 - 0.8 * squeeze))}


def bulk_synthetic_study(storage: str, name: str, n: int, *, seed: int = 0) -> None:
    """A slimtune study of ``n`` **synthetic** trials, written with a few bulk inserts.

    The study itself is created through ``Study.create_or_load`` (its baseline measured
    once, then cached); each trial then gets what a real worker writes: an Optuna trial
    (state, times, parameters with their distributions, objective values, the user
    attributes of ``search._runner.user_attrs``) and slimtune's candidate record with a
    full measurement (latency samples included).  Trial ``i`` is COMPLETE, PRUNED (~8%)
    or FAIL (~2%).  Optuna's ``add_trials`` writes trials one at a time; here Optuna's
    tables are filled with multi-row INSERTs (their columns read from the database, not
    from Optuna's private models).  Calling it again adds ``n`` more trials.
    """
    import json
    import random
    from datetime import datetime, timedelta

    import optuna
    from optuna.distributions import distribution_to_json
    from sqlalchemy import MetaData, create_engine, func, insert, select

    from slimtune import Study
    from slimtune.search._backends._interface import distribution_of
    from slimtune.studies._schema import CandidateRecord

    study = Study.create_or_load(name, storage=storage, task="digits", settings={"epochs": 1, "latency_repeats": 20},
                                 seed=seed)
    objectives, study_id, fixed = study.objectives, study._record.id, study.fixed  # noqa: SLF001
    params_spec = [(p.name, distribution_of(p)) for p in study.space.searched]
    base = study.baseline.to_dict()
    optuna_id = study.optuna_study._study_id  # noqa: SLF001
    study.close()
    rng = random.Random(seed)
    engine = create_engine(storage)
    meta = MetaData()
    meta.reflect(engine, only=["trials", "trial_values", "trial_params", "trial_user_attributes"])
    trials, values, params = meta.tables["trials"], meta.tables["trial_values"], meta.tables["trial_params"]
    attrs_table = meta.tables["trial_user_attributes"]
    rows: dict[str, list[dict[str, Any]]] = {"trials": [], "values": [], "params": [], "attrs": [], "records": []}
    started = datetime.now() - timedelta(days=1)
    dist_json = {name_: distribution_to_json(dist) for name_, dist in params_spec}
    with engine.begin() as conn:
        first_id = int(conn.execute(select(func.coalesce(func.max(trials.c.trial_id), 0))).scalar()) + 1
        first_number = int(conn.execute(select(func.count()).where(trials.c.study_id == optuna_id)).scalar())
        for i in range(n):
            trial_id, number = first_id + i, first_number + i
            chosen = {}
            for pname, dist in params_spec:
                if isinstance(dist, optuna.distributions.CategoricalDistribution):
                    chosen[pname] = rng.choice(list(dist.choices))
                elif isinstance(dist, optuna.distributions.IntDistribution):
                    chosen[pname] = rng.randint(dist.low, dist.high)
                else:
                    chosen[pname] = rng.uniform(dist.low, dist.high)
                rows["params"].append({"trial_id": trial_id, "param_name": pname,
                                       "param_value": dist.to_internal_repr(chosen[pname]),
                                       "distribution_json": dist_json[pname]})
            figures = _trial_figures(rng, base)
            roll = rng.random()
            state = "PRUNED" if roll < 0.08 else "FAIL" if roll < 0.10 else "COMPLETE"
            start = started + timedelta(seconds=3 * i)
            rows["trials"].append({"trial_id": trial_id, "number": number, "study_id": optuna_id, "state": state,
                                   "datetime_start": start, "datetime_complete": start + timedelta(seconds=2)})
            attrs: dict[str, Any] = {"backend": "optuna", "tuner": "RandomSampler", "fixed_params": fixed,
                                     "early_stopping": True, "train_seconds": 1.5}
            m = None
            if state == "COMPLETE":
                m = {**base, **figures, "latency_samples_ms": [figures["latency_ms"]] * 20,
                     "fingerprint_id": base["fingerprint_id"]}
                attrs.update(val_accuracy=figures["val_accuracy"], pre_latency_ms=figures["latency_ms"] * 0.9,
                             **{k: m[k] for k in ("accuracy", "test_accuracy", "latency_ms", "reference_latency_ms",
                                                  "latency_p95_ms", "size_bytes", "macs", "kernel_bits", "runtime",
                                                  "fingerprint_id", "flags", "exit_rates")})
                for k, objective in enumerate(objectives):
                    rows["values"].append({"trial_id": trial_id, "objective": k, "value": float(figures[objective]),
                                           "value_type": "FINITE"})
            elif state == "PRUNED":
                attrs.update(val_accuracy=figures["val_accuracy"] - 0.05, stopped_reason="cannot reach the frontier")
            else:
                attrs["error"] = "RuntimeError: synthetic failure"
            rows["attrs"].extend({"trial_id": trial_id, "key": key, "value_json": json.dumps(value)}
                                 for key, value in attrs.items())
            rows["records"].append(dict(
                study_id=study_id, study_name=name, trial_number=number, state=state, params={**fixed, **chosen},
                accuracy=m["accuracy"] if m else None, val_accuracy=attrs.get("val_accuracy"),
                test_accuracy=m["test_accuracy"] if m else None, latency_ms=m["latency_ms"] if m else None,
                size_bytes=m["size_bytes"] if m else None, artifact_bytes=m["artifact_bytes"] if m else None,
                macs=m["macs"] if m else None, measurement=m, fingerprint_id=m["fingerprint_id"] if m else None,
                pre={"latency_ms": figures["latency_ms"] * 0.9, "size_bytes": figures["size_bytes"],
                     "macs": figures["macs"]},
                exit_rates=None, flags=[], recipe=None,
                info={"val_accuracy_per_epoch": [figures["val_accuracy"]], "constraints": {}, "early_stopping": True},
                backend="optuna", tuner="RandomSampler", stopped_reason=attrs.get("stopped_reason"),
                error=attrs.get("error"), train_seconds=1.5, total_seconds=2.0, worker="synthetic",
                created_at=start + timedelta(seconds=2)))
        for table, key in ((trials, "trials"), (values, "values"), (params, "params"), (attrs_table, "attrs")):
            if rows[key]:
                conn.execute(insert(table), rows[key])
        conn.execute(insert(CandidateRecord), rows["records"])
    engine.dispose()


def big_study(directory: Path, size: int) -> None:
    from slimtune import Study

    storage = f"sqlite:///{directory / 'big.db'}"
    t0 = time.perf_counter()
    bulk_synthetic_study(storage, "big", size)
    made = time.perf_counter() - t0
    walls, cpus = [], []
    for _ in range(3):
        t0, c0 = time.perf_counter(), time.process_time()
        study = Study.load("big", storage=storage)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            front = study.frontier()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
        study.close()
    wall, cpu = statistics.median(walls), statistics.median(cpus)
    print(f"\n## A study of {size:,} synthetic trials (written in {made:.1f} s with bulk inserts, not timed)")
    print(f"open + frontier (Study.load + frontier()), median of 3: {wall:.3f} s wall ({wall / 1.0:.2f}x the 1 s "
          f"target), {cpu:.3f} s CPU ({cpu / 1.0:.2f}x); {len(front)} trials on the front "
          f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=8, help="real trials of part 1 (0 skips it)")
    parser.add_argument("--epochs", type=int, default=None, help="distillation epochs (default: the task's)")
    parser.add_argument("--size", type=int, default=10_000, help="synthetic trials in the big study")
    parser.add_argument("--dir", default=None, help="where the study databases go (default: a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(args.dir or tmp)
        directory.mkdir(parents=True, exist_ok=True)
        if args.trials > 0:
            trial_overhead(directory, args.trials, args.epochs)
        big_study(directory, args.size)


if __name__ == "__main__":
    main()
