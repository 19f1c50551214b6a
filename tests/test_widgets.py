"""The notebook dashboard and the %slimtune magic, on a real study in a real SQLite file.

The browser rendering itself is tested in ``test_browser.py``; here the widgets' Python
side is driven directly (the messages a click or a hover sends are fed to the marks).
"""

from __future__ import annotations

import math
import random
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from tests._widget_study import STUDY_NAME, real_study
from tests._bench import load_benchmark

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
ROOT = Path(__file__).resolve().parents[1]
FINAL = ("COMPLETE", "PRUNED", "FAIL")


@pytest.fixture(scope="session")
def study_info(tmp_path_factory):
    return real_study(tmp_path_factory)


@pytest.fixture
def study(study_info):
    s = study_info.load()
    yield s
    s.close()


def open_dashboard(study, **kwargs):
    from slimtune.widgets import StudyDashboard

    dash = StudyDashboard(study, watch=kwargs.pop("watch", False), **kwargs)
    assert dash.wait(60)
    return dash


def bench_module():
    return load_benchmark("widgets")


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


# -- pure helpers ----------------------------------------------------------------------
def test_front_indices_match_the_study_frontier_rule():
    from slimtune._dominance import non_dominated_mask
    from slimtune.widgets._axes import front_indices

    rng = random.Random(0)
    for _ in range(50):
        n = rng.randrange(0, 40)
        rows = [{"accuracy": rng.choice([0.5, 0.9, rng.random(), float("nan")]),
                 "latency_ms": rng.choice([1.0, 2.0, rng.random()])} for _ in range(n)]
        mask = non_dominated_mask(rows, ("accuracy", "latency_ms"))
        got = front_indices([r["latency_ms"] for r in rows], [r["accuracy"] for r in rows])
        assert sorted(got.tolist()) == [i for i, keep in enumerate(mask) if keep]
        xs = [rows[i]["latency_ms"] for i in got]
        assert xs == sorted(xs)  # cheapest first: the order the step line needs


def test_group_params_by_family_in_pipeline_order():
    from slimtune.widgets._axes import group_params

    groups = group_params({"exits.10.threshold": 0.9, "exits.2.threshold": 0.8, "quant.bits": 8, "prune.ratio": 0.5,
                           "distill.alpha": 0.3, "dsconv.features.3": True, "lowrank.blocks.1": 0.5, "custom": 1})
    # the order a candidate is built in; titles come from the knobs themselves
    assert [g for g, _ in groups] == ["DS-conv", "Low-rank", "Early exits", "Distillation", "Pruning", "Quantization",
                                      "Other"]
    assert [k for k, _ in dict(groups)["Early exits"]] == ["2.threshold", "10.threshold"]


def test_html_reaching_the_page_is_escaped():
    from slimtune.widgets import details_html
    from slimtune.widgets._magics import StudyList
    from slimtune.widgets._plot import tooltip_html
    from slimtune.widgets._static import render_html

    evil = "<img src=x onerror=alert(1)>"
    row = {"trial": 3, "state": "PRUNED", "accuracy": 0.9, "latency_ms": 0.1, "size_bytes": 2048, "macs": 10**6,
           "params": {"quant.mode": evil, evil: 1}, "flags": [evil], "stopped_reason": evil, "exit_rates": [0.5, 0.5]}
    base = {"accuracy": 0.95, "latency_ms": 0.2, "size_bytes": 4096, "macs": 2 * 10**6}
    for html in (details_html(row, base), tooltip_html(row),
                 render_html(title=evil, task=evil, rows=[dict(row, state="COMPLETE")], baseline=base),
                 StudyList([{"name": evil, "task": evil, "trials": 1}], evil)._repr_html_()):
        assert "<img" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html


# -- the dashboard on a real study ---------------------------------------------------------
def test_dashboard_plots_every_trial_the_front_and_the_baseline(study):
    dash = open_dashboard(study)
    rows = study.trials(states=FINAL)
    assert len(rows) >= 10
    assert dash.plot.n_points == len(rows)
    complete = [r for r in rows if r["state"] == "COMPLETE"]
    assert len(dash.plot.trials_mark.x) == len(complete)
    assert len(dash.plot.others_mark.x) == len(rows) - len(complete)
    front = {r["trial"] for r in study.frontier()}
    assert {r["trial"] for r in dash.plot.front} == front
    assert len(dash.plot.front_line.x) == len(front) and dash.plot.front_line.interpolation == "step-after"
    assert list(dash.plot.baseline_mark.y) == [pytest.approx(study.baseline.accuracy)]
    assert list(dash.plot.baseline_mark.x) == [pytest.approx(study.baseline.latency_ms)]
    assert sorted(dash.table.trials) == sorted(front)  # the Pareto table is the plot's front
    # the study name holds HTML: shown as text, never as markup
    assert "&lt;i&gt;test&lt;/i&gt; &amp;" in dash.header.value and "<i>" not in dash.header.value
    assert f"{len(complete)} complete" in dash.header.value
    dash.close()


def test_study_dashboard_method_returns_the_dashboard(study):
    from slimtune.widgets import StudyDashboard

    dash = study.dashboard(watch=False, objective="size")
    assert isinstance(dash, StudyDashboard) and dash.objective.value == "size"
    dash.close()


def test_click_and_hover_fill_the_details_and_the_tooltip(study):
    dash = open_dashboard(study)
    assert "Click a point" in dash.details.widget.value
    done = dash.plot._done
    # what bqplot sends when a point is clicked / hovered in the browser
    dash.plot.trials_mark._handle_custom_msgs(None, {"event": "element_click", "data": {"index": 2}})
    row = done[2]
    html = dash.details.widget.value
    assert f"data-trial='{row['trial']}'" in html
    for text in ("accuracy", "latency", "size", "MACs", "vs baseline", "Distillation", "temperature"):
        assert text in html
    assert list(dash.plot.inspected_mark.x) == [pytest.approx(row["latency_ms"])]
    dash.plot.trials_mark._handle_custom_msgs(None, {"event": "hover", "point": {"index": 1}})
    assert f"trial {done[1]['trial']}" in dash.plot.tooltip.value and "T=" in dash.plot.tooltip.value
    dash.close()


def test_errors_in_callbacks_reach_the_visible_error_area(study, monkeypatch):
    dash = open_dashboard(study)

    def broken(*args, **kwargs):
        raise RuntimeError("details exploded")

    monkeypatch.setattr(dash.details, "show", broken)
    dash.plot.trials_mark._handle_custom_msgs(None, {"event": "element_click", "data": {"index": 0}})
    assert "RuntimeError: details exploded" in dash.status.value
    assert "details exploded" in "".join(o.get("text", "") for o in dash.errors.outputs)
    dash.select(max_latency_ms=1e-9)  # bad input is a message, not a traceback
    assert "No complete trial" in dash.selection.value
    dash.close()


def test_pareto_table_sorts_and_picks_in_step_with_the_plot(study):
    dash = open_dashboard(study)
    front = {r["trial"]: r for r in dash.plot.front}
    dash.table.sort_by.value = "latency"
    assert dash.table.descending.value is False
    assert [front[t]["latency_ms"] for t in dash.table.trials] == sorted(r["latency_ms"] for r in front.values())
    dash.table.descending.value = True
    assert [front[t]["latency_ms"] for t in dash.table.trials] == sorted((r["latency_ms"] for r in front.values()),
                                                                         reverse=True)
    pick = dash.table.trials[-1]
    dash.table.list.value = pick  # a click on the row
    assert dash.details.trial == pick
    assert list(dash.plot.inspected_mark.y) == [pytest.approx(front[pick]["accuracy"])]
    dash.close()


def test_constraints_select_what_study_select_selects(study):
    from slimtune.studies import NoCandidateError

    dash = open_dashboard(study)
    complete = study.trials(states=("COMPLETE",))
    latencies = sorted(r["latency_ms"] for r in complete)
    accuracies = sorted(r["accuracy"] for r in complete)
    cases = [{}, {"max_latency_ms": latencies[len(latencies) // 2]}, {"min_accuracy": accuracies[0]},
             {"max_latency_ms": latencies[-1], "min_accuracy": accuracies[len(accuracies) // 2]}]
    for limits in cases:
        candidate = dash.select(**limits)
        assert candidate.trial == study.select(**limits).trial, limits
        assert list(dash.plot.selected_mark.y) == [pytest.approx(candidate.accuracy)]
        assert f"Selected: trial {candidate.trial}" in dash.selection.value
        starred = [trial for label, trial in dash.table.list.options if label.startswith("★")]
        assert starred == ([candidate.trial] if candidate.trial in dash.table.trials else [])
        assert not dash.export_button.disabled
    # typing a limit in the box gives the same answer (selection runs in the background)
    dash.min_accuracy.value = 0.0  # 0 = no limit
    dash.max_latency.value = latencies[1]
    assert dash.wait(30)
    assert dash.candidate.trial == study.select(max_latency_ms=latencies[1]).trial
    # nothing fits: the study's own message, nothing highlighted, no export
    assert dash.select(max_latency_ms=latencies[0] / 100) is None
    with pytest.raises(NoCandidateError) as info:
        study.select(max_latency_ms=latencies[0] / 100)
    assert dash.selection.value.endswith(f"{_escape(str(info.value))}</span>")
    assert len(dash.plot.selected_mark.x) == 0 and dash.export_button.disabled
    dash.close()


def _escape(text: str) -> str:
    import html

    return html.escape(text)


def test_export_writes_the_selected_model(study, tmp_path):
    dash = open_dashboard(study)
    dash.select(min_accuracy=0.5)
    assert dash.export_path.value.endswith(f"-trial{dash.candidate.trial}.onnx")
    assert "<" not in dash.export_path.value  # the study name is made a safe file name
    out = dash.export(str(tmp_path / "chosen.onnx"))
    reference = study.select(min_accuracy=0.5).export(tmp_path / "reference.onnx")
    assert out.read_bytes() == reference.read_bytes() and out.stat().st_size > 1000
    assert "Exported trial" in dash.status.value
    dash.export_path.value = str(tmp_path / "button.onnx")
    dash.export_button.click()  # the button writes the path in the box
    assert (tmp_path / "button.onnx").read_bytes() == reference.read_bytes()
    dash.close()


def test_objective_switch_redraws_against_size_and_macs(study):
    dash = open_dashboard(study)
    complete = [r for r in dash.rows if r["state"] == "COMPLETE"]
    dash.objective.value = "size"
    assert dash.plot.x_axis.label == "Size of the packed model file (KiB)"  # KiB: 1024 B, as plotted
    assert list(dash.plot.trials_mark.x) == pytest.approx([r["size_bytes"] / 1024 for r in complete], rel=1e-6)
    dash.objective.value = "artifact"  # the .onnx that was timed: a real, larger file
    assert "artifact" in dash.plot.x_axis.label and "KiB" in dash.plot.x_axis.label
    assert list(dash.plot.trials_mark.x) == pytest.approx([r["artifact_bytes"] / 1024 for r in complete], rel=1e-6)
    assert all(r["size_bytes"] < r["artifact_bytes"] for r in complete)
    dash.objective.value = "macs"
    assert list(dash.plot.trials_mark.x) == pytest.approx([r["macs"] / 1e6 for r in complete], rel=1e-6)
    assert all(math.isfinite(v) for v in dash.plot.front_line.x)
    dash.log_x.value = True
    assert type(dash.plot.x_axis.scale).__name__ == "LogScale"
    assert all(m.scales["x"] is dash.plot.x_axis.scale for m in dash.plot.marks)
    assert "<svg" in dash._repr_html_()
    dash.close()


def test_start_runs_in_the_background_and_stop_loses_nothing(study_info):
    study = study_info.load()
    dash = open_dashboard(study)
    before = dash.plot.n_points
    dash.start(3)
    assert dash.running and dash.stop_button.disabled is False and dash.start_button.disabled
    # the kernel is free meanwhile: this loop is the "notebook" doing other work
    wait_for(lambda: dash.plot.n_points > before, 180, "the first trial of the background search")
    assert "trials" in dash.progress.label.value and "ETA" in dash.progress.label.value
    dash.stop()
    assert dash.wait(180)
    assert not dash.running and dash.start_button.disabled is False
    assert "stopped" in dash.progress.label.value
    assert before < dash.plot.n_points < before + 3  # it ended after the trial that was running
    fresh = study_info.load()
    stored = fresh.trials(states=FINAL)
    assert sorted(r["trial"] for r in stored) == sorted(r["trial"] for r in dash.rows)
    assert not dash.errors.outputs
    fresh.close()
    dash.close()
    study.close()


# -- watch mode and size -------------------------------------------------------------------
@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    bench = bench_module()
    directory = tmp_path_factory.mktemp("synthetic-study")
    storage = f"sqlite:///{directory / 'synthetic.db'}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study = bench.synthetic_study(storage, "synthetic", 200)
    yield bench, study, storage
    study.close()


def test_watch_mode_shows_trials_written_by_another_process(synthetic):
    bench, study, storage = synthetic
    dash = open_dashboard(study, watch=True, interval=0.2)
    before = dash.plot.n_points
    assert before == len(study.trials(states=FINAL))
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import importlib.util as u;"
            "s = u.spec_from_file_location('b', sys.argv[1] + '/benchmarks/widgets.py'); b = u.module_from_spec(s);"
            "s.loader.exec_module(b); from slimtune.studies import Study;"
            "b.add_one(Study.load('synthetic', storage=sys.argv[2]), seed=7)")
    subprocess.run([sys.executable, "-W", "ignore", "-c", code, str(ROOT), storage], check=True, timeout=120)
    wait_for(lambda: dash.plot.n_points == before + 1, 30, "the watcher to show the new trial")
    assert dash.watching
    dash.watch(False)
    assert not dash.watching
    dash.close()


def test_new_trials_are_appended_not_redrawn(synthetic):
    from ipywidgets.widgets.widget import _instances as live_widgets

    _, study, _ = synthetic
    started = time.perf_counter()
    dash = open_dashboard(study)
    assert time.perf_counter() - started < 10
    figure, marks = dash.plot.figure, list(dash.plot.figure.marks)
    n_widgets = len(live_widgets)
    template = next(r for r in dash.rows if r["state"] == "COMPLETE")
    dash.add_rows([dict(template, trial=99_999, latency_ms=template["latency_ms"] / 2)])
    assert dash.plot.n_points == len(study.trials(states=FINAL)) + 1
    assert dash.plot.figure is figure and list(figure.marks) == marks  # same figure, same marks
    assert len(live_widgets) == n_widgets  # no widget created for a new point
    assert dash.plot.trials_mark.x[-1] == pytest.approx(template["latency_ms"] / 2)
    dash.add_rows([dict(template, trial=99_999)])  # the same trial again: ignored
    assert dash.plot.n_points == len(study.trials(states=FINAL)) + 1
    dash.close()
    assert len(live_widgets) < n_widgets - 30  # closing the dashboard closes all its widgets


# -- the %slimtune magic ---------------------------------------------------------------------
@pytest.fixture
def shell(tmp_path, monkeypatch):
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    config = Config()
    config.HistoryManager.enabled = False  # no history database left behind
    ip = InteractiveShell.instance(config=config)
    ip.run_line_magic("load_ext", "slimtune")
    yield ip
    ip.run_line_magic("unload_ext", "slimtune")
    assert "slimtune" not in ip.magics_manager.magics["line"]
    InteractiveShell.clear_instance()


def test_magic_lists_and_shows_studies(shell, study_info):
    from IPython.core.error import UsageError

    from slimtune.studies import StudyError
    from slimtune.widgets import StudyDashboard

    listed = shell.run_line_magic("slimtune", f"studies --storage {study_info.storage}")
    assert [s["name"] for s in listed] == [STUDY_NAME]
    assert "&lt;i&gt;" in listed._repr_html_() and "<i>" not in listed._repr_html_()
    dash = shell.run_line_magic("slimtune", f'show "{STUDY_NAME}" --storage {study_info.storage} --no-watch')
    assert isinstance(dash, StudyDashboard) and dash.plot.n_points >= 10 and not dash.watching
    dash.close()
    with pytest.raises(UsageError, match="--task"):
        shell.run_line_magic("slimtune", "run demo --trials 2")
    with pytest.raises(UsageError, match="invalid choice"):
        shell.run_line_magic("slimtune", "frobnicate")
    with pytest.raises(StudyError, match="No study 'nope'"):
        shell.run_line_magic("slimtune", f"show nope --storage {study_info.storage}")


def test_studies_never_import_widgets():
    code = ("import sys, slimtune, slimtune.studies, slimtune.search._runner;"
            "bad = [m for m in sys.modules if m.startswith('slimtune.widgets') or m in ('ipywidgets', 'bqplot')];"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, cwd=ROOT)
