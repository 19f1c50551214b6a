"""One trial per knob family on a real-size model (224x224 inputs), on the CPU.

How much compression pays on a model of the size users deploy, beside the 0.18 ms
ResNet-8 of the built-in tasks: ``transformers``' MobileNetV2 (width 1.0, 3 x 224 x 224,
10 labels) or ResNet-50 (its default config, 10 labels), **randomly initialised** (the
accuracy columns say nothing about a trained model; the timings, MACs and sizes do), on
scikit-learn's digits upsampled to 224 x 224 and repeated over 3 channels (a few hundred
images: enough to run every stage of a trial for real).

Per family (one candidate each, as ``benchmarks/user_models.py`` picks them): the trial's
wall and CPU time (training, calibration, export, measurement), MACs ratio, packed-size ratio, and the same-run speed-up on ONNX Runtime (1
thread) at batch 1 (the trial's own measurement) and at each other ``--batches`` size
(the exported artifact and the baseline's timed interleaved in the same process).

    PYTHONPATH=. python benchmarks/big_models.py [--arch mobilenet_v2|resnet50] [--train 256] \\
        [--epochs 1+1] [--batches 1,32] [--knobs 'quant 8-bit ptq,prune channel 0.5'] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F

ARCHS = ("mobilenet_v2", "resnet50")


def build(arch: str) -> torch.nn.Module:
    """A randomly initialised ``transformers`` classifier at 224 x 224, 10 labels (seeded)."""
    import transformers as tf

    torch.manual_seed(0)
    if arch == "mobilenet_v2":
        return tf.MobileNetV2ForImageClassification(tf.MobileNetV2Config(num_labels=10, image_size=224))
    if arch == "resnet50":
        return tf.ResNetForImageClassification(tf.ResNetConfig(num_labels=10))
    raise SystemExit(f"--arch must be one of {', '.join(ARCHS)}, not {arch!r}")


def digits224(n_train: int) -> tuple[torch.Tensor, ...]:
    """Digits 8 x 8 -> 3 x 224 x 224 (bilinear): ``n_train`` training images and half as
    many for validation and for test, from the built-in task's splits."""
    from slimtune.tasks import get_task

    d = get_task("digits").data
    n_eval = max(32, n_train // 2)

    def up(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)

    return (up(d.x_train[:n_train]), d.y_train[:n_train], up(d.x_val[:n_eval]), d.y_val[:n_eval],
            up(d.x_test[:n_eval]), d.y_test[:n_eval])


def timed_at_batch(artifacts: dict[str, bytes], x: torch.Tensor, repeats: int) -> dict[str, float]:
    """Median ms of each ONNX artifact on ``x`` (ONNX Runtime, 1 thread), timed
    interleaved by slimtune's own timer (same-run)."""
    import onnxruntime as ort

    from slimtune.search._timing import measure_latency

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    sessions = {k: ort.InferenceSession(b, opts, providers=["CPUExecutionProvider"]) for k, b in artifacts.items()}
    feeds = {k: {s.get_inputs()[0].name: x.numpy()} for k, s in sessions.items()}
    runners = {k: (lambda s=s, f=feeds[k]: s.run(None, f)) for k, s in sessions.items()}
    timings = measure_latency(runners, warmup=2, repeats=repeats, rounds=min(repeats, 10))
    return {k: statistics.median(v) for k, v in timings.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="mobilenet_v2", choices=ARCHS)
    parser.add_argument("--train", type=int, default=256, help="training images (validation, test: half as many)")
    parser.add_argument("--epochs", default="1+1", help="distillation+recovery epochs of each candidate")
    parser.add_argument("--batches", default="1,32", help="batch sizes timed (1: the trial's own measurement)")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per model at each batch size > 1")
    parser.add_argument("--knobs", default="", help="comma-separated rows of tests/_hf_models.py's KNOBS")
    parser.add_argument("--device", default="cpu", help="where candidates train (latency: ONNX Runtime CPU)")
    parser.add_argument("--json", action="store_true", help="one JSON object per row, nothing else")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    import onnxruntime as ort

    ort.set_default_logger_severity(3)  # not the optimizer's notes on unused initializers
    from slimtune import Task
    from slimtune.search._baseline import get_baseline
    from slimtune.search._pipeline import EvalSettings, Evaluator
    from slimtune.search._task_space import build_space
    from tests import _hf_models as hf

    say = (lambda *a, **k: None) if args.json else print
    distill, recovery = (int(e) for e in args.epochs.split("+"))
    batches = [int(b) for b in args.batches.split(",")]
    xtr, ytr, xva, yva, xte, yte = digits224(args.train)
    started = time.perf_counter()
    task = Task.from_model(build(args.arch).eval(), train=(xtr, ytr), val=(xva, yva), test=(xte, yte),
                           output="logits", name=f"{args.arch}-224", batch_size=32)
    space = build_space(task)
    settings = EvalSettings(epochs=distill, finetune_epochs=recovery, latency_repeats=50, latency_warmup=5,
                            device=args.device)
    evaluator = Evaluator(task, space, settings, get_baseline(task))
    base = evaluator.baseline_measurement()
    reference = evaluator.reference().artifact
    say(f"{args.arch} 224x224 (random init): {base.macs / 1e6:,.0f} MMACs, {base.latency_ms:.2f} ms at batch 1, "
        f"{base.size_bytes / 1e6:.1f} MB packed; {len(xtr)} training images, epochs {distill}+{recovery}, "
        f"training on {args.device} (baseline and space: {time.perf_counter() - started:.0f} s)")
    for family, reason in space.omitted.items():
        say(f"  not offered: {family}: {reason}")
    wanted = [k.strip() for k in args.knobs.split(",")] if args.knobs else [k for k in hf.KNOBS if "exits" not in k]
    say(f"  {'knob':<20}{'wall s':>8}{'CPU s':>7}{'MACs':>7}{'size':>7}"
        + "".join(f"{f'x @{b}':>8}" for b in batches) + f"{'d val':>8}")
    model = task.build_model()
    for label in wanted:
        values = dict(hf.KNOBS[label])
        if label == "dsconv":
            values = hf.dsconv_values(space, model) if "dsconv" not in space.omitted else {}
        elif label == "lowrank 0.5":
            values = {p.name: 0.5 for p in space.params if p.family == "lowrank"}
        if not values or any(name not in space for name in values):
            say(f"  {label:<20}not offered")
            continue
        t, cpu = time.perf_counter(), time.process_time()
        result = evaluator.evaluate(values)
        wall, used = time.perf_counter() - t, time.process_time() - cpu
        m = result.measurement
        row: dict[str, Any] = {"arch": args.arch, "knob": label, "wall_s": round(wall, 1), "cpu_s": round(used, 1),
                               "macs": round(m.macs / base.macs, 3), "size": round(m.size_bytes / base.size_bytes, 3),
                               "speedup": {1: round(m.speedup, 3)}, "delta_val": round(m.accuracy - base.accuracy, 4)}
        for b in batches:
            if b != 1 and result.artifact_format == "onnx":
                ms = timed_at_batch({"c": result.artifact, "r": reference}, xva[:b].contiguous(), args.repeats)
                row["speedup"][b] = round(ms["r"] / ms["c"], 3)
        if args.json:
            print(json.dumps(row), flush=True)
        say(f"  {label:<20}{wall:>8.0f}{used:>7.0f}{row['macs']:>7.3f}"
            f"{row['size']:>7.3f}" + "".join(f"{row['speedup'].get(b, float('nan')):>7.2f}x" for b in batches)
            + f"{row['delta_val']:>+8.3f}", flush=True)
    say("wall/CPU s = the whole trial (training, calibration, export, measurement); x @B = same-run speed-up at "
        "batch B on ONNX Runtime, 1 thread (batch 1: the trial's own measurement).")


if __name__ == "__main__":
    main()
