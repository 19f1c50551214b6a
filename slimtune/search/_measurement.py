"""Measurements are values: a frozen dataclass passed from search to studies to widgets."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

#: The runtimes a candidate can be compiled for and timed on.
RUNTIMES = ("onnxruntime", "openvino", "torch")


@dataclass(frozen=True)
class Measurement:
    """What was measured on one model.

    Attributes:
        accuracy: top-1 accuracy on the **validation** split, computed with the
            artifact that is timed (for ``onnxruntime`` the very ONNX model that is
            exported): the search objective.
        test_accuracy: top-1 accuracy of the same artifact on the **test** split,
            measured once per complete trial and reported apart; samplers, tuners,
            early stopping and exit calibration never see it.
        latency_ms: a low percentile (``p10``) of repeated timings after warm-up (for
            early-exit models the mean over real held-out samples run one at a time,
            each counted with that percentile of the exit path it took; see
            ``latency_kind``: ``median`` / ``mean_of_path_medians`` in measurements
            stored before), read on ``latency_clock``.
        latency_clock: ``cpu`` (the calling thread's on-CPU time: one thread, a runtime
            that computes on the calling thread) or ``wall``
            (:mod:`slimtune.search._timing`); ``wall`` for measurements stored before.
        latency_wall_ms: the same statistic of the same calls on the wall clock (``None``
            when not recorded).
        latency_p95_ms: 95th percentile of the same timings.
        latency_samples_ms: the raw timings.
        size_bytes: length in bytes of the packed model file of the timed artifact
            (``export --format packed``: b-bit packed weights, sparse bitmask + non-zeros
            for weight-pruned layers, the graph; see :mod:`slimtune.search.packed`).
        artifact_bytes: length in bytes of the artifact the runtime loads and that was
            timed (the ONNX model or TorchScript archive; ``export`` writes it); 0 when
            not recorded (measurements stored before it existed).
        macs: multiply-accumulates per sample (early-exit models: weighted by exit rates).
        params_count: number of (non-zero for weight pruning) parameters.
        runtime: ``onnxruntime``, ``openvino`` or ``torch``.
        batch_size, threads: how latency was timed.
        precision: what the kernels computed in, as the runtime chose it (``fp32``,
            ``bf16``, ``int8``); with ``runtime``, ``batch_size`` and ``threads`` the
            target the latency was timed on (:meth:`target`); ``None`` in
            measurements stored before it was recorded.
        fingerprint: machine and runtime fingerprint (cpu, versions, threads, batch).
        fingerprint_id: short hash of ``fingerprint``.
        kernel_bits: the bit width of the kernels that actually ran (32 or 8).
        int8_format: the int8 kernels' format (``u8s8``, ``u8u8``, ``s8s8``;
            ``u8s8-reduce-range`` for torch), ``None`` without int8 kernels.
        int8_layout: ONNX Runtime's int8 layout (``qdq`` or ``qoperator``), and
            ``int8_layout_ms`` both layouts' latencies when both were timed to choose it.
        runtime_agreement: share of the evaluated samples (the first validation samples, in steps of 512
            until the share is settled above 99%, at most 2,048) on which the runtime predicts
            the class that the torch model with the same b-bit weights (float
            activations) predicts; early-exit models are compared at the exit the
            runtime took.  ``None`` when not measured.
        exit_rates: fraction of test samples leaving at each exit, the last entry being
            the final classifier; ``None`` for models without exits.
        reference_latency_ms: the baseline timed interleaved in the same run, on the
            same inputs, with the same statistic as ``latency_ms`` (median, or the mean
            over samples for early-exit models).
        flags: human-readable notes about the measurement (e.g. no 4-bit kernel).
    """

    accuracy: float
    latency_ms: float
    size_bytes: int
    macs: int
    artifact_bytes: int = 0
    latency_p95_ms: float = float("nan")
    latency_samples_ms: tuple[float, ...] = ()
    params_count: int = 0
    runtime: str = "onnxruntime"
    batch_size: int = 1
    threads: int = 1
    latency_kind: str = "median"
    fingerprint: dict[str, Any] = field(default_factory=dict)
    fingerprint_id: str = ""
    kernel_bits: int = 32
    int8_format: str | None = None
    runtime_agreement: float | None = None
    exit_rates: tuple[float, ...] | None = None
    reference_latency_ms: float | None = None
    flags: tuple[str, ...] = ()
    test_accuracy: float | None = None
    latency_clock: str = "wall"
    latency_wall_ms: float | None = None
    precision: str | None = None
    int8_layout: str | None = None
    int8_layout_ms: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["latency_samples_ms"] = list(self.latency_samples_ms)
        data["flags"] = list(self.flags)
        if self.exit_rates is not None:
            data["exit_rates"] = list(self.exit_rates)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Measurement":
        known = {f for f in cls.__dataclass_fields__}
        kwargs = {k: v for k, v in data.items() if k in known}
        for key in ("latency_samples_ms", "flags"):
            if key in kwargs and kwargs[key] is not None:
                kwargs[key] = tuple(kwargs[key])
        if kwargs.get("exit_rates") is not None:
            kwargs["exit_rates"] = tuple(kwargs["exit_rates"])
        return cls(**kwargs)

    def target(self) -> dict[str, Any]:
        """The target the latency was timed on: runtime, precision, batch size, threads."""
        return measurement_target(self.to_dict())

    @property
    def speedup(self) -> float | None:
        """``reference_latency_ms / latency_ms``: the speed-up against the baseline
        timed in the same run (``None`` without a reference)."""
        return same_run_speedup(self.reference_latency_ms, self.latency_ms)


def same_run_speedup(reference_latency_ms: float | None, latency_ms: float | None) -> float | None:
    """The baseline's latency, timed in the same run, over the candidate's (``None``
    when either is missing): the one definition of a speed-up (measurements, rows, CLI
    tables).  This module imports nothing heavy, so the CLI can use it."""
    if reference_latency_ms is None or not latency_ms:
        return None
    return float(reference_latency_ms) / float(latency_ms)


def measurement_target(measurement: "dict[str, Any] | None") -> dict[str, Any] | None:
    """The target of a stored measurement (a dict): ``runtime``, ``precision`` (as the
    runtime chose it; ``int8``/``fp32`` from ``kernel_bits`` where it was not stored),
    ``batch_size`` and ``threads``; ``None`` without a measurement."""
    if not measurement or not measurement.get("runtime"):
        return None
    precision = measurement.get("precision")
    if precision is None and measurement.get("kernel_bits") is not None:
        precision = "int8" if measurement.get("kernel_bits") == 8 else "fp32"
    return {"runtime": measurement.get("runtime"), "precision": precision,
            "batch_size": measurement.get("batch_size", 1), "threads": measurement.get("threads", 1)}


def target_label(target: "dict[str, Any] | None") -> str:
    """``openvino bf16, batch 8, 1 thread``: a target in words (``?`` without one)."""
    if not target:
        return "?"
    threads = int(target.get("threads") or 1)
    precision = f" {target['precision']}" if target.get("precision") else ""
    return (f"{target.get('runtime')}{precision}, batch {target.get('batch_size')}, "
            f"{threads} thread{'s' if threads != 1 else ''}")
