"""How long ``slimtune --help``, ``studies`` and ``show`` take to start, per checkout.

Each command runs as a fresh process (``python -m slimtune.cli ...``) against one small
real study (two trials of the tiny test task, made once in a temporary folder unless
``--storage``/``--study`` are given); the median and minimum wall times of ``--repeat``
runs are printed, with the load average, which inflates them on a shared machine, and
the median CPU time (user + system) of the process, which load inflates far less.
Give several ``--checkout`` folders to compare versions (e.g. the main branch before
this change and the working tree after it).

A ``run`` worker's start-up is timed too: a fresh ``slimtune run --trials 1`` joining
an existing ``digits`` study (as each process of ``run --workers`` does), from the
process start to its trial's start in the study's own timestamps (imports, the task
and its data, the study, the baseline from the cache, Optuna's ``ask``).

    PYTHONPATH=. python benchmarks/startup.py [--repeat 5] [--checkout /path/old --checkout .]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make_study(folder: Path) -> tuple[str, str]:
    """A two-trial study of ``tests.user_task:make_task`` (seconds), made with this checkout."""
    storage = f"sqlite:///{folder / 'startup.db'}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SLIMTUNE_CACHE_DIR": str(folder / "cache")}
    subprocess.run([sys.executable, "-m", "slimtune.cli", "run", "--study", "startup", "--task",
                    "tests.user_task:make_task", "--trials", "2", "--epochs", "1", "--latency-repeats", "3",
                    "--no-early-stopping", "--json", "--storage", storage],
                   check=True, cwd=ROOT, env=env, capture_output=True)
    return storage, "startup"


def make_digits_study(folder: Path) -> str:
    """A one-trial ``digits`` study (its baseline trained into ``folder``'s cache), made
    with this checkout; returns its storage URL."""
    storage = f"sqlite:///{folder / 'worker.db'}"
    subprocess.run([sys.executable, "-m", "slimtune.cli", "run", "--study", "worker", "--task", "digits", "--trials",
                    "1", "--epochs", "1", "--latency-repeats", "3", "--no-early-stopping", "--json",
                    "--storage", storage], check=True, cwd=ROOT, env=_env(ROOT, folder), capture_output=True)
    return storage


def _env(checkout: Path, folder: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(checkout), "SLIMTUNE_CACHE_DIR": str(folder / "cache"),
            "OMP_NUM_THREADS": "1"}


def worker_startup(checkout: Path, storage: str, repeat: int, folder: Path) -> list[float]:
    """Seconds from a fresh ``run --trials 1`` process's start to its trial's start."""
    import datetime as dt
    import json

    env = _env(checkout, folder)
    out = []
    for _ in range(repeat):
        launched = dt.datetime.now()  # Optuna stamps datetime_start with the local clock
        subprocess.run([sys.executable, "-m", "slimtune.cli", "run", "--study", "worker", "--trials", "1",
                        "--json", "--storage", storage], check=True, cwd=folder, env=env, capture_output=True)
        rows = json.loads(subprocess.run([sys.executable, "-m", "slimtune.cli", "show", "worker", "--json",
                                          "--storage", storage], check=True, cwd=folder, env=env,
                                         capture_output=True, text=True).stdout)["trials"]
        started = max(dt.datetime.fromisoformat(r["datetime_start"]) for r in rows if r.get("datetime_start"))
        out.append((started - launched).total_seconds())
    return out


def _child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_command(checkout: Path, args: list[str], repeat: int, cwd: Path) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds of ``repeat`` fresh runs of ``python -m slimtune.cli ARGS``."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    wall, cpu = [], []
    for _ in range(repeat):
        started, cpu_before = time.perf_counter(), _child_cpu()
        proc = subprocess.run([sys.executable, "-m", "slimtune.cli", *args], cwd=cwd, env=env, capture_output=True)
        wall.append(time.perf_counter() - started)
        cpu.append(_child_cpu() - cpu_before)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(args)} failed in {checkout}:\n{proc.stderr.decode()[-2000:]}")
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--checkout", action="append", type=Path, help="a slimtune source folder (repeatable)")
    parser.add_argument("--storage", default=None)
    parser.add_argument("--study", default=None)
    args = parser.parse_args()
    checkouts = args.checkout or [ROOT]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        storage, study = (args.storage, args.study) if args.storage and args.study else make_study(folder)
        commands = {"--help": ["--help"], "studies": ["studies", "--storage", storage],
                    "show": ["show", study, "--storage", storage]}
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average before "
              f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}; {args.repeat} runs each, wall seconds")
        print(f"{'checkout':<40} {'command':<9} {'wall median':>11} {'wall min':>8} {'CPU median':>10}")
        for checkout in checkouts:
            for name, argv in commands.items():
                wall, cpu = time_command(checkout.resolve(), argv, args.repeat, folder)
                print(f"{str(checkout):<40} {name:<9} {statistics.median(wall):>11.2f} {min(wall):>8.2f} "
                      f"{statistics.median(cpu):>10.2f}")
        digits = make_digits_study(folder)
        for checkout in checkouts:
            starts = worker_startup(checkout.resolve(), digits, args.repeat, folder)
            print(f"{str(checkout):<40} {'run':<9} {statistics.median(starts):>11.2f} {min(starts):>8.2f} "
                  f"{'-':>10}   (worker start-up: process start to its first trial's start)")
        print(f"load average after {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
