"""Every knob family on models nobody here wrote (issues 10 and 20), measured in one run.

Architectures (small configs, trained briefly on scikit-learn's digits, handed over
with ``Task.from_model``): ``transformers``' ViT, BERT and DistilBERT (token ids),
``nn.TransformerEncoder`` over ``nn.Embedding`` (token ids), a MobileNetV3-like CNN with
squeeze-excite and BatchNorm, an MLP with BatchNorm1d on tabular features
(``tests/_archs.py``); ``transformers``' ResNet, MobileNetV2 and ConvNeXt on digits
upsampled to 32x32 and a plain MLP (``tests/_hf_models.py``).

Prints, per architecture and family: MACs ratio, same-run speed-up (ONNX Runtime, 1
thread, batch 1, interleaved with the baseline), packed-size ratio, validation and test
metric change; the exit row (exits 0 and 1 where the model has them, threshold 0.9) gives
the expected MACs at the measured exit rates, the speed-up of the one ONNX model with
``If`` nodes timed one sample at a time, and the exit rates; then every family the
space does not offer, with its reason.  Candidates train with the task's epochs
(``--epochs task``: from_model's defaults, scaled to the training split) or the given
distillation+recovery epochs.  Usage (from the repository root)::

    PYTHONPATH=. python benchmarks/user_models.py [--archs vit,tokens,...] [--epochs task|2+1] \\
        [--knobs 'exits 0+1 @0.9'] [--exit-thresholds 0.9,0.6] [--repeats 50]
"""

from __future__ import annotations

import argparse
import time

import torch

from tests import _archs as archs
from tests import _hf_models as hf

ALL = (*archs.ARCHS, *hf.ARCHITECTURES, "mlp")


def task_of(arch: str, steps: int | None):
    if arch in archs.ARCHS:
        return archs.task(arch, steps)
    return hf.mlp_task() if arch == "mlp" else hf.hf_task(arch, steps=steps or 200)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default=",".join(ALL))
    parser.add_argument("--steps", type=int, default=None, help="training steps of each model (default: its own)")
    parser.add_argument("--epochs", default="task", help="'task' or distillation+recovery epochs, e.g. 2+1")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--knobs", default="", help="comma-separated row labels to run (default: all), e.g. "
                                                     "'exits 0+1 @0.9'")
    parser.add_argument("--exit-thresholds", default="0.9", help="comma-separated thresholds of the exit rows")
    args = parser.parse_args()
    torch.set_num_threads(1)
    exits = hf.KNOBS.pop("exits 0+1 @0.9")
    for t in args.exit_thresholds.split(","):
        hf.KNOBS[f"exits 0+1 @{t}"] = {k: float(t) if k.endswith("threshold") else v for k, v in exits.items()}
    if args.knobs:
        wanted = [k.strip() for k in args.knobs.split(",")]
        unknown = [k for k in wanted if k not in hf.KNOBS]
        if unknown:
            parser.error(f"--knobs: unknown row {unknown[0]!r}; the rows are {', '.join(map(repr, hf.KNOBS))}")
        hf.KNOBS = {k: v for k, v in hf.KNOBS.items() if k in wanted}
    epochs = (None, None) if args.epochs == "task" else tuple(int(e) for e in args.epochs.split("+"))
    from slimtune.search._task_space import build_space

    for arch in args.archs.split(","):
        started, cpu = time.perf_counter(), time.process_time()
        task = task_of(arch, args.steps)
        base, rows = hf.run_knobs(task, epochs=epochs[0], finetune_epochs=epochs[1], repeats=args.repeats)
        print(f"\n{arch}: baseline val {base.accuracy:.4f} test {base.test_accuracy:.4f}, {base.macs:,} MACs, "
              f"{base.latency_ms:.4f} ms, {base.size_bytes:,} B; epochs {task.finetune_epochs}+{task.recovery_epochs}"
              f" (task) ({time.perf_counter() - started:.0f} s wall, {time.process_time() - cpu:.0f} s CPU)")
        print(f"  {'knob':<20}{'MACs':>7}{'speed-up':>10}{'size':>7}{'d val':>8}{'d test':>8}  notes")
        for label, r in rows.items():
            rates = ["exit rates " + "/".join(f"{x:.2f}" for x in r["exit_rates"])] if r["exit_rates"] else []
            notes = "; ".join([*rates, *r["flags"], *r["warnings"]])[:90]
            print(f"  {label:<20}{r['macs']:>7.3f}{r['speedup']:>9.2f}x{r['size']:>7.3f}{r['delta']:>+8.3f}"
                  f"{r['test_delta']:>+8.3f}  {notes}")
        for family, reason in build_space(task).omitted.items():
            print(f"  not offered: {family}: {reason}")


if __name__ == "__main__":
    main()
