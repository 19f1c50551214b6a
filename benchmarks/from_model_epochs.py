"""How many epochs a ``Task.from_model`` candidate needs: channel pruning (and int8
with a third of the channels) on models users bring, at several distillation /
recovery epoch counts, one run each (seed 0), measured like a search's candidates
(ONNX Runtime, validation and test metric of the timed artifact).

The models and data are those of ``tests/_archs.py`` (digits as images, token ids or
tabular features).  Prints one row per model and setting: validation and test change
against the baseline, and the wall time of the candidate.  Usage (repository root)::

    PYTHONPATH=. python benchmarks/from_model_epochs.py [--archs mobilenet_v3,vit,tokens,mlp_bn] \\
        [--settings 2+1,2+4,4+4] [--lr 1e-3]
"""

from __future__ import annotations

import argparse
import time

import torch

from tests import _archs as archs

CANDIDATES = {
    "prune channel 0.5": {"prune.ratio": 0.5, "prune.granularity": "channel"},
    "int8 + prune channel 0.33": {"prune.ratio": 0.33, "prune.granularity": "channel", "quant.bits": 8,
                                  "quant.mode": "ptq"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="mobilenet_v3,vit,tokens,mlp_bn")
    parser.add_argument("--settings", default="2+1,2+4,4+4", help="distillation+recovery epochs, comma-separated")
    parser.add_argument("--lr", type=float, default=1e-3, help="the task's lr (candidates train at half of it)")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from slimtune.search._task_space import build_space
    from slimtune.search._baseline import get_baseline
    from slimtune.search._pipeline import EvalSettings, Evaluator

    for arch in args.archs.split(","):
        task = archs.task(arch, lr=args.lr)
        space = build_space(task)
        baseline = get_baseline(task)
        base = None
        print(f"\n{arch}: {len(task.data.train)} training samples, batch {task.batch_size}, lr {args.lr:g}")
        for setting in args.settings.split(","):
            distill, recovery = (int(x) for x in setting.split("+"))
            settings = EvalSettings(epochs=distill, finetune_epochs=recovery, latency_repeats=args.repeats,
                                    latency_warmup=5)
            evaluator = Evaluator(task, space, settings, baseline)
            if base is None:
                base = evaluator.baseline_measurement()
                print(f"  baseline val {base.accuracy:.4f} test {base.test_accuracy:.4f}")
            for label, values in CANDIDATES.items():
                started = time.perf_counter()
                m = evaluator.evaluate(values).measurement
                print(f"  {setting:>5} {label:<26} val {m.accuracy - base.accuracy:+.4f} "
                      f"test {m.test_accuracy - base.test_accuracy:+.4f}  speed-up {m.speedup:.2f}x  "
                      f"({time.perf_counter() - started:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
