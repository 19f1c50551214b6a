"""The dashboard on big studies: the bulk-written trials of the benchmark are the trials
a search writes; opening and polling read a study in a fixed number of statements
whatever its size; the plot sends a bounded number of points while the front and the
selected model stay exact; the figures read for the plot are those of ``study.trials()``.

Times are measured by ``benchmarks/widgets.py``, not here.
"""

from __future__ import annotations

import json
import random
import shutil
import sqlite3
import warnings

import numpy as np
import pytest

from tests import _big_studies as big_studies
from tests._bench import load_benchmark

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
NAME = "scale"


def _synthetic():
    return big_studies.synthetic()


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A SQLite file holding study NAME with 200 bulk-written trials."""
    return big_studies.study_file(tmp_path_factory.mktemp("scale"), NAME, 200)


@pytest.fixture(scope="module")
def big(small, tmp_path_factory):
    """The same study grown to 20,000 trials."""
    return big_studies.study_file(tmp_path_factory.mktemp("scale"), NAME, 20_000, grown_from=small)


def _load(path):
    return big_studies.load(path, NAME)


# -- the benchmark's trials are real trials ----------------------------------------------------
def _table(path, table: str, columns: str) -> list[str]:
    with sqlite3.connect(path) as conn:
        return sorted(map(repr, conn.execute(f"SELECT {columns} FROM {table}").fetchall()))


@pytest.mark.slow
def test_bulk_written_trials_are_the_trials_a_search_writes(tmp_path):
    """The same synthetic trials written through ``Study.optimize`` (real backend,
    runner, heartbeat, recorder; only the evaluator stands in) and with bulk inserts give
    the same rows, the same frontier, the same Optuna trials and the same table rows
    (but the weights, which the bulk writer leaves out)."""
    import optuna

    from slimtune.studies import Study

    synthetic = _synthetic()
    normal, bulk = tmp_path / "normal.db", tmp_path / "bulk.db"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Study.create_or_load("same", storage=f"sqlite:///{normal}", task="digits", settings=synthetic.SETTINGS, seed=0,
                             early_stopping=False).close()
        shutil.copy(normal, bulk)  # one baseline for both
        study = Study.load("same", storage=f"sqlite:///{normal}")
        synthetic.run_normally(study, 16)
        rows = study.trials()
        assert {r["state"] for r in rows} == {"COMPLETE", "PRUNED", "FAIL"}  # every kind of trial
        copy = Study.load("same", storage=f"sqlite:///{bulk}")
        trials = []
        for r in rows:
            trial = synthetic.draw(r["trial"], copy.baseline.to_dict())
            trial.params = dict(r["params"])
            trials.append(trial)
        synthetic.write_in_bulk(copy, trials)
    when = ("datetime_start", "datetime_complete")
    assert json.dumps([{k: v for k, v in r.items() if k not in when} for r in copy.trials()]) == json.dumps(
        [{k: v for k, v in r.items() if k not in when} for r in rows])
    assert [r["trial"] for r in copy.frontier()] == [r["trial"] for r in study.frontier()]

    def optuna_trials(path):
        loaded = optuna.load_study(study_name="same", storage=f"sqlite:///{path}")
        return [(t.number, t.state, t.params, t.distributions, t.values, t.user_attrs, t.system_attrs)
                for t in loaded.get_trials()]

    assert optuna_trials(bulk) == optuna_trials(normal)
    for table, columns in (("trials", "number, state"), ("trial_params", "trial_id, param_name, param_value, "
                                                                          "distribution_json"),
                           ("trial_values", "trial_id, objective, value, value_type"),
                           ("trial_user_attributes", "trial_id, key, value_json"),
                           ("trial_system_attributes", "trial_id, key, value_json"), ("trial_heartbeats", "trial_id"),
                           ("slimtune_candidates", "trial_number, state, params, accuracy, val_accuracy, test_accuracy, "
                            "latency_ms, size_bytes, artifact_bytes, macs, measurement, pre, fingerprint_id, exit_rates, "
                            "flags, recipe, info, backend, tuner, stopped_reason, error, train_seconds, total_seconds, "
                            "worker")):
        assert _table(bulk, table, columns) == _table(normal, table, columns), table
    study.close()
    copy.close()


# -- the figures a dashboard reads -------------------------------------------------------------
def test_points_are_the_figures_of_study_trials(small, tmp_path):
    """Every trial's figures, read in bulk, equal ``study.trials()``'s fields: trials
    with a record, without one (plain Optuna), running, whose record lacks a metric,
    whose measurement holds a NaN; with the study's constraints, ``feasible`` too."""
    from optuna.trial import TrialState, create_trial

    from slimtune.studies._feed import POINT_FIELDS, TrialFeed

    path = tmp_path / "odd.db"
    shutil.copy(small, path)
    study = _load(path)
    study.optuna_study.add_trial(create_trial(
        state=TrialState.COMPLETE, values=[0.5, 0.01], system_attrs={"constraints:latency_ms": 1.0},
        user_attrs={"size_bytes": 10, "macs": 20, "val_accuracy": 0.4, "reference_latency_ms": 0.02}))
    study.optuna_study.ask()  # a running trial
    with sqlite3.connect(path) as conn:  # a record lacking a metric Optuna has; a NaN p95
        number, measurement = conn.execute("SELECT trial_number, measurement FROM slimtune_candidates "
                                           "WHERE state = 'COMPLETE' ORDER BY id LIMIT 1").fetchone()
        conn.execute("UPDATE slimtune_candidates SET test_accuracy = NULL, measurement = ? WHERE trial_number = ?",
                     (json.dumps({**json.loads(measurement), "latency_p95_ms": float("nan")}), number))
    study.close()
    for constraints in ({}, {"max_latency_ms": 0.03}):
        with sqlite3.connect(path) as conn:
            conn.execute("UPDATE slimtune_studies SET constraints = ?", (json.dumps(constraints),))
        study = _load(path)
        assert study.constraints.active is bool(constraints)
        rows = study.trials()
        points = TrialFeed(study).points()
        fields = (*POINT_FIELDS, "feasible") if constraints else POINT_FIELDS
        expected = [{k: (None if k == "pre" and r["state"] == "COMPLETE" else r.get(k)) for k in fields} for r in rows]
        assert json.dumps(points) == json.dumps(expected)
        assert {r["state"] for r in rows} >= {"COMPLETE", "PRUNED", "FAIL", "RUNNING"}
        assert any(r["test_accuracy"] is not None and r["trial"] == number for r in rows)  # Optuna's, for the record's
        study.close()


# -- the shape of the work -----------------------------------------------------------------------
def _statements(action) -> int:
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    count = [0]

    def counted(*_args) -> None:
        count[0] += 1

    event.listen(Engine, "before_cursor_execute", counted)
    try:
        action()
    finally:
        event.remove(Engine, "before_cursor_execute", counted)
    return count[0]


def _open_and_poll(path, tmp_path) -> tuple[int, int, int]:
    """``(statements to open and choose, to poll finding one new trial, to poll finding
    nothing)`` on a copy of the study in ``path``."""
    from slimtune.widgets import StudyDashboard

    copy = tmp_path / f"copy-{path.name}"
    shutil.copy(path, copy)
    study = _load(copy)
    opened = []
    try:
        opening = _statements(lambda: opened.append(StudyDashboard(study, watch=False)) or opened[0].wait(60))
        bench = load_benchmark("widgets")
        bench.add_one(study, seed=3)
        added = []
        polling = _statements(lambda: added.append(opened[0].refresh()))
        assert added == [1]
        idle = _statements(opened[0].refresh)
    finally:
        if opened:
            opened[0].close()
        study.close()
    return opening, polling, idle


def test_opening_and_polling_take_as_many_statements_for_20000_trials_as_for_200(small, big, tmp_path):
    assert _open_and_poll(small, tmp_path) == _open_and_poll(big, tmp_path)
    opening, polling, idle = _open_and_poll(big, tmp_path)
    assert opening <= 30 and polling <= 10 and idle == 2, (opening, polling, idle)


# -- a big study in the plot -------------------------------------------------------------------
@pytest.fixture(scope="module")
def big_dashboard(big):
    from slimtune.widgets import StudyDashboard

    study = _load(big)
    dash = StudyDashboard(study, watch=False)
    assert dash.wait(120)
    yield study, dash, study.trials()
    dash.close()
    study.close()


def test_a_big_study_sends_a_bounded_plot_with_the_whole_front(big_dashboard):
    from slimtune.widgets import _axes as R
    from slimtune.widgets._thin import CELLS, LIMIT

    study, dash, rows = big_dashboard
    complete = [r for r in rows if r["state"] == "COMPLETE"]
    assert len(complete) > 3 * LIMIT and dash.plot.n_points == len(rows)  # every trial is a point...
    sent = len(dash.plot.trials_mark.x)
    assert sent <= CELLS[0] * CELLS[1] + len(dash.plot.front) and sent < len(complete) / 3  # ...not every one is sent
    for objective in ("latency", "size", "speedup", "macs"):
        dash.objective.value = objective
        front = [r["trial"] for r in R.front_rows(complete, objective, study.baseline_row())]
        assert [r["trial"] for r in dash.plot.front] == front, objective  # exact, in order
        drawn = {dash.plot._row_for(dash.plot.trials_mark, i)["trial"] for i in range(len(dash.plot.trials_mark.x))}
        assert set(front) <= drawn  # every front point is a dot one can click
        assert len(dash.plot.front_line.x) == len(front)
    dash.objective.value = "latency"
    assert {r["trial"] for r in dash.plot.front} == {r["trial"] for r in study.frontier()}
    assert sorted(dash.table.trials) == sorted(r["trial"] for r in dash.plot.front)
    dash.log_x.value = True
    assert len(dash.plot.trials_mark.x) <= CELLS[0] * CELLS[1] + len(dash.plot.front)
    dash.log_x.value = False
    fallback = dash._repr_html_()  # sent with the widget: the static SVG draws one dot per cell of 3 px
    assert 100 < fallback.count("h0") < len(complete) / 3 and f"{len(rows)} trials" in fallback


@pytest.mark.slow
def test_a_big_study_selects_what_study_select_selects(big_dashboard):
    """Limits that choose a trial, that no trial meets, and that only trials the
    baseline beats meet."""
    from slimtune.studies import NoCandidateError

    study, dash, rows = big_dashboard
    complete = [r for r in rows if r["state"] == "COMPLETE"]
    rng = random.Random(0)
    latencies = sorted(r["latency_ms"] for r in complete)
    accuracies = sorted(r["accuracy"] for r in complete)
    from slimtune._dominance import beaten_by_baseline

    base = study.baseline_row()
    ranked = sorted(complete, key=lambda r: -r["accuracy"])
    beaten = next(i for i, r in enumerate(ranked) if not beaten_by_baseline(r, base, study.objectives))
    assert beaten > 0  # the most accurate trials are beaten by the baseline timed in their runs
    cases = [{}, {"max_latency_ms": latencies[0] / 2}, {"min_accuracy": ranked[beaten - 1]["accuracy"]}]
    cases += [{"max_latency_ms": rng.choice(latencies), "min_accuracy": rng.choice(accuracies)} for _ in range(2)]
    by_trial = {r["trial"]: r for r in complete}
    messages = []
    for limits in cases:
        chosen = dash.select(**limits)
        try:
            expected = study.select(**limits).trial
        except NoCandidateError as exc:
            assert chosen is None and str(exc) in _unescape(dash.selection.value), limits
            messages.append(str(exc).split(":")[0])
            continue
        assert chosen is not None and chosen.trial == expected, limits
        assert chosen.params == by_trial[expected]["params"]  # the candidate's whole row
    assert any(m.startswith("Nothing beats the baseline") for m in messages), messages
    assert any(m.startswith("No complete trial") for m in messages), messages


def test_a_click_on_a_thinned_point_shows_that_trial(big_dashboard):
    study, dash, rows = big_dashboard
    shown = dash.plot._shown["done"]
    index = len(shown) // 2
    dash.plot.trials_mark._handle_custom_msgs(None, {"event": "element_click", "data": {"index": index}})
    trial = dash.plot._done[int(shown[index])]["trial"]
    assert f"data-trial='{trial}'" in dash.details.widget.value
    expected = next(r for r in rows if r["trial"] == trial)
    assert "Distillation" in dash.details.widget.value  # the params, read when shown
    assert ("on the front" in dash.details.widget.value) is expected["pareto"]
    dash.plot.trials_mark._handle_custom_msgs(None, {"event": "hover", "point": {"index": index}})
    assert f"trial {trial}" in dash.plot.tooltip.value


def _unescape(text: str) -> str:
    import html

    return html.unescape(text)


# -- the helpers ---------------------------------------------------------------------------------
def test_pareto_set_kept_point_by_point_is_the_front_sorted_at_once():
    from slimtune._dominance import non_dominated_losses
    from slimtune.widgets._front import ParetoSet

    rng = np.random.default_rng(0)
    for _ in range(20):
        losses = rng.choice([0.0, 1.0, 2.0, 3.0, np.nan], size=(60, 2)) + rng.random((60, 2)) * rng.integers(0, 2)
        front = ParetoSet(losses[:10])
        for i in range(10, 60):
            front.add(i, losses[i])
            assert sorted(front.indices.tolist()) == np.flatnonzero(non_dominated_losses(losses[:i + 1])).tolist()


def test_thinning_is_bounded_keeps_what_it_must_and_follows_new_points():
    from slimtune.widgets._thin import CELLS, Thinning

    rng = np.random.default_rng(1)
    x, y = rng.random(30_000), rng.random(30_000)
    thin = Thinning(limit=1000)
    shown = thin.update(x, y, keep=np.array([5, 7]))
    assert len(shown) <= CELLS[0] * CELLS[1] + 2 and {5, 7} <= set(shown.tolist())
    assert len(thin.update(x[:900], y[:900])) == 900  # under the limit: every point
    thin = Thinning(limit=1000)
    first = thin.update(x, y)
    i = int(first[0])
    same = np.append(x, x[i]), np.append(y, y[i])  # a new point in a cell already drawn: nothing new
    assert thin.update(*same).tolist() == first.tolist()
    far = np.append(same[0], 5.0), np.append(same[1], 5.0)  # outside the grid: rebuilt, and drawn
    assert len(x) + 1 in thin.update(*far).tolist()
