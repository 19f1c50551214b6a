"""A study timed on several targets (``--targets ort:1,openvino:8``): each trial is
measured on every target beside the baseline timed there in the same run; ``show``
prints a front per target, ``select --target`` ranks on that target's figures,
``export --target`` writes the artifact timed there; a one-target study reads as before."""

from __future__ import annotations

import json
import os
import sqlite3

import numpy as np
import onnx
import optuna
import pytest
from click.testing import CliRunner

from slimtune.cli import main
from slimtune.search._settings import EvalSettings
from slimtune.search._targets import Target, TargetError, find_target, parse_target, parse_targets

if os.environ.get("CI") == "true":  # in CI the dev extra installs OpenVINO: a missing one fails
    import openvino as ov
else:
    ov = pytest.importorskip("openvino")

optuna.logging.set_verbosity(optuna.logging.WARNING)

FAST = ["--epochs", "1", "--latency-repeats", "5", "--calibration-size", "64", "--seed", "0", "--no-early-stopping"]
TARGETS = "ort:1,openvino:8"
OV = "openvino:8@1"


# -- the spec ------------------------------------------------------------------------------
def test_a_target_spec_names_runtime_batch_and_threads():
    assert parse_target("ort") == Target("onnxruntime", 1, 1)
    assert parse_target("openvino:64", threads=2) == Target("openvino", 64, 2)
    assert parse_target(" OV : 8 @ 4 ") == Target("openvino", 8, 4)
    assert [t.key for t in parse_targets("ort:1,openvino:64")] == ["onnxruntime:1@1", "openvino:64@1"]
    assert parse_targets(["torch:2@3"]) == [Target("torch", 2, 3)]
    for bad, words in (("tensorrt:1", "Unknown runtime 'tensorrt'"), ("ort:0", "batch size"),
                       ("ort:1,onnxruntime:1", "given twice"), ("ort:x", "A target is written"),
                       ("", "one or more targets"), ("ort:1,", "one or more targets"), ("ort@0", "threads"),
                       ("opnevino", "did you mean 'openvino'")):
        with pytest.raises(TargetError, match=words):
            parse_targets(bad)


def test_a_study_finds_the_target_a_spec_names():
    targets = parse_targets("ort:1,openvino:64,openvino:8")
    assert find_target("ort", targets) == targets[0]
    assert find_target("openvino:8", targets) == targets[2]
    assert find_target("openvino:64@1", targets) == targets[1]
    with pytest.raises(TargetError, match="names 2 targets"):
        find_target("openvino", targets)
    with pytest.raises(TargetError, match="was not timed on 'torch'; its targets are onnxruntime:1@1"):
        find_target("torch", targets, study="s")


def test_settings_take_the_first_target_and_store_one_as_before():
    two = EvalSettings(targets="ort:1,openvino:64", threads=2)
    assert (two.runtime, two.batch_size, two.threads) == ("onnxruntime", 1, 2)
    assert two.identity()["targets"] == ["onnxruntime:1@2", "openvino:64@2"]
    one = EvalSettings(targets=["openvino:8"])
    assert (one.runtime, one.batch_size, one.targets) == ("openvino", 8, None)
    assert "targets" not in one.identity() and "targets" not in EvalSettings().identity()  # as studies stored before
    with pytest.raises(ValueError, match="Unknown runtime"):
        EvalSettings(targets="tpu:1")


def test_a_runtime_that_is_not_the_first_target_is_refused():
    from slimtune.studies._arguments import settings_from
    from slimtune.studies._errors import StudyError

    stored = settings_from({"targets": "ort:1,openvino:8"}, None).identity()
    with pytest.raises(StudyError, match="`runtime` 'openvino' is not the first target's \\(onnxruntime:1@1\\)"):
        settings_from({"runtime": "openvino"}, stored)  # resuming with --runtime: not silently dropped
    assert settings_from({"epochs": 3}, stored).targets == ["onnxruntime:1@1", "openvino:8@1"]
    assert settings_from({"targets": "ort:1,openvino:8", "threads": 2}, None).targets == [
        "onnxruntime:1@2", "openvino:8@2"]


@pytest.mark.parametrize("words, message", [
    (["--targets", "ort:1,tpu:8"], "Error: --targets: Unknown runtime 'tpu'"),
    (["--targets", "ort:1", "--runtime", "openvino"], "Error: Give --targets or --runtime/--batch-size, not both"),
])
def test_a_bad_targets_option_is_one_error_line(tmp_path, words, message):
    db = tmp_path / "s.db"
    result = CliRunner().invoke(main, ["run", "--study", "s", "--task", "digits", "--trials", "1",
                                       "--storage", f"sqlite:///{db}", *words])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(message), result.output
    assert not db.exists()  # refused before anything was written


# -- a study timed on two targets -------------------------------------------------------------
@pytest.fixture(scope="module")
def two_targets(tmp_path_factory, digits_task):
    """Two trials (an int8 one, then an fp32 one) timed on ONNX Runtime and OpenVINO at
    batch 8; the study made with two families (fast), its trials run by ``run --targets``."""
    from slimtune import Study
    from slimtune.search._targets import parse_targets
    from slimtune.search._task_space import build_space

    storage = f"sqlite:///{tmp_path_factory.mktemp('targets') / 'studies.db'}"
    space = build_space(digits_task, families=["distill", "quant"], fixed={"distill.alpha": 0.5},
                        targets=parse_targets(TARGETS))
    Study.create_or_load("mt", storage=storage, task="digits", space=space, early_stopping=False, seed=0,
                         settings={"epochs": 1, "latency_repeats": 5, "calibration_size": 64,
                                   "targets": TARGETS}).close()
    result = CliRunner().invoke(main, ["run", "--study", "mt", "--trials", "2", "--targets", TARGETS,
                                       "--fidelity", "full", "--storage", storage, *FAST])  # no rung 0: 2 trials
    assert result.exit_code == 0, result.output
    return storage, result.output


def _stored(storage: str) -> dict[int, dict]:
    """The OpenVINO measurements as the table holds them, by trial (read with plain sqlite3)."""
    with sqlite3.connect(storage.removeprefix("sqlite:///")) as conn:
        rows = conn.execute("select trial_number, target, measurement, artifact, artifact_bytes "
                            "from slimtune_target_measurements")
        out = {n: {"target": t, "measurement": json.loads(m), "artifact": bytes(a), "artifact_bytes": b}
               for n, t, m, a, b in rows}
    conn.close()
    return out


def _show(storage: str, *words: str):
    return CliRunner().invoke(main, ["show", "mt", "--storage", storage, *words])


def test_each_trial_is_measured_on_both_targets_beside_its_baseline(two_targets):
    from slimtune import Study

    storage, output = two_targets
    assert "On openvino:8@1 (target 2 of 2" in output  # run's report: a front per target
    study = Study.load("mt", storage=storage)
    try:
        assert [t.key for t in study.targets] == ["onnxruntime:1@1", OV]
        rows = study.trials()
        assert [r["state"] for r in rows] == ["COMPLETE", "COMPLETE"], [r.get("error") for r in rows]
        stored = _stored(storage)
        assert sorted(stored) == [0, 1]
        for row in rows:
            ours = stored[row["trial"]]["measurement"]
            assert row["target"]["runtime"] == "onnxruntime" and row["target"]["batch_size"] == 1
            assert (ours["runtime"], ours["batch_size"], ours["threads"]) == ("openvino", 8, 1)
            assert ours["precision"] == ("int8" if row["params"]["quant.bits"] <= 8 else study.on_target(OV)
                                         .baseline.precision)
            assert ours["reference_latency_ms"] > 0 and ours["latency_ms"] > 0  # beside OpenVINO's baseline
            assert ours["reference_latency_ms"] != row["reference_latency_ms"]  # not ONNX Runtime's
            assert stored[row["trial"]]["artifact_bytes"] == len(stored[row["trial"]]["artifact"]) > 0
            graph = onnx.load_from_string(stored[row["trial"]]["artifact"]).graph
            assert graph.input[0].type.tensor_type.shape.dim[0].dim_value == 8  # OpenVINO's static batch
            assert stored[row["trial"]]["artifact"] != study.candidate(row["trial"]).artifact()[0]
        ov_base = study.on_target("openvino").baseline
        assert (ov_base.runtime, ov_base.batch_size) == ("openvino", 8)
        assert (study.baseline.runtime, study.baseline.batch_size) == ("onnxruntime", 1)
    finally:
        study.close()


def test_show_prints_one_front_per_target(two_targets):
    storage, _ = two_targets
    text = _show(storage, "--pareto").output
    assert text.count("Frontier:") == 2 and "On onnxruntime:1@1 (target 1 of 2, drove the search):" in text
    assert "Target: openvino, batch 8, 1 thread" in text.replace("\n  ", " ")
    shown = json.loads(_show(storage, "--json").output)
    assert [t["target"] for t in shown["targets"]] == ["onnxruntime:1@1", OV]
    stored = _stored(storage)
    on_ov = shown["targets"][1]
    assert on_ov["baseline"]["target"]["runtime"] == "openvino"
    for row in on_ov["trials"]:
        assert row["latency_ms"] == stored[row["trial"]]["measurement"]["latency_ms"]
        assert row["accuracy"] == stored[row["trial"]]["measurement"]["accuracy"]
    one = json.loads(_show(storage, "--json", "--target", "ov").output)
    assert one["target"] == OV and "targets" not in one and one["trials"] == on_ov["trials"]
    missing = _show(storage, "--target", "torch")
    assert missing.exit_code == 2 and missing.output.startswith("Error: Study 'mt' was not timed on 'torch'")


def test_select_ranks_on_the_targets_own_figures(two_targets):
    from slimtune.studies._frontier import Limits, select_rows
    from slimtune.studies._rows import baseline_row

    storage, _ = two_targets
    stored = _stored(storage)
    result = CliRunner().invoke(main, ["select", "mt", "--storage", storage, "--target", "openvino:8",
                                       "--min-accuracy", "0.05", "--json"])
    shown = json.loads(_show(storage, "--json", "--target", "ov").output)
    # the rule applied by hand to the figures the table holds for OpenVINO
    rows = [{**r, **{k: stored[r["trial"]]["measurement"][k] for k in ("accuracy", "latency_ms",
                                                                       "reference_latency_ms", "size_bytes")}}
            for r in shown["trials"]]
    base = baseline_row(shown["baseline"] | {"latency_ms": shown["baseline"]["latency_ms"]}, None,
                        ("accuracy", "latency_ms"))
    _, better = select_rows(rows, Limits(min_accuracy=0.05), baseline=base, objectives=("accuracy", "latency_ms"))
    if not better:
        assert result.exit_code == 1 and "baseline" in result.output
        return
    assert result.exit_code == 0, result.output
    chosen = json.loads(result.output)
    assert chosen["trial"] == better[0]["trial"]
    assert chosen["target"]["runtime"] == "openvino"
    assert chosen["latency_ms"] == stored[chosen["trial"]]["measurement"]["latency_ms"]
    text = CliRunner().invoke(main, ["select", "mt", "--storage", storage, "--target", "openvino:8",
                                     "--min-accuracy", "0.05"]).output
    assert "--target openvino:8@1" in text  # the export line it prints exports that target's artifact


def test_export_writes_the_artifact_timed_on_the_target(two_targets, tmp_path, digits_task):
    import onnxruntime as ort

    from slimtune.search._runtimes._openvino import openvino_config, shared_core

    storage, _ = two_targets
    stored = _stored(storage)
    x, labels = digits_task.data.x_val.numpy(), digits_task.data.y_val.numpy()
    for trial in (0, 1):
        out = tmp_path / f"ov{trial}.onnx"
        result = CliRunner().invoke(main, ["export", "mt", "--storage", storage, "--trial", str(trial),
                                           "--target", "openvino", "--out", str(out)])
        assert result.exit_code == 0 and "on openvino:8@1" in result.output, result.output
        assert out.read_bytes() == stored[trial]["artifact"]
        compiled = shared_core().compile_model(str(out), "CPU", openvino_config(1))
        batch = int(compiled.input(0).get_shape()[0])
        assert batch == 8
        logits = []
        for i in range(0, len(x), batch):
            chunk = x[i:i + batch]
            padded = np.concatenate([chunk, np.repeat(chunk[:1], batch - len(chunk), axis=0)])
            logits.append(compiled(padded)[0][:len(chunk)])
        accuracy = float((np.concatenate(logits).argmax(-1) == labels).mean())
        assert accuracy == pytest.approx(stored[trial]["measurement"]["accuracy"], abs=1.5 / len(labels))
    # without --target: the ONNX Runtime artifact (the first target), as before
    first = tmp_path / "ort.onnx"
    assert CliRunner().invoke(main, ["export", "mt", "--storage", storage, "--trial", "0",
                                     "--out", str(first)]).exit_code == 0
    session = ort.InferenceSession(str(first), providers=["CPUExecutionProvider"])
    predicted = np.concatenate([session.run(None, {session.get_inputs()[0].name: x[i:i + 1]})[0]
                                for i in range(len(x))]).argmax(-1)
    shown = json.loads(_show(storage, "--json").output)
    row = next(r for r in shown["trials"] if r["trial"] == 0)
    assert float((predicted == labels).mean()) == pytest.approx(row["accuracy"], abs=1.5 / len(labels))


def test_the_dashboard_switches_target(two_targets, tmp_path):
    pytest.importorskip("ipywidgets")
    from slimtune import Study
    from slimtune.widgets import StudyDashboard

    storage, _ = two_targets
    stored = _stored(storage)
    study = Study.load("mt", storage=storage)
    dash = StudyDashboard(study, watch=False)
    try:
        assert [v for _, v in dash.target.options] == ["onnxruntime:1@1", OV]
        first = {r["trial"]: r["latency_ms"] for r in dash.book.complete}
        dash.target.value = OV
        assert dash.baseline["runtime"] == "openvino" and dash.baseline["batch_size"] == 8
        assert {r["trial"]: r["latency_ms"] for r in dash.book.complete} == {
            n: stored[n]["measurement"]["latency_ms"] for n in first}
        assert all(r["target"]["runtime"] == "openvino" for r in dash.plot.front)
        chosen = dash.select(min_accuracy=0.05)
        if chosen is not None:
            path = dash.export(str(tmp_path / "dash.onnx"))
            assert path.read_bytes() == stored[chosen.trial]["artifact"]
        dash.target.value = "onnxruntime:1@1"
        assert {r["trial"]: r["latency_ms"] for r in dash.book.complete} == first
    finally:
        dash.close()
        study.close()


# -- a study of one target, as every study made before ---------------------------------------
def test_a_one_target_study_reads_as_before(tmp_path):
    from slimtune import Study
    from slimtune.tasks import get_task

    storage = f"sqlite:///{tmp_path / 'one.db'}"
    from slimtune.search._task_space import build_space

    space = build_space(get_task("digits"), families=["distill", "quant"], fixed={"quant.bits": 8})
    study = Study.create_or_load("one", storage=storage, task="digits", space=space, early_stopping=False, seed=0,
                                 settings={"epochs": 1, "latency_repeats": 5, "calibration_size": 64})
    study.optimize(n_trials=1, progress=False, fidelity="full")
    study.close()
    with sqlite3.connect(tmp_path / "one.db") as conn:  # as a database made before targets
        conn.execute("drop table slimtune_target_measurements")
        settings = json.loads(conn.execute("select settings from slimtune_studies").fetchone()[0])
    conn.close()
    assert "targets" not in settings
    shown = json.loads(CliRunner().invoke(main, ["show", "one", "--storage", storage, "--json"]).output)
    assert "targets" not in shown and shown["target"] == "onnxruntime:1@1" and len(shown["trials"]) == 1
    text = CliRunner().invoke(main, ["show", "one", "--storage", storage, "--pareto"]).output
    assert text.count("Frontier:") == 1 and "On onnxruntime" not in text
    plain = CliRunner().invoke(main, ["select", "one", "--storage", storage, "--min-accuracy", "0.05", "--json"])
    same = CliRunner().invoke(main, ["select", "one", "--storage", storage, "--min-accuracy", "0.05", "--json",
                                     "--target", "ort"])
    assert plain.exit_code == same.exit_code and plain.output == same.output
    other = CliRunner().invoke(main, ["select", "one", "--storage", storage, "--min-accuracy", "0.05",
                                      "--target", "openvino"])
    assert other.exit_code == 2 and other.output.startswith("Error: Study 'one' was not timed on 'openvino'")


def test_a_trial_not_measured_on_a_target_is_failed_there_with_the_reason():
    from types import SimpleNamespace

    from slimtune.studies._target_views import on_target

    row = {"trial": 3, "state": "COMPLETE", "accuracy": 0.9, "latency_ms": 0.02, "reference_latency_ms": 0.03,
           "pareto": True, "flags": ["x"]}
    failed = on_target(row, SimpleNamespace(measurement=None, error="RuntimeError: no kernel"), Target("openvino", 8))
    assert failed["state"] == "FAIL" and failed["latency_ms"] is None and not failed["pareto"]
    assert failed["error"] == "not measured on openvino:8@1: RuntimeError: no kernel"
    assert on_target(row, None, Target("openvino", 8))["error"].endswith("no measurement was stored")
    stopped = on_target({**row, "state": "PRUNED", "pre": {"latency_ms": 0.01}}, None, Target("openvino", 8))
    assert stopped["state"] == "PRUNED" and stopped["pre"] is None and stopped["latency_ms"] is None
