"""The joint space in NNI's search-space format, and NNI's parameters back.

NNI (``nni.algorithms.hpo``) reads a search space as a JSON dict of
``{name: {"_type": ..., "_value": [...]}}`` and proposes ``{name: value}``.  One
:class:`~slimtune.spaces.Space` definition serves both backends: this module
translates a space's parameters (:class:`~slimtune.spaces.Param`, data) into that
format and NNI's proposals back into checked values, with every name kept as it is
and every type restored exactly.  It needs no NNI installation.

==================  =========================================  ==========================
``Param.kind``      NNI ``_type`` / ``_value``                 value NNI proposes
==================  =========================================  ==========================
float               ``uniform [low, high]``                    float
float, log          ``loguniform [low, high]``                 float
int                 ``quniform [low, high, 1]``                float (``3.0``) -> ``int``
int, log            ``qloguniform [low, high, 1]``             float -> ``int``
bool                ``choice [false, true]``                   bool
categorical         ``choice [c1, c2, ...]``                   the choice itself
==================  =========================================  ==========================

Notes on NNI's handling that the translation takes care of:

* **Names**: NNI's HPO tuners use a key as it is, so dotted names such as
  ``dsconv.blocks.0.0`` or ``exits.1.threshold`` are neither split nor nested (only
  the keys ``_name``, ``_type`` and ``_value`` mean something to NNI; they are refused).
* **int** is ``quniform`` with ``q = 1`` rather than ``randint``: NNI 3.0's TPE treats
  ``randint`` as *unordered* categories, which throws away the order of an integer.
  ``randint [low, high)`` is still read back as an int (``high - 1`` included).
* **bool and int choices**: ``True == 1`` in Python, so a proposal is matched to the
  choice of the same type (``True`` to ``True``, never to ``1``); numpy scalars that
  some tuners return (``numpy.float64``, ``numpy.bool_``) become Python values.
* **log scales**: ``exp(log(high))`` may land one ulp outside ``[low, high]``; such
  values are clamped to the bound (anything further outside is an error).

Example:
    >>> nni_space = to_nni(space)              # for tuner.update_search_space
    >>> values = from_nni(space, tuner.generate_parameters(0))
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from slimtune.spaces.base import Param, SpaceError, close_matches

#: Keys with a meaning in NNI's format (a parameter may not be called so).
RESERVED_NAMES = ("_name", "_type", "_value")
#: Relative tolerance for a number proposed just outside its bounds (exp/log rounding).
_BOUND_TOL = 1e-9


def _params_of(space: Any) -> list[Param]:
    """The searched parameters of a Space, or the given parameters."""
    if hasattr(space, "searched"):
        return list(space.searched)
    return list(space)


def param_to_nni(param: Param) -> dict[str, Any]:
    """One parameter as NNI's ``{"_type": ..., "_value": [...]}``."""
    if param.name in RESERVED_NAMES:
        raise SpaceError(f"Parameter name {param.name!r} is reserved in NNI's search-space format.")
    if param.kind == "float":
        return {"_type": "loguniform" if param.log else "uniform", "_value": [float(param.low), float(param.high)]}
    if param.kind == "int":
        low, high = int(param.low), int(param.high)  # type: ignore[arg-type]
        return {"_type": "qloguniform" if param.log else "quniform", "_value": [low, high, 1]}
    if param.kind == "bool":
        return {"_type": "choice", "_value": [False, True]}
    for choice in param.choices:
        if not isinstance(choice, (str, int, float)):
            raise SpaceError(
                f"`{param.name}`: NNI choices must be numbers, strings or bools, but got {choice!r} "
                f"({type(choice).__name__})."
            )
    return {"_type": "choice", "_value": list(param.choices)}


def to_nni(space: Any) -> dict[str, dict[str, Any]]:
    """NNI's search space for a :class:`Space` (its *searched* parameters; fixed ones
    are not NNI's business) or for an iterable of :class:`Param`, in pipeline order."""
    return {p.name: param_to_nni(p) for p in _params_of(space)}


def _is_integral(x: float) -> bool:
    return float(x).is_integer()


def param_from_nni(name: str, spec: Mapping[str, Any], *, default: Any = None) -> Param:
    """A :class:`Param` from one NNI search-space entry (the inverse of
    :func:`param_to_nni`).  ``default`` defaults to the lower bound / first choice.

    Raises:
        SpaceError: for NNI types a Param cannot hold (normal distributions,
            quantisation steps other than 1, nested choices).
    """
    if not isinstance(spec, Mapping) or "_type" not in spec or "_value" not in spec:
        raise SpaceError(f"`{name}`: an NNI search-space entry needs `_type` and `_value`, but got {spec!r}.")
    type_, value = spec["_type"], list(spec["_value"])
    if type_ == "choice":
        if not value:
            raise SpaceError(f"`{name}`: an NNI choice needs at least one value, but got {value!r}.")
        if any(isinstance(v, Mapping) for v in value):
            raise SpaceError(f"`{name}`: nested NNI choices have no slimtune equivalent.")
        if len(value) == 2 and all(type(v) is bool for v in value) and set(value) == {False, True}:
            return Param(name, "bool", False if default is None else default)
        return Param(name, "categorical", value[0] if default is None else default, choices=tuple(value))
    if type_ in ("uniform", "loguniform") and len(value) == 2:
        low, high = float(value[0]), float(value[1])
        return Param(name, "float", low if default is None else default, low=low, high=high, log=type_ == "loguniform")
    if type_ in ("quniform", "qloguniform") and len(value) == 3:
        low, high, q = value
        if q == 1 and _is_integral(low) and _is_integral(high):
            low, high = int(low), int(high)
            return Param(name, "int", low if default is None else default, low=low, high=high, log=type_ == "qloguniform")
        raise SpaceError(f"`{name}`: {type_} with q={q!r} has no slimtune equivalent (only integers, q=1).")
    if type_ == "randint" and len(value) == 2:
        low, high = int(value[0]), int(value[1]) - 1  # NNI's upper bound is exclusive
        return Param(name, "int", low if default is None else default, low=low, high=high)
    raise SpaceError(
        f"`{name}`: NNI type {type_!r} with values {value!r} has no slimtune equivalent "
        "(choice, uniform, loguniform, quniform/qloguniform with q=1, randint)."
    )


def params_from_nni(search_space: Mapping[str, Mapping[str, Any]], *,
                    defaults: Mapping[str, Any] | None = None) -> list[Param]:
    """The :class:`Param` list of an NNI search space (inverse of :func:`to_nni`)."""
    defaults = defaults or {}
    return [param_from_nni(name, spec, default=defaults.get(name)) for name, spec in search_space.items()]


def _python_scalar(value: Any) -> Any:
    """numpy scalars (some NNI tuners return them) as Python values."""
    item = getattr(value, "item", None)
    if item is not None and getattr(value, "shape", None) == ():
        return item()
    return value


def _number_in_bounds(param: Param, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpaceError(f"`{param.name}`: NNI proposed {value!r} ({type(value).__name__}), expected a number.")
    x, low, high = float(value), float(param.low), float(param.high)  # type: ignore[arg-type]
    tol = _BOUND_TOL * max(1.0, abs(low), abs(high))
    if math.isnan(x) or x < low - tol or x > high + tol:
        raise SpaceError(f"`{param.name}`: NNI proposed {value!r}, outside [{param.low}, {param.high}].")
    return min(max(x, low), high)


def value_from_nni(param: Param, value: Any) -> Any:
    """One proposed value as the parameter's own type (exactly: ``int``, ``float``,
    ``bool`` or the categorical choice object)."""
    value = _python_scalar(value)
    if param.kind == "float":
        return _number_in_bounds(param, value)
    if param.kind == "int":
        x = _number_in_bounds(param, value)
        if abs(x - round(x)) > 1e-6:
            raise SpaceError(f"`{param.name}`: NNI proposed {value!r}, expected an integer.")
        return int(round(x))
    if param.kind == "bool":
        if type(value) is not bool:
            raise SpaceError(f"`{param.name}`: NNI proposed {value!r} ({type(value).__name__}), expected true or false.")
        return value
    same_type = [c for c in param.choices if type(c) is type(value) and c == value]
    if same_type:
        return same_type[0]
    equal = [c for c in param.choices if c == value and not isinstance(c, bool) and not isinstance(value, bool)]
    if len(equal) == 1:  # e.g. 8.0 proposed for the int choice 8
        return equal[0]
    raise SpaceError(f"`{param.name}`: NNI proposed {value!r}, not one of {', '.join(map(repr, param.choices))}.")


def from_nni(space: Any, parameters: Mapping[str, Any]) -> dict[str, Any]:
    """The values of one NNI proposal, typed and checked, in pipeline order.

    ``parameters`` must hold exactly the searched names of ``space`` (a Space or
    iterable of Param): a missing or unknown name is an error, never dropped.
    """
    params = _params_of(space)
    names = [p.name for p in params]
    extra = [k for k in parameters if k not in names]
    if extra:
        raise SpaceError(f"NNI proposed unknown parameter {extra[0]!r}." + close_matches(extra[0], names))
    missing = [n for n in names if n not in parameters]
    if missing:
        raise SpaceError(f"NNI's proposal lacks {', '.join(map(repr, missing))}; got {sorted(parameters)}.")
    return {p.name: value_from_nni(p, parameters[p.name]) for p in params}


def value_to_nni(param: Param, value: Any) -> Any:
    """One value as NNI itself would have proposed it (ints of ``quniform`` as floats),
    for replaying history into a tuner (``import_data``)."""
    checked = param.coerce(value)
    if param.kind == "int":
        return float(checked)
    if param.kind == "float":
        return float(checked)
    return checked


def values_to_nni(space: Any, values: Mapping[str, Any]) -> dict[str, Any]:
    """The searched values of ``space`` in NNI's representation (inverse of :func:`from_nni`)."""
    params = _params_of(space)
    missing = [p.name for p in params if p.name not in values]
    if missing:
        raise SpaceError(f"Values lack {', '.join(map(repr, missing))} of the searched space.")
    return {p.name: value_to_nni(p, values[p.name]) for p in params}

