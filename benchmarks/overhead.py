"""What a trial spends outside training, and how fast a big study opens.

1. Overhead per trial (target: at most 5% of a trial's wall time is not training).
   A real study of ``--task`` (``digits`` by default; ``fashion-mnist`` is the README's
   ResNet-8, ~20 s per epoch: run it with ``--trials 2 --epochs 1``) runs ``--trials``
   trials (random sampler, no early stopping, the task's evaluation settings unless
   ``--epochs`` / ``--finetune-epochs`` are given).  For each trial the runner's own
   timing splits its wall time into

   - training: distillation, pruning fine-tuning, QAT, the knobs' transforms
     (``train_seconds``: what the candidate's search costs by design),
   - build + compile + measure: the rest of ``Evaluator.evaluate``,
   - propose + record: the rest of the trial's wall time (Optuna ``ask``/``tell``, the
     study database writes), taken between consecutive trial callbacks;

   and two more tables split the same wall and CPU time by phase, timed by wrapping
   the library's own functions for this run (each second counted once, in the
   innermost phase; pre-measure keeps its own compile): the training loops, the
   knobs' transforms, pre-measure, compiling (ONNX export + quantization), accuracy of
   the artifact on val + test (with the torch agreement check), latency timing,
   packing (size), MACs, the rest of ``evaluate`` (copies, the model rebuilt for the agreement check),
   Optuna's ask, recovering stale trials, slimtune's record (DB write of row + weights
   + artifact, then the study re-read for the row's pareto mark), Optuna's attributes
   and tell, and whatever is left (callbacks; before the first trial, the session's
   baseline load).  ``--profile FILE`` also writes a cProfile of the
   trials (``python -m pstats FILE``).

2. Opening a study of 10,000 trials and computing its frontier (target: at most 1 s).
   The trials are **synthetic** (plausible figures, the space's real parameters, no
   model trained) but complete as a worker writes them: an Optuna trial with its
   parameters, values and user attributes, and slimtune's candidate record, written
   with a few bulk inserts (:func:`bulk_synthetic_study`).  The timed part is what a
   user runs: ``Study.load(name)`` then ``study.frontier()``.  ``--size 0`` skips it.

    PYTHONPATH=. python benchmarks/overhead.py [--task digits] [--trials 8] [--epochs N] [--size 10000] \\
        [--finetune-epochs N] [--early-stopping] [--profile FILE]
    PYTHONPATH=. python benchmarks/overhead.py --task fashion-mnist --trials 2 --epochs 1 --size 0
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.path.insert(0, str(Path(__file__).resolve().parent))

#: (label, module, attribute path) of each wrapped function, in the table's order.
#: Pre-measure keeps its inner calls (its own knob transforms and compile).
PHASES: tuple[tuple[str, str, str], ...] = (
    ("training loops", "slimtune.search._pipeline", "train"),
    ("knob transforms", "slimtune.search._pipeline", "Evaluator._apply_stage"),
    ("pre-measure", "slimtune.search._pipeline", "Evaluator.pre_measure"),
    ("compile (ONNX export, quantize)", "slimtune.search._pipeline", "Evaluator._compile"),
    ("artifact accuracy val+test, torch agreement", "slimtune.search._profiling", "_accuracy"),
    ("latency timing", "slimtune.search._timing", "time_runners"),
    ("packing (size)", "slimtune.search.packed", "packed_size"),
    ("MACs", "slimtune.search._macs", "count_macs"),
    ("rest of evaluate", "slimtune.search._pipeline", "Evaluator.evaluate"),
    ("optuna ask", "slimtune.search._runner", "TrialRunner._propose"),
    ("recover stale trials", "slimtune.search._runner", "TrialRunner._recover"),
    ("record (DB write, pareto re-read)", "slimtune.studies._recording", "Recording.record"),
    ("optuna attrs + tell", "slimtune.search._runner", "TrialRunner._finish"),
    ("rest of the trial", "slimtune.search._runner", "TrialRunner.run_one"),
)


class PhaseClock:
    """Exclusive seconds per phase: each wrapped call's time minus that of the wrapped
    calls inside it (a compile inside ``evaluate`` counts as compiling only); wall
    seconds in :attr:`seconds`, CPU seconds of this process in :attr:`cpu` (which a
    loaded machine inflates far less)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self._stack: list[list[float]] = []  # [wall, cpu] spent in wrapped children, per open call
        self._whole = 0  # open calls of phases that keep their inner calls (``inclusive``)

    def wrap(self, label: str, fn: Callable[..., Any], *, inclusive: bool = False) -> Callable[..., Any]:
        """``fn`` timed as ``label``; ``inclusive``: wrapped calls inside it count as
        ``label`` too (e.g. pre-measure's compile is pre-measure, not compiling)."""

        def timed(*args: Any, **kwargs: Any) -> Any:
            if self._whole:
                return fn(*args, **kwargs)
            self._whole += inclusive
            self._stack.append([0.0, 0.0])
            start, cpu_start = time.perf_counter(), time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
                self._whole -= inclusive
                child_wall, child_cpu = self._stack.pop()
                self.seconds[label] = self.seconds.get(label, 0.0) + elapsed - child_wall
                self.cpu[label] = self.cpu.get(label, 0.0) + cpu - child_cpu
                if self._stack:
                    self._stack[-1][0] += elapsed
                    self._stack[-1][1] += cpu

        return timed

    def take(self) -> dict[str, float]:
        """The wall seconds since the last call, and reset (see :meth:`take_cpu`)."""
        out, self.seconds = self.seconds, {}
        return out

    def take_cpu(self) -> dict[str, float]:
        """The CPU seconds since the last call, and reset."""
        out, self.cpu = self.cpu, {}
        return out


@contextlib.contextmanager
def phase_clock() -> Iterator[PhaseClock]:
    """Wrap every function of :data:`PHASES` while the block runs (restored after)."""
    import importlib

    clock, undo = PhaseClock(), []
    for label, module_name, attr in PHASES:
        owner: Any = importlib.import_module(module_name)
        *outer, name = attr.split(".")
        for part in outer:
            owner = getattr(owner, part)
        original = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
        setattr(owner, name, clock.wrap(label, original, inclusive=label == "pre-measure"))
        undo.append((owner, name, original))
    try:
        yield clock
    finally:
        for owner, name, original in reversed(undo):
            setattr(owner, name, original)


def trial_overhead(directory: Path, trials: int, epochs: int | None, *, task: str = "digits",
                   finetune_epochs: int | None = None, profile: str | None = None,
                   early_stopping: bool = False) -> tuple[list[float], list[dict[str, float]], list[float]]:
    """Run ``trials`` trials of ``task`` and print the shares; returns the per-trial
    share of wall time that is not training, seconds by phase and wall seconds."""
    import optuna
    import torch

    from slimtune import Study

    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    settings = {k: v for k, v in (("epochs", epochs), ("finetune_epochs", finetune_epochs)) if v is not None}
    study = Study.create_or_load("overhead", storage=f"sqlite:///{directory / 'overhead.db'}", task=task,
                                 settings=settings or None, sampler="random", seed=0,
                                 early_stopping=early_stopping)
    stamps: list[float] = []
    cpu_stamps: list[float] = []
    phases: list[dict[str, float]] = []
    cpu_phases: list[dict[str, float]] = []
    profiler = cProfile.Profile() if profile else None
    with phase_clock() as clock:
        def on_trial(row: dict) -> None:
            stamps.append(time.perf_counter())
            cpu_stamps.append(time.process_time())
            phases.append(clock.take())
            cpu_phases.append(clock.take_cpu())

        start = time.perf_counter()
        cpu0 = time.process_time()
        if profiler is not None:
            profiler.enable()
        rows = study.optimize(n_trials=trials, progress=False, callbacks=[on_trial],
                              fidelity="full")  # trained trials only: the overhead of training ones
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(profile)
        cpu = time.process_time() - cpu0
    walls = [b - a for a, b in zip([start, *stamps[:-1]], stamps)]
    print(f"\n## Overhead per trial: {task}, {len(rows)} trials, settings {study.settings.to_dict()}")
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
          f"total {sum(walls):.1f} s wall, {cpu:.1f} s CPU of this process; load {os.getloadavg()[0]:.1f}")
    cpus = [b - a for a, b in zip([cpu0, *cpu_stamps[:-1]], cpu_stamps)]
    training = ("training loops", "knob transforms")
    cpu_shares = [1.0 - sum(p.get(k, 0.0) for k in training) / c for p, c in zip(cpu_phases, cpus) if c > 0]
    if cpu_shares:
        print(f"by CPU time (this process): not training (all but the training loops and knob transforms) "
              f"median {statistics.median(cpu_shares):.1%}")
    print_phases(phases, walls, "Wall time")
    print_phases(cpu_phases, cpus, "CPU time of this process")
    study.close()
    return shares, phases, walls


def print_phases(phases: list[dict[str, float]], walls: list[float], what: str = "Wall time") -> None:
    """Seconds per phase and trial, and each phase's share of all trials' time."""
    labels = [label for label, _, _ in PHASES]
    rows = [{**p, "callbacks, progress": max(0.0, wall - sum(p.values()))} for p, wall in zip(phases, walls)]
    labels.append("callbacks, progress")
    total = sum(walls) or float("nan")
    print(f"\n{what} by phase (seconds per trial; share of all trials' {what.lower()}):\n")
    print("| phase | " + " | ".join(f"trial {i}" for i in range(len(rows))) + " | share |")
    print("|---|" + "---|" * len(rows) + "---|")
    for label in labels:
        seconds = [r.get(label, 0.0) for r in rows]
        print(f"| {label} | " + " | ".join(f"{s:.3f}" for s in seconds) + f" | {sum(seconds) / total:.1%} |")


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
    attributes of ``search._outcome.user_attrs``) and slimtune's candidate record with a
    full measurement (latency samples included).  Trial ``i`` is COMPLETE, PRUNED (~8%)
    or FAIL (~2%).  Optuna's ``add_trials`` writes trials one at a time; here Optuna's
    tables are filled with multi-row INSERTs (their columns read from the database, not
    from Optuna's private models).  Calling it again adds ``n`` more trials.
    """
    import json
    import random
    from datetime import datetime, timedelta

    from optuna.distributions import distribution_to_json
    from _synthetic import draw_params  # benchmarks/_synthetic.py
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
            chosen = draw_params(dict(params_spec), rng)  # the same draws, in the same order
            for pname, dist in params_spec:
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
    parser.add_argument("--task", default="digits", choices=("digits", "fashion-mnist"), help="the task of part 1")
    parser.add_argument("--trials", type=int, default=8, help="real trials of part 1 (0 skips it)")
    parser.add_argument("--epochs", type=int, default=None, help="distillation epochs (default: the task's)")
    parser.add_argument("--finetune-epochs", type=int, default=None,
                        help="recovery epochs after pruning / for QAT (default: the task's)")
    parser.add_argument("--size", type=int, default=10_000, help="synthetic trials in the big study (0 skips it)")
    parser.add_argument("--early-stopping", action="store_true",
                        help="the study's early stopping on (pre-measure then runs once trials are complete)")
    parser.add_argument("--profile", default=None, metavar="FILE", help="write a cProfile of part 1's trials")
    parser.add_argument("--dir", default=None, help="where the study databases go (default: a temp dir)")
    args = parser.parse_args()
    for name in ("trials", "size"):
        if getattr(args, name) < 0:
            parser.error(f"--{name} must be >= 0, but got {getattr(args, name)}")
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(args.dir or tmp)
        directory.mkdir(parents=True, exist_ok=True)
        if args.trials > 0:
            trial_overhead(directory, args.trials, args.epochs, task=args.task, finetune_epochs=args.finetune_epochs,
                           profile=args.profile, early_stopping=args.early_stopping)
        if args.size > 0:
            big_study(directory, args.size)


if __name__ == "__main__":
    main()
