"""Fidelity and the rungs of a search (``slimtune.search._fidelity``): a new study first
measures its training-free candidates (rung 0), stored and shown with their fidelity;
the front and ``select`` use full-fidelity and training-free results only; a study
resumed mid-rung loses nothing."""

from __future__ import annotations

import json
import threading

import optuna
import pytest
from click.testing import CliRunner

from slimtune import Study
from slimtune.cli import main
from slimtune.search._fidelity import EPOCHS_KEY, Fidelity, counts_toward_budget, is_final, training_free_trials
from slimtune.studies._rows import mark_pareto

optuna.logging.set_verbosity(optuna.logging.WARNING)

TASK = "tests.user_task:make_task"  # 96 tiny images: seconds per trial
FAST = {"epochs": 2, "finetune_epochs": 1, "latency_repeats": 3, "latency_warmup": 1, "calibration_size": 32}


def _study(tmp_path, name="f", **kwargs):
    return Study.create_or_load(name, storage=f"sqlite:///{tmp_path / 'f.db'}", task=TASK,
                                **{"settings": FAST, "early_stopping": False, "seed": 0, **kwargs})


def test_the_knobs_declare_int8_ptq_as_the_training_free_rung(tmp_path):
    with _study(tmp_path) as study:
        rung0 = training_free_trials(study.space)
        assert len(rung0) == 1
        (values,) = rung0
        assert values["quant.bits"] == 8 and values["quant.mode"] == "ptq"
        changed = {k for k, v in values.items() if v != study.space[k].default}
        assert changed == {"quant.bits"}  # every other parameter at the baseline's value


def test_rung0_comes_first_untrained_and_does_not_use_up_n_trials(tmp_path):
    with _study(tmp_path) as study:
        rows = study.optimize(n_trials=1, progress=False)
        assert len(rows) == 2  # the training-free candidate, then the one trial asked for
        free, trained = rows
        assert free["trial"] == 0 and free["state"] == "COMPLETE"
        assert free["fidelity"] == {"epochs": 0, "full_epochs": 2, "label": "training-free"}
        assert trained["fidelity"]["label"] == "full" and trained["fidelity"]["epochs"] == 2
        by_trial = {r["trial"]: r for r in study.trials()}
        assert by_trial[0]["val_accuracy_per_epoch"] == []  # not one epoch
        assert len(by_trial[1]["val_accuracy_per_epoch"]) == 2
        assert not counts_toward_budget(free) and counts_toward_budget(trained)
        # stored for plain Optuna users too, and measured like every trial (same-run ratio, artifact)
        attrs = study.optuna_study.trials[0].user_attrs
        assert attrs["fidelity"]["epochs"] == 0
        assert free["reference_latency_ms"] > 0 and free["artifact_bytes"] > 0
        assert by_trial[0]["kernel_bits"] == 8  # timed on int8 kernels


def test_fidelity_full_keeps_todays_behaviour(tmp_path):
    with _study(tmp_path) as study:
        (row,) = study.optimize(n_trials=1, progress=False, fidelity="full")
        assert row["fidelity"]["label"] == "full"
        with pytest.raises(ValueError, match="`fidelity` must be one of multi, full"):
            study.optimize(n_trials=1, progress=False, fidelity="half")


def test_show_select_and_json_say_which_fidelity(tmp_path):
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    run = CliRunner().invoke(main, ["run", "--study", "c", "--task", TASK, "--trials", "1", "--seed", "0",
                                    "--epochs", "1", "--latency-repeats", "3", "--no-early-stopping", "--storage", url])
    assert run.exit_code == 0, run.output
    assert "which --trials does not count" in run.output
    assert "1 training-free" in run.output and "1 trials trained" in run.output
    show = CliRunner().invoke(main, ["show", "c", "--storage", url])
    assert show.exit_code == 0, show.output
    assert "fidelity: training-free" in show.output
    shown = json.loads(CliRunner().invoke(main, ["show", "c", "--json", "--storage", url]).output)
    assert [t["fidelity"]["label"] for t in shown["trials"]] == ["training-free", "full"]
    chosen = CliRunner().invoke(main, ["select", "c", "--min-accuracy", "0", "--storage", url])
    assert chosen.exit_code == 0, chosen.output
    assert "fidelity: " in chosen.output and "full-fidelity and training-free" in chosen.output


def test_the_dashboard_details_say_the_fidelity():
    pytest.importorskip("ipywidgets")
    from slimtune.widgets._details import details_html

    row = {"trial": 3, "state": "COMPLETE", "params": {}, "fidelity": Fidelity(0, 3).to_dict()}
    assert "training-free" in details_html(row)
    assert "<b>fidelity</b> full" in details_html({**row, "fidelity": None})  # stored before fidelities: full


def _row(trial, accuracy, latency, fidelity=None):
    return {"trial": trial, "state": "COMPLETE", "accuracy": accuracy, "latency_ms": latency,
            "reference_latency_ms": 1.0, "size_bytes": 100, "fidelity": fidelity}


def test_the_front_holds_full_and_training_free_results_never_a_cheap_rungs():
    cheap = Fidelity(1, 3).to_dict()
    rows = [_row(0, 0.90, 0.5, Fidelity(0, 3).to_dict()), _row(1, 0.95, 0.8, Fidelity(3, 3).to_dict()),
            _row(2, 0.99, 0.2, cheap),  # would dominate everything: a cheap rung's, so it may not
            _row(3, 0.93, 0.9)]  # a trial stored before fidelities: full (and dominated by trial 1)
    mark_pareto(rows, ("accuracy", "latency_ms"), feasible_only=False)
    assert [r["trial"] for r in rows if r["pareto"]] == [0, 1]
    assert not is_final({"fidelity": cheap}) and is_final({"fidelity": None}) and is_final({})


def test_a_study_resumed_mid_rung_loses_nothing_and_repeats_nothing(tmp_path, monkeypatch):
    """Interrupted during its training-free trial, a new study proposes it again when
    resumed (once), then goes on with the trained warm starts; a finished rung 0 is
    never run again."""
    with _study(tmp_path) as study:
        monkeypatch.setenv("SLIMTUNE_FAULT", "before_eval:raise")
        first = threading.Event()
        (failed,) = study.optimize(n_trials=1, progress=False, stop_event=first, callbacks=[lambda row: first.set()])
        assert failed["state"] == "FAIL" and failed["fidelity"]["label"] == "training-free"
        monkeypatch.delenv("SLIMTUNE_FAULT")
        plan = study.warm_start_claims().rows()
        assert plan[0].values[EPOCHS_KEY] == 0 and all(EPOCHS_KEY not in r.values for r in plan[1:])
    with _study(tmp_path, seed=1) as resumed:
        stop = threading.Event()
        rows = resumed.optimize(n_trials=5, progress=False, stop_event=stop, callbacks=[lambda row: stop.set()])
        assert [r["fidelity"]["label"] for r in rows] == ["training-free"]  # proposed again
        more = resumed.optimize(n_trials=1, progress=False)
        assert [r["fidelity"]["label"] for r in more] == ["full"]  # not a third time
        labels = [r["fidelity"]["label"] for r in resumed.trials()]
        assert labels.count("training-free") == 2 and [r["state"] for r in resumed.trials()][:2] == ["FAIL", "COMPLETE"]


# -- promotion (MO-ASHA's rule) -------------------------------------------------------------
def test_the_cheap_rung_is_a_third_of_the_epochs():
    from slimtune.search._promotion import cheap_epochs

    assert [cheap_epochs(n) for n in (1, 2, 3, 4, 9)] == [None, 1, 1, 1, 3]


def test_mo_asha_promotes_the_best_third_of_a_rung_by_non_dominated_rank():
    from slimtune.search._promotion import nondominated_ranks, promoted

    objectives = ("accuracy", "latency_ms")
    rung = [_row(0, 0.90, 0.5), _row(1, 0.80, 0.3), _row(2, 0.85, 0.6), _row(3, 0.70, 0.7), _row(4, 0.60, 0.9)]
    assert promoted(_row(9, 0.5, 0.5), [], objectives)  # the first result of a rung
    assert promoted(_row(9, 0.95, 0.2), rung, objectives)  # dominates every one: rank 0
    assert promoted(_row(9, 0.88, 0.4), rung, objectives)  # on the rung's front beside 0 and 1
    # rank 1 behind two of rank 0 among six: quantile 2/6, in the best third
    assert promoted(_row(9, 0.84, 0.55), rung, objectives)
    assert not promoted(_row(9, 0.65, 0.8), rung, objectives)  # dominated twice over: rank 2
    assert not promoted(_row(9, 0.5, 1.0), rung, objectives)  # dominated by every one
    assert list(nondominated_ranks([[0.0, 0.0], [1.0, 1.0], [2.0, 0.5], [float("nan"), 0.0]])) == [0, 1, 1, 4]


@pytest.mark.slow
def test_cheap_candidates_are_promoted_by_the_rule_and_a_resumed_study_trains_them(tmp_path):
    """The sampler's candidates train 1 of 3 epochs; each one that the rule promotes (among
    the rung's results before it) is trained in full next, as a new trial naming it; the
    others are not; cheap results are never on the front; a study stopped right after a
    promotion trains it when resumed."""
    from slimtune.search._promotion import promoted

    settings = {**FAST, "epochs": 3}
    with _study(tmp_path, settings=settings, sampler="random") as study:
        stop = threading.Event()
        first = study.optimize(n_trials=5, progress=False, warm_start=False, stop_event=stop,
                               callbacks=[lambda row: stop.set()])
        assert [r["fidelity"]["label"] for r in first] == ["1/3 epochs"]  # the first of its rung: promoted
    with _study(tmp_path, settings=settings, sampler="random") as study:
        rows = study.optimize(n_trials=6, progress=False, warm_start=False)
        assert rows[0]["fidelity"] == {"epochs": 3, "full_epochs": 3, "label": "full", "promoted_from": 0}
        trials = study.trials()
    cheap = [r for r in trials if r["fidelity"]["label"] == "1/3 epochs"]
    children = {r["fidelity"]["promoted_from"]: r for r in trials if r["fidelity"].get("promoted_from") is not None}
    assert len(cheap) >= 3 and all(r["state"] == "COMPLETE" and not r["pareto"] for r in cheap)
    for r in cheap:
        before = [c for c in cheap if c["trial"] < r["trial"]]
        expected = promoted(r, before, ("accuracy", "latency_ms"))
        assert (r["trial"] in children) == expected, (r["trial"], expected)
    assert 0 < len(children) < len(cheap)  # some promoted, some not
    for source, child in children.items():
        assert child["trial"] == source + 1  # claimed right after (one worker)
        assert child["params"] == next(r for r in cheap if r["trial"] == source)["params"]
        assert len(child["val_accuracy_per_epoch"]) == 3


def test_tables_say_each_fidelity_but_full():
    from slimtune._cli_tables import table_lines

    rows = [{**_row(n, 0.9, 0.5, f), "params": {}, "state": "COMPLETE"} for n, f in
            ((0, Fidelity(0, 3).to_dict()), (1, Fidelity(1, 3).to_dict()), (2, Fidelity(3, 3, 1).to_dict()),
             (3, Fidelity(3, 3).to_dict()), (4, None))]
    text = "\n".join(table_lines(rows, [], wide=True))
    assert "fidelity: training-free" in text and "fidelity: 1/3 epochs (a cheap rung" in text
    assert "fidelity: full, promoted from trial 1" in text
    assert text.count("fidelity:") == 3  # nothing under a plain full trial, nor one stored before fidelities
