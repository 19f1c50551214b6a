"""One number from accuracy and costs, for single-objective tuners (NNI's).

A study keeps every objective (accuracy, latency, size, ...) and its frontier; only
the tuner that proposes the next trial sees a single score, to **maximize**::

    score = accuracy
            - sum_c  weight_c  * log2(cost_c)                 (trade-off terms)
            - penalty * sum_c max(0, cost_c / budget_c - 1)   (budget terms)

* A **weight** is the accuracy a halving of the cost is worth: ``latency_ms*0.05``
  means "half the latency is worth 5 accuracy points".  Log-costs make the score
  independent of units (a reference cost would only shift it by a constant); latency
  is traded as its same-run ratio (over ``reference_latency_ms``, the baseline timed
  beside it) when the measurement has one, so machine drift between trials does not
  enter the score.  Budgets stay in milliseconds.
* A **budget** counts only what lies beyond it, relative to it: with
  ``latency_ms<=2,penalty=1`` a candidate 10 % over 2 ms loses 0.1 accuracy;
  within budget only accuracy counts.

Both kinds of term may be combined.  With neither, the default is
``<first cost objective>*0.05``.

Example:
    >>> s = Scalarization.parse("latency_ms<=2.0,penalty=2")
    >>> round(s.score({"accuracy": 0.97, "latency_ms": 2.5}), 4)
    0.47
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

#: Costs a scalarisation may use (all minimized); accuracy is always maximized.
COSTS = ("latency_ms", "size_bytes", "macs")
DEFAULT_WEIGHT = 0.05


@dataclass(frozen=True)
class Scalarization:
    """How accuracy and costs become one score to maximize (see the module docstring).

    Args:
        weights: accuracy points per halving of each cost, by cost name.
        budgets: per-cost budgets (same units as the cost: ms, bytes, MACs).
        penalty: accuracy lost per unit of relative excess over a budget.
    """

    weights: Mapping[str, float] = field(default_factory=dict)
    budgets: Mapping[str, float] = field(default_factory=dict)
    penalty: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "weights", {k: float(v) for k, v in dict(self.weights).items()})
        object.__setattr__(self, "budgets", {k: float(v) for k, v in dict(self.budgets).items()})
        for name in [*self.weights, *self.budgets]:
            if name not in COSTS:
                raise ValueError(f"A scalarisation cost must be one of {', '.join(COSTS)}, but got {name!r}.")
        for name, w in self.weights.items():
            if not (w >= 0 and math.isfinite(w)):
                raise ValueError(f"The weight of `{name}` must be >= 0, but got {w!r}.")
        for name, b in self.budgets.items():
            if not (b > 0 and math.isfinite(b)):
                raise ValueError(f"The budget of `{name}` must be positive, but got {b!r}.")
        if not (self.penalty >= 0 and math.isfinite(self.penalty)):
            raise ValueError(f"`penalty` must be >= 0, but got {self.penalty!r}.")

    @classmethod
    def default(cls, objectives: tuple[str, ...] | list[str] = ("accuracy", "latency_ms")) -> "Scalarization":
        """``<first cost objective>*0.05`` (latency when the objectives name no cost)."""
        cost = next((o for o in objectives if o in COSTS), "latency_ms")
        return cls(weights={cost: DEFAULT_WEIGHT})

    @classmethod
    def parse(cls, text: str) -> "Scalarization":
        """From the command line: comma-separated ``COST*WEIGHT``, ``COST<=BUDGET`` and
        ``penalty=P`` terms, e.g. ``"latency_ms*0.05"`` or ``"latency_ms<=2,penalty=2"``."""
        weights: dict[str, float] = {}
        budgets: dict[str, float] = {}
        penalty = 1.0
        for term in (t.strip() for t in text.split(",")):
            if not term:
                continue
            try:
                if "<=" in term:
                    name, value = term.split("<=", 1)
                    budgets[name.strip()] = float(value)
                elif "*" in term:
                    name, value = term.split("*", 1)
                    weights[name.strip()] = float(value)
                elif term.startswith("penalty="):
                    penalty = float(term.split("=", 1)[1])
                else:
                    raise ValueError
            except ValueError:
                raise ValueError(
                    f"A scalarisation term is COST*WEIGHT, COST<=BUDGET or penalty=P (COST in {', '.join(COSTS)}), "
                    f"but got {term!r}."
                ) from None
        if not weights and not budgets:
            raise ValueError(f"A scalarisation needs at least one COST*WEIGHT or COST<=BUDGET term, but got {text!r}.")
        return cls(weights=weights, budgets=budgets, penalty=penalty)

    @classmethod
    def coerce(cls, value: "Scalarization | str | Mapping[str, Any] | None",
               objectives: tuple[str, ...] | list[str] = ("accuracy", "latency_ms")) -> "Scalarization":
        """A Scalarization from itself, a :meth:`parse` string, a dict of the
        constructor's arguments, or ``None`` (:meth:`default`)."""
        if value is None:
            return cls.default(objectives)
        if isinstance(value, Scalarization):
            return value
        if isinstance(value, str):
            return cls.parse(value)
        if isinstance(value, Mapping):
            return cls(**value)
        raise TypeError(f"`scalarization` must be a Scalarization, a string or a dict, but got {value!r}.")

    @property
    def metrics(self) -> tuple[str, ...]:
        """The metrics a score needs."""
        return ("accuracy", *dict.fromkeys([*self.weights, *self.budgets]))

    def score(self, metrics: Mapping[str, float] | Any) -> float:
        """The score of one measurement (a mapping or an object with the attributes)."""
        get = metrics.get if isinstance(metrics, Mapping) else (lambda k: getattr(metrics, k, None))
        values: dict[str, float] = {}
        for name in self.metrics:
            value = get(name)
            if value is None or not math.isfinite(float(value)):
                raise ValueError(f"The scalarisation needs `{name}`, but got {value!r}.")
            values[name] = float(value)
        total = values["accuracy"]
        reference = get("reference_latency_ms")
        for name, weight in self.weights.items():
            traded = values[name]
            if name == "latency_ms" and reference is not None and float(reference) > 0:
                traded /= float(reference)  # the same-run ratio: a constant shift of log2(ms) when the machine is steady
            if traded <= 0:
                raise ValueError(f"`{name}` must be positive for a log trade-off, but got {values[name]!r}.")
            total -= weight * math.log2(traded)
        for name, budget in self.budgets.items():
            total -= self.penalty * max(0.0, values[name] / budget - 1.0)
        return total

    def __str__(self) -> str:
        terms = ["accuracy"]
        terms += [f"{w:g}*log2({name})" for name, w in self.weights.items()]
        terms += [f"{self.penalty:g}*max(0, {name}/{b:g} - 1)" for name, b in self.budgets.items()]
        return " - ".join(terms)

    def to_dict(self) -> dict[str, Any]:
        return {"weights": dict(self.weights), "budgets": dict(self.budgets), "penalty": self.penalty,
                "formula": str(self)}
