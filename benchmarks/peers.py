"""slimtune's front against its peers: every model timed interleaved in one process.

Input: a slimtune study (``--storage URL --study NAME``), or ``--run`` to make one
(``--task digits --quick`` for a quick check, ``--task fashion-mnist`` for the real
table).  The study's baseline (its fp32 model, BatchNorm folded, as slimtune's ONNX
Runtime target compiles it) is every peer's input; the peers calibrate on the first
training samples, as slimtune does (``calibration_size``), and never see the test split.
The peers (``benchmarks/_peer_systems.py``; one skipped with a line when its package
is missing): ONNX Runtime's ``quantize_static`` (defaults; QOperator u8s8), NNCF int8
run on ONNX Runtime and on OpenVINO, OpenVINO's default compile of the fp32 model,
Intel Neural Compressor's ONNX package and Olive.  slimtune's front points are the
files ``export`` writes (the artifacts its trials timed), each also run on OpenVINO.

Every model is run on its runtime at one thread, at each batch size (default 1 and 64),
and all of them are timed interleaved in this one process with slimtune's own
procedure (``slimtune.search._timing.static_latencies``: calibrated samples, rotating
rounds, 10th percentile, on the calling thread's on-CPU clock; the median is kept
too).  The speed-up is the fp32 baseline's latency on ONNX Runtime in the same rounds
over the model's (one reference for all rows, as the table in ``docs/benchmarks.md``);
``speedup_vs_own_runtime`` divides by the fp32 model on the row's own runtime instead.
Accuracy is top-1 on the task's **test** split, for every model, from the file timed.

    PYTHONPATH=. python benchmarks/peers.py --storage sqlite:///fm.db --study fm [--json]
    PYTHONPATH=. python benchmarks/peers.py --run --task digits --quick --json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

#: A system is "at <= 1 test point" when its test accuracy is at most this below the baseline's.
MAX_DROP = 0.01
BASELINE = "fp32 baseline (ONNX Runtime)"
OPENVINO_FP32 = "OpenVINO default (fp32 model)"


@dataclass
class Entry:
    """One model in the comparison: its ONNX bytes and the runtime it runs on."""

    system: str
    kind: str  # "baseline", "slimtune" or "peer"
    runtime: str
    onnx: bytes
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Runner:
    """A compiled entry at one batch size: the timed call and a batch-size-safe predict."""

    call: Callable[[np.ndarray], np.ndarray]
    batch: "int | None"  # a static batch (OpenVINO), else None
    precision: str


def _ort_runner(data: bytes) -> Runner:
    from slimtune.search._runtimes._onnx import optimized_op_types, session

    s = session(data, 1)
    name = s.get_inputs()[0].name
    ops = optimized_op_types(data)
    int8 = ops.get("QLinearConv", 0) + ops.get("QGemm", 0) + ops.get("QLinearMatMul", 0) + ops.get("ConvInteger", 0)
    return Runner(lambda x: s.run(None, {name: x})[0], None, "int8" if int8 else "fp32")


def _openvino_runner(data: bytes, batch: int) -> Runner:
    import onnx

    from slimtune.search._runtimes._openvino import _int8_layers, openvino_config, shared_core, with_static_batch

    model = with_static_batch(onnx.load_from_string(data), batch)
    core = shared_core()  # one Core per process: see shared_core
    compiled = core.compile_model(core.read_model(model.SerializeToString()), "CPU", openvino_config(1))
    request = compiled.create_infer_request()
    precision = compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
    if _int8_layers(compiled)[0]:
        precision = "int8"
    return Runner(lambda x: request.infer({0: x}, share_inputs=True)[0], batch, precision)


def compile_entry(entry: Entry, batch: int) -> Runner:
    """``entry`` on its runtime at one thread (OpenVINO: its input fixed to ``batch``)."""
    return _ort_runner(entry.onnx) if entry.runtime == "onnxruntime" else _openvino_runner(entry.onnx, batch)


def _reason(exc: BaseException) -> str:
    """An exception in one line: its type and its most telling line (OpenVINO's ONNX
    frontend ends with a summary of the operations it cannot convert)."""
    lines = [ln.strip(" -") for ln in str(exc).splitlines() if ln.strip() and not ln.strip().startswith("Exception from")]
    summary = [ln for ln in lines if ln.startswith("No conversion rule found")]  # OpenVINO's ONNX frontend
    return f"{type(exc).__name__}: {((summary or lines or [''])[0])[:200]}"


def accuracy(runner: Runner, x: np.ndarray, y: np.ndarray, chunk: int = 64) -> float:
    """Top-1 accuracy of ``runner`` on ``x`` (a static batch's last chunk padded)."""
    size = runner.batch or chunk
    hits = 0
    for i in range(0, len(x), size):
        part = x[i:i + size]
        n = len(part)
        if runner.batch and n < runner.batch:
            part = np.concatenate([part, np.repeat(part[:1], runner.batch - n, axis=0)])
        hits += int((np.asarray(runner.call(np.ascontiguousarray(part)))[:n].argmax(-1) == y[i:i + n]).sum())
    return hits / len(x)


# -- the study and what is compared ---------------------------------------------------------
def open_or_run(args: argparse.Namespace, say: Callable[[str], None]):
    """The study named on the command line; with ``--run`` created (or resumed) and run first."""
    from slimtune import Study

    if args.run:
        study = Study.create_or_load(args.study, storage=args.storage, task=args.task, seed=0)
        trials = args.trials if args.trials is not None else (4 if args.quick else 6)
        say(f"running {trials} trial(s) of study {args.study!r} ({args.task})")
        study.optimize(n_trials=trials, progress=not args.json)
        return study
    return Study.load(args.study, storage=args.storage)


def _arrays(split, n: "int | None" = None) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for x, y in split.chunks():
        xs.append(np.asarray(x, dtype=np.float32))
        ys.append(np.asarray(y))
    x, y = np.concatenate(xs), np.concatenate(ys)
    return (x, y) if n is None else (x[:n], y[:n])


def slimtune_entries(study, workdir: Path, say: Callable[[str], None]) -> list[Entry]:
    """The study's front: each point's exported file (what its trial timed), on the
    study's runtime and on OpenVINO where that is installed."""
    from slimtune._cli_tables import compact_params

    with_openvino = importlib.util.find_spec("openvino") is not None
    entries = []
    for row in study.frontier():
        runtime = row.get("runtime") or "onnxruntime"
        if runtime not in ("onnxruntime", "openvino"):
            say(f"skipped slimtune trial {row['trial']}: timed on {runtime}, not an ONNX model")
            continue
        path = study.candidate(row["trial"]).export(workdir / f"trial{row['trial']}.onnx")
        label = f"slimtune trial {row['trial']}"
        extra = {"trial": row["trial"], "params": row["params"], "stored_test_accuracy": row.get("test_accuracy"),
                 "size_bytes": row.get("size_bytes")}
        note = compact_params(row["params"], list(row["params"]))
        entries.append(Entry(label, "slimtune", runtime, path.read_bytes(), note, extra))
        if with_openvino and runtime == "onnxruntime":
            entries.append(Entry(f"{label} on OpenVINO", "slimtune-openvino", "openvino", path.read_bytes(), note,
                                 extra))
    return entries


# -- timing and the verdict -----------------------------------------------------------------
def measure(entries: list[Entry], batches: list[int], x_test: np.ndarray, y_test: np.ndarray, *, repeats: int,
            warmup: int, say: Callable[[str], None]) -> list[dict[str, Any]]:
    """One row per (entry, batch): latency, speed-ups, test accuracy, file size."""
    from slimtune.search._timing import percentile, static_latencies

    rows: list[dict[str, Any]] = []
    accuracies: dict[str, float] = {}
    for batch in batches:
        runners: dict[str, Runner] = {}
        for entry in entries:
            try:
                runners[entry.system] = compile_entry(entry, batch)
            except Exception as exc:  # noqa: BLE001 - a model a runtime refuses is reported and left out
                say(f"left out {entry.system} at batch {batch}: {entry.runtime} refused it ({_reason(exc)})")
        for name, runner in runners.items():
            if name not in accuracies:
                accuracies[name] = accuracy(runner, x_test, y_test)
        inputs = [np.ascontiguousarray(np.resize(x_test[i * batch:(i + 1) * batch], (batch, *x_test.shape[1:])))
                  for i in range(max(1, min(16, len(x_test) // batch)))]

        def timed(call: Callable, state: dict) -> Callable[[], object]:
            def step():
                i = state["i"] = (state["i"] + 1) % len(inputs)
                return call(inputs[i])
            return step

        calls = {name: timed(r.call, {"i": 0}) for name, r in runners.items()}
        p10, timings = static_latencies(calls, warmup=warmup, repeats=repeats, clock="cpu")
        medians = {name: percentile(values, 50) for name, values in timings.cpu.items()}
        reference = p10.get(BASELINE, math.nan)
        base_acc = accuracies.get(BASELINE, math.nan)
        for entry in entries:
            if entry.system not in runners:
                continue
            own = BASELINE if entry.runtime == "onnxruntime" else OPENVINO_FP32
            acc = accuracies[entry.system]
            rows.append({
                "system": entry.system, "kind": entry.kind, "runtime": entry.runtime, "batch": batch,
                "precision": runners[entry.system].precision, "latency_ms": p10[entry.system],
                "median_ms": medians[entry.system], "speedup": reference / p10[entry.system],
                "speedup_vs_own_runtime": (p10[own] / p10[entry.system]) if own in p10 else None,
                "reference": BASELINE, "test_accuracy": acc, "delta": acc - base_acc,
                "file_bytes": len(entry.onnx), "note": entry.note, **entry.extra,
            })
    return rows


def verdicts(rows: list[dict[str, Any]], batches: list[int], max_drop: float = MAX_DROP) -> list[dict[str, Any]]:
    """Per batch: slimtune's fastest front point at <= ``max_drop`` below the baseline
    (on the runtime its study timed) against the fastest peer within the same drop."""
    out = []
    for batch in batches:
        within = [r for r in rows if r["batch"] == batch and r["delta"] >= -max_drop - 1e-12]
        best = max((r for r in within if r["kind"] == "slimtune"), key=lambda r: r["speedup"], default=None)
        peer = max((r for r in within if r["kind"] == "peer"), key=lambda r: r["speedup"], default=None)
        on_ov = max((r for r in within if r["kind"] == "slimtune-openvino"), key=lambda r: r["speedup"], default=None)
        ahead = best is not None and (peer is None or best["speedup"] > peer["speedup"])

        def brief(r: "dict | None") -> "dict | None":
            return None if r is None else {k: r[k] for k in ("system", "speedup", "delta")}

        out.append({"batch": batch, "ahead": ahead, "max_drop": max_drop, "slimtune_best": brief(best),
                    "best_peer": brief(peer), "slimtune_on_openvino_best": brief(on_ov)})
    return out


def verdict_line(v: dict[str, Any]) -> str:
    def show(r: "dict | None") -> str:
        return "none" if r is None else f"{r['system']} {r['speedup']:.2f}x ({100 * r['delta']:+.2f} pt)"

    line = (f"batch {v['batch']}: slimtune's best at <= {100 * v['max_drop']:g} test point "
            f"({show(v['slimtune_best'])}) is {'ahead of' if v['ahead'] else 'NOT ahead of'} every peer "
            f"(best peer: {show(v['best_peer'])})")
    if v.get("slimtune_on_openvino_best"):
        line += f"; a front point run on OpenVINO instead: {show(v['slimtune_on_openvino_best'])}"
    return line


def table(rows: list[dict[str, Any]], batches: list[int]) -> str:
    """A markdown table: one line per system, its speed-up at each batch size."""
    systems = list(dict.fromkeys(r["system"] for r in rows))
    by = {(r["system"], r["batch"]): r for r in rows}
    head = "| system | runtime | precision | test acc | delta pt | file KB | " + " | ".join(
        f"x batch {b}" for b in batches) + " |"
    lines = [head, "|" + "---|" * (6 + len(batches))]
    for s in systems:
        first = next(by[(s, b)] for b in batches if (s, b) in by)
        cells = [f"{by[(s, b)]['speedup']:.2f}" if (s, b) in by else "-" for b in batches]
        lines.append(f"| {s} | {first['runtime']} | {first['precision']} | {first['test_accuracy']:.4f} | "
                     f"{100 * first['delta']:+.2f} | {first['file_bytes'] / 1024:.0f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole comparison as one JSON-able object."""
    import torch

    from benchmarks._peer_systems import PeerInput, build_peers
    from slimtune.search._baseline import get_baseline
    from slimtune.search._runtimes import compile_model

    torch.set_num_threads(1)
    say = (lambda m: print(m, file=sys.stderr, flush=True))
    study = open_or_run(args, say)
    task, settings = study.task, study.settings
    baseline = get_baseline(task, seed=settings.seed).model.eval()
    calibration = task.data.train.head(settings.calibration_size)
    fp32 = compile_model(baseline, runtime="onnxruntime", bits=32, calibration=calibration).artifact
    x_val, y_val = _arrays(task.data.val, 512 if args.quick else None)
    x_test, y_test = _arrays(task.data.test, 1000 if args.quick else None)
    with tempfile.TemporaryDirectory(prefix="slimtune-peers-") as tmp:
        workdir = Path(tmp)
        entries = [Entry(BASELINE, "baseline", "onnxruntime", fp32, "slimtune's compile of the baseline")]
        entries += slimtune_entries(study, workdir, say)
        inp = PeerInput(fp32, np.asarray(calibration, dtype=np.float32), x_val, y_val, workdir, quick=args.quick)
        peers = build_peers(inp, args.peers.split(",") if args.peers else None, say=say)
        entries += [Entry(p.system, "peer", p.runtime, p.onnx, p.note) for p in peers]
        batches = [int(b) for b in args.batches.split(",")]
        rows = measure(entries, batches, x_test, y_test, repeats=args.repeats, warmup=args.warmup, say=say)
    return {"task": task.name, "study": study.name, "storage": study.storage, "batches": batches,
            "threads": 1, "repeats": args.repeats, "test_samples": len(x_test), "rows": rows,
            "verdicts": verdicts(rows, batches)}


def main(argv: "list[str] | None" = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", default="sqlite:///slimtune-peers.db", help="the study's SQLAlchemy URL")
    parser.add_argument("--study", default="peers", help="the study's name")
    parser.add_argument("--run", action="store_true", help="create (or resume) the study and run trials first")
    parser.add_argument("--task", default="digits", help="the task, with --run")
    parser.add_argument("--trials", type=int, help="trials to run with --run [default: 6, 4 with --quick]")
    parser.add_argument("--quick", action="store_true", help="a quick check: 1,000 test samples, few repeats")
    parser.add_argument("--batches", default="1,64")
    parser.add_argument("--repeats", type=int, help="timed samples per model and batch [default: 200, 30 quick]")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--peers", help="only these peers (comma-separated): neural-compressor, olive, nncf, "
                                        "openvino, ort-quantizer")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 30 if args.quick else 200
    from slimtune.studies import StudyError

    try:
        result = run(args)
    except StudyError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, default=str))
    else:
        print(table(result["rows"], result["batches"]))
        print(f"\nspeed-up: the fp32 baseline on ONNX Runtime over the model, timed interleaved in this process "
              f"(1 thread, {result['repeats']} samples, 10th percentile); accuracy on {result['test_samples']:,} test "
              "samples")
    for v in result["verdicts"]:
        print(verdict_line(v), file=sys.stderr if args.json else sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
