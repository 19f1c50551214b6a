"""Trials per hour with 1 and 2 worker processes, on SQLite and on PostgreSQL.

Target: on a 2-core machine with one thread per worker, 2 workers run >= 1.8x the
trials per hour of one.  Every configuration is a fresh study on the ``digits`` task
run by the real CLI (``slimtune run --workers W``), timed from the start of the
command to its end; the baseline is trained once, before any timing, into a cache
that every run shares (so no run pays for it).  PostgreSQL is a real server started
by this script from Debian's ``postgresql`` package (as the tests do) and stopped
afterwards.  Two rates are printed: over the whole command (process start-up, task
and baseline loading included: what a short run sees) and from the first trial's start
to the last trial's end in the study's own timestamps (the steady state a long search
sees); the target is read on the second.

    PYTHONPATH=. python benchmarks/scale.py [--trials 8] [--epochs 2] [--storages sqlite,postgres]
    PYTHONPATH=. python benchmarks/scale.py --quick          # 12 trials per run, 4 epochs

Early stopping is off and the sampler is random, so every run trains comparable
candidates; every worker runs with one thread (``OMP_NUM_THREADS=1``; without it
``run --workers`` gives each worker ``cpu_count // workers`` threads).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))


def _study_span(storage: str, study: str, env: dict[str, str], cwd: Path) -> float:
    """Seconds from the first trial's start to the last trial's end (the study's own
    timestamps): the steady-state time, without process start-up and task loading."""
    import datetime as dt
    import json

    proc = subprocess.run([sys.executable, "-m", "slimtune.cli", "show", study, "--storage", storage, "--json"],
                          cwd=cwd, env=env, capture_output=True, text=True, check=True)
    rows = json.loads(proc.stdout)["trials"]
    starts = [dt.datetime.fromisoformat(r["datetime_start"]) for r in rows if r.get("datetime_start")]
    ends = [dt.datetime.fromisoformat(r["datetime_complete"]) for r in rows if r.get("datetime_complete")]
    return (max(ends) - min(starts)).total_seconds()


def _run(storage: str, study: str, workers: int, trials: int, epochs: int, env: dict[str, str], cwd: Path) -> tuple[float, int]:
    cmd = [sys.executable, "-m", "slimtune.cli", "run", "--study", study, "--task", "digits", "--trials", str(trials),
           "--workers", str(workers), "--epochs", str(epochs), "--sampler", "random", "--no-early-stopping",
           "--seed", "0", "--storage", storage]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[3:])} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return wall, trials


def _warm_baseline(env: dict[str, str], cwd: Path, epochs: int) -> None:
    """Train and cache the digits baseline once (not timed)."""
    subprocess.run([sys.executable, "-m", "slimtune.cli", "eval", "--task", "digits", "--epochs", str(epochs)],
                   cwd=cwd, env=env, check=True, capture_output=True, text=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=8, help="trials per run (split between the workers)")
    parser.add_argument("--epochs", type=int, default=2, help="distillation epochs per candidate")
    parser.add_argument("--storages", default="sqlite,postgres")
    parser.add_argument("--quick", action="store_true", help="12 trials per run, 4 epochs")
    args = parser.parse_args(argv)
    if args.quick:
        args.trials, args.epochs = 12, 4
    from slimtune._pgserver import PostgresUnavailable, temporary_postgres

    work = Path(tempfile.mkdtemp(prefix="slimtune-scale-"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SLIMTUNE_CACHE_DIR": str(work / "cache"), "OMP_NUM_THREADS": "1"}
    _warm_baseline(env, work, args.epochs)
    print(f"## Scale: digits, {args.trials} trials per run, {args.epochs} epoch(s), random sampler, "
          f"early stopping off, 1 thread per worker, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f} at start\n")
    print("| storage | workers | command wall s | trials/hour (command) | vs 1 worker | trials/hour (first start to last end) "
          "| vs 1 worker | target (>= 1.8x) |")
    print("|---|---|---|---|---|---|---|---|")
    for name in [s.strip() for s in args.storages.split(",") if s.strip()]:
        with contextlib.ExitStack() as stack:
            if name == "sqlite":
                url_of = lambda study: f"sqlite:///{work / (study + '.db')}"  # noqa: E731
            elif name == "postgres":
                try:
                    url = stack.enter_context(temporary_postgres())
                except PostgresUnavailable as exc:
                    print(f"| postgres | - | - | - | - | skipped: {exc} |")
                    continue
                url_of = lambda study, url=url: url  # noqa: E731
            else:
                raise SystemExit(f"--storages: unknown storage {name!r} (sqlite, postgres)")
            one = one_steady = None
            for workers in (1, 2):
                study = f"scale-{name}-{workers}"
                wall, trials = _run(url_of(study), study, workers, args.trials, args.epochs, env, work)
                rate, steady = trials / wall * 3600, trials / _study_span(url_of(study), study, env, work) * 3600
                one, one_steady = one or rate, one_steady or steady
                ratio, ratio_steady = rate / one, steady / one_steady
                target = "" if workers == 1 else ("met" if ratio_steady >= 1.8 else "missed")
                print(f"| {name} | {workers} | {wall:.1f} | {rate:.0f} | {ratio:.2f}x | {steady:.0f} | {ratio_steady:.2f}x "
                      f"| {target} |", flush=True)
    print(f"\nload {os.getloadavg()[0]:.1f} at the end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
