"""The runtime registry: each runtime registers itself in its own module (like knobs).

Example:
    >>> register_runtime("onnxruntime", OrtRuntime)      # in _ort.py
    >>> get_runtime("onnxruntime").compile(...)
    >>> runtime_for("onnxruntime", exits=True)           # the runtime for a model with dynamic exits
"""

from __future__ import annotations

import warnings

from slimtune.search._runtimes._base import Runtime
from slimtune.spaces.base import close_matches

_RUNTIMES: dict[str, type[Runtime]] = {}


def register_runtime(name: str, cls: type[Runtime]) -> type[Runtime]:
    """Make ``cls`` available as ``name`` (and set ``cls.name``); a second class under one
    name warns and wins."""
    if not (isinstance(cls, type) and issubclass(cls, Runtime)):
        raise TypeError(f"`cls` must be a Runtime subclass, but got {cls!r}.")
    if name in _RUNTIMES and _RUNTIMES[name] is not cls:
        warnings.warn(f"Runtime {name!r} registered twice; the later one wins.", stacklevel=2)
    cls.name = name
    _RUNTIMES[name] = cls
    return cls


def runtime_names() -> list[str]:
    """The registered runtimes, in registration order."""
    return list(_RUNTIMES)


def get_runtime(name: str) -> Runtime:
    """The registered runtime ``name``.

    Raises:
        ValueError: no runtime is registered as ``name`` (the close matches are named).
    """
    if name not in _RUNTIMES:
        raise ValueError(f"Unknown runtime {name!r}." + close_matches(str(name), list(_RUNTIMES)))
    return _RUNTIMES[name]()


def deployments() -> list[str]:
    """The runtimes a user can choose (each registered runtime's ``deployment``, once)."""
    return list(dict.fromkeys(cls.deployment for cls in _RUNTIMES.values()))


def runtime_for(deployment: str, *, exits: bool) -> Runtime:
    """The registered runtime that runs a model on ``deployment``: the first one that
    compiles models with dynamic exits when ``exits``, static models otherwise.

    Raises:
        ValueError: ``deployment`` is not one a user can choose, or nothing registered
            for it compiles this kind of model.
    """
    if deployment not in deployments():
        raise ValueError(f"`runtime` must be one of {', '.join(deployments())}, but got {deployment!r}.")
    for name, cls in _RUNTIMES.items():
        if cls.deployment == deployment and (cls.exit_models if exits else cls.static_models):
            return get_runtime(name)
    kind = "a model with dynamic exits" if exits else "a static model"
    raise ValueError(f"`runtime` {deployment!r} has no registered runtime for {kind}.")
