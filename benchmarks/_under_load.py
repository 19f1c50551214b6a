"""``latency_fidelity.py --under-load``: the same artifacts' same-run speed-ups read in
fresh processes while two busy processes compete for the cores.

The parent compiles every model once (ONNX Runtime, fp32 baseline and int8 PTQ, random
weights: latency does not depend on their values) into a temporary file, starts the
load, then runs the worker processes one after the other; each worker opens sessions
on those very bytes and prints its speed-ups as one JSON line.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
#: (name, input shape): the models timed, each as int8 against its fp32 self.
MODELS = (("cnn-digits", (1, 1, 8, 8)), ("resnet8", (1, 1, 28, 28)), ("resnet8-w32", (1, 1, 28, 28)),
          ("vit-small", (1, 1, 28, 28)), ("vit", (1, 1, 28, 28)))
#: The target disagreement (%) by the baseline's latency.
TARGETS = {"baseline >= 0.5 ms": 10.0, "baseline < 0.5 ms": 15.0}
#: The load: one thread of numpy matrix products (AVX-heavy, as training is).
LOAD = ("import numpy as np\na = np.random.rand(400, 400)\nwhile True:\n"
        "    a = a @ a\n    a /= np.abs(a).max()\n")


def _build(name: str) -> Any:
    import torch
    from torch import nn

    from slimtune.tasks._models import resnet8, small_cnn

    torch.manual_seed(0)
    if name == "cnn-digits":
        return small_cnn(10)
    if name.startswith("resnet8"):
        return resnet8(10, width=32 if name.endswith("w32") else 16)
    import transformers as tf

    hidden, layers, heads, mlp = (96, 4, 3, 192) if name == "vit-small" else (192, 6, 3, 768)
    vit = tf.ViTForImageClassification(tf.ViTConfig(image_size=28, patch_size=7, num_channels=1, hidden_size=hidden,
                                                    num_hidden_layers=layers, num_attention_heads=heads,
                                                    intermediate_size=mlp, num_labels=10))

    class Logits(nn.Module):
        def __init__(self, model: nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model(x).logits

    return Logits(vit)


def compile_artifacts(path: Path) -> None:
    import torch

    from slimtune.search._runtimes import compile_model

    out = {}
    for name, shape in MODELS:
        model = _build(name).eval()
        calibration = torch.randn(256, *shape[1:], generator=torch.Generator().manual_seed(0))
        out[name] = {"shape": shape, **{f"bits{b}": compile_model(model, bits=b, calibration=calibration).artifact
                                        for b in (32, 8)}}
    path.write_bytes(pickle.dumps(out))


def worker(path: str, repeats: int | None) -> None:
    """Time every model's int8 artifact against its fp32 one with slimtune's procedure
    and the one it replaced; print ``{name: {...}}`` as one JSON line."""
    import numpy as np

    from slimtune.search._pipeline import EvalSettings
    from slimtune.search._runtimes._onnx import session
    from slimtune.search._timing import latency_clock, measure_latency, static_latencies

    settings = EvalSettings()
    repeats = repeats or settings.latency_repeats
    clock = latency_clock(settings.threads, True)  # ONNX Runtime computes on the calling thread
    artifacts = pickle.loads(Path(path).read_bytes())
    x_rng = np.random.default_rng(0)
    result = {}
    for name, art in artifacts.items():
        x = x_rng.standard_normal(art["shape"]).astype(np.float32)
        runs = {}
        for role, key in (("reference", "bits32"), ("candidate", "bits8")):
            s = session(art[key], settings.threads)
            runs[role] = lambda s=s: s.run(None, {"input": x})
        now, timings = static_latencies(runs, warmup=settings.latency_warmup, repeats=repeats, clock=clock)
        before = measure_latency(runs, warmup=10, repeats=100, rounds=10)  # the procedure replaced
        result[name] = {"speedup": now["reference"] / now["candidate"], "reference_ms": now["reference"],
                        "clock": clock, "loops": timings.loops,
                        "before_speedup": float(np.median(before["reference"]) / np.median(before["candidate"])),
                        "before_reference_ms": float(np.median(before["reference"]))}
    print(json.dumps(result))


def _disagreement(values: list[float]) -> float:
    return 100.0 * (max(values) / min(values) - 1.0)


def under_load(*, processes: int, repeats: int | None, as_json: bool) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "artifacts.pkl"
        compile_artifacts(path)
        load = [subprocess.Popen([sys.executable, "-c", LOAD], env=env) for _ in range(2)]
        started = time.time()
        reads = []
        try:
            time.sleep(2.0)
            for _ in range(processes):
                cmd = [sys.executable, str(ROOT / "benchmarks" / "latency_fidelity.py"), "--worker", str(path)]
                if repeats:
                    cmd += ["--repeats", str(repeats)]
                done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
                if done.returncode != 0:
                    raise RuntimeError(f"a worker failed: {done.stderr.strip()[-800:]}")
                reads.append(json.loads(done.stdout.strip().splitlines()[-1]))
        finally:
            for p in load:
                p.kill()
                p.wait()
        load_avg = os.getloadavg()
    rows = []
    for name, _ in MODELS:
        speedups = [r[name]["speedup"] for r in reads]
        before = [r[name]["before_speedup"] for r in reads]
        reference_ms = sorted(r[name]["reference_ms"] for r in reads)[len(reads) // 2]
        band = "baseline >= 0.5 ms" if reference_ms >= 0.5 else "baseline < 0.5 ms"
        rows.append({"model": name, "candidate": "int8 (ONNX Runtime PTQ) vs its fp32 baseline",
                     "reference_ms": round(reference_ms, 4), "clock": reads[0][name]["clock"],
                     "speedups": [round(v, 3) for v in speedups], "disagreement_pct": round(_disagreement(speedups), 1),
                     "target_pct": TARGETS[band], "before_speedups": [round(v, 3) for v in before],
                     "before_disagreement_pct": round(_disagreement(before), 1),
                     "before_reference_ms": round(sorted(r[name]["before_reference_ms"] for r in reads)[len(reads) // 2], 4)})
    report = {"processes": processes, "load_processes": 2, "load_average_after": [round(v, 2) for v in load_avg],
              "seconds": round(time.time() - started, 1), "cpus": os.cpu_count(),
              "max_disagreement_pct": max(r["disagreement_pct"] for r in rows),
              "max_disagreement_pct_before": max(r["before_disagreement_pct"] for r in rows),
              "met": all(r["disagreement_pct"] <= r["target_pct"] for r in rows), "rows": rows}
    if as_json:
        print(json.dumps(report))
    else:
        print(f"| model | baseline ms | speed-ups (now) | disagreement | target | before | before disagreement |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['model']} | {r['reference_ms']:.3f} | {', '.join(f'{v:.2f}x' for v in r['speedups'])} | "
                  f"{r['disagreement_pct']:.1f}% | {r['target_pct']:.0f}% | "
                  f"{', '.join(f'{v:.2f}x' for v in r['before_speedups'])} | {r['before_disagreement_pct']:.1f}% |")
        print(f"max disagreement {report['max_disagreement_pct']:.1f}% (before {report['max_disagreement_pct_before']:.1f}%), "
              f"load average after {report['load_average_after']}")
    return report
