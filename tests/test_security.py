"""Security: crafted pickles are never executed, passwords never shown, no telemetry."""

from __future__ import annotations

import io
import logging
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from slimtune.cli import main

ROOT = Path(__file__).resolve().parents[1]
TASK = "tests.user_task:make_task"


class _CreatesMarker:
    """Unpickling this calls ``open(marker, "w")``: the marker file proves code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def crafted_blob(marker: Path) -> bytes:
    buffer = io.BytesIO()
    torch.save({"0.weight": _CreatesMarker(marker)}, buffer)
    return buffer.getvalue()


def invoke(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(main, list(args), env=env)


@pytest.fixture(scope="module")
def tampered(tmp_path_factory):
    """A real study of 1 trial whose stored weights were replaced by a crafted pickle."""
    directory = tmp_path_factory.mktemp("tampered")
    path, marker = directory / "study.db", directory / "marker"
    url = f"sqlite:///{path}"
    made = invoke("run", "--study", "t", "--task", TASK, "--trials", "1", "--seed", "0", "--no-early-stopping",
                  "--epochs", "1", "--latency-repeats", "3", "--storage", url, "--json")
    assert made.exit_code == 0, made.output
    with sqlite3.connect(path) as conn:
        assert conn.execute("update slimtune_weights set state_dict = ?", (crafted_blob(marker),)).rowcount == 2  # rung 0 + 1
    conn.close()
    return url, marker


def test_a_crafted_weights_blob_in_the_database_is_refused_not_run(tampered, tmp_path):
    from slimtune.studies import Study, StudyError

    url, marker = tampered
    with Study.load("t", storage=url, task=TASK) as study:
        cand = study.candidate(0)
        for read in (cand.state_dict, cand.load):
            with pytest.raises(StudyError) as info:
                read()
            assert "not a valid weights blob" in str(info.value) and "weights_only" not in str(info.value)
        with pytest.raises(StudyError, match="not a valid weights blob"):
            cand.export(tmp_path / "m.pt", format="torchscript")
    out = invoke("export", "t", "--trial", "0", "--out", str(tmp_path / "m.pt"), "--format", "torchscript",
                 "--task", TASK, "--storage", url)
    assert out.exit_code == 2, out.output
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "not a valid weights blob" in lines[0] and "weights_only" not in out.output
    # select and the timed artifact never read the weights blob: they still work
    assert invoke("select", "t", "--max-latency-ms", "1000", "--storage", url).exit_code == 0
    assert invoke("export", "t", "--trial", "0", "--out", str(tmp_path / "m.onnx"), "--storage", url).exit_code == 0
    assert not marker.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_a_damaged_weights_blob_is_one_clear_sentence(tmp_path):
    from slimtune.search._weights import WeightsError, load_state_dict

    good = io.BytesIO()
    torch.save({"w": torch.ones(3)}, good)
    for blob in (good.getvalue()[:100], b"", b"garbage" * 9):
        with pytest.raises(WeightsError, match="not a valid weights blob") as info:
            load_state_dict(blob, what="The blob")
        assert "weights_only" not in str(info.value) and "\n" not in str(info.value)
    not_tensors = io.BytesIO()
    torch.save([1, 2, 3], not_tensors)
    with pytest.raises(WeightsError, match="not a state dict"):
        load_state_dict(not_tensors.getvalue())
    assert torch.equal(load_state_dict(good.getvalue())["w"], torch.ones(3))


def test_a_crafted_baseline_cache_file_is_retrained_not_run(tmp_path, monkeypatch, caplog):
    from slimtune.search._baseline import cache_dir, get_baseline
    from slimtune.tasks import get_task

    monkeypatch.setenv("SLIMTUNE_CACHE_DIR", str(tmp_path / "cache"))
    task, marker = get_task(TASK), tmp_path / "marker"
    path = cache_dir() / f"{task.name}-{task.fingerprint()}-seed0.pt"
    path.write_bytes(crafted_blob(marker))
    with caplog.at_level(logging.WARNING, logger="slimtune.search._baseline"):
        baseline = get_baseline(task, seed=0)
    assert not baseline.cached and not marker.exists()
    assert "not a valid weights blob" in caplog.text and "weights_only" not in caplog.text
    assert get_baseline(task, seed=0).cached  # the retrained baseline replaced the crafted file


def test_the_notebook_never_shows_a_storage_password(tmp_path, monkeypatch):
    from slimtune.studies import StudyError
    from slimtune.widgets._magics import SlimtuneMagics, StudyList

    empty = StudyList([], "postgresql+psycopg://alice:hunter2@db.example/st")
    assert "hunter2" not in repr(empty) and "hunter2" not in empty._repr_html_() and "***" in repr(empty)
    listed = StudyList([{"name": "a"}], "postgresql+psycopg://alice:hunter2@db.example/st")
    assert "hunter2" not in listed._repr_html_()
    magics = SlimtuneMagics(None)
    with pytest.raises(StudyError) as info:
        magics.slimtune("studies --storage postgresql+psycopg://alice:hunter2@127.0.0.1:9/st")
    assert "hunter2" not in str(info.value)
    from IPython.core.error import UsageError

    with pytest.raises(UsageError, match="--timeout"):
        magics.slimtune(f"run s --task {TASK} --trials 1 --timeout nan --storage sqlite:///{tmp_path / 'nan.db'}")
    assert not (tmp_path / "nan.db").exists()
    # the URL can come from the environment instead of the notebook
    path = tmp_path / "env.db"
    from slimtune.studies import Database

    Database.open(f"sqlite:///{path}").dispose()
    monkeypatch.setenv("SLIMTUNE_STORAGE", f"sqlite:///{path}")
    shown = magics.slimtune("studies")
    assert len(shown) == 0 and str(path) in repr(shown)


def test_onnxruntime_writes_no_telemetry_under_home(tmp_path):
    """A real compile and timing with ONNX Runtime in a fresh process whose HOME is
    empty: nothing appears under ~/.cache (ORT writes a device id there otherwise)."""
    home = tmp_path / "home"
    home.mkdir()
    code = ("import torch; torch.set_num_threads(1)\n"
            "from slimtune.search._runtimes import compile_model\n"
            "model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 4)).eval()\n"
            "compiled = compile_model(model, runtime='onnxruntime', bits=8, calibration=torch.randn(8, 1, 4, 4))\n"
            "print(len(compiled.artifact))\n")
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    env.update(HOME=str(home), PYTHONPATH=str(ROOT), PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout.split()[-1]) > 0
    assert not (home / ".cache" / "Microsoft").exists(), sorted(str(p) for p in home.rglob("*"))


EVILMOD = "open({marker!r}, 'w').close()\nmake = None\n"


def _slimtune(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """``python -m slimtune.cli ARGS`` run in ``cwd``: that directory is on its module path."""
    full = {**{k: v for k, v in os.environ.items() if k != "SLIMTUNE_TRUST_STORED_TASKS"}, "PYTHONPATH": str(ROOT),
            **env}
    return subprocess.run([sys.executable, "-m", "slimtune.cli", *args], cwd=cwd, env=full, capture_output=True,
                          text=True, timeout=600)


def test_a_task_the_database_names_is_imported_only_when_the_user_names_it(tampered, tmp_path):
    """A database whose study names ``evilmod:make`` (importable from the working
    directory): resuming, refit and a TorchScript export refuse with one line and never
    import it; ``$SLIMTUNE_TRUST_STORED_TASKS=1`` is the opt-in that does."""
    import shutil

    url, _ = tampered
    path, marker = tmp_path / "evil.db", tmp_path / "imported"
    shutil.copy(url.removeprefix("sqlite:///"), path)
    with sqlite3.connect(path) as conn:
        assert conn.execute("update slimtune_studies set task_spec = 'evilmod:make'").rowcount == 1
    conn.close()
    (tmp_path / "evilmod.py").write_text(EVILMOD.format(marker=str(marker)))
    storage = ["--storage", f"sqlite:///{path}"]
    for args in (["run", "--study", "t", "--trials", "1"], ["refit", "t", "--epochs", "1"],
                 ["export", "t", "--trial", "0", "--out", str(tmp_path / "m.pt"), "--format", "torchscript"]):
        done = _slimtune([*args, *storage], tmp_path)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1, done.stderr
        assert "--task evilmod:make" in lines[0] and "SLIMTUNE_TRUST_STORED_TASKS=1" in lines[0], lines[0]
        assert not marker.exists(), args
    assert _slimtune(["show", "t", *storage], tmp_path).returncode == 0  # reading a study needs no task
    assert not marker.exists()
    trusted = _slimtune(["export", "t", "--trial", "0", "--out", str(tmp_path / "m.pt"), "--format", "torchscript",
                         *storage], tmp_path, SLIMTUNE_TRUST_STORED_TASKS="1")
    assert trusted.returncode == 2 and marker.exists(), trusted.stderr  # imported (then refused: make is None)


def test_workers_resolve_modules_as_their_parent_does(tmp_path):
    """A worker of ``--workers`` gets its parent's module path, not its own working
    directory: ``./evilmod.py`` is not imported by a worker of a parent that cannot."""
    from slimtune.cli._workers import worker_command, worker_environment

    marker = tmp_path / "imported"
    (tmp_path / "evilmod.py").write_text(EVILMOD.format(marker=str(marker)))
    assert str(tmp_path) not in sys.path
    env = {**worker_environment(f"sqlite:///{tmp_path / 'w.db'}", 1), "PYTHONPATH": str(ROOT)}
    worker = subprocess.run(worker_command(["space", "--task", "evilmod:make"]), cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert worker.returncode == 2 and "evilmod" in worker.stderr and not marker.exists(), worker.stderr
    # the same command as `python -m` (the working directory on the path) does import it: the test can fail
    assert _slimtune(["space", "--task", "evilmod:make"], tmp_path).returncode == 2 and marker.exists()
