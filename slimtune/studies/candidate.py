"""A complete trial of a study: its metrics, its weights, the artifact that was timed.

Example:
    >>> cand = study.select(max_latency_ms=0.03)
    >>> model = cand.load()            # a runnable nn.Module (weights_only load)
    >>> cand.export("model.onnx")      # exactly the bytes that were measured

Running an exported ONNX model needs only ``onnxruntime`` and ``numpy``::

    import numpy as np, onnxruntime as ort
    session = ort.InferenceSession("model.onnx", providers=["CPUExecutionProvider"])
    outputs = session.run(None, {"input": x.astype(np.float32)})   # x: (batch, *input_shape)
    logits = outputs[0]

An early-exit candidate is one ONNX model whose ``If`` nodes choose the exit: it
returns ``logits`` and ``exit_index`` (``[1]``, int64; the last index is the final
classifier) and takes one sample at a time (batch 1; its metadata says ``batch: 1``).

An exported ONNX file says how to feed it in its ``metadata_props`` (see
:meth:`Candidate.metadata`: input name, shape and dtype, the task's preprocessing,
class count, study, trial, params, slimtune version)::

    meta = session.get_modelmeta().custom_metadata_map
    print(meta["preprocessing"], meta["input_shape"])
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from slimtune.search.measurement import Measurement
from slimtune.studies.errors import StudyError
from slimtune.studies.models import CandidateRecord, WeightsRecord

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

    from slimtune.studies.study import Study

#: Artifact format of each runtime.
FORMATS = {"onnxruntime": "onnx", "torch": "torchscript"}
RUNTIME_OF = {v: k for k, v in FORMATS.items()}
#: The format each file extension means (``export`` infers it, and refuses a mismatch).
EXTENSION_FORMATS = {".onnx": "onnx", ".pt": "torchscript", ".ts": "torchscript", ".torchscript": "torchscript",
                     ".slim": "packed"}


def format_for_path(path: "str | Path", format: str | None = None) -> str | None:
    """The format to write ``path`` in: ``format`` when given, else the one its extension
    means (``None`` for an extension that means none).

    Raises:
        StudyError: ``format`` contradicts the extension (e.g. ONNX bytes into ``best.pt``).
    """
    suffix = Path(path).suffix.lower()
    implied = EXTENSION_FORMATS.get(suffix)
    if format is not None and implied is not None and format != implied:
        raise StudyError(f"`--out` {str(path)!r} ends in {suffix}, which means {implied}, but `--format` is {format!r}; "
                         f"use a {_extensions(format)} file or drop --format.")
    return format or implied


def _extensions(fmt: str) -> str:
    return "/".join(ext for ext, f in EXTENSION_FORMATS.items() if f == fmt) or "file of that"


def _onnx_input(data: bytes) -> dict[str, Any]:
    """Name, shape (``"batch"`` for a free dimension) and dtype of an ONNX model's input,
    and its output names."""
    import onnx
    from onnx import helper

    graph = onnx.load_from_string(data).graph
    first = graph.input[0]
    tensor = first.type.tensor_type
    shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "batch") for d in tensor.shape.dim]
    return {"input_name": first.name, "input_shape": shape,
            "input_dtype": str(helper.tensor_dtype_to_np_dtype(tensor.elem_type)),
            "outputs": [o.name for o in graph.output]}


def with_onnx_metadata(data: bytes, metadata: dict[str, Any]) -> bytes:
    """The ONNX model ``data`` with ``metadata`` in its ``metadata_props`` (strings; other
    values as JSON).  The graph, and so what was timed, is unchanged."""
    import onnx

    model = onnx.load_from_string(data)
    props = {p.key: p.value for p in model.metadata_props}
    props.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()})
    onnx.helper.set_model_props(model, props)
    return model.SerializeToString()


class Candidate:
    """A complete trial: ``row`` (the JSON row), ``measurement``, weights and artifact."""

    def __init__(self, study: "Study", row: dict[str, Any]) -> None:
        self.study = study
        self.row = dict(row)

    # -- metrics -------------------------------------------------------------------
    @property
    def trial(self) -> int:
        return int(self.row["trial"])

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.row["params"])

    @property
    def accuracy(self) -> float:
        return float(self.row["accuracy"])

    @property
    def latency_ms(self) -> float:
        return float(self.row["latency_ms"])

    @property
    def size_bytes(self) -> int:
        return int(self.row["size_bytes"])

    @property
    def macs(self) -> int:
        return int(self.row["macs"])

    def to_dict(self) -> dict[str, Any]:
        return dict(self.row)

    def metadata(self) -> dict[str, Any]:
        """How to feed this model, as written into an exported ONNX file's
        ``metadata_props`` (and given by ``slimtune select --json``)."""
        import slimtune

        task = self.study.task
        data, fmt = self.artifact()
        if fmt == "onnx":
            shape = _onnx_input(data)
        else:
            shape = {"input_name": None, "input_shape": ["batch", *task.input_shape], "input_dtype": "float32",
                     "outputs": ["logits"]}
        exits = any(str(k).startswith("exits.") and str(k).endswith(".enabled") and v is True
                    for k, v in self.params.items())
        if exits:
            shape["input_shape"] = [1, *shape["input_shape"][1:]]
        return {
            **shape,
            "batch": "1" if exits else "any",  # an early-exit model takes one sample at a time
            "preprocessing": task.preprocessing or ("not stated by the task: feed inputs exactly as the task's "
                                                    "tensors hold them"),
            "num_classes": task.num_classes,
            "task": task.name,
            "study": self.study.name,
            "trial": self.trial,
            "params": self.params,
            "timed_format": fmt,
            "slimtune_version": slimtune.__version__,
        }

    def _record(self, *, with_weights: bool = False) -> tuple[CandidateRecord, WeightsRecord | None]:
        db, study_id = self.study._db, self.study._record.id  # noqa: SLF001 - same package
        with db.session() as session:
            rec = session.scalar(select(CandidateRecord).where(CandidateRecord.study_id == study_id,
                                                               CandidateRecord.trial_number == self.trial))
            if rec is None:
                raise StudyError(f"Trial {self.trial} of study {self.study.name!r} has no slimtune record "
                                 "(was it added with plain Optuna?).")
            weights = session.get(WeightsRecord, rec.id) if with_weights else None
        if with_weights and weights is None:
            raise StudyError(f"Trial {self.trial} of study {self.study.name!r} has no stored weights.")
        return rec, weights

    @property
    def measurement(self) -> Measurement:
        rec, _ = self._record()
        return Measurement.from_dict(rec.measurement or {})

    @property
    def recipe(self) -> dict[str, Any]:
        rec, _ = self._record()
        return dict(rec.recipe or {})

    @property
    def artifact_format(self) -> str:
        return FORMATS.get(self.row.get("runtime") or "", "onnx")

    # -- weights and model ---------------------------------------------------------
    def state_dict(self) -> dict[str, "torch.Tensor"]:
        """The stored weights (read with ``torch.load(..., weights_only=True)``)."""
        import torch

        _, weights = self._record(with_weights=True)
        return torch.load(io.BytesIO(weights.state_dict), map_location="cpu", weights_only=True)

    def artifact(self) -> tuple[bytes, str]:
        """The bytes that were timed and their format (``onnx`` or ``torchscript``)."""
        _, weights = self._record(with_weights=True)
        if not weights.artifact:
            raise StudyError(f"Trial {self.trial} of study {self.study.name!r} has no stored artifact.")
        return bytes(weights.artifact), weights.artifact_format or self.artifact_format

    def load(self) -> "nn.Module":
        """A runnable ``nn.Module`` (eval mode) rebuilt from the recipe and the stored
        weights, without training; early-exit models apply their thresholds in forward."""
        rec, _ = self._record()
        evaluator = _structure_evaluator(self.study)
        return evaluator.rebuild(dict(rec.recipe or {}), self.state_dict())

    def export(self, path: "str | Path", format: str | None = None) -> Path:
        """Write the model to ``path``.

        Args:
            format: ``onnx`` or ``torchscript``; default the one the extension means
                (``.onnx``; ``.pt``, ``.ts``, ``.torchscript``), else the format it was
                timed in (ONNX for onnxruntime studies), in which case the file holds the
                measured model (ONNX files also get :meth:`metadata` in their
                ``metadata_props``).  The other format is compiled anew from the stored
                weights (with a warning: that file was not the one timed).

        Raises:
            StudyError: ``format`` contradicts the file's extension.
        """
        data, timed_format = self.artifact()
        fmt = format_for_path(path, format) or timed_format
        if fmt not in RUNTIME_OF:
            raise StudyError(f"`format` must be one of {', '.join(RUNTIME_OF)}, but got {format!r}.")
        path = Path(path)
        if path.parent and not path.parent.exists():
            raise StudyError(f"Cannot write {str(path)!r}: the directory {str(path.parent)!r} does not exist.")
        if fmt != timed_format:
            from slimtune.search.runtime import compile_model

            warnings.warn(f"Trial {self.trial} was timed as {timed_format}; the {fmt} file is compiled anew from its "
                          "weights and was not itself timed.", UserWarning, stacklevel=2)
            settings = self.study.settings
            compiled = compile_model(self.load(), runtime=RUNTIME_OF[fmt], bits=int(self.params.get("quant.bits", 32)),
                                     calibration=self.study.task.data.x_train[: settings.calibration_size],
                                     threads=settings.threads)
            data = compiled.artifact
        if fmt == "onnx":
            data = with_onnx_metadata(data, self.metadata())
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
        return path

    def __repr__(self) -> str:
        return (f"Candidate(study={self.study.name!r}, trial={self.trial}, accuracy={self.accuracy:.4f}, "
                f"latency_ms={self.latency_ms:.4g}, size_bytes={self.size_bytes})")


def _structure_evaluator(study: "Study"):
    """An Evaluator whose 'baseline' is the untrained architecture: rebuilding a
    candidate overwrites every weight, so the baseline need not be (re)trained."""
    import math

    from slimtune.search.baseline import Baseline
    from slimtune.search.candidate import Evaluator

    task = study.task
    baseline = Baseline(task=task, model=task.build_model().eval(), teacher_logits=None, val_accuracy=math.nan,
                        test_accuracy=math.nan, seed=study.settings.seed, cached=False)
    return Evaluator(task, study.space, study.settings, baseline)
