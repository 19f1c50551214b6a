"""Big synthetic studies for the scale tests: SQLite files written in bulk by the
benchmarks' builder (``benchmarks/_synthetic.py``), the same study at two sizes."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

from tests._bench import load_benchmark


def synthetic():
    """The benchmarks' ``_synthetic`` module (bulk-written trials)."""
    load_benchmark("widgets")  # puts benchmarks/ on the path for its helper module
    import _synthetic

    return _synthetic


def study_file(folder: Path, name: str, trials: int, *, grown_from: Path | None = None) -> Path:
    """A SQLite file in ``folder`` holding study ``name`` with ``trials`` bulk-written
    trials (``grown_from``: a copy of that file, grown to ``trials``)."""
    path = folder / f"{name}-{trials}.db"
    if grown_from is not None:
        shutil.copy(grown_from, path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        synthetic().synthetic_study(f"sqlite:///{path}", name, trials).close()
    return path


def load(path: Path, name: str):
    from slimtune.studies import Study

    return Study.load(name, storage=f"sqlite:///{path}")
