"""Early stopping for multi-objective searches (Optuna's pruners are single-objective).

Before a candidate trains, its compressed structure is compiled and timed, so its
latency, size and MACs are known (:class:`~slimtune.search.candidate.PreMeasurement`).
Only its accuracy is still open.  After each distillation epoch the rule asks: *is
there a finished trial that is no costlier and clearly more accurate?*

    stop  if  some complete trial p has   cost_k(p) <= pre.cost_k   for every cost objective k
                                    and   val_accuracy(p) > val_accuracy_now + margin(epoch)

    margin(epoch) = min_margin + max(margin_per_epoch * epochs_left,  observed_gain(epoch))
    epochs_left   = epochs - (epoch + 1)
    observed_gain(epoch) = the largest  final val accuracy - val accuracy after `epoch`
                           among the complete trials so far (their learning curves)

The margin is the accuracy the candidate may still gain before it is finished: a
prior that shrinks linearly with the epochs left, raised to the largest gain actually
seen in this study from that epoch to the end (distillation with a cosine schedule
often gains most in its last epoch: 0.38 -> 0.95 on digits' DS-conv candidates).
After the last epoch the margin is ``min_margin`` plus whatever compression
(pruning fine-tuning, QAT) was seen to add; stopping there still saves pruning,
quantization and the latency measurement.

Accuracies on both sides are *validation* accuracies (never test): a complete
trial's final validation accuracy against the candidate's validation accuracy so far.

Latency is noisy, so a point counts as no slower only when its latency times
``1 + latency_tolerance`` is at most the candidate's pre-training latency (size and
MACs are exact: no tolerance).  Because the comparison point must be no costlier in
*every* cost objective, a candidate cheaper than everything seen so far is never
stopped.  For early-exit models the pre-training latency is the shortest path
(everyone leaves at the first exit), a lower bound, which makes the rule more
cautious, never less.

Stopped candidates are recorded as PRUNED Optuna trials with the reason in the user
attribute ``stopped_reason``.  Turn the rule off with ``early_stopping=False``
(``--no-early-stopping``).

Example:
    >>> rule = FrontierEarlyStopping(min_margin=0.02, margin_per_epoch=0.05)
    >>> should_stop = rule.should_stop_fn(points, ("latency_ms",), epochs=4)
    >>> evaluator.evaluate(values, should_stop=should_stop)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence


@dataclass(frozen=True)
class FrontierPoint:
    """A complete trial as the rule sees it.

    Attributes:
        trial: its number.
        val_accuracy: its final validation accuracy (after compression).
        costs: its measured costs by objective name.
        curve: its validation accuracy after each distillation epoch (may be empty).
    """

    trial: int
    val_accuracy: float
    costs: Mapping[str, float]
    curve: tuple[float, ...] = ()


@dataclass(frozen=True)
class FrontierEarlyStopping:
    """Stop a candidate that a no-costlier complete trial beats by more than a margin.

    Args:
        min_margin: accuracy margin after the last epoch.
        margin_per_epoch: prior margin per epoch still to run.
        learn_margin: raise the margin to the largest remaining gain seen in the
            learning curves of the study's complete trials.
        latency_tolerance: relative latency noise allowed for before a point counts
            as no slower.
    """

    min_margin: float = 0.02
    margin_per_epoch: float = 0.05
    learn_margin: bool = True
    latency_tolerance: float = 0.1

    def __post_init__(self) -> None:
        for name in ("min_margin", "margin_per_epoch", "latency_tolerance"):
            if not (getattr(self, name) >= 0):
                raise ValueError(f"`{name}` must be >= 0, but got {getattr(self, name)!r}.")

    def margin(self, epoch: int, epochs: int, points: Sequence[FrontierPoint] = ()) -> float:
        """The margin after 0-based ``epoch`` of ``epochs``, given the complete trials
        ``points`` (their curves, if :attr:`learn_margin`)."""
        prior = self.margin_per_epoch * max(0, epochs - (epoch + 1))
        observed = 0.0
        if self.learn_margin:
            gains = [p.val_accuracy - p.curve[epoch] for p in points if len(p.curve) == epochs and epoch < epochs]
            observed = max(gains, default=0.0)
        return self.min_margin + max(prior, observed)

    def _no_costlier(self, point: FrontierPoint, costs: Mapping[str, float]) -> bool:
        for name, cost in costs.items():
            mine = point.costs[name] * (1.0 + self.latency_tolerance) if name == "latency_ms" else point.costs[name]
            if mine > cost:
                return False
        return True

    def check(self, epoch: int, val_accuracy: float, pre: Any, points: Sequence[FrontierPoint],
              cost_objectives: Sequence[str], epochs: int, *, margin: float | None = None) -> str | None:
        """The stop reason, or ``None`` to go on.  ``pre`` has the cost attributes
        (``latency_ms``, ``size_bytes``, ``macs``)."""
        margin = self.margin(epoch, epochs, points) if margin is None else margin
        costs = {name: float(getattr(pre, name)) for name in cost_objectives}
        best: FrontierPoint | None = None
        for point in points:
            if point.val_accuracy > val_accuracy + margin and self._no_costlier(point, costs):
                if best is None or point.val_accuracy > best.val_accuracy:
                    best = point
        if best is None:
            return None
        compared = ", ".join(f"{name} {best.costs[name]:.4g} <= {costs[name]:.4g}" for name in cost_objectives)
        return (f"early stop after epoch {epoch + 1}/{epochs}: val accuracy {val_accuracy:.4f} + margin {margin:.3f} "
                f"< {best.val_accuracy:.4f} of trial {best.trial}, which is no costlier ({compared})")

    def should_stop_fn(self, points: Sequence[FrontierPoint], cost_objectives: Sequence[str], epochs: int):
        """The ``should_stop(epoch, val_accuracy, pre)`` callable for ``Evaluator.evaluate``
        (margins from every point's curve; comparisons with the non-dominated points)."""
        margins = [self.margin(e, epochs, points) for e in range(max(epochs, 1))]
        front = frontier_points_only(points, cost_objectives)

        def should_stop(epoch: int, val_accuracy: float, pre: Any) -> str | None:
            margin = margins[min(epoch, len(margins) - 1)]
            return self.check(epoch, val_accuracy, pre, front, cost_objectives, epochs, margin=margin)

        return should_stop

    def to_dict(self) -> dict[str, Any]:
        return {"rule": "frontier", **asdict(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "FrontierEarlyStopping | None":
        if not data:
            return None
        known = {k: data[k] for k in ("min_margin", "margin_per_epoch", "learn_margin", "latency_tolerance") if k in data}
        return cls(**known)


def frontier_points_only(points: Sequence[FrontierPoint], cost_objectives: Sequence[str]) -> list[FrontierPoint]:
    """The non-dominated points under (val accuracy, costs): the same answer as all
    points, since a dominated point stops nothing its dominator would not."""

    def beats(a: FrontierPoint, b: FrontierPoint) -> bool:
        no_worse = a.val_accuracy >= b.val_accuracy and all(a.costs[c] <= b.costs[c] for c in cost_objectives)
        better = a.val_accuracy > b.val_accuracy or any(a.costs[c] < b.costs[c] for c in cost_objectives)
        return no_worse and better

    return [p for p in points if not any(beats(q, p) for q in points)]


def points_from_rows(rows: Sequence[Mapping[str, Any]], cost_objectives: Sequence[str]) -> list[FrontierPoint]:
    """Frontier points from study rows: complete trials with a validation accuracy."""
    out = []
    for row in rows:
        if row.get("state") not in (None, "COMPLETE") or row.get("val_accuracy") is None:
            continue
        if any(row.get(name) is None for name in cost_objectives):
            continue
        out.append(FrontierPoint(int(row["trial"]), float(row["val_accuracy"]),
                                 {name: float(row[name]) for name in cost_objectives},
                                 tuple(float(v) for v in row.get("val_accuracy_per_epoch") or ())))
    return out


def resolve_early_stopping(value: "bool | FrontierEarlyStopping | None") -> FrontierEarlyStopping | None:
    """``True``/``None`` -> the default rule, ``False`` -> off, a rule -> itself."""
    if value is None or value is True:
        return FrontierEarlyStopping()
    if value is False:
        return None
    if isinstance(value, FrontierEarlyStopping):
        return value
    raise ValueError(f"`early_stopping` must be a bool or a FrontierEarlyStopping, but got {value!r}.")
