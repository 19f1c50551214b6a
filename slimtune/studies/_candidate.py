"""A complete trial of a study: its metrics, its weights, the artifact that was timed
(loading and exporting it is :mod:`slimtune.search._export`'s).

Example:
    >>> cand = study.select(max_latency_ms=0.03)
    >>> model = cand.load()            # a runnable nn.Module (weights_only load)
    >>> cand.export("model.onnx")      # exactly the bytes that were measured
    >>> cand.export("model.slim", format="packed")   # the same, packed: size_bytes long

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

A packed file (``format="packed"``, see :mod:`slimtune.search.packed`) is the timed
artifact in its compact form; its length is the trial's ``size_bytes``, and
``slimtune.search.packed.load_packed`` gives back the artifact's exact bytes::

    from slimtune.search.packed import load_packed
    artifact, meta = load_packed("model.slim")      # needs numpy only
    session = ort.InferenceSession(artifact, providers=["CPUExecutionProvider"])
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slimtune.search._export import FORMATS, PACKED, ExportError
from slimtune.search._measurement import Measurement
from slimtune.studies._errors import StudyError
from slimtune.studies._schema import CandidateRecord, WeightsRecord

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

    from slimtune.studies._study import Study


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
    def artifact_bytes(self) -> int | None:
        """Length of the timed artifact (None for trials measured before it was recorded)."""
        value = self.row.get("artifact_bytes")
        return int(value) if value else None

    @property
    def macs(self) -> int:
        return int(self.row["macs"])

    def to_dict(self) -> dict[str, Any]:
        return dict(self.row)

    def metadata(self) -> dict[str, Any]:
        """How to feed this model: what its ONNX artifact carries in ``metadata_props``
        (written when it was measured: input name, shape, dtype and batch, the task's
        preprocessing, class count, study, trial, params, slimtune version), also given
        by ``slimtune select --json``.  Trials measured by an older slimtune get the
        same fields from the study's task."""
        from slimtune.search._export import artifact_feeding

        rec, _ = self._record()
        data, fmt = self.artifact()
        return artifact_feeding(data, fmt, (rec.info or {}).get("artifact_metadata"), lambda: self.study.task,
                                self.params, study=self.study.name, trial=self.trial)

    def _record(self, *, with_weights: bool = False) -> tuple[CandidateRecord, WeightsRecord | None]:
        storage, study_id = self.study._storage, self.study._record.id  # noqa: SLF001 - same package
        rec, weights = storage.candidate(study_id, self.trial, with_weights=with_weights)
        if rec is None:
            raise StudyError(f"Trial {self.trial} of study {self.study.name!r} has no slimtune record "
                             "(was it added with plain Optuna?).")
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
    def weight_bits(self) -> int:
        """The bits the weights were compiled at: from the stored recipe, or (for a trial
        stored before recipes carried them) as the knobs say for its parameters."""
        bits = self.recipe.get("weight_bits")
        if bits is None:
            from slimtune.spaces._space import weight_bits

            return weight_bits(self.params)
        return int(bits)

    @property
    def artifact_format(self) -> str:
        return FORMATS.get(self.row.get("runtime") or "", "onnx")

    # -- weights and model ---------------------------------------------------------
    def state_dict(self) -> dict[str, "torch.Tensor"]:
        """The stored weights (read with ``torch.load(..., weights_only=True)``: a
        tampered blob is refused with a :class:`StudyError`, never executed)."""
        from slimtune.search._weights import WeightsError, load_state_dict

        _, weights = self._record(with_weights=True)
        try:
            return load_state_dict(weights.state_dict or b"",
                                   what=f"The stored weights of trial {self.trial} of study {self.study.name!r}")
        except WeightsError as exc:
            raise StudyError(str(exc)) from None

    def artifact(self) -> tuple[bytes, str]:
        """The bytes that were timed and their format (``onnx`` or ``torchscript``)."""
        _, weights = self._record(with_weights=True)
        if not weights.artifact:
            raise StudyError(f"Trial {self.trial} of study {self.study.name!r} has no stored artifact.")
        return bytes(weights.artifact), weights.artifact_format or self.artifact_format

    def load(self) -> "nn.Module":
        """A runnable ``nn.Module`` (eval mode) rebuilt from the recipe and the stored
        weights, without training; early-exit models apply their thresholds in forward."""
        from slimtune.search._export import rebuild_model

        rec, _ = self._record()
        study = self.study
        return rebuild_model(study.task, study.space, study.settings, dict(rec.recipe or {}), self.state_dict())

    def export(self, path: "str | Path", format: str | None = None) -> Path:
        """Write the model to ``path``.

        Args:
            format: ``onnx``, ``torchscript`` or ``packed``; default the one the
                extension means (``.onnx``; ``.pt``, ``.ts``, ``.torchscript``;
                ``.slim``), else the format it was timed in (ONNX for onnxruntime
                studies), in which case the file holds the measured model (ONNX files
                also get :meth:`metadata` in their ``metadata_props``; the graph is
                unchanged).  ``packed`` writes the timed bytes as a packed model file
                (:mod:`slimtune.search.packed`), whose length is the trial's
                ``size_bytes`` (a warning says so if it is not, e.g. for a trial measured
                by an older slimtune).  The other runtime's format is compiled anew from
                the stored weights (with a warning: that file was not the one timed).

        Raises:
            StudyError: ``format`` contradicts the file's extension, or the file cannot
                be written.
        """
        from slimtune.search import _export

        try:
            data, timed_format = self.artifact()
            fmt = _export.format_for_path(path, format) or timed_format
            path = _export.check_target(path, fmt, format)
            if fmt == PACKED:
                return self._export_packed(path, data, timed_format)
            if fmt != timed_format:
                warnings.warn(f"Trial {self.trial} was timed as {timed_format}; the {fmt} file is compiled anew from "
                              "its weights and was not itself timed.", UserWarning, stacklevel=2)
                data = _export.compile_as(self.load(), fmt, bits=self.weight_bits, task=self.study.task,
                                          settings=self.study.settings, encoding=self.recipe.get("weight_encoding"))
            if fmt == "onnx" and fmt == timed_format and not _export.onnx_metadata(data).get("slimtune_version"):
                data = _export.with_onnx_metadata(data, self.metadata())  # measured before artifacts carried it
            _export.write_atomically(path, data)
            return path
        except ExportError as exc:
            raise StudyError(str(exc)) from None

    def packed(self) -> bytes:
        """The packed model file of the timed artifact (what ``export(format="packed")`` writes)."""
        from slimtune.search._export import pack_artifact

        return pack_artifact(*self.artifact(), bits=self.weight_bits, encoding=self.recipe.get("weight_encoding"))

    def _export_packed(self, path: Path, data: bytes, timed_format: str) -> Path:
        from slimtune.search._export import pack_artifact, write_atomically

        packed = pack_artifact(data, timed_format, bits=self.weight_bits, encoding=self.recipe.get("weight_encoding"))
        if self.row.get("size_bytes") is not None and len(packed) != self.size_bytes:
            warnings.warn(f"Trial {self.trial}'s stored size_bytes ({self.size_bytes:,}) is not the length of its "
                          f"packed file ({len(packed):,} bytes): it was measured by an older slimtune.",
                          UserWarning, stacklevel=3)
        write_atomically(path, packed)
        return path

    def __repr__(self) -> str:
        return (f"Candidate(study={self.study.name!r}, trial={self.trial}, accuracy={self.accuracy:.4f}, "
                f"latency_ms={self.latency_ms:.4g}, size_bytes={self.size_bytes})")
