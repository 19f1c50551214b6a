"""Multi-fidelity: a cheap study's front retrained with more epochs in a second study
(digits, real trials, short timings)."""

from __future__ import annotations

import optuna
import pytest

from slimtune import Study, list_studies
from slimtune.studies._refit import REFIT_OF, front_to_refit, refit_front

optuna.logging.set_verbosity(optuna.logging.WARNING)

FAST = {"epochs": 1, "finetune_epochs": 1, "latency_repeats": 5, "latency_warmup": 2, "calibration_size": 64}


def test_front_to_refit_keeps_the_close_ones_most_accurate_first_cheapest_order():
    rows = [{"trial": 0, "accuracy": 0.70}, {"trial": 1, "accuracy": 0.90}, {"trial": 2, "accuracy": 0.93},
            {"trial": 3, "accuracy": 0.95}]
    assert [r["trial"] for r in front_to_refit(rows, 0.95, max_drop=0.05)] == [1, 2, 3]
    # more than the limit: spread along the front, its cheapest and most accurate ends kept
    assert [r["trial"] for r in front_to_refit(rows, 0.95, max_drop=0.05, limit=2)] == [1, 3]
    assert [r["trial"] for r in front_to_refit(rows, 0.95, max_drop=0.05, limit=1)] == [3]
    five = [{"trial": i, "accuracy": 0.90 + 0.01 * i} for i in range(5)]
    assert [r["trial"] for r in front_to_refit(five, 0.95, max_drop=0.05, limit=3)] == [0, 2, 4]
    # only those that missed one point: the ones worth rescuing
    assert [r["trial"] for r in front_to_refit(rows, 0.95, max_drop=0.05, skip_within=0.01)] == [1, 2]
    with pytest.raises(ValueError, match=r"`skip_within` must be in \[0, max_drop=0.05\], but got 0.2"):
        front_to_refit(rows, 0.95, skip_within=0.2)
    with pytest.raises(ValueError, match="`limit` must be at least 1, but got 0"):
        front_to_refit(rows, 0.96, limit=0)
    with pytest.raises(ValueError, match="`max_drop` must be in"):
        front_to_refit(rows, 0.96, max_drop=2)


def test_refit_retrains_the_front_with_more_epochs_in_its_own_study(tmp_path):
    storage = f"sqlite:///{tmp_path / 's.db'}"
    cheap = Study.create_or_load("cheap", storage=storage, task="digits", settings={**FAST, "epochs": 0}, seed=0,
                                 early_stopping=False)
    cheap.optimize(n_trials=3, progress=False)
    picked = front_to_refit(cheap.frontier(), cheap.baseline.accuracy, max_drop=1.0, limit=2)
    assert picked
    refit = refit_front(cheap, storage=storage, epochs=2, finetune_epochs=1, max_drop=1.0, limit=2)
    assert refit.name == "cheap-refit" and refit.settings.epochs == 2 and refit.settings.finetune_epochs == 1
    assert cheap.settings.epochs == 0  # the cheap study keeps its own settings
    trials = refit.optuna_study.get_trials()
    assert sorted(t.user_attrs[REFIT_OF] for t in trials) == sorted(r["trial"] for r in picked)
    by_number = {r["trial"]: r for r in refit.trials()}
    for t in trials:
        source = next(r for r in picked if r["trial"] == t.user_attrs[REFIT_OF])
        row = by_number[t.number]
        assert row["state"] == "COMPLETE" and row["params"] == source["params"]
        assert len(row["val_accuracy_per_epoch"]) == 2  # trained with the refit's epochs
    # resumed: nothing is refit twice
    again = refit_front(cheap, storage=storage, epochs=2, finetune_epochs=1, max_drop=1.0, limit=2)
    assert len(again.optuna_study.get_trials()) == len(trials)
    again.close()
    refit.close()
    cheap.close()


def test_cli_refit_retrains_the_front_and_resumes(tmp_path):
    from click.testing import CliRunner

    from slimtune.cli import main

    storage = f"sqlite:///{tmp_path / 's.db'}"
    cheap = Study.create_or_load("cli", storage=storage, task="digits", settings={**FAST, "epochs": 0}, seed=0,
                                 early_stopping=False)
    cheap.optimize(n_trials=3, progress=False)
    picked = [r["trial"] for r in front_to_refit(cheap.frontier(), cheap.baseline.accuracy, max_drop=1.0, limit=2)]
    cheap.close()
    args = ["refit", "cli", "--epochs", "2", "--finetune-epochs", "1", "--max-drop", "1", "--limit", "2",
            "--storage", storage]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert f"Refitting {len(picked)} front trial(s) of 'cli' (" + ", ".join(map(str, picked)) in result.output
    assert "Refit trial <- search trial: " in result.output and "slimtune show cli-refit --pareto" in result.output
    refit = Study.load("cli-refit", storage=storage)
    assert sorted(t.user_attrs[REFIT_OF] for t in refit.optuna_study.get_trials()) == sorted(picked)
    assert all(len(r["val_accuracy_per_epoch"]) == 2 for r in refit.trials())
    refit.close()
    again = CliRunner().invoke(main, args)  # resumed: nothing is refit twice
    assert again.exit_code == 0, again.output
    refit = Study.load("cli-refit", storage=storage)
    assert len(refit.optuna_study.get_trials()) == len(picked)
    refit.close()
    # a study with nothing on its front: one line, exit 2, no refit study created
    Study.create_or_load("empty", storage=storage, task="digits", settings=FAST, early_stopping=False).close()
    none = CliRunner().invoke(main, ["refit", "empty", "--epochs", "2", "--storage", storage])
    assert none.exit_code == 2 and "nothing to refit" in none.output, none.output
    assert "empty-refit" not in [s["name"] for s in list_studies(storage=storage)]
