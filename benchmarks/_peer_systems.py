"""The peers of ``benchmarks/peers.py``: each one turns the task's fp32 ONNX model into
the model(s) it would deploy, one function per peer.

Every peer gets the same input (:class:`PeerInput`): the baseline's fp32 ONNX model as
slimtune times it (BatchNorm folded, dynamic batch), the task's calibration inputs (the
first training samples, as slimtune calibrates) and the validation split (for a peer
that searches: Olive).  None of them sees the test split.  A peer whose package is not
installed raises :class:`PeerMissing` with a one-line message and is skipped.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

#: Calibration inputs per batch fed to the ONNX Runtime-based quantizers.
CALIBRATION_BATCH = 64


@dataclass(frozen=True)
class PeerInput:
    """What every peer is given."""

    fp32_onnx: bytes
    calibration: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    workdir: Path
    quick: bool = False


@dataclass(frozen=True)
class PeerModel:
    """One model a peer deploys: an ONNX file and the runtime it runs on."""

    system: str
    runtime: str  # "onnxruntime" or "openvino"
    onnx: bytes
    note: str = ""


class PeerMissing(Exception):
    """A peer's package is not installed (the message says which and how to install it)."""


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Peers' progress bars, warnings and logs silenced while they quantize (their
    exceptions still propagate)."""
    logging.disable(logging.ERROR)  # their loggers write to streams bound at import (Olive's to stdout)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(logging.NOTSET)


def _reader_class(base: type) -> type:
    """A calibration data reader over an array in batches of :data:`CALIBRATION_BATCH`,
    subclassing ``base`` (ONNX Runtime's or Intel Neural Compressor's reader class)."""

    class Reader(base):  # type: ignore[misc, valid-type]
        def __init__(self, data: np.ndarray, input_name: str) -> None:
            self.data, self.input_name, self.at = data, input_name, 0

        def get_next(self):
            if self.at >= len(self.data):
                return None
            batch = self.data[self.at:self.at + CALIBRATION_BATCH]
            self.at += CALIBRATION_BATCH
            return {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)}

        def rewind(self) -> None:
            self.at = 0

    return Reader


def _input_name(model_bytes: bytes) -> str:
    import onnx

    return onnx.load_from_string(model_bytes).graph.input[0].name


def _write(inp: PeerInput, name: str, data: bytes) -> str:
    path = inp.workdir / name
    path.write_bytes(data)
    return str(path)


# -- ONNX Runtime's quantizer -------------------------------------------------------------
def ort_quantizer(inp: PeerInput) -> list[PeerModel]:
    """ONNX Runtime's ``quantize_static``: its defaults (QDQ, s8 activations and weights,
    per-tensor, MinMax), and the QOperator u8s8 layout Intel Neural Compressor and Olive
    use; both run on ONNX Runtime."""
    try:
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    except ImportError as exc:
        raise PeerMissing(f"onnxruntime.quantization is not importable ({exc})") from None
    reader = _reader_class(CalibrationDataReader)
    source = _write(inp, "fp32.onnx", inp.fp32_onnx)
    name = _input_name(inp.fp32_onnx)
    out = []
    for label, file, options in (
        ("ORT quantize_static (defaults)", "ort_default.onnx", {}),
        ("ORT quantize_static (QOperator u8s8)", "ort_qoperator.onnx",
         {"quant_format": QuantFormat.QOperator, "activation_type": QuantType.QUInt8,
          "weight_type": QuantType.QInt8}),
    ):
        target = str(inp.workdir / file)
        with _quiet():
            quantize_static(source, target, reader(inp.calibration, name), **options)
        out.append(PeerModel(label, "onnxruntime", Path(target).read_bytes(), note=", ".join(
            f"{k}={getattr(v, 'name', v)}" for k, v in options.items()) or "QDQ, QInt8/QInt8, per-tensor, MinMax"))
    return out


# -- NNCF and OpenVINO --------------------------------------------------------------------
def _require(module: str, install: str) -> None:
    """Raise :class:`PeerMissing` unless ``module`` can be imported."""
    if importlib.util.find_spec(module) is None:
        raise PeerMissing(f"{module} is not installed: {install}")


def _openvino() -> None:
    _require("openvino", "pip install 'slimtune[openvino]'")


def nncf_int8(inp: PeerInput) -> list[PeerModel]:
    """NNCF's post-training int8 (``nncf.quantize`` on the ONNX model, its CPU defaults,
    the calibration inputs one sample at a time), run on ONNX Runtime and on OpenVINO."""
    _require("nncf", "pip install 'slimtune[openvino]'")
    _openvino()  # slimtune's NNCF helper lives with its OpenVINO runtime
    import onnx

    from slimtune.search._runtimes._openvino import quantize_nncf

    with _quiet():
        quantized = quantize_nncf(onnx.load_from_string(inp.fp32_onnx), inp.calibration).SerializeToString()
    return [PeerModel("NNCF int8 on ONNX Runtime", "onnxruntime", quantized, note="nncf.quantize, QDQ"),
            PeerModel("NNCF int8 on OpenVINO", "openvino", quantized, note="nncf.quantize, QDQ")]


def openvino_default(inp: PeerInput) -> list[PeerModel]:
    """The fp32 model compiled by OpenVINO as it is (OpenVINO picks the precision: bf16
    on a CPU with bf16 kernels); no training, no calibration."""
    _openvino()
    return [PeerModel("OpenVINO default (fp32 model)", "openvino", inp.fp32_onnx, note="ov compile_model")]


# -- Intel Neural Compressor --------------------------------------------------------------
def neural_compressor(inp: PeerInput) -> list[PeerModel]:
    """Intel Neural Compressor's ONNX package (``onnx-neural-compressor``):
    ``quantize`` with its default ``StaticQuantConfig`` (QOperator, u8 activations,
    s8 weights, per-tensor, MinMax); the first configuration its ``autotune`` tries,
    which it keeps when accuracy holds."""
    try:
        from onnx_neural_compressor import data_reader
        from onnx_neural_compressor.quantization import config, quantize
    except ImportError as exc:
        raise PeerMissing("Intel Neural Compressor's ONNX package is not installed: "
                          f"pip install onnx-neural-compressor ({exc})") from None
    reader = _reader_class(data_reader.CalibrationDataReader)(inp.calibration, _input_name(inp.fp32_onnx))
    source = _write(inp, "fp32_inc.onnx", inp.fp32_onnx)
    target = inp.workdir / "inc.onnx"
    with _quiet():
        quantize(source, str(target), config.StaticQuantConfig(calibration_data_reader=reader,
                                                                calibration_sampling_size=len(inp.calibration)))
    import onnx

    quantized = onnx.load(str(target)).SerializeToString()  # its weights may sit in an external data file
    return [PeerModel("Intel Neural Compressor int8 (default)", "onnxruntime", quantized,
                      note="onnx_neural_compressor StaticQuantConfig()")]


# -- Olive ----------------------------------------------------------------------------------
#: Olive's search: TPE steps over ONNX Runtime quantization's parameters (``--quick``: fewer).
OLIVE_STEPS, OLIVE_QUICK_STEPS = 30, 3


def olive(inp: PeerInput) -> list[PeerModel]:
    """Olive (``olive-ai``): its ``OnnxQuantization`` pass with the pass's own search
    space (static/dynamic, QDQ/QOperator, types, per-channel, calibration method),
    searched by TPE for :data:`OLIVE_STEPS` steps against accuracy on the validation
    split (at most 0.01 lost) and latency, both measured by Olive itself; of its Pareto
    set, the fastest model within that (:func:`_olive_choice`)."""
    try:
        from olive.workflows import run as olive_run
    except ImportError as exc:
        raise PeerMissing(f"Olive is not installed: pip install olive-ai ({exc})") from None
    work = inp.workdir / "olive"
    work.mkdir(exist_ok=True)
    source = _write(inp, "fp32_olive.onnx", inp.fp32_onnx)
    np.savez(work / "calibration.npz", x=inp.calibration, y=np.zeros(len(inp.calibration), np.int64))
    np.savez(work / "val.npz", x=inp.x_val, y=inp.y_val)
    script = str(Path(__file__).with_name("_olive_data.py"))
    steps = OLIVE_QUICK_STEPS if inp.quick else OLIVE_STEPS

    def data(name: str, file: str, batch: int) -> dict:
        return {"name": name, "type": "DataContainer", "user_script": script,
                "load_dataset_config": {"type": "slimtune_arrays", "data_file": str(work / file),
                                        "input_name": _input_name(inp.fp32_onnx)},
                "post_process_data_config": {"type": "slimtune_argmax"}, "dataloader_config": {"batch_size": batch}}

    config = {
        "input_model": {"type": "ONNXModel", "model_path": source},
        "systems": {"local": {"type": "LocalSystem", "accelerators": [
            {"device": "cpu", "execution_providers": ["CPUExecutionProvider"]}]}},
        "data_configs": [data("calibration", "calibration.npz", CALIBRATION_BATCH), data("val", "val.npz", 64)],
        "evaluators": {"common": {"type": "OnnxEvaluator", "metrics": [
            {"name": "accuracy", "type": "accuracy", "data_config": "val", "sub_types": [
                {"name": "accuracy_score", "priority": 1, "goal": {"type": "max-degradation", "value": 0.01},
                 "metric_config": {"task": "multiclass", "num_classes": int(inp.y_val.max()) + 1}}]},
            {"name": "latency", "type": "latency", "data_config": "val", "sub_types": [
                {"name": "avg", "priority": 2}]},
        ]}},
        "passes": {"quantization": {"type": "OnnxQuantization", "data_config": "calibration"}},
        # max_iter: the strategy stops after max_iter + 1 proposals (invalid ones count); the
        # sampler's own max_samples is dropped by Olive 0.13's run config
        "search_strategy": {"execution_order": "joint", "sampler": "tpe", "max_iter": steps - 1},
        "evaluator": "common", "host": "local", "target": "local",
        "cache_dir": str(work / "cache"), "output_dir": str(work / "out"), "log_severity_level": 3,
    }
    with _quiet():
        output = olive_run(config)
    best = _olive_choice(output)
    path = Path(best.model_path)
    if path.is_dir():
        path = next(path.glob("*.onnx"))
    own = _olive_values(best.metrics_value)
    note = (f"Olive's own validation accuracy {own.get('accuracy-accuracy_score', float('nan')):.4f}, "
            f"its own latency {own.get('latency-avg', float('nan')):.2f} ms (batch 64)")
    return [PeerModel(f"Olive ({steps} TPE steps over ORT quantization)", "onnxruntime", path.read_bytes(), note=note)]


def _olive_values(metrics: "dict | None") -> dict[str, float]:
    return {k: float(v.get("value") if isinstance(v, dict) else v) for k, v in (metrics or {}).items()}


def _olive_choice(output):
    """The model a user takes from Olive's output (its Pareto set, as Olive measured it
    on validation data): the fastest whose accuracy is within the goal (at most 0.01 below
    the input model's); Olive's own ranking puts accuracy first and picks the most accurate one."""
    models = [m for m in (output.get_output_models() if output is not None else []) if m.model_path]
    if not models:
        raise PeerMissing("Olive returned no model")
    floor = _olive_values(output.get_input_model_metrics()).get("accuracy-accuracy_score", 0.0) - 0.01
    within = [m for m in models if _olive_values(m.metrics_value).get("accuracy-accuracy_score", -1.0) >= floor]
    return min(within, key=lambda m: _olive_values(m.metrics_value).get("latency-avg", float("inf"))) if within \
        else output.get_best_candidate()


#: The peers, in the table's order.
PEERS: dict[str, Callable[[PeerInput], list[PeerModel]]] = {
    "neural-compressor": neural_compressor,
    "olive": olive,
    "nncf": nncf_int8,
    "openvino": openvino_default,
    "ort-quantizer": ort_quantizer,
}


def build_peers(inp: PeerInput, names: "list[str] | None" = None,
                say: Callable[[str], None] = print) -> list[PeerModel]:
    """Every installed peer's models (``names``: only these); a missing peer is
    skipped with one line through ``say``, and so is a peer that fails (with why)."""
    os.environ.setdefault("NNCF_CI", "1")  # NNCF's telemetry off (read once, at import)
    models: list[PeerModel] = []
    for name, make in PEERS.items():
        if names is not None and name not in names:
            continue
        try:
            models.extend(make(inp))
        except PeerMissing as exc:
            say(f"skipped peer {name}: {exc}")
        except Exception as exc:  # noqa: BLE001 - a peer's own failure is reported, the others still run
            say(f"skipped peer {name}: it failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})")
    return models
