"""The Optuna backend's defaults: the baseline's neighbourhood as a new study's first
trials, and trials stopped early seen by the sampler as pending points (no training:
the proposals only)."""

from __future__ import annotations

import optuna
import pytest

from slimtune.search._backends import get_backend
from slimtune.search._backends.optuna_backend import neighbourhood, stopped_as_pending


@pytest.fixture(scope="module")
def space(digits_task):
    from slimtune.search._task_space import build_space

    return build_space(digits_task, fixed={"prune.granularity": "channel"})


def test_neighbourhood_moves_one_family_at_a_time(space):
    configs = neighbourhood(space, seed=0)
    families = list(dict.fromkeys(p.family for p in space.searched))
    assert len(configs) == len(families) and len(families) >= 6
    for family, values in zip(families, configs):
        assert set(values) == {p.name for p in space.searched}  # fixed parameters stay out
        moved = {p.family for p in space.searched if values[p.name] != p.default}
        assert moved == {family}, (family, values)
        assert space.check(values) == values  # every value in its domain
    assert neighbourhood(space, seed=0) == configs and neighbourhood(space, seed=1) != configs


def test_a_new_study_proposes_the_neighbourhood_first_and_a_used_one_does_not(space):
    """The backend's warm starts are the neighbourhood; claimed one at a time, each is
    asked as a trial holding exactly its values (nothing waits in Optuna's queue)."""
    from slimtune.search._warm_claims import MemoryClaims, claim_next

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    backend_cls = get_backend("optuna")
    study = optuna.create_study(directions=["maximize", "minimize"])
    backend = backend_cls(space, seed=3, sampler="random", warm_start=True)
    expected = neighbourhood(space, seed=3)
    assert backend.warm_starts() == expected
    claims, proposed = MemoryClaims(study), []
    for _ in range(len(expected) + 2):
        claim = claim_next(claims, planned=backend.warm_starts, worker="w")
        proposal = backend.propose_given(study, claim.values) if claim else backend.propose(study)
        if claim:
            claims.bind(claim.position, proposal.number)
        assert not [t for t in study.get_trials() if t.state == optuna.trial.TrialState.WAITING]
        proposed.append(proposal.values)
        study.tell(proposal.trial, [0.9, 1.0])
    assert proposed[:len(expected)] == expected
    assert proposed[len(expected)] not in expected
    # a study with trials and no plan (an older slimtune's, or begun without warm starts) gets none
    assert claim_next(MemoryClaims(study), planned=backend.warm_starts, worker="w") is None
    assert backend_cls(space, seed=3, sampler="random", warm_start=False).warm_starts() == []
    with pytest.raises(ValueError, match="startup_trials"):
        backend_cls(space, seed=3, startup_trials=-1)


def test_the_sampler_sees_stopped_trials_as_pending_points(space):
    """GP and TPE learn from COMPLETE trials only: a stopped candidate is shown to them as
    a RUNNING (pending) point, so they do not propose its neighbourhood again and again."""
    from optuna.trial import TrialState

    seen = {}

    class Spy(optuna.samplers.RandomSampler):
        def sample_relative(self, study, trial, search_space):
            seen["trials"] = study._get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
            seen["pruned"] = study._get_trials(deepcopy=False, states=(TrialState.PRUNED,))
            return {}

    study = optuna.create_study(directions=["maximize", "minimize"])
    stopped, pruned, done = study.ask(), study.ask(), study.ask()
    stopped.set_user_attr("stopped_reason", "early stop after epoch 1/4")
    study.tell(stopped, state=TrialState.PRUNED)
    study.tell(pruned, state=TrialState.PRUNED)  # pruned by something else: not shown
    study.tell(done, [0.9, 1.0])
    sampler = stopped_as_pending(Spy(seed=0))
    assert stopped_as_pending(sampler) is sampler
    sampler.sample_relative(study, None, {})
    states = {t.number: t.state for t in seen["trials"]}
    assert states == {0: TrialState.RUNNING, 2: TrialState.COMPLETE}
    assert [t.number for t in seen["pruned"]] == [0, 1]  # asked for PRUNED: the truth
    assert study.trials[0].state == TrialState.PRUNED  # the study itself is unchanged
    backend = get_backend("optuna")(space, seed=0)
    assert backend.tuner == "TPESampler" and isinstance(backend.optuna_sampler(), type(sampler))


def test_sparse_proposals_move_at_most_k_families_and_the_sampler_learns_which(space):
    """``moved_families=2``: each proposal names the compression families it moves (a
    parameter the sampler models) and holds only their parameters and distillation's;
    every other family stays at the baseline's value.  After its random start-up TPE proposes from the sets that did
    well: here a made-up objective that rewards quantization alone."""
    from slimtune.search._backends import BackendError
    from slimtune.search._backends.optuna_backend import MOVED_PARAM, moved_choices

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    families = [f for f in dict.fromkeys(p.family for p in space.searched) if f != "distill"]
    choices = moved_choices(space, 2)
    assert len(choices) == len(families) + len(families) * (len(families) - 1) // 2 and "distill" not in choices
    backend = get_backend("optuna")(space, seed=0, moved_families=2, warm_start=False)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=backend.optuna_sampler())
    picked = []
    for _ in range(40):
        proposal = backend.propose(study)
        moved = set(proposal.trial.params[MOVED_PARAM].split("+"))
        assert 1 <= len(moved) <= 2 and moved == set(proposal.info["moved"])
        assert set(proposal.values) == {p.name for p in space.searched} and space.check(proposal.values)
        for p in space.searched:
            if p.family == "distill":  # how it trains: drawn every time, outside the count
                assert p.name in proposal.trial.params
            elif p.family not in moved:
                assert proposal.values[p.name] == p.default and p.name not in proposal.trial.params
        picked.append(proposal.trial.params[MOVED_PARAM])
        study.tell(proposal.trial, [1.0 if moved == {"quant"} else 0.0, float(len(moved))])
    late = picked[20:]
    assert late.count("quant") >= 4, late  # drawn at random once in 21 on average
    for bad in (0, -1, 1.5, True):
        with pytest.raises(BackendError, match="moved_families"):
            get_backend("optuna")(space, moved_families=bad)


def test_run_takes_moved_families_for_the_optuna_backend_only(tmp_path):
    from click.testing import CliRunner

    from slimtune.cli import main
    from slimtune.studies import Study

    storage = f"sqlite:///{tmp_path / 's.db'}"
    args = ["run", "--study", "s", "--task", "digits", "--trials", "2", "--storage", storage, "--epochs", "1",
            "--latency-repeats", "5", "--no-warm-start", "--fidelity", "full", "--seed", "0"]
    refused = CliRunner().invoke(main, [*args, "--moved-families", "2", "--backend", "nni"])
    assert refused.exit_code == 2 and "--moved-families shapes the Optuna backend" in refused.output
    result = CliRunner().invoke(main, [*args, "--moved-families", "1"])
    assert result.exit_code == 0, result.output
    with Study.load("s", storage=storage) as study:
        rows = study.trials()
        assert len(rows) == 2
        for row in rows:  # each moved one compression: the others' parameters at the baseline's values
            moved = {p.family for p in study.space.searched
                     if row["params"][p.name] != p.default and p.family != "distill"}
            assert len(moved) <= 1 and "search.moved" not in row["params"], row["params"]
