"""The machine fingerprint stored with every latency: what a timing depends on (CPU
model and its int8 features, cores, runtime versions, threads, batch size), and its
short id; latencies of different fingerprints are not comparable."""

from __future__ import annotations

import hashlib
import json
import os
import platform
from typing import Any

import torch

from slimtune.search._cpu import cpu_features, u8s8_can_saturate


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` says."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except ImportError:
        return None


def machine_fingerprint(runtime: str, threads: int, batch_size: int) -> tuple[dict[str, Any], str]:
    """What latencies depend on: CPU model, its int8-relevant features (``cpu_features``,
    ``None`` where unreadable) and whether ONNX Runtime's U8S8 kernels can saturate on
    it (``u8s8_saturates``), core count, runtime versions (OpenVINO's on the ``openvino`` runtime), threads and batch size; and
    a short id (sha256 of the sorted JSON, 12 hex digits)."""
    features = cpu_features()
    fingerprint = {
        "cpu": cpu_model(),
        "machine": platform.machine(),
        "cpu_features": list(features) if features is not None else None,
        "u8s8_saturates": u8s8_can_saturate(),
        "cores": os.cpu_count(),
        "runtime": runtime,
        "torch": torch.__version__,
        "onnxruntime": _version("onnxruntime"),
        "threads": int(threads),
        "batch_size": int(batch_size),
    }
    if runtime == "openvino":  # only then: the fingerprints of the other runtimes stay as they were
        fingerprint["openvino"] = _version("openvino")
    digest = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:12]
    return fingerprint, digest
