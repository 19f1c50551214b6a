"""Warm starts a task gives (``extra["warm_starts"]``): a new study's first trials (digits
with the Fashion-MNIST task's list, real trials, 1 epoch, short timings).  Without a
list the backend's neighbourhood is used (tests/test_optuna_backend.py)."""

from __future__ import annotations

import dataclasses

import optuna
import pytest

from slimtune import Study
from slimtune.search._task_space import build_space
from slimtune.search._warm_start import warm_start_trials
from slimtune.tasks._builtin import FASHION_WARM_STARTS

optuna.logging.set_verbosity(optuna.logging.WARNING)

FAST = {"epochs": 1, "finetune_epochs": 1, "latency_repeats": 5, "latency_warmup": 2, "calibration_size": 64}


@pytest.fixture()
def warm_task(digits_task):
    """digits with the Fashion-MNIST task's warm starts (``extra`` is not in the fingerprint)."""
    return dataclasses.replace(digits_task, extra={"warm_starts": FASHION_WARM_STARTS})


def test_a_task_without_a_list_gives_none(digits_task):
    bare = dataclasses.replace(digits_task, extra={})
    assert warm_start_trials(build_space(bare), bare) == []


def test_digits_starts_with_the_same_well_known_compressions():
    from slimtune.tasks._builtin import DIGITS_WARM_STARTS
    from slimtune.tasks._registry import get_task

    digits = get_task("digits")
    assert digits.extra["warm_starts"] == DIGITS_WARM_STARTS == FASHION_WARM_STARTS
    trials = warm_start_trials(build_space(digits), digits)
    assert [(t["quant.bits"], t["quant.mode"], t["prune.ratio"]) for t in trials] == [
        (8, "ptq", 0.0), (32, "ptq", 0.0), (8, "ptq", 0.5), (4, "qat", 0.5)]


def test_warm_starts_are_completed_with_the_baselines_values(warm_task):
    digits_task = warm_task
    space = build_space(digits_task)
    trials = warm_start_trials(space, digits_task)
    assert len(trials) == len(FASHION_WARM_STARTS)
    searched = [p.name for p in space.searched]
    for values in trials:
        assert list(values) == searched  # every searched parameter given: the sampler draws nothing
    assert trials[0]["quant.bits"] == 8 and trials[0]["prune.ratio"] == 0.0
    for name, value in trials[0].items():
        assert value == (8 if name == "quant.bits" else space[name].default), name
    # a pattern stands for every parameter it matches (this model's DS-conv switches)
    dsconv = [n for n in searched if n.startswith("dsconv.")]
    # DS-conv on every conv but the one-input-channel stem (blocks.0.0)
    assert len(dsconv) >= 2 and trials[1]["dsconv.blocks.0.0"] is False and trials[1]["quant.bits"] == 32
    assert all(trials[1][n] is True for n in dsconv if n != "dsconv.blocks.0.0")
    assert not any(v for k, v in trials[0].items() if k.startswith(("dsconv.", "exits.")) and k.endswith("enabled"))


def test_warm_starts_skip_what_the_space_does_not_search(warm_task):
    digits_task = warm_task
    fixed = build_space(digits_task, fixed={"quant.bits": 32})
    only = warm_start_trials(fixed, digits_task)  # every default but DS-conv sets quant.bits
    assert len(only) == 1 and "quant.bits" not in only[0]
    assert all(v for k, v in only[0].items() if k.startswith("dsconv.") and k != "dsconv.blocks.0.0")
    assert only[0]["dsconv.blocks.0.0"] is False
    no_prune = build_space(digits_task, fixed={"prune.ratio": 0.0})
    assert [t["quant.bits"] for t in warm_start_trials(no_prune, digits_task)] == [8, 32]
    assert warm_start_trials(no_prune, digits_task, [{"nothing.*": 1}, {"prune.ratio": 0.5}]) == []
    own = dataclasses.replace(digits_task, extra={"warm_starts": [{"quant.bits": 4, "quant.mode": "qat"},
                                                                  {"quant.bits": 3}]})  # 3 bits: not in the domain
    assert [(t["quant.bits"], t["quant.mode"]) for t in warm_start_trials(build_space(own), own)] == [(4, "qat")]
    none = dataclasses.replace(digits_task, extra={"warm_starts": []})
    assert warm_start_trials(build_space(none), none) == []
    bad = dataclasses.replace(digits_task, extra={"warm_starts": {"quant.bits": 8}})
    with pytest.raises(ValueError, match=r"extra\['warm_starts'\].*must be a list"):
        warm_start_trials(build_space(bad), bad)


def test_a_new_study_starts_with_the_warm_starts_and_a_resumed_one_goes_on_with_them(tmp_path, warm_task):
    storage = f"sqlite:///{tmp_path / 's.db'}"
    study = Study.create_or_load("warm", storage=storage, task=warm_task, settings=FAST, seed=0, sampler="random",
                                 early_stopping=False)
    expected = warm_start_trials(study.space, study.task)
    rows = study.optimize(n_trials=2, progress=False)
    # rung 0 (the training-free int8 candidate, not counted in n_trials), then two warm starts
    assert [r["state"] for r in rows] == ["COMPLETE", "COMPLETE", "COMPLETE"]
    assert rows[0]["fidelity"]["label"] == "training-free"
    rows = rows[1:]
    for row, values in zip(rows, expected):
        assert {k: row["params"][k] for k in values} == values
        assert row["fidelity"]["label"] == "full"
    # int8 alone keeps the baseline's accuracy within a few points and is smaller
    assert rows[0]["accuracy"] >= study.baseline.accuracy - 0.05
    assert rows[0]["size_bytes"] < study.baseline.size_bytes / 3
    # a session that stops early leaves nothing waiting
    assert [t.state.name for t in study.optuna_study.get_trials()] == ["COMPLETE"] * 3
    study.close()
    # resumed: the warm starts not proposed yet come next (a crash early in a new study
    # loses none of them), and none twice
    resumed = Study.create_or_load("warm", storage=storage, task=warm_task, seed=1, sampler="random",
                                   early_stopping=False)
    more = resumed.optimize(n_trials=1, progress=False)
    assert {k: more[0]["params"][k] for k in expected[2]} == expected[2]
    resumed.close()


def test_no_warm_start_leaves_a_new_study_to_the_sampler(tmp_path):
    """``run --no-warm-start`` (``optimize(warm_start=False)``): the task's list is not
    enqueued (nor the backend's neighbourhood); with it, the digits study starts with
    its list."""
    from click.testing import CliRunner

    from slimtune.cli import main
    from slimtune.tasks._registry import get_task

    def first_params(name: str, *flags: str) -> dict:
        url = f"sqlite:///{tmp_path / (name + '.db')}"
        run = CliRunner().invoke(main, ["run", "--study", name, "--task", "digits", "--trials", "1", "--seed", "0",
                                        "--epochs", "1", "--latency-repeats", "3", "--no-early-stopping",
                                        "--storage", url, *flags])
        assert run.exit_code == 0, run.output
        with Study.load(name, storage=url) as study:
            return study.trials()[0]["params"], study.space

    warm, space = first_params("warm")
    cold, _ = first_params("cold", "--no-warm-start")
    first = warm_start_trials(space, get_task("digits"))[0]
    assert {k: warm[k] for k in first} == first
    assert {k: cold[k] for k in first} != first
