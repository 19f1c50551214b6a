"""``slimtune show`` and ``select`` on big studies: they read every trial's figures in
bulk and only the printed trials in full, so they take as many SQL statements for
2,000 trials as for 200, and print what they printed when they read every trial in full
(the slow path: ``Study.overview()`` built from ``Study.trials()``).

Times are measured by ``benchmarks/cli_scale.py``, not here.
"""

from __future__ import annotations

import json
import shutil
import sqlite3

import pytest
from click.testing import CliRunner

from slimtune.cli import main
from tests import _big_studies as big_studies

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
NAME = "cli-scale"


def _synthetic():
    return big_studies.synthetic()


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A SQLite file holding study NAME with 200 bulk-written trials."""
    return big_studies.study_file(tmp_path_factory.mktemp("scale"), NAME, 200)


@pytest.fixture(scope="module")
def big(small, tmp_path_factory):
    """The same study grown to 2,000 trials."""
    return big_studies.study_file(tmp_path_factory.mktemp("scale"), NAME, 2000, grown_from=small)


def _load(path):
    return big_studies.load(path, NAME)


def _commands(path) -> dict[str, list[str]]:
    """show (the front; every trial), select (a trial fits; two limits; nothing fits)."""
    study = _load(path)
    base = study.baseline
    study.close()
    url = f"sqlite:///{path}"
    latency, accuracy = f"{base.latency_ms * 0.6:.4g}", f"{base.accuracy - 0.2:.4f}"
    return {"show --pareto": ["show", NAME, "--pareto", "--storage", url],
            "show": ["show", NAME, "--storage", url],
            "select": ["select", NAME, "--max-latency-ms", latency, "--storage", url],
            "select two limits": ["select", NAME, "--max-latency-ms", latency, "--min-accuracy", accuracy,
                                  "--storage", url],
            "select nothing fits": ["select", NAME, "--max-latency-ms", f"{base.latency_ms * 0.01:.4g}", "--storage",
                                    url]}


def _statements(args: list[str]) -> tuple[int, int]:
    """``(SQL statements, exit code)`` of one command."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    count = [0]

    def counted(*_args) -> None:
        count[0] += 1

    event.listen(Engine, "before_cursor_execute", counted)
    try:
        result = CliRunner().invoke(main, args)
    finally:
        event.remove(Engine, "before_cursor_execute", counted)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return count[0], result.exit_code


def test_show_and_select_take_as_many_statements_for_2000_trials_as_for_200(small, big):
    counts = {}
    for label, path in (("small", small), ("big", big)):
        counts[label] = {key: _statements(args) for key, args in _commands(path).items()}
    assert counts["small"] == counts["big"], counts
    assert {key: rc for key, (_, rc) in counts["big"].items()} == {
        "show --pareto": 0, "show": 0, "select": 0, "select two limits": 0, "select nothing fits": 1}
    assert max(n for n, _ in counts["big"].values()) <= 30, counts


@pytest.fixture(scope="module")
def odd(small, tmp_path_factory):
    """The small study with constraints and every odd kind of trial: a complete and a
    failed one of plain Optuna (no record), a running one, one rejected before
    training, complete ones timed on another machine."""
    from optuna.trial import TrialState, create_trial

    from slimtune.search._early_stopping import BEFORE_TRAINING

    path = tmp_path_factory.mktemp("cli-scale") / "odd.db"
    shutil.copy(small, path)
    study = _load(path)
    study.optuna_study.add_trial(create_trial(
        state=TrialState.COMPLETE, values=[0.999, 0.001], system_attrs={"constraints:latency_ms": -1.0},
        user_attrs={"size_bytes": 10, "macs": 20, "val_accuracy": 0.999, "reference_latency_ms": 0.05,
                    "fingerprint_id": "elsewhere"}))
    study.optuna_study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={"error": "plain failure"}))
    study.optuna_study.ask()  # a running trial
    study.close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE slimtune_studies SET constraints = ?", (json.dumps({"max_latency_ms": 0.045}),))
        conn.execute("UPDATE slimtune_candidates SET stopped_reason = ? WHERE trial_number = "
                     "(SELECT min(trial_number) FROM slimtune_candidates WHERE state = 'PRUNED')",
                     (f"{BEFORE_TRAINING}: cannot reach the front",))
        conn.execute("UPDATE slimtune_candidates SET fingerprint_id = 'other-machine' WHERE trial_number IN "
                     "(SELECT trial_number FROM slimtune_candidates WHERE state = 'COMPLETE' ORDER BY trial_number "
                     "LIMIT 40)")
    return path


def test_show_and_select_print_what_the_slow_path_prints(odd, monkeypatch):
    from slimtune.studies._overview import Overview
    from slimtune.studies._reading import Reading

    study = _load(odd)
    rows = study.trials()
    assert study.constraints.active and {r["state"] for r in rows} == {"COMPLETE", "PRUNED", "FAIL", "RUNNING"}
    assert len(study.fingerprints()) == 3 and any(r["pareto"] for r in rows)
    study.close()
    commands = _commands(odd)
    commands["select test split"] = [*commands["select"], "--split", "test"]
    commands["show --pareto --json"] = [*commands["show --pareto"], "--json"]
    fast = {key: CliRunner().invoke(main, args) for key, args in commands.items()}
    with monkeypatch.context() as patched:
        patched.setattr(Reading, "overview", lambda self: Overview.of_rows(self, self.trials()))
        slow = {key: CliRunner().invoke(main, args) for key, args in commands.items()}
    for key in commands:
        assert (fast[key].exit_code, fast[key].output) == (slow[key].exit_code, slow[key].output), key
    assert "note: latencies come from 3 machine fingerprints" in fast["show --pareto"].output.replace("\n  ", " ")
    assert "1 rejected before training" in fast["show"].output.replace("\n  ", " ")
    assert fast["select nothing fits"].exit_code == 1 and fast["select"].exit_code == 0


def test_frontier_and_select_are_those_of_every_row_read_in_full(odd):
    """The API the commands call: ``frontier()`` (of all machines, of one) and
    ``select`` equal the same rules applied to ``Study.trials()``."""
    from slimtune._dominance import relative_latency
    from slimtune.studies._frontier import Limits, select_rows
    from slimtune.studies._rows import mark_pareto

    study = _load(odd)
    try:
        rows = study.trials()
        complete = [r for r in rows if r["state"] == "COMPLETE"]
        cost = study.objectives[1]

        def front(of):  # sorted by the same-run latency ratio the front is decided on
            return sorted((r for r in of if r["pareto"]),
                          key=lambda r: (relative_latency(r) if cost == "latency_ms" else r[cost], -r["accuracy"],
                                         r["trial"]))

        assert json.dumps(study.frontier()) == json.dumps(front(complete))
        mine = [dict(r) for r in complete if r.get("fingerprint_id") == "other-machine"]
        mark_pareto(mine, study.objectives, feasible_only=True, baseline=study.baseline_row())
        assert front(mine) and json.dumps(study.frontier(fingerprint="other-machine")) == json.dumps(front(mine))
        latency = study.baseline.latency_ms * 0.6
        for split in ("val", "test"):
            limits = Limits(max_latency_ms=latency, split=split)
            _, eligible = select_rows([r for r in complete if r.get(limits.accuracy) is not None], limits,
                                      baseline=study.baseline_row(), objectives=study.objectives)
            assert json.dumps(study.select(max_latency_ms=latency, split=split).row) == json.dumps(eligible[0])
    finally:
        study.close()

