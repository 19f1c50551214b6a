"""Trials per hour with 1 and 2 workers, on SQLite and on PostgreSQL, as local worker
processes (``--workers W``) and as Ray tasks (``--executor ray --workers W``).

Target: on a 2-core machine with one thread per worker, 2 workers run >= 1.8x the
trials per hour of one.  Every configuration is a fresh study on the ``digits`` task
run by the real CLI (``slimtune run [--executor ray] --workers W``), timed from the
start of the command to its end (with Ray, the Ray instance the command starts on this
machine, one CPU per trial, is inside that time); the baseline is trained once, before any timing, into a cache
that every run shares (so no run pays for it).  PostgreSQL is a real server started
by this script from Debian's ``postgresql`` package (as the tests do) and stopped
afterwards.

Two rates are printed:

- **command**: trials over the whole command's wall time (process start-up, task and
  baseline loading, the parent creating the study: what a short run sees);
- **steady**: trials per hour while *all* W workers run trials, from the study's own
  timestamps: the window from the W-th trial start (every worker has begun) to the
  W-th last trial end (the first worker ran out of trials), counting each trial by
  the fraction of it inside the window.  Start-up and the tail (one worker idle while
  the other finishes) are outside it.  With one worker it is first start to last end.
  The target is read on this rate.

So that 1 and 2 workers run comparable work, every trial trains the same number of
epochs: by default pruning is off and quantization is post-training
(``--fix prune.ratio=0.0 --fix quant.mode=ptq``; the other 16 parameters, including
int8 and DS-conv, are drawn); ``--mixed`` searches everything (pruning fine-tuning and
QAT then add epochs to some trials, and the two runs draw different mixes).

    PYTHONPATH=. python benchmarks/scale.py --quick          # 24 trials per run, 3 epochs (~2 min on a quiet machine)
    PYTHONPATH=. python benchmarks/scale.py [--trials 40] [--epochs 4] [--storages sqlite,postgres] [--mixed]
        [--executors local,ray]    # Ray rows are skipped when Ray is not installed

Early stopping is off and the sampler is random (warm starts off); every worker runs
with one thread (``OMP_NUM_THREADS=1``; without it ``run --workers`` gives each worker
``cpu_count // workers`` threads).  Ratios are only meaningful on a quiet machine: the
load average is printed before and after each run, and a ratio measured above load
1.5 before the run (or above 1.5 + W - 1 after it: the W workers add W) is marked as
not trusted: other processes then share the cores.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))

#: Parameters held fixed unless ``--mixed``: no pruning fine-tune, no QAT epochs.
UNIFORM_FIX = ("prune.ratio=0.0", "quant.mode=ptq")
#: Above this 1-minute load average (on 2 cores) a 2-worker ratio is not trusted.
QUIET_LOAD = 1.5


def steady_rate(intervals: list[tuple[float, float]], workers: int) -> tuple[float, float]:
    """Trials per hour while all ``workers`` run trials, and that window's seconds.

    ``intervals`` are the trials' (start, end) in seconds.  The window runs from the
    ``workers``-th earliest start to the ``workers``-th latest end; each trial counts
    by the share of its duration inside the window.  Example: two workers each running
    trials of 10 s back to back from t=0 and t=1 to t=30 and t=31: window [1, 30],
    (29 s of trials) / 10 s per trial = 2.9 trials in 29 s.
    """
    if len(intervals) < workers or workers < 1:
        raise ValueError(f"`intervals` must hold at least {workers} trials, but got {len(intervals)}.")
    starts = sorted(a for a, _ in intervals)
    ends = sorted((b for _, b in intervals), reverse=True)
    lo, hi = starts[workers - 1], ends[workers - 1]
    if hi <= lo:
        raise ValueError(f"the workers never ran trials at the same time (window {lo:.1f} .. {hi:.1f} s).")
    done = sum(max(0.0, min(b, hi) - max(a, lo)) / (b - a) for a, b in intervals if b > a)
    return done / (hi - lo) * 3600, hi - lo


def _trial_intervals(storage: str, study: str) -> list[tuple[float, float]]:
    """(start, end) seconds of every finished trial, from Optuna's own timestamps (to the
    microsecond: ``show --json`` rounds them to the second, too coarse for 1-s trials)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trials = optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)
    spans = [(t.datetime_start, t.datetime_complete) for t in trials if t.datetime_start and t.datetime_complete]
    origin = min(a for a, _ in spans)
    return [((a - origin).total_seconds(), (b - origin).total_seconds()) for a, b in spans]


def _run(storage: str, study: str, workers: int, trials: int, epochs: int, fixes: tuple[str, ...],
         env: dict[str, str], cwd: Path, executor: str = "local") -> float:
    """The wall seconds of one ``slimtune run --executor E --workers W`` command."""
    cmd = [sys.executable, "-m", "slimtune.cli", "run", "--study", study, "--task", "digits", "--trials", str(trials),
           "--executor", executor, "--workers", str(workers), "--epochs", str(epochs), "--sampler", "random", "--no-early-stopping",
           "--no-warm-start", "--fidelity", "full", "--seed", "0", "--json", "--storage", storage]
    for fix in fixes:
        cmd += ["--fix", fix]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[3:])} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return wall


def _warm_baseline(env: dict[str, str], cwd: Path, epochs: int) -> None:
    """Train and cache the digits baseline once (not timed)."""
    subprocess.run([sys.executable, "-m", "slimtune.cli", "eval", "--task", "digits", "--epochs", str(epochs)],
                   cwd=cwd, env=env, check=True, capture_output=True, text=True)


def _storage_url(name: str, work: Path, stack: contextlib.ExitStack):
    """``study -> URL`` for storage ``name`` (a PostgreSQL server is started in ``stack``)."""
    if name == "sqlite":
        return lambda study: f"sqlite:///{work / (study + '.db')}"
    if name == "postgres":
        from slimtune._pgserver import temporary_postgres

        url = stack.enter_context(temporary_postgres())
        return lambda study: url
    raise SystemExit(f"--storages: unknown storage {name!r} (sqlite, postgres)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=40, help="trials per run (split between the workers)")
    parser.add_argument("--epochs", type=int, default=4, help="distillation epochs per candidate")
    parser.add_argument("--storages", default="sqlite,postgres")
    parser.add_argument("--executors", default="local,ray", help="local (worker processes) and/or ray (Ray tasks)")
    parser.add_argument("--mixed", action="store_true", help="search every parameter (trials of unequal length)")
    parser.add_argument("--quick", action="store_true", help="24 trials per run, 3 epochs")
    args = parser.parse_args(argv)
    if args.quick:
        args.trials, args.epochs = 24, 3
    if args.trials < 4:
        parser.error(f"--trials must be at least 4 (2 per worker), but got {args.trials}")
    with tempfile.TemporaryDirectory(prefix="slimtune-scale-") as tmp:
        _measure(Path(tmp), args.trials, args.epochs, args.storages, args.mixed, args.executors)
    return 0


def _measure(work: Path, trials: int, epochs: int, storages: str, mixed: bool, executors: str = "local") -> None:
    """Run and print every configuration, with its databases and cache in ``work``."""
    from slimtune._pgserver import PostgresUnavailable

    fixes = () if mixed else UNIFORM_FIX
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SLIMTUNE_CACHE_DIR": str(work / "cache"), "OMP_NUM_THREADS": "1"}
    _warm_baseline(env, work, epochs)
    what = "every parameter searched" if mixed else "fixed " + ", ".join(fixes)
    print(f"## Scale: digits, {trials} trials per run, {epochs} epoch(s), {what}, random sampler, "
          f"early stopping off, 1 thread per worker, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f} at start\n")
    print("| executor | storage | workers | command wall s | trials/hour (command) | vs 1 worker | steady window s "
          "| trials/hour (steady) | vs 1 worker | load before/after | target (>= 1.8x, steady) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    names = [s.strip() for s in storages.split(",") if s.strip()]
    for executor, name in [(e.strip(), n) for e in executors.split(",") if e.strip() for n in names]:
        if executor not in ("local", "ray"):
            raise SystemExit(f"--executors: unknown executor {executor!r} (local, ray)")
        if executor == "ray" and importlib.util.find_spec("ray") is None:
            print(f"| ray | {name} | - | - | - | - | - | - | - | - | skipped: Ray is not installed |")
            continue
        with contextlib.ExitStack() as stack:
            try:
                url_of = _storage_url(name, work, stack)
            except PostgresUnavailable as exc:
                print(f"| {executor} | {name} | - | - | - | - | - | - | - | - | skipped: {exc} |")
                continue
            one = one_steady = None
            for workers in (1, 2):
                study = f"scale-{executor}-{name}-{workers}"
                load_before = os.getloadavg()[0]
                wall = _run(url_of(study), study, workers, trials, epochs, fixes, env, work, executor)
                load_after = os.getloadavg()[0]
                steady, window = steady_rate(_trial_intervals(url_of(study), study), workers)
                rate = trials / wall * 3600
                one, one_steady = one or rate, one_steady or steady
                ratio, ratio_steady = rate / one, steady / one_steady
                if workers == 1:
                    target = ""
                else:
                    target = "met" if ratio_steady >= 1.8 else "missed"
                    if load_before > QUIET_LOAD or load_after > QUIET_LOAD + (workers - 1):
                        target += f" (other load above {QUIET_LOAD:g}: not trusted)"
                print(f"| {executor} | {name} | {workers} | {wall:.1f} | {rate:.0f} | {ratio:.2f}x | {window:.1f} | {steady:.0f} "
                      f"| {ratio_steady:.2f}x | {load_before:.1f}/{load_after:.1f} | {target} |", flush=True)
    print(f"\nload {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    raise SystemExit(main())
