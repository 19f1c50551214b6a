"""Every knob family on models nobody here wrote (issue 10), measured in one run.

Hugging Face ``transformers`` ResNet, MobileNetV2 and ConvNeXt from small configs (1
channel, 32x32, 10 labels), trained briefly on digits upsampled to 32x32 and handed
over with ``Task.from_model``; plus an MLP on tabular (64-feature) digits.  Prints,
per architecture and knob: MACs ratio, same-run speed-up (ONNX Runtime, 1 thread,
batch 1, interleaved with the baseline), packed-size ratio, validation and test
metric change.  The early-exit row (exits 0 and 1, threshold 0.9; exit points found
automatically on every architecture) gives the expected MACs at the measured exit
rates, the speed-up of the one ONNX model with ``If`` nodes timed one sample at a
time, and the exit rates in the notes.  Usage (from the repository root)::

    PYTHONPATH=. python benchmarks/user_models.py [--archs resnet,mobilenet_v2,convnext,mlp] [--steps 200] \\
        [--knobs 'exits 0+1 @0.9'] [--repeats 50]
"""

from __future__ import annotations

import argparse
import time

import torch

from tests import _hf_models as hf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default=",".join([*hf.ARCHITECTURES, "mlp"]))
    parser.add_argument("--steps", type=int, default=200, help="training steps of each transformers model")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--knobs", default="", help="comma-separated row labels to run (default: all), e.g. "
                                                     "'exits 0+1 @0.9'")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.knobs:
        wanted = [k.strip() for k in args.knobs.split(",")]
        unknown = [k for k in wanted if k not in hf.KNOBS]
        if unknown:
            parser.error(f"--knobs: unknown row {unknown[0]!r}; the rows are {', '.join(map(repr, hf.KNOBS))}")
        hf.KNOBS = {k: v for k, v in hf.KNOBS.items() if k in wanted}
    for arch in args.archs.split(","):
        started, cpu = time.perf_counter(), time.process_time()
        task = hf.mlp_task() if arch == "mlp" else hf.hf_task(arch, steps=args.steps)
        base, rows = hf.run_knobs(task, repeats=args.repeats)
        print(f"\n{arch}: baseline val {base.accuracy:.4f} test {base.test_accuracy:.4f}, {base.macs:,} MACs, "
              f"{base.latency_ms:.4f} ms, {base.size_bytes:,} B  ({time.perf_counter() - started:.0f} s wall, "
              f"{time.process_time() - cpu:.0f} s CPU)")
        print(f"  {'knob':<20}{'MACs':>7}{'speed-up':>10}{'size':>7}{'d val':>8}{'d test':>8}  notes")
        for label, r in rows.items():
            rates = ["exit rates " + "/".join(f"{x:.2f}" for x in r["exit_rates"])] if r["exit_rates"] else []
            notes = "; ".join([*rates, *r["flags"], *r["warnings"]])[:90]
            print(f"  {label:<20}{r['macs']:>7.3f}{r['speedup']:>9.2f}x{r['size']:>7.3f}{r['delta']:>+8.3f}"
                  f"{r['test_delta']:>+8.3f}  {notes}")


if __name__ == "__main__":
    main()
