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
   The trials are **synthetic** (``benchmarks/widgets.py``'s generator: plausible
   objective values, the space's real parameters, no model trained), written into a
   real SQLite study through Optuna's public API; the timed part is what a user runs:
   ``Study.load(name)`` then ``study.frontier()``.

    PYTHONPATH=. python benchmarks/overhead.py [--trials 8] [--epochs N] [--size 10000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

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


def big_study(directory: Path, size: int) -> None:
    from benchmarks.widgets import synthetic_study
    from slimtune import Study

    storage = f"sqlite:///{directory / 'big.db'}"
    t0 = time.perf_counter()
    synthetic_study(storage, "big", size).close()
    made = time.perf_counter() - t0
    timings = []
    for _ in range(3):
        t0 = time.perf_counter()
        study = Study.load("big", storage=storage)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            front = study.frontier()
        timings.append(time.perf_counter() - t0)
        study.close()
    print(f"\n## A study of {size:,} synthetic trials (written in {made:.1f} s, not timed)")
    print(f"open + frontier: median {statistics.median(timings):.3f} s of 3 (min {min(timings):.3f} s; target <= 1 s); "
          f"{len(front)} trials on the front")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=None, help="distillation epochs (default: the task's)")
    parser.add_argument("--size", type=int, default=10_000, help="synthetic trials in the big study")
    parser.add_argument("--dir", default=None, help="where the study databases go (default: a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(args.dir or tmp)
        directory.mkdir(parents=True, exist_ok=True)
        trial_overhead(directory, args.trials, args.epochs)
        big_study(directory, args.size)


if __name__ == "__main__":
    main()
