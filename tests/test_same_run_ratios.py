"""Every decision that compares candidates reads latency relative to the baseline timed
beside each one (``latency_ms / reference_latency_ms``): the front, ``select``, the
dashboard's front, early stopping and what Optuna's samplers are told.  Milliseconds
stay stored and shown; old studies (told milliseconds) resume in milliseconds."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from slimtune._dominance import LATENCY_RATIO, non_dominated_mask, optuna_latency_unit, relative_latency
from slimtune.studies._frontier import Limits, select_rows
from slimtune.studies._rows import mark_pareto

OBJECTIVES = ("accuracy", "latency_ms")
SCHEMA_1_DB = Path(__file__).parent / "data" / "schema_v1.db"

# A fresh demo study: trial 8 was starred while trial 5 beats it on both shown columns;
# their raw latencies were read at different moments (0.015303 vs 0.015308 ms).
DEMO_BASELINE = {"trial": "baseline", "accuracy": 0.99, "latency_ms": 0.0380, "size_bytes": 225_000}
TRIAL_5 = {"trial": 5, "state": "COMPLETE", "accuracy": 0.9777, "latency_ms": 0.015308,
           "reference_latency_ms": 0.015308 * 2.47, "size_bytes": 60_000}
TRIAL_8 = {"trial": 8, "state": "COMPLETE", "accuracy": 0.9526, "latency_ms": 0.015303,
           "reference_latency_ms": 0.015303 * 2.46, "size_bytes": 50_000}

# A ViT study: a 2-bit model 1.17x faster than the baseline in its own run was knocked
# off the front by a trial 0.93x as fast (slower than the baseline in its run) whose
# milliseconds, read on a quieter machine, were lower.
VIT_BASELINE = {"trial": "baseline", "accuracy": 0.86, "latency_ms": 2.0, "size_bytes": 3_000_000}
VIT_2BIT = {"trial": 3, "state": "COMPLETE", "accuracy": 0.80, "latency_ms": 2.4, "reference_latency_ms": 2.4 * 1.17,
            "size_bytes": 500_000}
VIT_SLOWER = {"trial": 7, "state": "COMPLETE", "accuracy": 0.84, "latency_ms": 1.8, "reference_latency_ms": 1.8 * 0.93,
              "size_bytes": 900_000}


def _front(rows, baseline):
    rows = [dict(r) for r in rows]
    mark_pareto(rows, OBJECTIVES, feasible_only=False, baseline=baseline)
    return [r["trial"] for r in rows if r["pareto"]]


def test_relative_latency_is_the_inverse_same_run_speedup():
    assert relative_latency(TRIAL_5) == pytest.approx(1 / 2.47)
    assert relative_latency({"latency_ms": 3.0}, 2.0) == pytest.approx(1.5)  # no reference: the stored baseline's
    assert relative_latency({"latency_ms": 3.0}) == 3.0  # nothing to divide by: compared among such rows only


def test_demo_trial_8_is_off_the_front_that_trial_5_dominates_in_ratios():
    # in milliseconds trial 8 (5 ns faster) stayed on the front; in same-run ratios trial 5 beats it
    ms_rows = [{k: v for k, v in r.items() if k != "reference_latency_ms"} for r in (TRIAL_5, TRIAL_8)]
    assert non_dominated_mask(ms_rows, OBJECTIVES) == [True, True]
    assert non_dominated_mask([TRIAL_5, TRIAL_8], OBJECTIVES) == [True, False]
    assert _front([TRIAL_5, TRIAL_8], DEMO_BASELINE) == [5]
    # select: at a floor both meet, the most accurate; a tie in accuracy goes to the lower ratio
    fitting, eligible = select_rows([TRIAL_8, TRIAL_5], Limits(min_accuracy=0.95), baseline=DEMO_BASELINE,
                                    objectives=OBJECTIVES)
    assert eligible[0]["trial"] == 5
    tied = dict(TRIAL_8, accuracy=TRIAL_5["accuracy"])
    _, eligible = select_rows([tied, TRIAL_5], Limits(), baseline=DEMO_BASELINE, objectives=OBJECTIVES)
    assert eligible[0]["trial"] == 5  # 2.47x beats 2.46x though its milliseconds are higher


def test_vit_2bit_model_faster_in_its_own_run_stays_on_the_front():
    assert _front([VIT_2BIT, VIT_SLOWER], VIT_BASELINE) == [3]  # the 0.93x trial is beaten by the baseline itself
    ms_rows = [{k: v for k, v in r.items() if k != "reference_latency_ms"} for r in (VIT_2BIT, VIT_SLOWER)]
    assert non_dominated_mask(ms_rows, OBJECTIVES) == [False, True]  # what the milliseconds decided
    _, eligible = select_rows([VIT_2BIT, VIT_SLOWER], Limits(), baseline=VIT_BASELINE, objectives=OBJECTIVES)
    assert [r["trial"] for r in eligible] == [3]


def test_a_latency_budget_in_ms_still_filters_the_stored_milliseconds():
    fitting, _ = select_rows([VIT_2BIT, VIT_SLOWER], Limits(max_latency_ms=2.0), baseline=VIT_BASELINE,
                             objectives=OBJECTIVES)
    assert [r["trial"] for r in fitting] == [7]  # 1.8 ms <= 2.0 ms; 2.4 ms is over, whatever its ratio


def test_the_dashboard_front_and_study_rows_agree():
    from slimtune.widgets import _axes as R

    assert [r["trial"] for r in R.front_rows([TRIAL_5, TRIAL_8], "latency", DEMO_BASELINE)] == [5]
    assert [r["trial"] for r in R.front_rows([VIT_2BIT, VIT_SLOWER], "latency", VIT_BASELINE)] == [3]


def test_the_dashboards_incremental_front_compares_ratios():
    from slimtune.widgets._front import ParetoSet
    from slimtune._dominance import loss_matrix

    front = ParetoSet(loss_matrix([TRIAL_8], OBJECTIVES))
    assert front.add(1, loss_matrix([TRIAL_5], OBJECTIVES)[0])
    assert front.indices.tolist() == [1]


def test_early_stopping_compares_ratios():
    from slimtune.search._early_stopping import FrontierEarlyStopping, FrontierPoint, frontier_points_only

    points = [FrontierPoint(5, TRIAL_5["accuracy"], {"latency_ms": TRIAL_5["latency_ms"]},
                            reference_latency_ms=TRIAL_5["reference_latency_ms"]),
              FrontierPoint(8, TRIAL_8["accuracy"], {"latency_ms": TRIAL_8["latency_ms"]},
                            reference_latency_ms=TRIAL_8["reference_latency_ms"])]
    assert [p.trial for p in frontier_points_only(points, ("latency_ms",))] == [5]

    class Pre:  # a candidate timed at 0.02 ms beside a baseline at 0.038 ms: 1.9x, slower than trial 5's 2.47x
        latency_ms, reference_latency_ms = 0.020, 0.038

    rule = FrontierEarlyStopping(latency_tolerance=0.2)
    assert rule.check(-1, None, Pre(), points, ("latency_ms",), 2, baseline_accuracy=0.97)  # 2.47 / 1.2 > 1.9
    Pre.reference_latency_ms = 0.060  # 3x in its own run: nothing is no costlier, though its ms are higher
    assert rule.check(-1, None, Pre(), points, ("latency_ms",), 2, baseline_accuracy=0.97) is None


def test_samplers_are_told_the_ratio_and_old_studies_milliseconds():
    from slimtune.search._outcome import objective_values

    m = {"accuracy": 0.9, "latency_ms": 0.02, "reference_latency_ms": 0.05, "size_bytes": 10}
    assert objective_values(m, ("accuracy", "latency_ms", "size_bytes")) == [0.9, pytest.approx(0.4), 10.0]
    assert objective_values(m, OBJECTIVES, "ms") == [0.9, 0.02]
    with pytest.raises(ValueError, match="same-run ratio"):
        objective_values({"accuracy": 0.9, "latency_ms": 0.02, "reference_latency_ms": None}, OBJECTIVES)
    assert optuna_latency_unit(["accuracy", LATENCY_RATIO]) == "ratio"
    assert optuna_latency_unit(["accuracy", "latency_ms"]) == optuna_latency_unit(None) == "ms"


def test_nni_scores_trade_the_same_run_ratio():
    from slimtune.search._scalarization import Scalarization

    s = Scalarization.parse("latency_ms*0.05")
    fast_run = s.score({"accuracy": 0.9, "latency_ms": 1.0, "reference_latency_ms": 2.0})
    slow_run = s.score({"accuracy": 0.9, "latency_ms": 2.0, "reference_latency_ms": 4.0})  # the same model, a slower minute
    assert fast_run == pytest.approx(slow_run) == pytest.approx(0.95)
    budget = Scalarization.parse("latency_ms<=1.5,penalty=1")  # a budget stays in milliseconds
    assert budget.score({"accuracy": 0.9, "latency_ms": 3.0, "reference_latency_ms": 6.0}) == pytest.approx(-0.1)


@pytest.mark.slow
def test_new_study_tells_ratios_and_an_old_one_resumes_in_milliseconds(tmp_path):
    """A study made now: Optuna's metric is ``latency_ratio`` and each value the trial's
    same-run ratio.  A study made by slimtune 0.1.0 (told milliseconds) loads, shows,
    selects and resumes with its samplers still told milliseconds."""
    import optuna

    from slimtune.studies import Study

    storage = f"sqlite:///{tmp_path / 'new.db'}"
    study = Study.create_or_load("ratios", storage=storage, task="digits", seed=0, early_stopping=False,
                                 settings={"epochs": 1, "latency_repeats": 20})
    try:
        rows = study.optimize(n_trials=2, progress=False)
    finally:
        study.close()
    plain = optuna.load_study(study_name="ratios", storage=storage)
    assert plain.metric_names == ["accuracy", LATENCY_RATIO]
    by_number = {t.number: t for t in plain.get_trials()}
    for row in rows:
        assert row["state"] == "COMPLETE", row.get("error")
        told = by_number[row["trial"]].values[1]
        assert told == pytest.approx(row["latency_ms"] / row["reference_latency_ms"])
        assert by_number[row["trial"]].user_attrs["latency_ms"] == row["latency_ms"]  # ms stay stored

    path = tmp_path / "old.db"
    shutil.copy(SCHEMA_1_DB, path)
    old = f"sqlite:///{path}"
    study = Study.create_or_load("v1-study", storage=old, task="digits", seed=3, early_stopping=False)
    try:
        before = study.trials(states=("COMPLETE",))
        assert study.frontier() and study.select(min_accuracy=0.5)
        new = study.optimize(n_trials=1, progress=False)
        assert new[0]["state"] == "COMPLETE", new[0].get("error")
        after = {r["trial"]: r for r in study.trials(states=("COMPLETE",))}
        for r in before:  # milliseconds shown as stored
            assert after[r["trial"]]["latency_ms"] == r["latency_ms"]
    finally:
        study.close()
    plain = optuna.load_study(study_name="v1-study", storage=old)
    assert plain.metric_names == ["accuracy", "latency_ms"]
    trial = next(t for t in plain.get_trials() if t.number == new[0]["trial"])
    assert trial.values[1] == pytest.approx(new[0]["latency_ms"])  # one unit throughout its samplers' history
