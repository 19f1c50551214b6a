"""The knob registry: one decorator in the knob's own module (like timm's models),
the one place the core learns which knobs exist; it imports without torch."""

from __future__ import annotations

import warnings
from typing import TypeVar

from slimtune.spaces.base import Knob, SpaceError, close_matches

K = TypeVar("K", bound=type[Knob])
_KNOBS: dict[str, type[Knob]] = {}


def register_knob(cls: K) -> K:
    """Class decorator: make a knob available by its ``family`` name."""
    if cls.family in _KNOBS and _KNOBS[cls.family] is not cls:
        warnings.warn(f"Knob family {cls.family!r} registered twice; the later one wins.", stacklevel=2)
    _KNOBS[cls.family] = cls
    return cls


def knob_families() -> list[str]:
    """The registered families, in registration order."""
    return list(_KNOBS)


def knob_classes() -> list[type[Knob]]:
    """The registered knob classes, in registration order (what the CLI's tables read)."""
    return list(_KNOBS.values())


def get_knob(family: str) -> type[Knob]:
    if family not in _KNOBS:
        raise SpaceError(f"Unknown knob family {family!r}." + close_matches(family, list(_KNOBS)))
    return _KNOBS[family]

