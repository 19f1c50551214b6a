"""The NNI backend: an NNI 3.0 tuner, run in-process, proposes every value.

The tuner is driven through its own API (``update_search_space``,
``generate_parameters``, ``receive_trial_result``); no NNI manager, web server or
experiment directory is involved.  Each proposal becomes an ordinary trial of the
study's Optuna study (enqueued values, then ``ask``), marked ``backend="nni"`` and
``tuner=<NNI class>`` by the runner, and told to Optuna with *all* the study's
objectives, so the frontier, the dashboard and ``select`` see NNI's trials like
Optuna's and a study may mix both backends.

NNI's tuners are single-objective: the score they receive is a
:class:`~slimtune.search._scalarization.Scalarization` of accuracy and costs
(default ``accuracy - 0.05*log2(latency_ms)``), written on each trial as the user
attribute ``nni_scalarization``.

Tuners (``tuner=``, NNI's builtin names, case-insensitive):

* ``TPE`` (default), ``Random``, ``Evolution``, ``GridSearch``: work in-process with
  torch 2.13, numpy 2 and scipy 1.17 on the joint space.
* Every other NNI 3.0 tuner is refused with the reason (:data:`REFUSED`).

A trial stopped early (PRUNED: it could not reach the frontier) is told as the worst
complete score seen so far; a failed one is withdrawn (``trial_end(..., False)``).

Resume: before its first proposal (and, with several workers, before every one) the
backend tells the tuner the study's finished trials it has not seen, from any backend,
so a reopened study does not start from scratch (``NNIBackend.replayed`` counts them):
TPE and GridSearch through NNI's own ``import_data``; Random through its duplicate
filter (it has no other state); Evolution by rebuilding its population (its
``import_data`` does nothing).  The tuner's seed mixes in the number of replayed trials,
so a resumed session does not repeat its first proposals.

Example:
    >>> study.optimize(n_trials=20, backend="nni", tuner="TPE",
    ...                scalarization="latency_ms<=2.0,penalty=2")
"""

from __future__ import annotations

import contextlib
import importlib
import itertools
import logging
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import numpy as np

from slimtune._dominance import LATENCY_RATIO
from slimtune.search._backends._interface import Backend, BackendError, Proposal, register_backend
from slimtune.search._backends._nni_tuners import (
    DEFAULT_TUNER,
    REFUSED,
    TUNERS,
    TunerInfo,
    get_tuner_info,
    require_nni,
    tuner_names,
)
from slimtune.search._scalarization import Scalarization
from slimtune.spaces.base import SpaceError
from slimtune.spaces._nni_format import from_nni, to_nni, values_to_nni

if TYPE_CHECKING:  # pragma: no cover
    import optuna

    from slimtune.spaces._space import Space

logger = logging.getLogger(__name__)


class SpaceExhausted(BackendError):
    """The tuner has nothing left to propose (GridSearch over a finite space)."""


# -- the backend ----------------------------------------------------------------------

@dataclass
class _Pending:
    parameter_id: int
    nni_parameters: dict[str, Any]


@register_backend
class NNIBackend(Backend):
    """Values proposed by an NNI tuner run in-process.

    Args:
        space: the joint space (its searched parameters become NNI's search space).
        seed: the tuner's seed; a resumed search mixes in the number of replayed trials
            so it does not repeat its first proposals.
        tuner: an offered NNI tuner (:data:`TUNERS`), ``"TPE"`` by default.
        scalarization: the single objective NNI maximizes: a
            :class:`~slimtune.search._scalarization.Scalarization`, a string such as
            ``"latency_ms*0.05"`` or ``"latency_ms<=2,penalty=2"``, a dict, or ``None``
            for ``accuracy - 0.05*log2(<first cost objective>)``.
        objectives: the study's objective names in order (default: the study's metric
            names, else ``accuracy, latency_ms``).
        tuner_args: extra constructor arguments for the NNI tuner (e.g.
            ``{"population_size": 16}`` for Evolution).

    Raises:
        BackendError: NNI is not installed, or the tuner is refused or unknown.
    """

    name = "nni"
    takes_enqueued_trials = False  # the tuner proposes every value (ask_with_values)

    def __init__(self, space: "Space", *, seed: int | None = None, tuner: str | None = None,
                 scalarization: "Scalarization | str | Mapping[str, Any] | None" = None,
                 objectives: Sequence[str] | None = None, tuner_args: Mapping[str, Any] | None = None,
                 **options: Any) -> None:
        super().__init__(space, seed=seed, **options)
        self.objectives: tuple[str, ...] | None = tuple(objectives) if objectives else None
        self.info, self.scalarization = self.check_options(tuner=tuner, scalarization=scalarization,
                                                           objectives=self.objectives)
        self._scalarization_arg = scalarization
        self.tuner_args = {**self.info.defaults, **dict(tuner_args or {})}
        self.nni_space = to_nni(space)  # fails early on a space NNI cannot hold
        self._tuner: Any = None
        self._seen: set[int] = set()  # trial numbers the tuner has been told about (or proposed)
        self._pending: dict[int, _Pending] = {}
        self._worst: float | None = None
        self._py_random = random.Random(seed)
        self._ids = itertools.count()
        self.replayed = 0

    @staticmethod
    def check_options(*, tuner: str | None = None, scalarization: "Scalarization | str | Mapping[str, Any] | None" = None,
                      objectives: Sequence[str] | None = None) -> tuple[TunerInfo, Scalarization]:
        """Check the options (and that NNI is installed) before anything is created, e.g.
        by the CLI before it opens a study.

        Raises:
            BackendError: a refused or unknown tuner, a bad scalarisation, no NNI.
        """
        info = get_tuner_info(tuner or DEFAULT_TUNER)
        try:
            scalar = Scalarization.coerce(scalarization, tuple(objectives or ("accuracy", "latency_ms")))
        except (TypeError, ValueError) as exc:
            raise BackendError(f"`scalarization`: {exc}") from None
        require_nni()
        return info, scalar

    # -- identity ------------------------------------------------------------------
    @property
    def tuner(self) -> str:
        return self.info.class_path.rsplit(".", 1)[1]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "nni_tuner": self.info.name, "tuner_args": dict(self.tuner_args),
                "scalarization": self.scalarization.to_dict(), "replayed": self.replayed}

    def optuna_sampler(self) -> "optuna.samplers.BaseSampler":
        """A RandomSampler: every value is fixed by NNI, so the Optuna study's own sampler
        only runs (and is discarded) on each ``ask``; a model-based one would waste time."""
        import optuna

        return optuna.samplers.RandomSampler(seed=self.seed)

    # -- the tuner -----------------------------------------------------------------
    def _make_tuner(self, n_history: int) -> Any:
        module, cls_name = self.info.class_path.rsplit(".", 1)
        cls = getattr(importlib.import_module(module), cls_name)
        kwargs = dict(self.tuner_args)
        seed = self._tuner_seed(n_history)
        if self.info.seeded and seed is not None:
            kwargs.setdefault("seed", seed)
        if self.info.name != "GridSearch":  # GridSearch ignores it (and logs so)
            kwargs.setdefault("optimize_mode", "maximize")
        try:
            tuner = cls(**kwargs)
        except TypeError as exc:
            raise BackendError(f"NNI tuner {self.info.name} does not take these arguments {kwargs}: {exc}") from None
        if seed is not None:
            self._py_random.seed(seed)
        with self._python_random():
            tuner.update_search_space(self.nni_space)
        if self.info.name == "Evolution" and seed is not None:
            # Evolution draws its first population from an unseeded RandomState: redraw it seeded.
            tuner.random_state = np.random.RandomState(seed % 2**32)
            tuner.population = []
            with self._python_random():
                for _ in range(tuner.population_size):
                    tuner._random_generate_individual()  # noqa: SLF001 - as its update_search_space does
        return tuner

    def _tuner_seed(self, n_history: int) -> int | None:
        if self.seed is None:
            return None
        return int(np.random.SeedSequence([int(self.seed), n_history]).generate_state(1)[0] >> 1)

    @contextlib.contextmanager
    def _python_random(self) -> Iterator[None]:
        """Evolution also draws from Python's global ``random``: with a seed, give it a
        seeded state and leave the global state as it was."""
        if self.info.name != "Evolution" or self.seed is None:
            yield
            return
        saved = random.getstate()
        random.setstate(self._py_random.getstate())
        try:
            yield
        finally:
            self._py_random.setstate(random.getstate())
            random.setstate(saved)

    def _ensure_tuner(self, study: "optuna.Study") -> Any:
        if self._tuner is None:
            if self.objectives is None:
                self.objectives = _objective_names(study)
                if self._scalarization_arg is None:
                    self.scalarization = Scalarization.default(self.objectives)
            history = self._finished_trials(study)
            self._tuner = self._make_tuner(len(history))
            self._replay(history)
        else:
            self._replay(self._finished_trials(study))  # other workers' trials
        return self._tuner

    # -- history -------------------------------------------------------------------
    def _finished_trials(self, study: "optuna.Study") -> list["optuna.trial.FrozenTrial"]:
        from optuna.trial import TrialState

        return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
                if t.number not in self._seen]

    def _trial_score(self, state: str, values: Sequence[float] | None, user_attrs: Mapping[str, Any]) -> float | None:
        """The scalar told to the tuner, ``None`` when the trial says nothing usable.
        A PRUNED trial (stopped early: it could not reach the frontier) scores as the
        worst complete trial seen so far."""
        if state == "COMPLETE" and values is not None:
            metrics: dict[str, Any] = dict(user_attrs)  # slimtune's units (Optuna may be told a latency ratio)
            metrics.update((k, v) for k, v in zip(self.objectives or (), values) if metrics.get(k) is None)
            try:
                score = self.scalarization.score(metrics)
            except ValueError as exc:
                logger.warning("NNI backend: cannot score a trial (%s); the tuner is not told.", exc)
                return None
            self._worst = score if self._worst is None else min(self._worst, score)
            return score
        if state == "PRUNED":
            return self._worst
        return None

    def _replay(self, trials: Sequence["optuna.trial.FrozenTrial"]) -> int:
        """Tell the tuner about finished trials it did not propose (earlier sessions,
        other workers, other backends).  Trials whose values lie outside this space
        are skipped.  Returns how many were replayed."""
        for trial in trials:  # the worst complete score first: PRUNED trials are told it
            if trial.state.name == "COMPLETE":
                self._trial_score("COMPLETE", trial.values, trial.user_attrs)
        records = []
        for trial in sorted(trials, key=lambda t: t.number):  # in order: TPE forgets old trials gradually
            self._seen.add(trial.number)
            score = self._trial_score(trial.state.name, trial.values, trial.user_attrs)
            if score is None:
                continue
            try:
                values = self.space.complete(trial.params)
                parameters = values_to_nni(self.space, values)
            except SpaceError as exc:
                logger.info("NNI backend: trial %d is not in this space (%s); not replayed.", trial.number, exc)
                continue
            records.append({"parameter": parameters, "value": score})
        if records:
            self._import(records)
            self.replayed += len(records)
        return len(records)

    def _import(self, records: list[dict[str, Any]]) -> None:
        tuner = self._tuner
        if self.info.replay == "import_data":
            tuner.import_data(records)
        elif self.info.replay == "dedup":
            from nni.common.hpo_utils import format_parameters

            for record in records:
                tuner.dedup.add_history(format_parameters(record["parameter"], tuner.space))
        elif self.info.replay == "population":
            with self._python_random():
                for record in records:
                    _evolution_add(tuner, record["parameter"], record["value"], self.nni_space)

    # -- propose / observe -----------------------------------------------------------
    def propose(self, study: "optuna.Study") -> Proposal:
        nni = require_nni()
        tuner = self._ensure_tuner(study)
        parameter_id = next(self._ids)
        if not self.nni_space:
            parameters: dict[str, Any] = {}  # everything fixed: nothing to ask the tuner
        else:
            try:
                with self._python_random():
                    parameters = tuner.generate_parameters(parameter_id)
            except nni.NoMoreTrialError:
                raise SpaceExhausted(f"NNI tuner {self.info.name} has no more values to propose "
                                   f"(the space is fully explored after {len(self._seen)} trials).") from None
        try:
            values = from_nni(self.space, parameters)
            trial = self.ask_with_values(study, values)
        except BaseException:
            if self.nni_space:
                with self._python_random():
                    tuner.trial_end(parameter_id, False)  # not run: the tuner must not wait for it
            raise
        self._seen.add(trial.number)
        self._pending[trial.number] = _Pending(parameter_id, dict(parameters))
        trial.set_user_attr("nni_scalarization", str(self.scalarization))
        return Proposal(trial, values, tuner=self.tuner,
                        info={"nni_tuner": self.info.name, "nni_parameter_id": parameter_id})

    def observe(self, proposal: Proposal, state: str, values: Sequence[float] | None) -> None:
        pending = self._pending.pop(proposal.number, None)
        if pending is None or self._tuner is None or not self.nni_space:
            return
        score = self._trial_score(state, values, proposal.trial.user_attrs)
        tuner = self._tuner
        with self._python_random():
            if score is None:
                tuner.trial_end(pending.parameter_id, False)
            else:
                tuner.receive_trial_result(pending.parameter_id, pending.nni_parameters, score)

    def close(self) -> None:
        self._tuner = None


# -- helpers ----------------------------------------------------------------------

def _objective_names(study: "optuna.Study") -> tuple[str, ...]:
    names = getattr(study, "metric_names", None)
    if names:  # latency told as its same-run ratio is still the latency objective
        return tuple("latency_ms" if n == LATENCY_RATIO else n for n in names)
    directions = [d.name.lower() for d in study.directions]
    if directions == ["maximize", "minimize"]:
        return ("accuracy", "latency_ms")
    raise BackendError("The NNI backend needs the study's objective names: pass `objectives=` "
                       "(e.g. ['accuracy', 'latency_ms']) or set the study's metric names.")


def _evolution_add(tuner: Any, parameters: Mapping[str, Any], score: float,
                   nni_space: Mapping[str, Mapping[str, Any]]) -> None:
    """Add one evaluated individual to an EvolutionTuner's population, as if it had
    proposed it: an unevaluated random individual makes room while any is left, else
    the worse of two random individuals does (its tournament)."""
    from nni.algorithms.hpo.evolution_tuner import Individual

    config: dict[str, Any] = {}
    for name, value in parameters.items():
        spec = nni_space[name]
        if spec["_type"] == "choice":
            index = next(i for i, c in enumerate(spec["_value"]) if type(c) is type(value) and c == value)
            config[name] = {"_index": index, "_value": value}
        else:
            config[name] = value
    population = tuner.population
    fresh = [i for i, ind in enumerate(population) if ind.result is None]
    if fresh:
        population.pop(fresh[0])
    elif len(population) > 1:
        random.shuffle(population)
        population.pop(0 if population[0].result < population[1].result else 1)
    population.append(Individual(config=config, result=score))


__all__ = ["DEFAULT_TUNER", "NNIBackend", "REFUSED", "SpaceExhausted", "TUNERS", "TunerInfo", "get_tuner_info", "require_nni", "tuner_names"]
