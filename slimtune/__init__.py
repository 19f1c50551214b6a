"""slimtune: search a joint model-compression space and see the accuracy-latency frontier."""

from __future__ import annotations

import importlib
import os
from typing import Any

from slimtune._version import __version__
from slimtune import _viewers

# ONNX Runtime writes a device id and telemetry events under ~/.cache/Microsoft when it
# is imported, unless this is set first (a user's own setting is kept).
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

# Public names, imported on first use so that `import slimtune` (and the CLI) stays light.
_LAZY: dict[str, str] = {
    # studies: create / resume / select / export
    "Study": "slimtune.studies",
    "Candidate": "slimtune.studies",
    "list_studies": "slimtune.studies",
    # tasks: the model and data to compress
    "Task": "slimtune.tasks",
    "TaskData": "slimtune.tasks",
    # settings of a search
    "Constraints": "slimtune.search._constraints",
    "EvalSettings": "slimtune.search._pipeline",
    "FrontierEarlyStopping": "slimtune.search._early_stopping",
    # extensions: a new compression method is a Knob subclass plus register_knob
    "Knob": "slimtune.spaces",
    "KnobContext": "slimtune.spaces",
    "Param": "slimtune.spaces",
    "register_knob": "slimtune.spaces",
    # errors (each says what was wrong with which argument)
    "StudyError": "slimtune.studies",
    "NoCandidateError": "slimtune.studies",
    "SchemaVersionError": "slimtune.studies",
    "TaskError": "slimtune.tasks",
    "SpaceError": "slimtune.spaces",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'slimtune' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


def _open_dashboard(study: Any, **options: Any) -> Any:
    """``study.dashboard()``: the widgets, given the study (imported on first use)."""
    from slimtune.widgets import StudyDashboard

    return StudyDashboard(study, **options)


_viewers.install_dashboard(_open_dashboard)  # studies sit below widgets: the top layer connects them


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext slimtune``: registers the ``%slimtune`` magic (see slimtune.widgets._magics)."""
    from slimtune.widgets._magics import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext slimtune``."""
    from slimtune.widgets._magics import unload_ipython_extension as unload

    unload(ipython)
