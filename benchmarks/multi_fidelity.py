"""Multi-fidelity against full-fidelity search: front hypervolume against CPU time.

Two fresh studies of the same task, seed and settings (each its own SQLite file), run
side by side or one after the other, each until its process has used ``--cpu-budget``
CPU seconds (checked after each trial; torch on one thread):

- ``full`` (``fidelity="full"``): today's search, every trial trains the full epochs;
- ``multi`` (the default): rung 0 (training-free) first, the warm starts in full, then
  the sampler's candidates a third of the epochs first, the best third of each rung
  promoted to full training (:mod:`slimtune.search._promotion`).

After each trial it prints the process CPU seconds, wall seconds, the trial's fidelity
and the normalised hypervolume (``benchmarks/_hypervolume.py``: accuracy reference 0.5,
latency 1.2x the baseline's in the same run) of the front of the study's final-fidelity
results (full and training-free: what ``show`` and ``select`` use).

Usage::

    PYTHONPATH=. python benchmarks/multi_fidelity.py --task fashion-mnist --fidelity full --cpu-budget 900
    PYTHONPATH=. python benchmarks/multi_fidelity.py --task fashion-mnist --fidelity multi --cpu-budget 900
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._hypervolume import normalised_hypervolume  # noqa: E402


def front_hypervolume(study) -> float:
    from slimtune._dominance import relative_latency
    from slimtune.search._fidelity import is_final

    rows = [r for r in study.trials(states=("COMPLETE",)) if is_final(r)]
    return normalised_hypervolume([(r["accuracy"], relative_latency(r)) for r in rows])


def run(task: str, fidelity: str, seed: int, budget: float, directory: Path) -> None:
    import optuna
    import torch

    from slimtune import Study

    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = Study.create_or_load(f"mf-{fidelity}", storage=f"sqlite:///{directory / (fidelity + '.db')}",
                                 task=task, seed=seed, progress=False)
    stop = threading.Event()
    print(f"# {task}, seed {seed}, fidelity {fidelity}, CPU budget {budget:g} s", flush=True)
    print(f"{'cpu_s':>7} {'wall_s':>7} {'trial':>5} {'state':<8} {'fidelity':<14} {'val_acc':>7} {'speedup':>7} "
          f"{'hv':>6}", flush=True)
    wall0, cpu0 = time.perf_counter(), time.process_time()

    def on_row(row: dict) -> None:
        cpu = time.process_time() - cpu0
        label = (row.get("fidelity") or {}).get("label", "full")
        promoted = (row.get("fidelity") or {}).get("promoted_from")
        label += f"<{promoted}" if promoted is not None else ""
        acc = f"{row['accuracy']:.4f}" if row.get("accuracy") is not None else "-"
        speed = f"{row['speedup']:.2f}x" if row.get("speedup") else "-"
        print(f"{cpu:7.1f} {time.perf_counter() - wall0:7.1f} {row['trial']:>5} {row['state']:<8} {label:<14} "
              f"{acc:>7} {speed:>7} {front_hypervolume(study):6.4f}", flush=True)
        if cpu >= budget:
            stop.set()

    try:
        study.optimize(n_trials=10_000, progress=False, fidelity=fidelity, stop_event=stop, callbacks=[on_row])
    finally:
        study.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="fashion-mnist")
    parser.add_argument("--fidelity", choices=("multi", "full"), required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cpu-budget", type=float, default=900.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run(args.task, args.fidelity, args.seed, args.cpu_budget, Path(tmp))


if __name__ == "__main__":
    main()
