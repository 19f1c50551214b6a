"""slimtune's ONNX Runtime int8 against ONNX Runtime's own QOperator quantizer.

For each task's baseline, compiled at each batch size: fp32 (the reference), slimtune's
int8 as a trial times it (``compile_model(bits=8)``: QDQ or QOperator, whichever ran
faster here), slimtune's int8 forced to each layout (``$SLIMTUNE_INT8_LAYOUT``), and
``onnxruntime.quantization.quantize_static`` in QOperator format with per-channel
weights, uint8 activations and int8 weights (what Intel Neural Compressor writes for
x86) and with ORT's default types (int8 activations).  All are timed interleaved in
this one process with slimtune's procedure (``static_latencies``: calibrated samples,
rotating rounds, 10th percentile, one thread, the on-CPU clock), over ``--processes``
fresh processes; printed per model: the median speed-up over fp32, the file size and
the validation accuracy.  Issue 25's target: slimtune's int8 at least matches ORT's
QOperator int8.

    PYTHONPATH=. python benchmarks/int8_layout.py [--tasks digits,fashion-mnist] [--batches 1,64] [--processes 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _ort_qoperator(float_bytes: bytes, calibration, u8s8: bool) -> bytes:
    """``quantize_static`` QOperator, per-channel, MinMax; ``u8s8``: uint8 activations and
    int8 weights (what Intel Neural Compressor writes for x86), else ORT's defaults
    (int8 activations)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from slimtune.search._runtimes._ort import _Calibration, _quiet_logging

    with tempfile.TemporaryDirectory() as tmp, _quiet_logging():
        src, out = os.path.join(tmp, "fp32.onnx"), os.path.join(tmp, "int8.onnx")
        Path(src).write_bytes(float_bytes)
        types = {"activation_type": QuantType.QUInt8, "weight_type": QuantType.QInt8} if u8s8 else {}
        quantize_static(src, out, _Calibration(calibration), quant_format=QuantFormat.QOperator, per_channel=True,
                        **types)
        return Path(out).read_bytes()


def one_process(task_name: str, batches: list[int], repeats: int) -> list[dict]:
    """One timing of every model at every batch size, in this process."""
    import numpy as np
    import torch

    from slimtune.search._baseline import get_baseline
    from slimtune.search._runtimes import compile_model
    from slimtune.search._runtimes._onnx import INPUT, session
    from slimtune.search._timing import static_latencies
    from slimtune.tasks import get_task

    torch.set_num_threads(1)
    task = get_task(task_name)
    model = get_baseline(task).model.eval()
    calibration = task.data.train.head(256)
    x_val = task.data.val.head(1024).numpy()
    y_val = np.concatenate([np.asarray(y) for _, y in task.data.val.chunks()])[:len(x_val)]
    models: dict[str, bytes] = {}
    chosen = {}
    for label, layout in (("fp32", None), ("slimtune int8", "auto"), ("slimtune int8 qdq", "qdq"),
                          ("slimtune int8 qoperator", "qoperator")):
        os.environ["SLIMTUNE_INT8_LAYOUT"] = layout or "auto"
        compiled = compile_model(model, runtime="onnxruntime", bits=32 if layout is None else 8, calibration=calibration)
        models[label] = compiled.artifact
        chosen[label] = compiled.info.get("int8_layout")
    os.environ.pop("SLIMTUNE_INT8_LAYOUT")
    models["ORT QOperator u8s8"] = _ort_qoperator(models["fp32"], calibration.numpy(), u8s8=True)
    models["ORT QOperator defaults (s8s8)"] = _ort_qoperator(models["fp32"], calibration.numpy(), u8s8=False)
    sessions = {label: session(b, 1) for label, b in models.items()}
    accuracy = {label: float(np.mean(np.concatenate([s.run(None, {INPUT: x_val[i:i + 256]})[0].argmax(-1)
                                                     for i in range(0, len(x_val), 256)]) == y_val))
                for label, s in sessions.items()}
    rows = []
    for batch in batches:
        x = np.resize(x_val, (batch, *x_val.shape[1:]))
        runners = {label: (lambda s=s: s.run(None, {INPUT: x})) for label, s in sessions.items()}
        latency, _ = static_latencies(runners, warmup=20, repeats=repeats, clock="cpu")
        for label in models:
            rows.append({"task": task_name, "batch": batch, "model": label, "ms": latency[label],
                         "speedup": latency["fp32"] / latency[label], "bytes": len(models[label]),
                         "val_accuracy": accuracy[label], "layout": chosen.get(label)})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="digits,fashion-mnist")
    parser.add_argument("--batches", default="1,64")
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a child process: JSON rows
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    if args.one:
        print(json.dumps([r for t in args.tasks.split(",") for r in one_process(t, batches, args.repeats)]))
        return
    runs = []
    for i in range(args.processes):
        out = subprocess.run([sys.executable, __file__, "--one", "--tasks", args.tasks, "--batches", args.batches,
                              "--repeats", str(args.repeats)], capture_output=True, text=True, check=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"process {i + 1}/{args.processes} done", file=sys.stderr)
    print(f"{'task':14} {'batch':>5} {'model':30} {'speed-up (median; each)':>34} {'bytes':>7} {'val acc':>7} layout")
    for j, row in enumerate(runs[0]):
        each = [run[j]["speedup"] for run in runs]
        print(f"{row['task']:14} {row['batch']:5d} {row['model']:30} {statistics.median(each):6.3f}x "
              f"({', '.join(f'{v:.3f}' for v in each):>25}) {row['bytes']:7d} {row['val_accuracy']:7.4f} "
              f"{','.join(sorted({str(run[j]['layout']) for run in runs}))}")


if __name__ == "__main__":
    main()
