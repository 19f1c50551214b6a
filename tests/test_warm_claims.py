"""A study's warm starts: each claimed exactly once across workers (processes racing for
them), and one that did not complete proposed once more when the study resumes."""

from __future__ import annotations

from collections import Counter

import optuna
import pytest

from slimtune import Study
from slimtune.search._backends.optuna_backend import neighbourhood
from tests import _claims_race

optuna.logging.set_verbosity(optuna.logging.WARNING)

TASK = "tests.user_task:make_task"  # 96 tiny images: seconds per trial
FAST = {"epochs": 1, "finetune_epochs": 1, "latency_repeats": 3, "latency_warmup": 1, "calibration_size": 32}


def _values(row: dict, plan: dict) -> dict:
    return {k: row["params"][k] for k in plan}


def test_a_warm_start_that_did_not_complete_is_proposed_again_once(tmp_path, monkeypatch):
    """Ctrl-C during a new study's first warm start: the resumed study proposes it again,
    then goes on with the others; one that fails twice is not proposed a third time."""
    storage = f"sqlite:///{tmp_path / 'w.db'}"
    study = Study.create_or_load("w", storage=storage, task=TASK, settings=FAST, seed=0, early_stopping=True)
    plan = neighbourhood(study.space, seed=0)  # the user task gives no list: the backend's neighbourhood
    assert len(plan) >= 4

    def interrupted(costs):
        raise KeyboardInterrupt

    study.frontier_points = interrupted  # read by early stopping, after `ask`: a Ctrl-C mid-trial
    with pytest.raises(KeyboardInterrupt):
        study.optimize(n_trials=1, progress=False, fidelity="full")
    del study.frontier_points
    (first,) = study.trials()
    assert first["state"] == "FAIL" and _values(first, plan[0]) == plan[0]
    study.close()

    resumed = Study.create_or_load("w", storage=storage, task=TASK, seed=1, early_stopping=False)
    rows = resumed.optimize(n_trials=2, progress=False, fidelity="full")
    assert [_values(r, plan[i]) for r, i in zip(rows, (0, 1))] == [plan[0], plan[1]]
    assert [r["state"] for r in rows] == ["COMPLETE", "COMPLETE"]
    monkeypatch.setenv("SLIMTUNE_FAULT", "before_eval:raise")  # the next warm start fails, twice
    failed = resumed.optimize(n_trials=2, progress=False, fidelity="full")
    assert [r["state"] for r in failed] == ["FAIL", "FAIL"]
    assert [_values(r, plan[2]) for r in failed] == [plan[2], plan[2]]
    monkeypatch.delenv("SLIMTUNE_FAULT")
    (after,) = resumed.optimize(n_trials=1, progress=False, fidelity="full")
    assert _values(after, plan[3]) == plan[3]
    resumed.close()


def test_racing_processes_claim_each_warm_start_once_sqlite(tmp_path):
    url = f"sqlite:///{tmp_path / 'race.db'}"
    study_id = _claims_race.prepare(url)
    trials = _claims_race.race(url, study_id, processes=6)
    held = Counter((t["a"], t["b"]) for t in trials)
    assert sorted(held) == sorted((p["a"], p["b"]) for p in _claims_race.PLAN)
    assert set(held.values()) == {1}, held  # none twice
