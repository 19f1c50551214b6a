"""examples/quickstart.ipynb runs top to bottom (nbclient); any cell error fails."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests._widget_study import isolated_env

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "quickstart.ipynb"
WIDGET = "application/vnd.jupyter.widget-view+json"


def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(NOTEBOOK, work / NOTEBOOK.name)
    for key, value in isolated_env(tmp_path / "jupyter").items():
        monkeypatch.setenv(key, value)  # the kernel inherits them
    nb = nbformat.read(work / NOTEBOOK.name, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(work)}})
    client.execute()  # raises CellExecutionError on any cell error

    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    dashboards = [o for o in outputs if WIDGET in o.get("data", {})]
    assert dashboards, "the dashboard was not displayed"
    # where no widget frontend runs, the same output shows a plain HTML rendering
    assert all("<svg" in o["data"].get("text/html", "") for o in dashboards[1:])
    assert (work / "slimtune.db").exists()  # the default storage, in the working directory
    assert (work / "quickstart.onnx").stat().st_size > 1000
    text = "".join(o.get("text", "") for o in outputs)
    assert "quickstart.onnx" in text and "trial" in text
    # the CLI's vocabulary and unit; Optuna's info logs silenced as in the CLI
    assert "A new study created" not in text and " KB" not in text and "KiB" in text
    shown = "".join(str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    assert "stopped" in shown and "created" in shown and "pruned" not in shown and "created_at" not in shown
