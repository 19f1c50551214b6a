"""Loading and exporting a stored candidate: the formats an artifact is written in, what
an exported file says about how to feed it, rebuilding the model from its recipe and
weights, compiling it for the other runtime, packing it, writing files safely.

The study's :class:`~slimtune.studies._candidate.Candidate` reads the stored record and
calls these; they know runtimes and the packed format, not the study database.

Example:
    >>> fmt = format_for_path("model.slim")          # "packed"
    >>> write_atomically(Path("model.slim"), pack_artifact(data, "onnx", bits=8))
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

    from slimtune.search._pipeline import EvalSettings
    from slimtune.spaces._space import Space
    from slimtune.tasks._task import Task

#: Artifact format of each runtime (OpenVINO's artifact is the ONNX model it compiled).
FORMATS = {"onnxruntime": "onnx", "openvino": "onnx", "torch": "torchscript"}
#: The runtime a format is compiled anew for (the first runtime of that format: ONNX Runtime for ``onnx``).
RUNTIME_OF = {fmt: next(r for r, f in FORMATS.items() if f == fmt) for fmt in dict.fromkeys(FORMATS.values())}
#: The packed model file format (``.slim``) of :mod:`slimtune.search.packed`.
PACKED = "packed"
#: The format each file extension means (``export`` infers it, and refuses a mismatch).
EXTENSION_FORMATS = {".onnx": "onnx", ".pt": "torchscript", ".ts": "torchscript", ".torchscript": "torchscript",
                     ".slim": "packed"}


class ExportError(ValueError):
    """A file cannot be written as asked: a format that contradicts the extension, an
    unknown format, a path that cannot be written (one line, naming it)."""


def format_for_path(path: "str | Path", format: str | None = None) -> str | None:
    """The format to write ``path`` in: ``format`` when given, else the one its extension
    means (``None`` for a name without an extension: the format that was timed).

    Raises:
        ExportError: ``format`` contradicts the extension (e.g. ONNX bytes into ``best.pt``),
            or the extension names a format slimtune does not write (``model.tflite``)
            and no ``format`` is given.
    """
    suffix = Path(path).suffix.lower()
    implied = EXTENSION_FORMATS.get(suffix)
    if format is None and suffix and implied is None:
        known = ", ".join(EXTENSION_FORMATS)
        raise ExportError(f"`--out` {str(path)!r} ends in {suffix}, a format slimtune does not write (it writes the "
                          f"timed ONNX or TorchScript artifact, or the packed file): use one of {known}, or give "
                          "--format to write that format under this name.")
    if format is not None and implied is not None and format != implied:
        raise ExportError(f"`--out` {str(path)!r} ends in {suffix}, which means {implied}, but `--format` is {format!r}; "
                          f"use a {_extensions(format)} file or drop --format.")
    return format or implied


def _extensions(fmt: str) -> str:
    return "/".join(ext for ext, f in EXTENSION_FORMATS.items() if f == fmt) or "file of that"


def check_target(path: "str | Path", fmt: str, format: str | None) -> Path:
    """``path`` as a :class:`Path`, once ``fmt`` (the format chosen; ``format``, the one
    asked for) is a known format and the file can be created there.

    Raises:
        ExportError: an unknown format, a missing directory, a directory as the file.
    """
    if fmt not in (*RUNTIME_OF, PACKED):
        raise ExportError(f"`format` must be one of {', '.join((*RUNTIME_OF, PACKED))}, but got {format!r}.")
    path = Path(path)
    if path.parent and not path.parent.exists():
        raise ExportError(f"Cannot write {str(path)!r}: the directory {str(path.parent)!r} does not exist.")
    if path.is_dir():
        raise ExportError(f"Cannot write {str(path)!r}: it is a directory.")
    return path


# -- what an exported file says about itself ------------------------------------------------
def tensor_input(task: Any) -> dict[str, Any]:
    """How to feed a TorchScript artifact: a float32 batch of the task's input shape."""
    return {"input_name": None, "input_shape": ["batch", *task.input_shape], "input_dtype": "float32",
            "outputs": ["logits"], "batch": "any"}


def onnx_metadata(data: bytes) -> dict[str, Any]:
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


def artifact_feeding(data: bytes, fmt: str, stored: Mapping[str, Any] | None, get_task: Callable[[], "Task"],
                     params: Mapping[str, Any], *, study: str, trial: int) -> dict[str, Any]:
    """How to feed the artifact ``data`` (format ``fmt``): what an ONNX artifact carries
    in its ``metadata_props``; else ``stored`` (the metadata recorded when it was
    measured) with the task's input; else the same fields rebuilt from the task
    (a trial measured by an older slimtune).  ``get_task()`` is called only then."""
    if fmt == "onnx":
        embedded = onnx_metadata(data)
        if embedded.get("slimtune_version"):
            return embedded
    if stored:
        return {**tensor_input(get_task()), **stored}
    from slimtune.search._pipeline import artifact_metadata
    from slimtune.search._runtimes import onnx_input_metadata

    task = get_task()
    if fmt == "onnx":
        import onnx

        shape = onnx_input_metadata(onnx.load_from_string(data))
    else:
        shape = tensor_input(task)
    return {**shape, **artifact_metadata(task, dict(params), fmt), "study": study, "trial": trial}


# -- the model, compiled, packed -----------------------------------------------------------
def rebuild_model(task: "Task", space: "Space", settings: "EvalSettings", recipe: Mapping[str, Any],
                  state_dict: dict[str, "torch.Tensor"]) -> "nn.Module":
    """A runnable ``nn.Module`` (eval mode) rebuilt from a candidate's recipe and weights,
    without training: the 'baseline' of the evaluator that rebuilds it is the untrained
    architecture, since every weight is overwritten."""
    from slimtune.search._baseline import Baseline
    from slimtune.search._pipeline import Evaluator

    baseline = Baseline(task=task, model=task.build_model().eval(), teacher_logits=None, val_accuracy=math.nan,
                        test_accuracy=math.nan, seed=settings.seed, cached=False)
    return Evaluator(task, space, settings, baseline).rebuild(dict(recipe), state_dict)


def compile_as(model: "nn.Module", fmt: str, *, bits: int, task: "Task", settings: "EvalSettings",
               encoding: Mapping[str, Any] | None = None) -> bytes:
    """The artifact of ``model`` in format ``fmt`` (``onnx``, ``torchscript``), compiled
    anew (calibrated on the first training samples, like the search); ``encoding`` is
    the stored recipe's weight encoding."""
    from slimtune.search._runtimes import compile_model
    from slimtune.spaces.base import WeightEncoding

    compiled = compile_model(model, runtime=RUNTIME_OF[fmt], bits=bits,
                             calibration=task.data.train.head(settings.calibration_size), threads=settings.threads,
                             encoding=WeightEncoding.from_dict(encoding))
    return compiled.artifact


def pack_artifact(data: bytes, timed_format: str, *, bits: int, encoding: Mapping[str, Any] | None = None) -> bytes:
    """The packed model file (:mod:`slimtune.search.packed`) of the timed artifact
    (``encoding``: the stored recipe's weight encoding)."""
    from slimtune.search.packed import pack

    return pack(data, artifact_format=timed_format, bits=bits, encoding=encoding)


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and
    ``os.replace``: ``path`` is either the old file or the whole new one, and no
    temporary file is left behind when writing fails.

    Raises:
        ExportError: the file cannot be written (naming the path and the OS reason).
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
        raise ExportError(f"Cannot write {str(path)!r}: {exc.strerror or exc}.") from None
    finally:
        if tmp_name is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
