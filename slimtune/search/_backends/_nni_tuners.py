"""The NNI tuners the NNI backend offers (:data:`TUNERS`: TPE, Random, Evolution,
GridSearch), those it refuses with the reason seen (:data:`REFUSED`), how a tuner is
named (NNI's builtin or class name, any case), and importing NNI with a one-line hint.
"""

from __future__ import annotations

import importlib
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from slimtune._names import close_matches
from slimtune.search._backends._interface import BackendError

INSTALL_HINT = "install slimtune[nni] (pip install 'slimtune[nni]')"
DEFAULT_TUNER = "TPE"
#: Random proposals before a model-based tuner takes over; the Optuna backend's
#: ``STARTUP_TRIALS`` (NNI's own defaults, 20 for TPE and a population of 32 for
#: Evolution, exceed the few dozen trials of a typical search).
STARTUP_TRIALS = 8


def require_nni() -> Any:
    """``import nni``, or a one-line :class:`BackendError` that says how to install it."""
    try:
        nni = importlib.import_module("nni")
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] == "nni":
            raise BackendError(f"The 'nni' backend needs NNI, which is not installed: {INSTALL_HINT}.") from None
        raise
    # NNI logs every proposal at INFO on stdout; keep its warnings only.
    nni_logger = logging.getLogger("nni")
    if nni_logger.level in (logging.NOTSET, logging.INFO):
        nni_logger.setLevel(logging.WARNING)
    return nni


# -- which tuners ---------------------------------------------------------------------

@dataclass(frozen=True)
class TunerInfo:
    """An NNI tuner offered by this backend.

    Attributes:
        name: NNI's builtin name (``TPE``).
        class_path: where NNI defines it.
        defaults: constructor arguments slimtune passes unless overridden.
        seeded: whether the constructor takes ``seed``.
        replay: how finished trials are fed to a new tuner (``import_data``: NNI's own
            resume API; ``dedup``: the tuner is stateless apart from its duplicate
            filter; ``population``: rebuilt Evolution population).
    """

    name: str
    class_path: str
    defaults: Mapping[str, Any] = field(default_factory=dict)
    seeded: bool = False
    replay: str = "import_data"
    doc: str = ""


TUNERS: dict[str, TunerInfo] = {
    info.name: info
    for info in (
        TunerInfo("TPE", "nni.algorithms.hpo.tpe_tuner.TpeTuner",
                  {"tpe_args": {"n_startup_jobs": STARTUP_TRIALS}}, seeded=True,
                  doc="tree-structured Parzen estimator (NNI's default)"),
        TunerInfo("Random", "nni.algorithms.hpo.random_tuner.RandomTuner", seeded=True, replay="dedup",
                  doc="uniform random sampling, no repeats"),
        TunerInfo("Evolution", "nni.algorithms.hpo.evolution_tuner.EvolutionTuner",
                  {"population_size": STARTUP_TRIALS}, replay="population",
                  doc="naive evolution: tournament of two, mutate one parameter of the winner"),
        TunerInfo("GridSearch", "nni.algorithms.hpo.gridsearch_tuner.GridSearchTuner",
                  doc="every choice, continuous ranges bisected ever finer (deterministic)"),
    )
}

#: NNI 3.0 tuners that do not work here, with what was seen (torch 2.13, numpy 2.4,
#: scipy 1.17, Python 3.11).
REFUSED: dict[str, str] = {
    "Anneal": "needs hyperopt==0.1.2 (nni[anneal]), which breaks on numpy 2: "
              "hyperopt/anneal.py: TypeError: only 0-dimensional arrays can be converted to Python scalars",
    "TPE_legacy": "the hyperopt-based TPE: needs hyperopt==0.1.2, which breaks on numpy 2 (as Anneal); use TPE",
    "GP": "fails on scipy 1.17 once past its random start ('x0' must only have one dimension, "
          "in scipy.optimize.minimize), and accepts numeric choices only (the space has string choices)",
    "Metis": "fails on scipy 1.17 ('x0' must only have one dimension, in scipy.optimize.minimize), "
             "and has no loguniform (the space has log-scaled parameters)",
    "Hyperband": "an advisor that needs the NNI manager's command channel and per-epoch budgets; "
                 "its metric handler raises TypeError in nni/recoverable.py "
                 "('<=' not supported between 'str' and 'int', NNI issue #5263)",
    "BOHB": "an advisor that needs the NNI manager's command channel and ConfigSpace (nni[bohb]); "
            "its metric handler raises the same TypeError in nni/recoverable.py as Hyperband",
    "SMAC": "needs smac4nni and ConfigSpaceNNI (nni[smac]); ConfigSpaceNNI does not build "
            "(ModuleNotFoundError: numpy while building) and pyrfr needs SWIG",
    "DNGO": "needs pybnn (nni[dngo], pulls torchvision) and takes numeric choices only "
            "(ValueError: Choices with type other than int and float is not supported)",
    "PBT": "population-based training hands each trial another trial's checkpoint directory to "
           "resume training from; slimtune's trials start from the baseline, so PBT's exploit step "
           "would be ignored (and its resume needs those checkpoint directories)",
    "Batch": "runs a user-given list of configurations (one 'combine_params' key), not a search space",
    "NetworkMorphism": "a neural-architecture-search tuner that generates network graphs, not parameter values",
    "PPO": "a neural-architecture-search tuner for mutable layers (needs gym), not parameter values",
    "RegularizedEvolutionTuner": "a neural-architecture-search tuner that takes choice parameters only "
                                 "(ValueError: Unsupported search space type: uniform)",
}


def _key(name: str) -> str:
    key = re.sub(r"[^a-z0-9]", "", name.lower())
    return key[:-5] if key.endswith("tuner") and len(key) > 5 else key


_ALIASES: dict[str, str] = {_key(n): n for n in [*TUNERS, *REFUSED]}
_ALIASES.update({_key(info.class_path.rsplit(".", 1)[1]): n for n, info in TUNERS.items()})
_ALIASES.update({"hyperopt": "Anneal", "grid": "GridSearch", "evolutiontuner": "Evolution",
                 "regularizedevolution": "RegularizedEvolutionTuner"})


def tuner_names() -> list[str]:
    """The offered tuners, by NNI's builtin name."""
    return list(TUNERS)


def get_tuner_info(name: str) -> TunerInfo:
    """The offered tuner called ``name`` (NNI's builtin name or class name, any case).

    Raises:
        BackendError: for a refused tuner (with why) or an unknown name (with the
            close matches and what is offered).
    """
    canonical = _ALIASES.get(_key(str(name)))
    if canonical in TUNERS:
        return TUNERS[canonical]
    offered = ", ".join(TUNERS)
    if canonical in REFUSED:
        raise BackendError(f"NNI tuner {canonical!r} is not offered: {REFUSED[canonical]}. Offered: {offered}.")
    raise BackendError(f"Unknown NNI tuner {name!r}." + close_matches(str(name), [*TUNERS, *REFUSED])
                       + f" Offered: {offered}.")
