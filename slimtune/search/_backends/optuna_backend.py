"""The Optuna backend: the study's Optuna sampler proposes every value.

Samplers (``sampler=``): ``gp`` (default), ``tpe``, ``nsga2``, ``random``, or any
``optuna.samplers.BaseSampler`` instance.  All of them read the constraints that the
runner sets with ``Trial.set_constraint`` (infeasible trials are ranked after
feasible ones; GP models the constraints and weighs its acquisition by the
probability of feasibility).

The default was chosen with ``benchmarks/search.py`` on digits (24 trials, seeds
0-2, early stopping on, hypervolume of accuracy vs latency relative to the
baseline): GP 0.536, random 0.507, TPE 0.501, NSGA-II 0.475 (mean of 3 seeds; GP
above TPE in 3 of 3 seeds, above random in 2 of 3).  With many parallel workers TPE
(``constant_liar``) may spread proposals better.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from slimtune.search._backends.base import Backend, BackendError, Proposal, register_backend

if TYPE_CHECKING:  # pragma: no cover
    import optuna

SAMPLERS = ("gp", "tpe", "nsga2", "random")
DEFAULT_SAMPLER = "gp"
#: Random trials before a model-based sampler takes over (Optuna's default of 10 is
#: too many for searches of a few dozen candidates); NSGA-II's population size.
STARTUP_TRIALS = 8


def make_sampler(name: "str | optuna.samplers.BaseSampler", *, seed: int | None = None,
                 startup_trials: int = STARTUP_TRIALS) -> "optuna.samplers.BaseSampler":
    """An Optuna sampler by name (``tpe``, ``nsga2``, ``gp``, ``random``)."""
    import optuna

    if isinstance(name, optuna.samplers.BaseSampler):
        return name
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials, multivariate=True,
                                          constant_liar=True)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(2, startup_trials))
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup_trials)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise BackendError(f"`sampler` must be one of {', '.join(SAMPLERS)} or an optuna sampler, but got {name!r}.")


def sampler_name(sampler: "str | optuna.samplers.BaseSampler") -> str:
    return sampler if isinstance(sampler, str) else type(sampler).__name__


@register_backend
class OptunaBackend(Backend):
    """Values proposed by an Optuna sampler through ``study.ask`` + the space's
    distributions (:meth:`Backend.ask`)
    (the space's parameters as distributions; no ``suggest`` calls anywhere).

    Args:
        space: the joint space.
        seed: sampler seed.
        sampler: a name in :data:`SAMPLERS` or a sampler instance.
    """

    name = "optuna"

    def __init__(self, space, *, seed: int | None = None, sampler: "str | Any | None" = None, **options: Any) -> None:
        super().__init__(space, seed=seed, **options)
        self._sampler = make_sampler(sampler or DEFAULT_SAMPLER, seed=seed)

    def optuna_sampler(self):
        return self._sampler

    @property
    def tuner(self) -> str:
        return type(self._sampler).__name__

    def propose(self, study: "optuna.Study") -> Proposal:
        trial = self.ask(study, self.distributions())
        values = {name: trial.params[name] for name in self.distributions()}
        return Proposal(trial, values, tuner=self.tuner)
