"""Search backends behind one interface: propose -> evaluate -> record."""

from slimtune.search._backends._interface import (
    Backend,
    BackendError,
    Proposal,
    backend_names,
    distribution_of,
    get_backend,
    register_backend,
)
from slimtune.search._backends import optuna_backend as _optuna_backend  # noqa: F401,E402  (registers "optuna")
from slimtune.search._backends.optuna_backend import DEFAULT_SAMPLER, SAMPLERS, OptunaBackend, make_sampler  # noqa: E402

__all__ = [
    "Backend",
    "BackendError",
    "DEFAULT_SAMPLER",
    "OptunaBackend",
    "Proposal",
    "SAMPLERS",
    "backend_names",
    "distribution_of",
    "get_backend",
    "make_sampler",
    "register_backend",
]
