"""The study commands: run / studies / show / select / export, and bad input."""

from __future__ import annotations

import hashlib
import json
import sqlite3

import optuna
import pytest
from click.testing import CliRunner

from slimtune.cli import main
from slimtune.studies import SCHEMA_VERSION, Study

TASK = "tests.user_task:make_task"  # 96 tiny images: seconds per trial
FAST = ["--epochs", "1", "--latency-repeats", "3"]


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    """A study made by `slimtune run` (its training-free trial, then 2 trials), then
    resumed by it (1 more)."""
    path = tmp_path_factory.mktemp("cli") / "cli.db"
    url = f"sqlite:///{path}"
    first = invoke("run", "--study", "c", "--task", TASK, "--trials", "2", "--seed", "0", "--no-early-stopping",
                   *FAST, "--storage", url)
    assert first.exit_code == 0, first.output
    assert "Frontier:" in first.output and "2 trials" in first.output
    again = invoke("run", "--study", "c", "--task", TASK, "--trials", "1", "--storage", url, "--json")
    assert again.exit_code == 0, again.output
    front = json.loads(again.stdout)
    assert front and all(r["pareto"] for r in front)
    return path, url


def test_studies_lists_the_study(db):
    _, url = db
    out = invoke("studies", "--storage", url)
    assert out.exit_code == 0 and "c " in out.output and "user-mlp-conv" in out.output
    (row,) = json.loads(invoke("studies", "--storage", url, "--json").stdout)
    assert row["name"] == "c" and row["trials"] == 4 and row["complete"] == 4  # rung 0 + 2 + 1


def test_show_json_rows_carry_the_contract_fields(db):
    _, url = db
    shown = json.loads(invoke("show", "c", "--json", "--storage", url).stdout)
    rows = shown["trials"]
    assert [r["trial"] for r in rows] == [0, 1, 2, 3]
    assert [r["fidelity"]["label"] for r in rows] == ["training-free", "full", "full", "full"]
    contract = {"trial", "params", "accuracy", "val_accuracy", "test_accuracy", "latency_ms", "reference_latency_ms",
                "speedup", "size_bytes", "artifact_bytes", "macs", "pareto"}
    for r in rows:
        assert contract <= set(r)
        assert "quant.bits" in r["params"]
        assert r["speedup"] == pytest.approx(r["reference_latency_ms"] / r["latency_ms"])
    base = shown["baseline"]
    assert contract <= set(base) and base["trial"] == "baseline" and isinstance(base["pareto"], bool)
    assert base["test_accuracy"] is not None and base["speedup"] == 1.0
    pareto = json.loads(invoke("show", "c", "--pareto", "--json", "--storage", url).stdout)["trials"]
    assert {r["trial"] for r in pareto} == {r["trial"] for r in rows if r["pareto"]}
    table = invoke("show", "c", "--storage", url)
    assert table.exit_code == 0 and "Baseline:" in table.output and "*" in table.output


def test_select_and_none_fits(db):
    _, url = db
    rows = json.loads(invoke("show", "c", "--json", "--storage", url).stdout)["trials"]
    out = invoke("select", "c", "--max-latency-ms", "1000", "--json", "--storage", url)
    assert out.exit_code == 0
    assert json.loads(out.stdout)["accuracy"] == max(r["accuracy"] for r in rows)
    none = invoke("select", "c", "--max-latency-ms", "0.0000001", "--storage", url)
    assert none.exit_code == 1 and "No complete trial" in none.stderr and "trial" in none.stderr
    assert len(none.stderr.strip().splitlines()) == 1


def test_export_writes_the_measured_artifact(db, tmp_path):
    _, url = db
    out_file = tmp_path / "m.onnx"
    out = invoke("export", "c", "--trial", "1", "--out", str(out_file), "--storage", url)
    assert out.exit_code == 0, out.output
    with Study.load("c", storage=url) as study:
        data, fmt = study.candidate(1).artifact()
    import onnx

    assert fmt == "onnx" and out_file.read_bytes() == data  # exactly the bytes whose session was timed ...
    written = onnx.load(str(out_file))
    meta = {p.key: p.value for p in written.metadata_props}  # ... which say how to feed them
    assert {"input_name", "preprocessing", "trial", "study", "params"} <= set(meta) and meta["trial"] == "1"
    ts = tmp_path / "m.pt"
    refused = invoke("export", "c", "--trial", "1", "--out", str(ts), "--format", "torchscript", "--storage", url)
    _one_line_exit_2(refused, f"--task {TASK}", "SLIMTUNE_TRUST_STORED_TASKS")  # rebuilding needs the user's task
    assert not ts.exists()
    out = invoke("export", "c", "--trial", "1", "--out", str(ts), "--format", "torchscript", "--task", TASK,
                 "--storage", url)
    assert out.exit_code == 0, out.output
    import torch

    assert torch.jit.load(str(ts))(torch.zeros(1, 1, 8, 8)).shape[-1] == 2


def _one_line_exit_2(result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for needle in needles:
        assert needle in lines[0]


def test_bad_input_is_one_line_exit_2_and_writes_nothing(db, tmp_path):
    path, url = db
    before = digest(path)
    _one_line_exit_2(invoke("show", "nope", "--storage", url), "No study 'nope'")
    _one_line_exit_2(invoke("select", "nope", "--max-latency-ms", "1", "--storage", url), "No study")
    _one_line_exit_2(invoke("export", "c", "--trial", "99", "--out", str(tmp_path / "x.onnx"), "--storage", url), "no trial 99")
    _one_line_exit_2(invoke("run", "--study", "c", "--task", "digits", "--trials", "1", "--storage", url), "task")
    _one_line_exit_2(invoke("run", "--study", "c", "--task", TASK, "--trials", "1", "--fix", "quant.bits=3", "--storage",
                            url), "quant.bits")
    _one_line_exit_2(invoke("run", "--study", "c", "--task", TASK, "--trials", "1", "--epochs", "5", "--storage", url),
                     "settings")
    _one_line_exit_2(invoke("run", "--study", "c", "--storage", url), "--trials")
    assert not (tmp_path / "x.onnx").exists()
    assert digest(path) == before
    missing = tmp_path / "missing.db"
    _one_line_exit_2(invoke("show", "c", "--storage", f"sqlite:///{missing}"), "No study database")
    _one_line_exit_2(invoke("studies", "--storage", f"sqlite:///{missing}"), "No study database")
    _one_line_exit_2(invoke("run", "--study", "c", "--trials", "1", "--storage", f"sqlite:///{missing}"))
    _one_line_exit_2(invoke("run", "--study", "new", "--task", TASK, "--trials", "1", "--fix", "quant.bitz=8",
                            "--storage", f"sqlite:///{missing}"), "quant.bits")  # did you mean
    _one_line_exit_2(invoke("run", "--study", "new", "--task", "nosuchtask", "--trials", "1",
                            "--storage", f"sqlite:///{missing}"), "nosuchtask")
    assert not missing.exists()
    _one_line_exit_2(invoke("studies", "--storage", "nosuch://u:pw@h/db"), "Bad storage URL")


def test_trial_that_is_not_complete_cannot_be_exported(db, tmp_path):
    path, url = db
    plain = optuna.load_study(study_name="c", storage=url)
    trial = plain.ask()
    plain.tell(trial, state=optuna.trial.TrialState.FAIL)
    _one_line_exit_2(invoke("export", "c", "--trial", str(trial.number), "--out", str(tmp_path / "f.onnx"),
                            "--storage", url), "FAIL, not COMPLETE")
    assert not (tmp_path / "f.onnx").exists()


def test_passwords_are_never_printed():
    result = invoke("studies", "--storage", "postgresql+psycopg2://alice:hunter2@127.0.0.1:9/db")
    assert result.exit_code == 2 and "hunter2" not in result.output and "***" in result.stderr


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "future.db"
    from slimtune.studies import Database

    Database.open(f"sqlite:///{path}").dispose()
    with sqlite3.connect(path) as conn:
        conn.execute("update slimtune_schema_version set version = ?", (SCHEMA_VERSION + 1,))
    before = digest(path)
    _one_line_exit_2(invoke("studies", "--storage", f"sqlite:///{path}"), "newer")
    _one_line_exit_2(invoke("run", "--study", "s", "--task", TASK, "--trials", "1", "--storage", f"sqlite:///{path}"), "newer")
    assert digest(path) == before
