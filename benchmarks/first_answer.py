"""How soon a new study shows its first front point: rung 0 (training-free) against
today's first trained trial.

Two fresh studies of the same task, seed and settings (each its own SQLite file), one
session each, stopped after their first complete trial:

- ``multi`` (the default): the first trial is the training-free int8 candidate (rung 0);
- ``full`` (``fidelity="full"``): the first trial is the first trained warm start.

For each it prints the wall and process CPU seconds from the session's start (the
baseline read from its cache, the evaluator and the reference compiled) to the first
complete trial, the trial's own ``total_seconds`` and ``train_seconds``, its validation
accuracy and its same-run speed-up.  Wall times move with the machine's load: compare
the two lines of one run.

Usage::

    PYTHONPATH=. python benchmarks/first_answer.py --task fashion-mnist
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path


def first_answer(task: str, fidelity: str, seed: int, directory: Path) -> dict:
    import optuna

    from slimtune import Study

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = Study.create_or_load(f"first-{fidelity}", storage=f"sqlite:///{directory / (fidelity + '.db')}",
                                 task=task, seed=seed, progress=False)
    stop, seen = threading.Event(), {}

    def on_row(row: dict) -> None:
        if row["state"] == "COMPLETE" and "wall_s" not in seen:
            seen.update(wall_s=time.perf_counter() - wall0, cpu_s=time.process_time() - cpu0, row=row)
            stop.set()

    wall0, cpu0 = time.perf_counter(), time.process_time()
    try:
        study.optimize(n_trials=1, progress=False, fidelity=fidelity, stop_event=stop, callbacks=[on_row])
    finally:
        study.close()
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="fashion-mnist")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"task {args.task}, seed {args.seed}: session start -> first complete trial")
    print(f"{'fidelity':<8} {'wall_s':>7} {'cpu_s':>7} {'trial_s':>7} {'train_s':>7} {'val_acc':>7} {'speedup':>7}  what")
    with tempfile.TemporaryDirectory() as tmp:
        for fidelity in ("multi", "full"):
            seen = first_answer(args.task, fidelity, args.seed, Path(tmp))
            row = seen["row"]
            label = (row.get("fidelity") or {}).get("label", "full")
            print(f"{fidelity:<8} {seen['wall_s']:7.1f} {seen['cpu_s']:7.1f} {row['total_seconds']:7.1f} "
                  f"{row['train_seconds']:7.1f} {row['accuracy']:7.4f} {row['speedup']:6.2f}x  trial {row['trial']} "
                  f"({label}) q{row['params'].get('quant.bits')}")


if __name__ == "__main__":
    main()
