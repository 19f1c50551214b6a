"""A complete trial of a study: its metrics, its weights, the artifact that was timed.

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

import contextlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slimtune.search._measurement import Measurement
from slimtune.studies._errors import StudyError
from slimtune.studies._schema import CandidateRecord, WeightsRecord

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

    from slimtune.studies._study import Study

#: Artifact format of each runtime.
FORMATS = {"onnxruntime": "onnx", "torch": "torchscript"}
RUNTIME_OF = {v: k for k, v in FORMATS.items()}
#: The packed model file format (``.slim``) of :mod:`slimtune.search.packed`.
PACKED = "packed"
#: The format each file extension means (``export`` infers it, and refuses a mismatch).
EXTENSION_FORMATS = {".onnx": "onnx", ".pt": "torchscript", ".ts": "torchscript", ".torchscript": "torchscript",
                     ".slim": "packed"}


def format_for_path(path: "str | Path", format: str | None = None) -> str | None:
    """The format to write ``path`` in: ``format`` when given, else the one its extension
    means (``None`` for a name without an extension: the format that was timed).

    Raises:
        StudyError: ``format`` contradicts the extension (e.g. ONNX bytes into ``best.pt``),
            or the extension names a format slimtune does not write (``model.tflite``)
            and no ``format`` is given.
    """
    suffix = Path(path).suffix.lower()
    implied = EXTENSION_FORMATS.get(suffix)
    if format is None and suffix and implied is None:
        known = ", ".join(EXTENSION_FORMATS)
        raise StudyError(f"`--out` {str(path)!r} ends in {suffix}, a format slimtune does not write (it writes the "
                         f"timed ONNX or TorchScript artifact, or the packed file): use one of {known}, or give "
                         "--format to write that format under this name.")
    if format is not None and implied is not None and format != implied:
        raise StudyError(f"`--out` {str(path)!r} ends in {suffix}, which means {implied}, but `--format` is {format!r}; "
                         f"use a {_extensions(format)} file or drop --format.")
    return format or implied


def _extensions(fmt: str) -> str:
    return "/".join(ext for ext, f in EXTENSION_FORMATS.items() if f == fmt) or "file of that"


def _tensor_input(task: Any) -> dict[str, Any]:
    """How to feed a TorchScript artifact: a float32 batch of the task's input shape."""
    return {"input_name": None, "input_shape": ["batch", *task.input_shape], "input_dtype": "float32",
            "outputs": ["logits"], "batch": "any"}


def _onnx_metadata(data: bytes) -> dict[str, Any]:
    """An ONNX model's ``metadata_props``, JSON values decoded."""
    import onnx

    out: dict[str, Any] = {}
    for prop in onnx.load_from_string(data).metadata_props:
        try:
            out[prop.key] = json.loads(prop.value)
        except ValueError:
            out[prop.key] = prop.value
    return out


def with_onnx_metadata(data: bytes, metadata: dict[str, Any]) -> bytes:
    """The ONNX model ``data`` with ``metadata`` in its ``metadata_props`` (the graph, and
    so what was timed, is unchanged): for artifacts measured by an older slimtune."""
    import onnx

    from slimtune.search._runtimes import set_onnx_metadata

    model = onnx.load_from_string(data)
    set_onnx_metadata(model, metadata)
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
        rec, _ = self._record()
        data, fmt = self.artifact()
        stored = (rec.info or {}).get("artifact_metadata")
        if fmt == "onnx":
            embedded = _onnx_metadata(data)
            if embedded.get("slimtune_version"):
                return embedded
        if stored:
            return {**_tensor_input(self.study.task), **stored}
        return self._rebuilt_metadata(data, fmt)

    def _rebuilt_metadata(self, data: bytes, fmt: str) -> dict[str, Any]:
        from slimtune.search._pipeline import artifact_metadata
        from slimtune.search._runtimes import onnx_input_metadata

        task = self.study.task
        if fmt == "onnx":
            import onnx

            shape = onnx_input_metadata(onnx.load_from_string(data))
        else:
            shape = _tensor_input(task)
        return {**shape, **artifact_metadata(task, self.params, fmt), "study": self.study.name, "trial": self.trial}

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
        rec, _ = self._record()
        evaluator = _structure_evaluator(self.study)
        return evaluator.rebuild(dict(rec.recipe or {}), self.state_dict())

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
        data, timed_format = self.artifact()
        fmt = format_for_path(path, format) or timed_format
        if fmt not in (*RUNTIME_OF, PACKED):
            raise StudyError(f"`format` must be one of {', '.join((*RUNTIME_OF, PACKED))}, but got {format!r}.")
        path = Path(path)
        if path.parent and not path.parent.exists():
            raise StudyError(f"Cannot write {str(path)!r}: the directory {str(path.parent)!r} does not exist.")
        if path.is_dir():
            raise StudyError(f"Cannot write {str(path)!r}: it is a directory.")
        if fmt == PACKED:
            return self._export_packed(path, data, timed_format)
        if fmt != timed_format:
            from slimtune.search._runtimes import compile_model

            warnings.warn(f"Trial {self.trial} was timed as {timed_format}; the {fmt} file is compiled anew from its "
                          "weights and was not itself timed.", UserWarning, stacklevel=2)
            settings = self.study.settings
            compiled = compile_model(self.load(), runtime=RUNTIME_OF[fmt], bits=self.weight_bits,
                                     calibration=self.study.task.data.train.head(settings.calibration_size),
                                     threads=settings.threads)
            data = compiled.artifact
        if fmt == "onnx" and fmt == timed_format and not _onnx_metadata(data).get("slimtune_version"):
            data = with_onnx_metadata(data, self.metadata())  # measured before artifacts carried it
        write_atomically(path, data)
        return path

    def packed(self) -> bytes:
        """The packed model file of the timed artifact (what ``export(format="packed")`` writes)."""
        return self._pack(*self.artifact())

    def _pack(self, data: bytes, timed_format: str) -> bytes:
        from slimtune.search.packed import pack

        return pack(data, artifact_format=timed_format, bits=self.weight_bits)

    def _export_packed(self, path: Path, data: bytes, timed_format: str) -> Path:
        packed = self._pack(data, timed_format)
        if self.row.get("size_bytes") is not None and len(packed) != self.size_bytes:
            warnings.warn(f"Trial {self.trial}'s stored size_bytes ({self.size_bytes:,}) is not the length of its "
                          f"packed file ({len(packed):,} bytes): it was measured by an older slimtune.",
                          UserWarning, stacklevel=3)
        write_atomically(path, packed)
        return path

    def __repr__(self) -> str:
        return (f"Candidate(study={self.study.name!r}, trial={self.trial}, accuracy={self.accuracy:.4f}, "
                f"latency_ms={self.latency_ms:.4g}, size_bytes={self.size_bytes})")


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and
    ``os.replace``: ``path`` is either the old file or the whole new one, and no
    temporary file is left behind when writing fails.

    Raises:
        StudyError: the file cannot be written (naming the path and the OS reason).
    """
    directory = path.parent if str(path.parent) else Path(".")
    tmp_name = None
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, path.stat().st_mode & 0o777 if path.exists() else 0o644)  # mkstemp makes 0600
        os.replace(tmp_name, path)
        tmp_name = None
    except OSError as exc:
        raise StudyError(f"Cannot write {str(path)!r}: {exc.strerror or exc}.") from None
    finally:
        if tmp_name is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)


def _structure_evaluator(study: "Study"):
    """An Evaluator whose 'baseline' is the untrained architecture: rebuilding a
    candidate overwrites every weight, so the baseline need not be (re)trained."""
    import math

    from slimtune.search._baseline import Baseline
    from slimtune.search._pipeline import Evaluator

    task = study.task
    baseline = Baseline(task=task, model=task.build_model().eval(), teacher_logits=None, val_accuracy=math.nan,
                        test_accuracy=math.nan, seed=study.settings.seed, cached=False)
    return Evaluator(task, study.space, study.settings, baseline)
