"""The search-backend interface: propose -> (evaluate) -> observe.

A backend proposes parameter values for the joint space and records each proposal as
an ordinary trial of the study's Optuna study (so every trial, whoever proposed it,
lives in one place and opens in optuna-dashboard).  The runner evaluates the values,
tells Optuna the outcome, writes slimtune's tables, and hands the outcome back to
the backend (:meth:`Backend.observe`) for tuners that keep their own state (NNI).

Backends read the space's parameters as data (:class:`~slimtune.spaces.Param`); knobs
never call ``suggest``.

Writing a backend (e.g. NNI)::

    @register_backend
    class NNIBackend(Backend):
        name = "nni"

        def propose(self, study):
            values = self.tuner.generate_parameters(...)
            trial = self.ask_with_values(study, values)   # an Optuna trial holding them
            return Proposal(trial, values, tuner="nni:TpeTuner")

        def observe(self, proposal, state, values):
            self.tuner.receive_trial_result(...)
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Sequence

from slimtune._names import close_matches
from slimtune.spaces.base import Param

if TYPE_CHECKING:  # pragma: no cover
    import optuna

    from slimtune.spaces._space import Space


#: The Optuna parameter of a sparse proposal naming the knob families it moves away from
#: the baseline (``"prune+quant"``); not a knob's parameter.
MOVED_PARAM = "search.moved"


class BackendError(ValueError):
    """Bad input about a backend: unknown name, missing optional dependency, bad option."""


@dataclass
class Proposal:
    """One set of searched values, held by a RUNNING Optuna trial."""

    trial: "optuna.trial.Trial"
    values: dict[str, Any]
    tuner: str
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def number(self) -> int:
        return self.trial.number


def distribution_of(param: Param) -> "optuna.distributions.BaseDistribution":
    """The Optuna distribution of a parameter (``bool`` -> categorical ``[False, True]``)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if param.kind == "float":
        return FloatDistribution(float(param.low), float(param.high), log=param.log)
    if param.kind == "int":
        return IntDistribution(int(param.low), int(param.high), log=param.log)
    if param.kind == "bool":
        return CategoricalDistribution([False, True])
    return CategoricalDistribution(list(param.choices))


def suggest(trial: "optuna.trial.Trial", name: str, distribution: "optuna.distributions.BaseDistribution") -> Any:
    """Sample ``name`` from ``distribution`` with the trial's public ``suggest_*`` (what
    ``study.ask(fixed_distributions=...)`` does for each distribution)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if isinstance(distribution, FloatDistribution):
        return trial.suggest_float(name, distribution.low, distribution.high, step=distribution.step, log=distribution.log)
    if isinstance(distribution, IntDistribution):
        return trial.suggest_int(name, distribution.low, distribution.high, step=distribution.step, log=distribution.log)
    if isinstance(distribution, CategoricalDistribution):
        return trial.suggest_categorical(name, list(distribution.choices))
    raise TypeError(f"`distribution` of {name!r} must be a float, int or categorical distribution, but got {distribution!r}.")


class Backend(ABC):
    """Proposes values for a space's searched parameters.

    Args:
        space: the study's joint space (``space.searched`` are the parameters to propose).
        seed: makes the proposals reproducible (``None``: random).
        options: backend-specific options (e.g. ``sampler`` for Optuna, ``tuner`` for NNI).
    """

    name: ClassVar[str]
    #: Warm starts (:meth:`propose_given`) are proposed before the backend's own
    #: proposals: true where the values come from Optuna's ``ask`` and its sampler.
    takes_enqueued_trials: ClassVar[bool] = True

    def __init__(self, space: "Space", *, seed: int | None = None, **options: Any) -> None:
        self.space = space
        self.seed = seed
        self.options = options
        #: Called with each new trial right after Optuna creates it (the runner starts
        #: its heartbeat there, before anything else can fail).
        self.on_ask: Callable[["optuna.trial.Trial"], None] | None = None

    def distributions(self) -> dict[str, "optuna.distributions.BaseDistribution"]:
        """Optuna distributions of the searched parameters, in pipeline order."""
        return {p.name: distribution_of(p) for p in self.space.searched}

    def values_of(self, trial: "optuna.trial.Trial | optuna.trial.FrozenTrial") -> dict[str, Any]:
        """Every searched value of ``trial``: a parameter it does not hold (a family a
        sparse proposal left alone) at the baseline's value."""
        return {p.name: trial.params.get(p.name, p.default) for p in self.space.searched}

    def optuna_sampler(self) -> "optuna.samplers.BaseSampler | None":
        """The sampler the Optuna study is loaded with (``None``: Optuna's default is
        irrelevant because this backend fixes every value itself)."""
        return None

    @property
    def tuner(self) -> str:
        """What proposes the values (stored per trial)."""
        return self.name

    @abstractmethod
    def propose(self, study: "optuna.Study") -> Proposal:
        """Create a RUNNING trial in ``study`` holding the next values to evaluate."""

    def warm_starts(self) -> list[dict[str, Any]]:
        """The backend's own first trials of a new study, when the task gives none
        (none by default)."""
        return []

    def propose_given(self, study: "optuna.Study", values: dict[str, Any]) -> Proposal:
        """A RUNNING trial of ``study`` holding exactly ``values`` (a warm start this
        worker claimed): Optuna's ``ask``, its sampler answering with the values, so no
        waiting trial is left for another worker to pop."""
        previous = study.sampler
        study.sampler = given_values(values, previous)
        try:
            trial = self.ask(study, self.distributions())
        finally:
            study.sampler = previous
        return Proposal(trial, self.values_of(trial), tuner=self.tuner)

    def observe(self, proposal: Proposal, state: str, values: Sequence[float] | None) -> None:
        """The outcome of a proposal: ``state`` is COMPLETE, PRUNED or FAIL and ``values``
        the objective values (COMPLETE only), in the study's objective order."""

    def close(self) -> None:
        """Release resources (tuner processes, files)."""

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "tuner": self.tuner, "seed": self.seed}

    def ask(self, study: "optuna.Study", distributions: dict[str, "optuna.distributions.BaseDistribution"] | None = None
            ) -> "optuna.trial.Trial":
        """``study.ask(fixed_distributions=distributions)``, with :attr:`on_ask` called
        between the trial's creation and the sampling of its values (sampling can
        raise; the trial must already be known to whoever finishes it)."""
        trial = study.ask()
        on_ask = getattr(self, "on_ask", None)
        if on_ask is not None:
            on_ask(trial)
        for name, distribution in (distributions or {}).items():
            suggest(trial, name, distribution)
        return trial

    # -- for backends whose tuner lives outside Optuna ---------------------------
    def ask_with_values(self, study: "optuna.Study", values: dict[str, Any]) -> "optuna.trial.Trial":
        """A RUNNING trial of ``study`` holding exactly ``values`` (with the space's
        distributions), through Optuna's public enqueue + ask."""
        checked = self.space.check(values)
        study.enqueue_trial(checked)
        trial = self.ask(study, self.distributions())
        if any(trial.params.get(k) != v for k, v in checked.items()):
            # another worker of the same study took our enqueued values first (and we
            # took theirs): say so rather than record values under the wrong tuner.
            raise RuntimeError(f"Trial {trial.number} holds {trial.params}, not the enqueued {checked}.")
        return trial


def given_values(values: dict[str, Any], base: "optuna.samplers.BaseSampler") -> "optuna.samplers.BaseSampler":
    """A sampler answering ``values`` (no relative sampling) and ``base`` for any other
    parameter; ``base`` still hears of the trial before and after."""
    import optuna

    class GivenValues(optuna.samplers.BaseSampler):
        def infer_relative_search_space(self, study, trial):
            return {}

        def sample_relative(self, study, trial, search_space):
            return {}

        def sample_independent(self, study, trial, param_name, param_distribution):
            if param_name in values:
                return values[param_name]
            return base.sample_independent(study, trial, param_name, param_distribution)

        def before_trial(self, study, trial) -> None:
            base.before_trial(study, trial)

        def after_trial(self, study, trial, state, values_) -> None:
            base.after_trial(study, trial, state, values_)

    return GivenValues()


_BACKENDS: dict[str, type[Backend]] = {}
#: Backends imported on first use (their dependencies are optional).
_LAZY: dict[str, str] = {"nni": "slimtune.search._backends.nni_backend"}
_INSTALL_HINT: dict[str, str] = {"nni": "install slimtune[nni] (pip install 'slimtune[nni]')"}


def register_backend(cls: type[Backend]) -> type[Backend]:
    """Class decorator: make a backend available by its ``name``."""
    _BACKENDS[cls.name] = cls
    return cls


def backend_names() -> list[str]:
    return sorted(set(_BACKENDS) | set(_LAZY))


def get_backend(name: str) -> type[Backend]:
    """The backend class called ``name`` (``optuna``, ``nni``)."""
    if name not in _BACKENDS and name in _LAZY:
        try:
            importlib.import_module(_LAZY[name])
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.split(".")[0] == name:
                raise BackendError(f"The {name!r} backend needs {exc.name!r}: {_INSTALL_HINT.get(name, 'install it')}.") from None
            if exc.name == _LAZY[name]:
                raise BackendError(f"The {name!r} backend is not available in this slimtune version.") from None
            raise
    if name not in _BACKENDS:
        raise BackendError(f"Unknown backend {name!r}." + close_matches(name, backend_names()))
    return _BACKENDS[name]
