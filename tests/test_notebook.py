"""examples/quickstart.ipynb runs top to bottom (nbclient); any cell error fails."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests._widget_study import isolated_env

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "quickstart.ipynb"
WIDGET = "application/vnd.jupyter.widget-view+json"


def _execute(notebook: Path, tmp_path: Path, monkeypatch) -> tuple[object, list]:
    """Run a copy of ``notebook`` in a fresh kernel (isolated Jupyter dirs, which the
    kernel inherits); return it and its code cells' outputs, none of them an error."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(notebook, work / notebook.name)
    for key, value in isolated_env(tmp_path / "jupyter").items():
        monkeypatch.setenv(key, value)
    nb = nbformat.read(work / notebook.name, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(work)}})
    client.execute()  # raises CellExecutionError on any cell error
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    return nb, outputs


def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    nb, outputs = _execute(NOTEBOOK, tmp_path, monkeypatch)
    work = tmp_path / "work"
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


OWN_MODEL = ROOT / "examples" / "own_model.ipynb"


def test_own_model_notebook_trains_hands_over_searches_and_runs_the_export(tmp_path, monkeypatch):
    """examples/own_model.ipynb: a ``transformers`` ResNet trained briefly on
    Fashion-MNIST, handed over with Task.from_model, searched, selected, exported and
    run with ONNX Runtime alone, with the Hugging Face hub offline (nothing downloaded)."""
    import os
    import re

    from slimtune.tasks._builtin import FASHION_DIR_DEFAULT
    from tests._system import require_system

    require_system(None if os.path.isdir(FASHION_DIR_DEFAULT) else
                   f"Fashion-MNIST is not installed ({FASHION_DIR_DEFAULT} missing; apt-get install dataset-fashion-mnist)")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    nb, outputs = _execute(OWN_MODEL, tmp_path, monkeypatch)
    work = tmp_path / "work"
    assert sum(c.cell_type == "markdown" for c in nb.cells) >= sum(c.cell_type == "code" for c in nb.cells)
    text = "".join(o.get("text", "") for o in outputs if o.get("name") == "stdout")
    assert "train 2000, validation 500, test 1000 images of shape (1, 28, 28)" in text
    # exit points found in the transformers model's graph, no names given
    assert [f"exits.{i}.enabled: attach an exit head after model.resnet.encoder.stages.{i}" in text
            for i in range(3)] == [True] * 3
    trained = [float(v) for v in re.findall(r"epoch \d: validation accuracy (\d\.\d+)", text)]
    assert len(trained) == 2 and trained[-1] > 0.6, text  # ten classes: chance is 0.1
    rows = re.findall(r"^\s+(\d+)\s+(\d\.\d+)\s+[\d.]+ ms\s+([\d.]+x|-)", text, flags=re.M)
    assert len(rows) >= 2, text  # most of the 3 trials complete
    assert (work / "own_model.onnx").stat().st_size > 10_000
    found = re.search(r"onnxruntime test accuracy (\d\.\d+) \(measured at search time: (\d\.\d+)\)", text)
    assert found, text
    assert float(found[1]) == pytest.approx(float(found[2]), abs=0.002)  # the exported file is the measured model
    assert "A new study created" not in text
