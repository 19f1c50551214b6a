"""Default searches on models users bring: does a 20-trial search find a candidate within
1 validation point of the baseline that is faster in the same run?

Each architecture of ``tests/_archs.py`` or ``tests/_hf_models.py`` (small configs trained briefly on digits,
handed over with ``Task.from_model``: its default warm starts and epochs) gets a new
study in a temporary SQLite file and ``--trials`` trials with every default (TPE
sampler, early stopping, ONNX Runtime, 1 thread, batch 1).  Prints, per architecture,
the baseline, the trials on the front (parameters, validation and test change,
same-run speed-up), and the fastest candidate within 1 validation point.  Usage
(repository root)::

    PYTHONPATH=. python benchmarks/user_searches.py [--archs mobilenet_v3,vit,tokens] [--trials 20] [--seed 0]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from tests import _archs as archs
from tests import _hf_models as hf


def task_of(arch: str):
    """The ``Task.from_model`` of ``arch`` (as ``benchmarks/user_models.py`` builds it)."""
    if arch in archs.ARCHS:
        return archs.task(arch)
    if arch == "mlp":
        return hf.mlp_task()
    if arch in hf.ARCHITECTURES:
        return hf.hf_task(arch)
    raise SystemExit(f"unknown architecture {arch!r}: one of {', '.join((*archs.ARCHS, *hf.ARCHITECTURES, 'mlp'))}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="mobilenet_v3,vit,tokens")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from slimtune._cli_tables import compact_params, speedup
    from slimtune.studies import Study

    for arch in args.archs.split(","):
        task = task_of(arch)
        with tempfile.TemporaryDirectory() as tmp:
            started, cpu = time.perf_counter(), time.process_time()
            study = Study.create_or_load(f"user-{arch}", storage=f"sqlite:///{Path(tmp) / 's.db'}", task=task,
                                         seed=args.seed, progress=False)
            try:
                rows = study.optimize(n_trials=args.trials, progress=False)
                wall, used = time.perf_counter() - started, time.process_time() - cpu
                base = study.baseline
                names = [p["name"] for p in study.space_dict.get("params", [])]
                states = {s: sum(r["state"] == s for r in rows) for s in ("COMPLETE", "PRUNED", "FAIL")}
                print(f"\n{arch}: baseline val {base.accuracy:.4f} test {base.test_accuracy:.4f}; epochs "
                      f"{task.finetune_epochs}+{task.recovery_epochs}; {len(rows)} trials {states} in {wall / 60:.1f} "
                      f"min wall, {used / 60:.1f} min CPU")
                front = [r for r in study.trials() if r.get("pareto") and r["state"] == "COMPLETE"]
                for r in sorted(front, key=lambda r: -(speedup(r) or 0)):
                    rates = f"  exit rates {'/'.join(f'{x:.2f}' for x in r['exit_rates'])}" if r.get("exit_rates") else ""
                    print(f"  front: trial {r['trial']:>2} {speedup(r):5.2f}x  val {r['val_accuracy'] - base.accuracy:+.4f}"
                          f"  test {r['test_accuracy'] - base.test_accuracy:+.4f}  {compact_params(r['params'], names)}"
                          f"{rates}")
                near = [r for r in study.trials() if r["state"] == "COMPLETE"
                        and r["val_accuracy"] >= base.accuracy - 0.01]
                best = max(near, key=lambda r: speedup(r) or 0, default=None)
                if best is None:
                    print("  within 1 val point: none")
                else:
                    print(f"  fastest within 1 val point: trial {best['trial']} {speedup(best):.2f}x, val "
                          f"{best['val_accuracy'] - base.accuracy:+.4f}, test {best['test_accuracy'] - base.test_accuracy:+.4f}"
                          f" ({compact_params(best['params'], names)})")
            finally:
                study.close()


if __name__ == "__main__":
    main()
