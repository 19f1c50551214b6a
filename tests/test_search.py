"""Studies end to end on digits (real training, 1 epoch, few trials, short timings)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
import threading

import numpy as np
import onnx
import optuna
import pytest

from slimtune import Study
from slimtune.search._early_stopping import FrontierPoint
from slimtune.studies import NoCandidateError, StudyError, _opening
from slimtune._dominance import beaten_by_baseline, loss_vector, relative_latency

optuna.logging.set_verbosity(optuna.logging.WARNING)

FAST = {"epochs": 1, "latency_repeats": 5, "latency_warmup": 2, "calibration_size": 64}
N, M = 3, 2
R0 = 1  # the training-free candidate a new study starts with (rung 0: not counted in n_trials)


# (tests/conftest.py trains with one torch thread)


@pytest.fixture(scope="module")
def storage(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('search') / 'studies.db'}"


@pytest.fixture(scope="module")
def study(storage):
    """Rung 0 and N trials, then resumed for M more (the resume is part of the fixture so
    that every test below sees R0 + N + M trials)."""
    first = Study.create_or_load("digits-s", storage=storage, task="digits", settings=FAST, seed=0, early_stopping=False)
    rows = first.optimize(n_trials=N, progress=False)
    assert [r["trial"] for r in rows] == list(range(R0 + N))
    first_rows = first.trials()
    first.close()
    resumed = Study.create_or_load("digits-s", storage=storage, task="digits", seed=0, early_stopping=False)
    more = resumed.optimize(n_trials=M, progress=False)
    resumed._first_rows = first_rows  # noqa: SLF001 - for the resume test
    resumed._more = more  # noqa: SLF001
    yield resumed
    resumed.close()


def test_run_creates_complete_trials_with_both_objectives(study):
    rows = study.trials()
    assert len(rows) == R0 + N + M
    for row in rows:
        assert row["state"] == "COMPLETE", row.get("error")
        for key in ("trial", "params", "accuracy", "latency_ms", "size_bytes", "macs", "pareto", "val_accuracy",
                    "backend", "tuner", "fingerprint_id", "datetime_complete"):
            assert key in row
        assert 0.0 <= row["accuracy"] <= 1.0 and row["latency_ms"] > 0 and row["size_bytes"] > 0 and row["macs"] > 0
        assert row["backend"] == "optuna" and row["tuner"] == "TPESampler"  # the default sampler
        assert set(row["params"]) == {p["name"] for p in study.space_dict["params"]}
    json.dumps(rows)  # JSON-friendly
    assert study.baseline.accuracy > 0.9 and study.baseline.latency_ms > 0


def test_resume_continues_numbering_and_keeps_earlier_trials(study):
    assert [r["trial"] for r in study._more] == list(range(R0 + N, R0 + N + M))  # noqa: SLF001
    now = {r["trial"]: r for r in study.trials()}
    for before in study._first_rows:  # noqa: SLF001
        after = now[before["trial"]]
        for key in ("params", "accuracy", "latency_ms", "size_bytes", "macs", "state"):
            assert after[key] == before[key]


def test_optuna_load_study_reads_the_same_trials(study, storage):
    plain = optuna.load_study(study_name="digits-s", storage=storage)
    assert [d.name for d in plain.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert plain.metric_names == ["accuracy", "latency_ratio"]  # latency told as its same-run ratio
    trials = plain.get_trials()
    assert len(trials) == R0 + N + M
    rows = {r["trial"]: r for r in study.trials()}
    for t in trials:
        row = rows[t.number]
        assert t.values == [row["accuracy"], row["latency_ms"] / row["reference_latency_ms"]]
        assert t.user_attrs["latency_ms"] == row["latency_ms"]
        assert t.user_attrs["backend"] == "optuna"
        assert {**t.user_attrs["fixed_params"], **t.params} == rows[t.number]["params"]
    # Optuna's best trials, less those the baseline beats in their own run (Optuna never saw the baseline),
    # are slimtune's front, less the collapsed candidates (infeasible for Optuna only; 1 epoch collapses some)
    base = study.baseline_row()
    beaten = {n for n, r in rows.items() if r["state"] == "COMPLETE" and
              base["accuracy"] >= r["accuracy"] and r["reference_latency_ms"] <= r["latency_ms"]}
    collapsed = {t.number for t in trials if t.constraints.get("collapsed", 0) > 0}
    assert collapsed == {n for n, r in rows.items() if r["accuracy"] < 0.5 * study.baseline.accuracy}
    assert sorted(t.number for t in plain.best_trials if t.number not in beaten) == sorted(
        r["trial"] for r in study.frontier() if r["trial"] not in collapsed)


def test_frontier_is_exactly_the_non_dominated_trials(study):
    rows = study.trials(states=("COMPLETE",))
    objectives = study.objectives
    expected = set()
    for r in rows:
        a = loss_vector(r, objectives)
        # the baseline stands beside each trial with the latency it had in that trial's run (its ratio there: 1)
        others = [*rows, {**study.baseline_row(), "latency_ms": r["reference_latency_ms"],
                          "reference_latency_ms": r["reference_latency_ms"]}]
        beaten = any(all(x <= y for x, y in zip(loss_vector(o, objectives), a)) and loss_vector(o, objectives) != a
                     for o in others)
        if not beaten:
            expected.add(r["trial"])
    front = study.frontier()
    assert {r["trial"] for r in front} == expected
    assert all(r["pareto"] for r in front)
    assert {r["trial"] for r in rows if r["pareto"]} == expected
    # sorted by the latency the front was decided on: each trial's same-run ratio to the baseline
    ratios = [relative_latency(r) for r in front]
    assert ratios == sorted(ratios)


def test_select_honours_constraints_or_says_none_fits(study):
    rows = study.trials(states=("COMPLETE",))
    limit = sorted(r["latency_ms"] for r in rows)[len(rows) // 2]
    chosen = study.select(max_latency_ms=limit)
    # the baseline, timed in each trial's own run, is a point of the frontier: never choose what it beats
    fitting = [r for r in rows if r["latency_ms"] <= limit
               and not beaten_by_baseline(r, study.baseline_row(), study.objectives)]
    assert chosen.latency_ms <= limit
    assert chosen.accuracy == max(r["accuracy"] for r in fitting)
    # ties go to the lower latency relative to the baseline timed in the same run (as the front compares)
    assert min((r for r in fitting if r["accuracy"] == chosen.accuracy),
               key=lambda r: (relative_latency(r), r["size_bytes"], r["trial"]))["trial"] == chosen.trial
    with pytest.raises(NoCandidateError, match="fastest") as info:
        study.select(max_latency_ms=min(r["latency_ms"] for r in rows) / 10)
    assert "trial" in str(info.value)
    with pytest.raises(NoCandidateError):
        study.select(min_accuracy=1.01)
    big = study.select(max_size_kb=1e9)
    assert big.accuracy == max(r["accuracy"] for r in rows
                               if not beaten_by_baseline(r, study.baseline_row(), study.objectives))


def test_candidate_load_runs_and_rejects_unknown_trial(study, digits_task):
    import torch

    cand = study.candidate(study.frontier()[0]["trial"])
    model = cand.load()
    with torch.no_grad():
        out = model(digits_task.data.x_test[:4])
    assert out.shape == (4, 10)
    assert cand.measurement.accuracy == cand.accuracy
    with pytest.raises(StudyError, match="no trial"):
        study.candidate(999)


EXPORT_CHECK = textwrap.dedent("""
    import json, sys
    import numpy as np
    import onnxruntime as ort
    x = np.load(sys.argv[1]); y = np.load(sys.argv[2])
    out = {}
    for path in sys.argv[3:]:
        s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        name = s.get_inputs()[0].name
        if len(s.get_outputs()) > 1:  # early exits: one sample at a time
            logits = np.concatenate([s.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))])
        else:
            logits = s.run(None, {name: x})[0]
        out[path] = float((logits.argmax(-1) == y).mean())
    assert not any(m.split(".")[0] in ("torch", "slimtune") for m in sys.modules), "imports torch or slimtune"
    print(json.dumps(out))
""")


def test_export_round_trip_in_a_fresh_process(study, digits_task, tmp_path):
    np.save(tmp_path / "x.npy", digits_task.data.x_test.numpy())
    np.save(tmp_path / "y.npy", digits_task.data.y_test.numpy())
    paths, expected = [], {}
    for row in study.trials(states=("COMPLETE",)):
        cand = study.candidate(row["trial"])
        path = cand.export(tmp_path / f"trial{row['trial']}.onnx")
        data, fmt = cand.artifact()
        assert fmt == "onnx" and path.read_bytes() == data  # exactly the bytes that were measured ...
        meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}  # ... which say how to feed them
        assert meta["preprocessing"] == digits_task.preprocessing and json.loads(meta["trial"]) == row["trial"]
        paths.append(str(path))
        expected[str(path)] = row["test_accuracy"]  # reported apart: the search saw validation only
    script = tmp_path / "check.py"
    script.write_text(EXPORT_CHECK)
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "x.npy"), str(tmp_path / "y.npy"), *paths],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == expected


def test_same_seed_proposes_the_same_candidates(study, tmp_path):
    other = Study.create_or_load("again", storage=f"sqlite:///{tmp_path / 'again.db'}", task="digits", settings=FAST,
                                 seed=0, early_stopping=False)
    rows = other.optimize(n_trials=1, progress=False)
    other.close()
    first = study.trials()[0]
    assert rows[0]["params"] == first["params"]
    assert rows[0]["accuracy"] == first["accuracy"]  # training is seeded too


def test_resume_with_another_task_or_space_is_refused(study, storage, tmp_path):
    path = storage[len("sqlite:///"):]
    before = hashlib.sha256(open(path, "rb").read()).hexdigest()
    with pytest.raises(StudyError, match="task"):
        Study.create_or_load("digits-s", storage=storage, task="tests.user_task:make_task")
    with pytest.raises(StudyError, match="another space"):
        Study.create_or_load("digits-s", storage=storage, task="digits", fixed={"quant.bits": 8})
    with pytest.raises(StudyError, match="objectives"):
        Study.create_or_load("digits-s", storage=storage, objectives=("accuracy", "size_bytes"))
    with pytest.raises(StudyError, match="evaluation settings"):
        Study.create_or_load("digits-s", storage=storage, settings={"epochs": 3})
    assert hashlib.sha256(open(path, "rb").read()).hexdigest() == before


def test_fixed_params_constraints_early_stop_and_stop_flag(tmp_path):
    """One small study for the rest of the plumbing: fixed values are recorded, the
    constraint reaches Optuna, a stopped candidate is a PRUNED trial with its reason,
    and the stop flag ends the loop after the current trial."""
    storage = f"sqlite:///{tmp_path / 'plumbing.db'}"
    # no pruning, no QAT: no recovery epochs follow distillation, so the rule may stop
    FIXED = {"quant.bits": 8, "dsconv.blocks.0.0": False, "prune.ratio": 0.0, "quant.mode": "ptq"}
    st = Study.create_or_load("plumb", storage=storage, task="digits", settings=FAST, seed=1,
                              fixed=FIXED, max_latency_ms=1e-6)
    assert "quant.bits" not in {p.name for p in st.space.searched}
    # every candidate is beaten by an unreachable point: stopped after its epoch
    st.frontier_points = lambda costs: [FrontierPoint(-1, 1.0, {c: 0.0 for c in costs})]
    seen, stop = [], threading.Event()

    def on_trial(row):
        seen.append(row)
        stop.set()

    rows = st.optimize(n_trials=5, stop_event=stop, callbacks=[on_trial], progress=False)
    assert len(rows) == 1 and seen == rows
    assert rows[0]["state"] == "PRUNED" and rows[0]["stopped_reason"].startswith("early stop")
    plain = optuna.load_study(study_name="plumb", storage=storage)
    (t,) = plain.get_trials()
    assert t.state == optuna.trial.TrialState.PRUNED and t.user_attrs["stopped_reason"] == rows[0]["stopped_reason"]
    assert t.user_attrs["fixed_params"] == FIXED
    assert "quant.bits" not in t.params
    # without the fake point the next candidate completes, and violates the latency limit
    del st.frontier_points
    (row,) = st.optimize(n_trials=1, progress=False)
    assert row["state"] == "COMPLETE" and row["params"]["quant.bits"] == 8
    # the rule sees a finished trial's measured costs and its learning curve
    (point,) = st.frontier_points(("latency_ms",))
    assert point.costs["latency_ms"] == row["latency_ms"] and point.curve == tuple(row["val_accuracy_per_epoch"])
    assert point.reference_latency_ms == row["reference_latency_ms"] > 0  # latencies compared as same-run ratios
    t = optuna.load_study(study_name="plumb", storage=storage).trials[1]
    assert t.constraints["latency_ms"] > 0
    assert st.frontier() == [] and st.trials()[1]["feasible"] is False
    st.close()


def test_objective_is_the_artifacts_validation_accuracy_and_test_is_apart(study, digits_task):
    """The sampler sees the timed artifact's validation accuracy; the test split is
    measured with the same artifact and stored apart (schema 1 optimized on test)."""
    import onnxruntime as ort

    data = digits_task.data
    optuna_values = {t.number: t.values for t in study.optuna_study.get_trials() if t.values is not None}
    differs = 0
    for row in study.trials(states=("COMPLETE",)):
        data_bytes, fmt = study.candidate(row["trial"]).artifact()
        assert fmt == "onnx"
        session = ort.InferenceSession(data_bytes, providers=["CPUExecutionProvider"])

        def acc(x, y):
            if len(session.get_outputs()) > 1:  # early exits: one sample at a time, as timed
                preds = [session.run(None, {"input": x[i:i + 1].numpy()})[0].argmax(-1)[0] for i in range(len(x))]
            else:
                preds = session.run(None, {"input": x.numpy()})[0].argmax(-1)
            return float((np.asarray(preds) == y.numpy()).mean())

        val, test = acc(data.x_val, data.y_val), acc(data.x_test, data.y_test)
        assert row["accuracy"] == row["val_accuracy"] == pytest.approx(val, abs=1e-9)
        assert optuna_values[row["trial"]][0] == pytest.approx(val, abs=1e-9)  # what the sampler was told
        assert row["test_accuracy"] == pytest.approx(test, abs=1e-9)
        differs += row["test_accuracy"] != row["accuracy"]
    assert differs  # two splits, two figures
    base = study.baseline
    assert base.test_accuracy is not None and base.accuracy != base.test_accuracy


def test_speedups_are_against_the_baseline_timed_in_the_same_run(study):
    for row in study.trials(states=("COMPLETE",)):
        assert row["reference_latency_ms"] > 0
        assert row["speedup"] == pytest.approx(row["reference_latency_ms"] / row["latency_ms"])
    baseline = study.baseline_row()
    for row in study.trials(states=("COMPLETE",)):
        beaten = (baseline["accuracy"] >= row["accuracy"] and row["reference_latency_ms"] <= row["latency_ms"]
                  and (baseline["accuracy"], row["reference_latency_ms"]) != (row["accuracy"], row["latency_ms"]))
        assert not (beaten and row["pareto"])  # the baseline is a point of the frontier


def test_a_collapsed_candidate_is_infeasible_for_the_samplers_only(tmp_path):
    """90% of the channels pruned (8 kept where a layer rounds to multiples of 8) and
    2-bit weights collapse digits' model (against the baseline's 0.99): Optuna's samplers see the trial as infeasible (ranked after every
    working candidate), while the study keeps it as it is: feasible, on the front."""
    from slimtune.search._constraints import COLLAPSE_CONSTRAINT, COLLAPSE_FRACTION, collapse_margin

    assert collapse_margin(0.19, 0.99) > 0 > collapse_margin(0.9, 0.99)
    assert collapse_margin(float("nan"), 0.99) is None and collapse_margin(0.5, float("nan")) is None
    storage = f"sqlite:///{tmp_path / 'collapse.db'}"
    st = Study.create_or_load("collapse", storage=storage, task="digits", settings=FAST, seed=0, early_stopping=False,
                              fixed={"prune.ratio": 0.9, "prune.granularity": "channel", "distill.alpha": 0.0,
                                     "quant.bits": 2, "quant.mode": "ptq"})
    (row,) = st.optimize(n_trials=1, progress=False)
    baseline = st.baseline.accuracy
    assert row["state"] == "COMPLETE" and row["accuracy"] < COLLAPSE_FRACTION * baseline
    assert row["feasible"] is True and row["constraints"] == {} and row["pareto"]  # the user's view: unchanged
    assert [r["trial"] for r in st.frontier()] == [row["trial"]]
    plain = optuna.load_study(study_name="collapse", storage=storage)
    (t,) = plain.get_trials()
    assert t.constraints == {COLLAPSE_CONSTRAINT: pytest.approx(COLLAPSE_FRACTION * baseline - row["accuracy"])}
    assert plain.best_trials == []  # Optuna's view: infeasible
    st.close()


def test_every_complete_trial_tells_the_samplers_whether_it_collapsed(study):
    from slimtune.search._constraints import COLLAPSE_CONSTRAINT, COLLAPSE_FRACTION

    working = 0
    for t in study.optuna_study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        assert t.constraints[COLLAPSE_CONSTRAINT] == pytest.approx(COLLAPSE_FRACTION * study.baseline.accuracy - t.values[0])
        working += t.constraints[COLLAPSE_CONSTRAINT] < 0
    assert working >= 1


def test_a_worker_joins_a_study_created_between_its_lookup_and_its_optuna_check(tmp_path, monkeypatch):
    """Two workers creating one study at once: the second may miss slimtune's record at
    its first lookup and then find the Optuna study the first worker just made; it
    joins (seen once on PostgreSQL in CI as 'an Optuna study that slimtune did not create')."""
    storage = f"sqlite:///{tmp_path / 'race.db'}"
    first = Study.create_or_load("race", storage=storage, task="digits", settings=FAST, seed=0)
    real_find, calls = _opening._find, []

    def find_late(db, name):  # the first lookup ran before the other worker's commit
        calls.append(name)
        return None if len(calls) == 1 else real_find(db, name)

    monkeypatch.setattr(_opening, "_find", find_late)
    second = Study.create_or_load("race", storage=storage, task="digits", settings=FAST, seed=1)
    assert len(calls) == 2 and second.name == "race" and second.baseline.accuracy == first.baseline.accuracy
    monkeypatch.setattr(_opening, "_find", real_find)
    # an Optuna study that slimtune never recorded is still refused
    optuna.create_study(study_name="foreign", storage=storage)
    with pytest.raises(StudyError, match="did not create"):
        Study.create_or_load("foreign", storage=storage, task="digits", settings=FAST)
    first.close()
    second.close()
