"""The Optuna backend: the study's Optuna sampler proposes every value.

Samplers (``sampler=``): ``tpe`` (default), ``gp``, ``nsga2``, ``random``, or any
``optuna.samplers.BaseSampler`` instance.  All of them read the constraints that the
runner sets with ``Trial.set_constraint`` (infeasible trials are ranked after
feasible ones; GP models the constraints and weighs its acquisition by the
probability of feasibility).

The defaults: the **warm start** (a new study's first trials are the baseline's
neighbourhood, one knob family moved at a time: :func:`neighbourhood`; a task may give
its own list, as the built-in tasks do) followed by **TPE** (multivariate,
``constant_liar``; the model takes over right after the warm start,
:data:`STARTUP_TRIALS`).  How the default compares with Optuna's random and
TPE samplers and NNI's TPE on an enumerated ceiling, dated: ``docs/benchmarks.md``
(``benchmarks/frontier_ceiling.py``).

**Sparse proposals** (``moved_families=K``): each proposal first draws which
compression families move away from the baseline (one to K of them, a categorical
parameter :data:`MOVED_PARAM` the sampler learns like any other) and then only those
families' parameters (conditional parameters: TPE models each group of parameters that
occur together, ``group=True``); every other compression keeps the baseline's value.
Training knobs (distillation: how a candidate learns, not what it is) are drawn in
every proposal and do not count towards K.  Joint
proposals move every family a little at once, which mostly adds layers and costs (the
pre-training rejections of ``docs/search.md``); sparse ones reach the single and paired
compressions a practitioner would try.

**Stopped trials are shown to the sampler as pending points**
(:func:`stopped_as_pending`): GP learns from COMPLETE trials only, and without it
re-proposed what early stopping had just stopped; as pending points its batch acquisition counts their
neighbourhood as covered.  TPE already reads PRUNED trials (ranked after every
complete one) and is not changed.
"""

from __future__ import annotations

import math
import random
import warnings
from typing import TYPE_CHECKING, Any

from slimtune.search._backends._interface import Backend, BackendError, MOVED_PARAM, Proposal, register_backend, suggest

if TYPE_CHECKING:  # pragma: no cover
    import optuna

SAMPLERS = ("gp", "tpe", "nsga2", "random")
DEFAULT_SAMPLER = "tpe"
#: Trials before a model-based sampler takes over (Optuna's default of 10 is too many
#: for searches of a few dozen candidates).  The warm start's trials (one per knob
#: family, six on the built-in tasks) count: the model takes over right after them.
STARTUP_TRIALS = 4
#: NSGA-II's population size.
POPULATION_SIZE = 8
#: Enqueue the baseline's neighbourhood (:func:`neighbourhood`) as the first trials of a
#: new study.
WARM_START = True


def make_sampler(name: "str | optuna.samplers.BaseSampler", *, seed: int | None = None,
                 startup_trials: int = STARTUP_TRIALS, conditional: bool = False) -> "optuna.samplers.BaseSampler":
    """An Optuna sampler by name (``tpe``, ``nsga2``, ``gp``, ``random``);
    ``conditional``: trials hold different parameter sets (TPE then models each group)."""
    import optuna

    if isinstance(name, optuna.samplers.BaseSampler):
        return name
    if name == "tpe":
        with warnings.catch_warnings():  # `group` is marked experimental (since Optuna 2.8)
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials, multivariate=True,
                                              constant_liar=True, group=conditional)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=POPULATION_SIZE)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup_trials)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise BackendError(f"`sampler` must be one of {', '.join(SAMPLERS)} or an optuna sampler, but got {name!r}.")


def stopped_as_pending(sampler: "optuna.samplers.BaseSampler") -> "optuna.samplers.BaseSampler":
    """``sampler`` seeing the trials that early stopping ended (PRUNED with a
    ``stopped_reason``) as pending (RUNNING) points.

    Optuna's GP sampler learns from COMPLETE trials only, so without this it never
    learns that a region's candidates were stopped and proposes them again and again
    (replayed on digits: 23 of 29 trials stopped, a fifth of the hypervolume lost).
    A pending point tells its batch acquisition (qLogEHVI) that the neighbourhood is
    covered, without inventing objective values.  Samplers that ask for PRUNED trials
    themselves (TPE ranks them after every complete trial) see the study unchanged.
    """
    import optuna

    global _StoppedAsPending
    if _StoppedAsPending is None:
        _StoppedAsPending = _define_stopped_as_pending(optuna)
    return sampler if isinstance(sampler, _StoppedAsPending) else _StoppedAsPending(sampler)


_StoppedAsPending: Any = None


def _define_stopped_as_pending(optuna: Any) -> type:
    import copy

    from optuna.trial import TrialState

    class _PendingView:
        """A study whose stopped trials read as RUNNING (every other attribute is the study's)."""

        def __init__(self, study: "optuna.Study") -> None:
            self._study = study

        def __getattr__(self, name: str) -> Any:
            return getattr(self._study, name)

        def _get_trials(self, deepcopy: bool = True, states: Any = None, use_cache: bool = False) -> list:
            if states is None or TrialState.RUNNING not in states or TrialState.PRUNED in states:
                return self._study._get_trials(deepcopy=deepcopy, states=states, use_cache=use_cache)
            out = []
            for trial in self._study._get_trials(deepcopy=deepcopy, states=(*states, TrialState.PRUNED),
                                                 use_cache=use_cache):
                if trial.state == TrialState.PRUNED:
                    if "stopped_reason" not in trial.user_attrs:
                        continue
                    trial = copy.copy(trial)
                    trial.state = TrialState.RUNNING
                out.append(trial)
            return out

    class StoppedAsPending(optuna.samplers.BaseSampler):
        """Delegates to ``base`` through a :class:`_PendingView` of the study."""

        def __init__(self, base: "optuna.samplers.BaseSampler") -> None:
            self.base = base

        def infer_relative_search_space(self, study, trial):
            return self.base.infer_relative_search_space(_PendingView(study), trial)

        def sample_relative(self, study, trial, search_space):
            return self.base.sample_relative(_PendingView(study), trial, search_space)

        def sample_independent(self, study, trial, param_name, param_distribution):
            return self.base.sample_independent(_PendingView(study), trial, param_name, param_distribution)

        def before_trial(self, study, trial) -> None:
            self.base.before_trial(study, trial)

        def after_trial(self, study, trial, state, values) -> None:
            self.base.after_trial(study, trial, state, values)

        def reseed_rng(self) -> None:
            self.base.reseed_rng()

    return StoppedAsPending


def _draw(param: "Any", rng: random.Random) -> Any:
    """A random value of ``param`` other than its default where it has another."""
    if param.kind in ("categorical", "bool"):
        choices = list(param.choices) if param.kind == "categorical" else [False, True]
        others = [c for c in choices if c != param.default]
        return rng.choice(others or choices)
    low, high = float(param.low), float(param.high)
    value = math.exp(rng.uniform(math.log(low), math.log(high))) if param.log else rng.uniform(low, high)
    return int(round(value)) if param.kind == "int" else value


def neighbourhood(space: "Any", seed: int | None = None) -> list[dict[str, Any]]:
    """The baseline's neighbourhood: one configuration per knob family with searched
    parameters, that family's parameters drawn at random (seeded) and every other
    searched parameter at its default (the uncompressed baseline's value).

    Single compressions are what a practitioner tries first and often lie on the
    frontier; as a search's first trials they show the sampler each family's effect
    alone before it combines them (measured in ``benchmarks/frontier_ceiling.py``).
    """
    rng = random.Random(seed)
    searched = list(space.searched)
    out = []
    for family in dict.fromkeys(p.family for p in searched):
        out.append({p.name: _draw(p, rng) if p.family == family else p.default for p in searched})
    return out


#: Knob stages that shape how a candidate trains, not what it is: searched in every
#: sparse proposal, outside its count of moved families.
TRAINING_STAGES = ("training",)


def always_searched(space: "Any") -> set[str]:
    """The families a sparse proposal always draws (:data:`TRAINING_STAGES`)."""
    return {k.family for k in space.knobs if k.stage in TRAINING_STAGES}


def moved_choices(space: "Any", most: int) -> list[str]:
    """The values of :data:`MOVED_PARAM`: every set of 1 to ``most`` compression
    families with searched parameters, in pipeline order, written ``"prune+quant"``."""
    from itertools import combinations

    always = always_searched(space)
    families = [f for f in dict.fromkeys(p.family for p in space.searched) if f not in always]
    return ["+".join(c) for k in range(1, min(most, len(families)) + 1) for c in combinations(families, k)]


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
        startup_trials: random trials before a model-based sampler takes over.
        warm_start: a new study starts with the baseline's neighbourhood
            (:meth:`warm_starts`) when its task gives no warm starts.
        moved_families: sparse proposals moving at most this many compression
            families (``None``: every family's parameters drawn at once).
    """

    name = "optuna"

    def __init__(self, space, *, seed: int | None = None, sampler: "str | Any | None" = None,
                 startup_trials: int = STARTUP_TRIALS, warm_start: bool = WARM_START, moved_families: int | None = None,
                 **options: Any) -> None:
        super().__init__(space, seed=seed, **options)
        if isinstance(startup_trials, bool) or not isinstance(startup_trials, int) or startup_trials < 0:
            raise BackendError(f"`startup_trials` must be an integer >= 0, but got {startup_trials!r}.")
        if moved_families is not None and (isinstance(moved_families, bool) or not isinstance(moved_families, int)
                                           or moved_families < 1):
            raise BackendError(f"`moved_families` must be an integer >= 1, but got {moved_families!r}.")
        self._moved = (moved_choices(space, moved_families) or None) if moved_families else None  # None: joint
        self._sampler = make_sampler(sampler or DEFAULT_SAMPLER, seed=seed, startup_trials=startup_trials,
                                     conditional=self._moved is not None)
        self._study_sampler = stopped_as_pending(self._sampler)
        self.warm_start = bool(warm_start)

    def warm_starts(self) -> list[dict[str, Any]]:
        """The baseline's neighbourhood (:func:`neighbourhood`), the first trials of a
        new study whose task gives no warm starts (claimed by the runner:
        :mod:`~slimtune.search._warm_claims`); none with ``warm_start=False``."""
        return neighbourhood(self.space, self.seed) if self.warm_start else []

    def optuna_sampler(self):
        return self._study_sampler

    @property
    def tuner(self) -> str:
        return type(self._sampler).__name__

    def propose(self, study: "optuna.Study") -> Proposal:
        if self._moved is None:
            trial = self.ask(study, self.distributions())
            return Proposal(trial, self.values_of(trial), tuner=self.tuner)
        from optuna.distributions import CategoricalDistribution

        trial = self.ask(study, {MOVED_PARAM: CategoricalDistribution(self._moved)})
        moved = set(trial.params[MOVED_PARAM].split("+"))
        distributions, drawn = self.distributions(), moved | always_searched(self.space)
        for param in self.space.searched:
            if param.family in drawn:
                suggest(trial, param.name, distributions[param.name])
        return Proposal(trial, self.values_of(trial), tuner=self.tuner, info={"moved": sorted(moved)})
