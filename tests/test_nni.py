"""The NNI backend: Space <-> NNI translation (always), tuners and resume (with NNI).

NNI is an optional extra (``pip install 'slimtune[nni]'``); the tests that drive NNI
tuners are skipped without it, the pure translation and scalarisation tests are not.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import sys

import numpy as np
import pytest
from torch import nn

from slimtune.search._backends import BackendError, get_backend
from slimtune.search._scalarization import Scalarization
from slimtune.spaces import Knob, Param, Space, SpaceError
from slimtune.spaces._nni_format import from_nni, param_from_nni, params_from_nni, to_nni, values_to_nni

HAS_NNI = importlib.util.find_spec("nni") is not None
needs_nni = pytest.mark.skipif(not HAS_NNI, reason="NNI is not installed (pip install 'slimtune[nni]'); "
                                                   "the pure Space<->NNI translation tests still run")


class _AllKinds(Knob):
    """Every parameter kind, with dotted names as the real knobs have."""

    family = "toy"
    stage = "training"

    def params(self, model):
        return [
            Param("toy.rate", "float", 0.1, low=0.0, high=0.9),
            Param("toy.temp", "float", 4.0, low=1.0, high=20.0, log=True),
            Param("toy.epochs", "int", 2, low=1, high=5),
            Param("toy.width", "int", 16, low=4, high=64, log=True),
            Param("toy.blocks.0.conv", "bool", False),
            Param("toy.bits", "categorical", 32, choices=(32, 16, 8, 4)),
            Param("toy.mode", "categorical", "ptq", choices=("ptq", "qat")),
            Param("toy.onoff", "categorical", 0, choices=(0, 1)),
        ]


def toy_space(**fixed) -> Space:
    return Space([_AllKinds()], nn.Linear(1, 1), fixed=fixed)


def joint_space() -> Space:
    from slimtune.tasks._models import small_cnn

    return Space.for_model(small_cnn())


# -- Space -> NNI search space and back -------------------------------------------------

def test_to_nni_maps_each_kind_and_keeps_dotted_names():
    assert to_nni(toy_space()) == {
        "toy.rate": {"_type": "uniform", "_value": [0.0, 0.9]},
        "toy.temp": {"_type": "loguniform", "_value": [1.0, 20.0]},
        "toy.epochs": {"_type": "quniform", "_value": [1, 5, 1]},
        "toy.width": {"_type": "qloguniform", "_value": [4, 64, 1]},
        "toy.blocks.0.conv": {"_type": "choice", "_value": [False, True]},
        "toy.bits": {"_type": "choice", "_value": [32, 16, 8, 4]},
        "toy.mode": {"_type": "choice", "_value": ["ptq", "qat"]},
        "toy.onoff": {"_type": "choice", "_value": [0, 1]},
    }


def test_fixed_parameters_are_not_given_to_nni():
    nni_space = to_nni(toy_space(**{"toy.mode": "qat", "toy.rate": 0.5}))
    assert "toy.mode" not in nni_space and "toy.rate" not in nni_space and len(nni_space) == 6


@pytest.mark.parametrize("make_space", [toy_space, joint_space], ids=["all-kinds", "joint-space"])
def test_search_space_round_trip_loses_and_renames_nothing(make_space):
    space = make_space()
    defaults = {p.name: p.default for p in space.searched}
    back = params_from_nni(to_nni(space), defaults=defaults)
    assert [dataclasses.replace(p, doc="") for p in space.searched] == back
    for original, restored in zip(space.searched, back):
        assert type(restored.low) is type(original.low) and type(restored.high) is type(original.high)
        assert [type(c) for c in restored.choices] == [type(c) for c in original.choices]


@pytest.mark.parametrize("make_space", [toy_space, joint_space], ids=["all-kinds", "joint-space"])
def test_values_round_trip_with_exact_types(make_space):
    space = make_space()
    rng = np.random.default_rng(0)
    for _ in range(20):
        values = {}
        for p in space.searched:
            if p.kind == "float":
                values[p.name] = float(rng.uniform(p.low, p.high))
            elif p.kind == "int":
                values[p.name] = int(rng.integers(p.low, p.high + 1))
            elif p.kind == "bool":
                values[p.name] = bool(rng.integers(2))
            else:
                values[p.name] = p.choices[int(rng.integers(len(p.choices)))]
        nni_values = values_to_nni(space, values)
        assert list(nni_values) == list(values)  # every name, in order, unchanged
        back = from_nni(space, nni_values)
        assert back == values
        assert {k: type(v) for k, v in back.items()} == {k: type(v) for k, v in values.items()}


def test_from_nni_restores_python_types():
    space = toy_space()
    proposal = {"toy.rate": np.float64(0.25), "toy.temp": 20.000000000000004, "toy.epochs": 3.0,
                "toy.width": np.float64(16.0), "toy.blocks.0.conv": np.bool_(True), "toy.bits": 8.0,
                "toy.mode": np.str_("qat"), "toy.onoff": 1}
    values = from_nni(space, proposal)
    assert values == {"toy.rate": 0.25, "toy.temp": 20.0, "toy.epochs": 3, "toy.width": 16,
                      "toy.blocks.0.conv": True, "toy.bits": 8, "toy.mode": "qat", "toy.onoff": 1}
    assert [type(v) for v in values.values()] == [float, float, int, int, bool, int, str, int]


@pytest.mark.parametrize("name, value, match", [
    ("toy.onoff", True, "not one of 0, 1"),           # True == 1 in Python, but not the int choice
    ("toy.blocks.0.conv", 1, "expected true or false"),  # and 1 is not a bool
    ("toy.rate", 0.95, r"outside \[0.0, 0.9\]"),
    ("toy.epochs", 2.5, "expected an integer"),
    ("toy.bits", 12, "not one of 32, 16, 8, 4"),
    ("toy.rate", "0.5", "expected a number"),
])
def test_from_nni_refuses_values_outside_the_space(name, value, match):
    space = toy_space()
    proposal = values_to_nni(space, space.complete({}))
    proposal[name] = value
    with pytest.raises(SpaceError, match=match):
        from_nni(space, proposal)


def test_from_nni_refuses_unknown_or_missing_names():
    space = toy_space()
    proposal = values_to_nni(space, space.complete({}))
    with pytest.raises(SpaceError, match="Did you mean 'toy.rate'"):
        from_nni(space, {**proposal, "toy_rate": 0.3})
    del proposal["toy.blocks.0.conv"]
    with pytest.raises(SpaceError, match="lacks 'toy.blocks.0.conv'"):
        from_nni(space, proposal)


def test_nni_types_without_a_slimtune_equivalent_are_refused():
    assert param_from_nni("n", {"_type": "randint", "_value": [1, 6]}) == Param("n", "int", 1, low=1, high=5)
    for spec in ({"_type": "normal", "_value": [0, 1]}, {"_type": "quniform", "_value": [0, 1, 0.5]},
                 {"_type": "choice", "_value": [{"_name": "a"}]}, {"_value": [1]}):
        with pytest.raises(SpaceError):
            param_from_nni("x", spec)
    with pytest.raises(SpaceError, match="reserved"):
        to_nni([Param("_name", "bool", False)])
    with pytest.raises(SpaceError, match="numbers, strings or bools"):
        to_nni([Param("x", "categorical", None, choices=(None, "a"))])


# -- the scalarisation NNI maximizes -----------------------------------------------------

def test_scalarization_weights_and_budgets():
    weighted = Scalarization.parse("latency_ms*0.05")
    assert str(weighted) == "accuracy - 0.05*log2(latency_ms)"
    # halving the latency is worth exactly the weight in accuracy
    assert math.isclose(weighted.score({"accuracy": 0.9, "latency_ms": 1.0}) -
                        weighted.score({"accuracy": 0.9, "latency_ms": 2.0}), 0.05)
    budget = Scalarization.parse("latency_ms<=2, penalty=2")
    assert budget.score({"accuracy": 0.97, "latency_ms": 1.5}) == 0.97  # within budget: accuracy only
    assert math.isclose(budget.score({"accuracy": 0.97, "latency_ms": 2.5}), 0.47)
    both = Scalarization(weights={"size_bytes": 0.01}, budgets={"latency_ms": 1.0})
    assert both.metrics == ("accuracy", "size_bytes", "latency_ms")
    assert Scalarization.coerce(None, ("accuracy", "size_bytes")) == Scalarization(weights={"size_bytes": 0.05})
    assert Scalarization.coerce({"budgets": {"macs": 1e6}}).budgets == {"macs": 1e6}


@pytest.mark.parametrize("text, match", [("latency*0.1", "must be one of latency_ms"), ("latency_ms", "COST\\*WEIGHT"),
                                         ("penalty=2", "at least one"), ("latency_ms<=0", "positive")])
def test_scalarization_errors_name_the_term(text, match):
    with pytest.raises(ValueError, match=match):
        Scalarization.parse(text)


def test_scalarization_needs_its_metrics():
    with pytest.raises(ValueError, match="needs `latency_ms`"):
        Scalarization.default().score({"accuracy": 0.9})


# -- which tuners -------------------------------------------------------------------

#: NNI 3.0's builtin tuners (nni/runtime/default_config/builtin_algorithms.yml).
NNI_3_TUNERS = ("PPO", "SMAC", "TPE", "TPE_legacy", "Random", "Anneal", "Evolution", "Batch", "GridSearch",
                "NetworkMorphism", "Metis", "GP", "PBT", "RegularizedEvolutionTuner", "DNGO", "Hyperband", "BOHB")


def test_every_nni_tuner_is_offered_or_refused_with_a_reason():
    from slimtune.search._backends.nni_backend import REFUSED, TUNERS, get_tuner_info

    assert set(TUNERS) == {"TPE", "Random", "Evolution", "GridSearch"}
    assert set(TUNERS) | set(REFUSED) == set(NNI_3_TUNERS)
    for alias, name in (("tpe", "TPE"), ("TpeTuner", "TPE"), ("grid_search", "GridSearch"), ("evolution", "Evolution")):
        assert get_tuner_info(alias).name == name
    with pytest.raises(BackendError, match=r"'GP' is not offered: fails on scipy 1.17.*Offered: TPE, Random"):
        get_tuner_info("gp")
    with pytest.raises(BackendError, match="Unknown NNI tuner 'TPEE'. Did you mean 'TPE'"):
        get_tuner_info("TPEE")


def test_refused_tuner_fails_before_anything_runs():
    with pytest.raises(BackendError, match="Anneal.*numpy 2"):
        get_backend("nni")(toy_space(), tuner="Anneal")


def test_without_nni_a_one_line_error_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "nni", None)  # import nni -> ModuleNotFoundError
    with pytest.raises(BackendError) as info:
        get_backend("nni")(toy_space(), tuner="TPE")
    message = str(info.value)
    assert "pip install 'slimtune[nni]'" in message and "\n" not in message


# -- tuners driven in-process (NNI installed) --------------------------------------------

def _synthetic(values: dict) -> tuple[float, float]:
    """A fake (accuracy, latency_ms) with a clear optimum, so no model is trained."""
    acc = 0.95 - (values.get("toy.rate", values.get("prune.ratio", 0.3)) - 0.3) ** 2
    lat = 1.0 + values.get("toy.bits", values.get("quant.bits", 32)) / 32
    return acc, lat


def _run(study, backend, n: int, *, fail: set[int] = frozenset()) -> list:
    proposals = []
    for _ in range(n):
        p = backend.propose(study)
        proposals.append(p)
        if p.number in fail:
            study.tell(p.trial, state=__import__("optuna").trial.TrialState.FAIL)
            backend.observe(p, "FAIL", None)
            continue
        acc, lat = _synthetic(p.values)
        p.trial.set_user_attr("accuracy", acc)
        p.trial.set_user_attr("latency_ms", lat)
        study.tell(p.trial, [acc, lat])
        backend.observe(p, "COMPLETE", [acc, lat])
    return proposals


def _study(metrics: tuple[str, str] = ("accuracy", "latency_ms")):
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["maximize", "minimize"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(list(metrics))
    return study


@needs_nni
@pytest.mark.parametrize("tuner", ["TPE", "Random", "Evolution", "GridSearch"])
@pytest.mark.parametrize("make_space", [toy_space, joint_space], ids=["all-kinds", "joint-space"])
def test_each_offered_tuner_proposes_only_values_inside_the_space(tuner, make_space):
    space = make_space()
    study = _study()
    backend = get_backend("nni")(space, seed=0, tuner=tuner)
    proposals = _run(study, backend, 24, fail={5})
    for p in proposals:
        assert list(p.values) == [q.name for q in space.searched]
        assert space.check(p.values) == p.values  # inside every domain
        assert {k: type(v) for k, v in p.values.items()} == {k: type(v) for k, v in space.check(p.values).items()}
        assert p.trial.params == p.values  # the Optuna trial holds exactly the proposal
    frozen = study.get_trials()
    assert [t.number for t in frozen] == list(range(24))
    assert sum(t.state.name == "COMPLETE" for t in frozen) == 23
    assert all(t.user_attrs["nni_scalarization"] == "accuracy - 0.05*log2(latency_ms)" for t in frozen)
    assert backend.tuner == {"TPE": "TpeTuner", "Random": "RandomTuner", "Evolution": "EvolutionTuner",
                             "GridSearch": "GridSearchTuner"}[tuner]


@needs_nni
def test_same_seed_same_proposals():
    first = [p.values for p in _run(_study(), get_backend("nni")(toy_space(), seed=3, tuner="Evolution"), 12)]
    again = [p.values for p in _run(_study(), get_backend("nni")(toy_space(), seed=3, tuner="Evolution"), 12)]
    assert first == again


@needs_nni
def test_tpe_resume_replays_history_and_continues_numbering():
    study = _study()
    space = toy_space()
    first = _run(study, get_backend("nni")(space, seed=0, tuner="TPE"), 10, fail={4})
    resumed = get_backend("nni")(space, seed=0, tuner="TPE")
    more = _run(study, resumed, 3)
    assert [p.number for p in more] == [10, 11, 12]
    assert resumed.replayed == 9  # the complete ones (the failed trial says nothing)
    history = resumed._tuner._history  # noqa: SLF001 - TPE's per-parameter observations
    assert all(len(history[(name,)]) == 9 + 3 for name in to_nni(space))
    assert more[0].values != first[0].values  # a resumed session does not repeat its first proposals


@needs_nni
def test_evolution_resume_rebuilds_its_population():
    study = _study()
    space = toy_space()
    _run(study, get_backend("nni")(space, seed=1, tuner="Evolution", tuner_args={"population_size": 4}), 6)
    resumed = get_backend("nni")(space, seed=1, tuner="Evolution", tuner_args={"population_size": 4})
    resumed.propose(study)
    population = resumed._tuner.population  # noqa: SLF001
    assert resumed.replayed == 6
    assert len(population) == 3 and all(ind.result is not None for ind in population)  # one taken by the proposal


@needs_nni
def test_gridsearch_resume_does_not_repeat_points():
    study = _study()
    space = toy_space()
    _run(study, get_backend("nni")(space, tuner="GridSearch"), 6)
    _run(study, get_backend("nni")(space, tuner="GridSearch"), 6)
    points = [tuple(sorted(t.params.items())) for t in study.get_trials()]
    assert len(set(points)) == 12


@needs_nni
def test_a_study_mixes_backends_and_nni_learns_from_optuna_trials():
    study = _study()
    space = toy_space()
    optuna_backend = get_backend("optuna")(space, seed=0, sampler="random")
    study.sampler = optuna_backend.optuna_sampler()
    _run(study, optuna_backend, 5)
    nni_backend = get_backend("nni")(space, seed=0, tuner="TPE")
    _run(study, nni_backend, 3)
    assert nni_backend.replayed == 5
    assert [t.number for t in study.get_trials()] == list(range(8))


@needs_nni
def test_scalarization_follows_the_study_objectives():
    study = _study(("accuracy", "size_bytes"))
    backend = get_backend("nni")(toy_space(), seed=0, tuner="Random")
    p = backend.propose(study)
    assert str(backend.scalarization) == "accuracy - 0.05*log2(size_bytes)"
    assert p.trial.user_attrs["nni_scalarization"] == "accuracy - 0.05*log2(size_bytes)"
    budget = get_backend("nni")(toy_space(), tuner="Random", scalarization="latency_ms<=1.5,penalty=3")
    assert budget.scalarization.budgets == {"latency_ms": 1.5} and budget.scalarization.penalty == 3


# -- through the CLI and the Study API (digits, 1 epoch) -------------------------------------------------

@needs_nni
def test_cli_run_with_nni_backend_records_both_objectives_and_resumes(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from slimtune.cli import main
    from slimtune.search._backends.nni_backend import NNIBackend
    from slimtune.studies import Study

    replayed: list[int] = []
    original = NNIBackend._replay

    def spy(self, trials):
        n = original(self, trials)
        replayed.append(n)
        return n

    monkeypatch.setattr(NNIBackend, "_replay", spy)
    url = f"sqlite:///{tmp_path}/nni.db"
    cheap = ["--fix", "quant.mode=ptq", "--fix", "prune.rewind=false", "--fix", "exits.0.enabled=false",
             "--fix", "exits.1.enabled=false"]  # the slowest pipeline steps (QAT, rewinding, exit heads) off
    result = CliRunner().invoke(main, ["run", "--study", "nni", "--task", "digits", "--trials", "2", "--backend", "nni",
                                       "--seed", "0", "--epochs", "1", "--latency-repeats", "5", *cheap,
                                       "--no-early-stopping", "--storage", url, "--json"])
    assert result.exit_code == 0, result.output
    assert replayed[0] == 0  # a new study: nothing to replay
    with Study.load("nni", storage=url) as study:
        rows = study.trials()
    assert [r["trial"] for r in rows] == [0, 1]
    assert all(r["state"] == "COMPLETE" and r["backend"] == "nni" and r["tuner"] == "TpeTuner" for r in rows)
    assert all(r["accuracy"] > 0 and r["latency_ms"] > 0 for r in rows)  # both objectives

    first_session = len(replayed)
    with Study.create_or_load("nni", storage=url, early_stopping=False) as study:
        more = study.optimize(n_trials=1, backend="nni", tuner="tpe", scalarization="latency_ms<=0.05,penalty=2",
                              progress=False)
        assert [r["trial"] for r in more] == [2]
        assert replayed[first_session] == 2  # the reopened tuner was told the 2 earlier trials first
        frozen = study.optuna_study.get_trials()
        assert all(t.state.name == "COMPLETE" and len(t.values) == 2 for t in frozen)
        assert {t.user_attrs["backend"] for t in frozen} == {"nni"}
        assert frozen[2].user_attrs["nni_scalarization"] == "accuracy - 2*max(0, latency_ms/0.05 - 1)"
        assert {r["trial"] for r in study.frontier()} <= {0, 1, 2}


@needs_nni
def test_gridsearch_says_when_a_finite_space_is_exhausted():
    from slimtune.search._backends.nni_backend import SpaceExhausted

    study = _study()
    space = toy_space(**{"toy.rate": 0.3, "toy.temp": 2.0, "toy.epochs": 1, "toy.width": 4, "toy.bits": 8})
    backend = get_backend("nni")(space, tuner="GridSearch")
    proposals = _run(study, backend, 8)  # bool x 2 modes x 2 on/off = 8 points
    assert len({tuple(p.values.items()) for p in proposals}) == 8
    with pytest.raises(SpaceExhausted, match="fully explored after 8 trials"):
        backend.propose(study)
    assert len(study.get_trials()) == 8  # nothing half-made


@pytest.mark.parametrize("args, message", [
    (["--backend", "nni", "--tuner", "GP"], "'GP' is not offered: fails on scipy 1.17"),
    (["--backend", "nni", "--scalarize", "latency*2"], "must be one of latency_ms"),
    (["--tuner", "TPE"], "add --backend nni"),
])
def test_cli_refuses_bad_nni_options_before_creating_a_study(tmp_path, args, message):
    from click.testing import CliRunner

    from slimtune.cli import main

    db = tmp_path / "s.db"
    result = CliRunner().invoke(main, ["run", "--study", "s", "--task", "digits", "--trials", "1", *args,
                                       "--storage", f"sqlite:///{db}"])
    assert result.exit_code == 2 and message in result.output and not db.exists()


def test_cli_without_nni_says_how_to_install(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from slimtune.cli import main

    monkeypatch.setitem(sys.modules, "nni", None)
    db = tmp_path / "s.db"
    result = CliRunner().invoke(main, ["run", "--study", "s", "--task", "digits", "--trials", "1", "--backend", "nni",
                                       "--storage", f"sqlite:///{db}"])
    assert result.exit_code == 2 and not db.exists()
    assert result.output.strip().splitlines() == [
        "Error: The 'nni' backend needs NNI, which is not installed: install slimtune[nni] (pip install 'slimtune[nni]')."]
