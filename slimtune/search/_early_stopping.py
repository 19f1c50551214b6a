"""Early stopping for multi-objective searches (Optuna's pruners are single-objective).

Before a candidate trains, its compressed structure is compiled and timed, so its
latency, size and MACs are known (:class:`~slimtune.search._pipeline.PreMeasurement`).
Only its accuracy is still open.  After each distillation epoch the rule asks: *is
there a finished trial that is no costlier and clearly more accurate than this
candidate can still become?*

    stop  if  some complete trial p has   cost_k(p) <= pre.cost_k   for every cost objective k
                                    and   val_accuracy(p) > reachable(epoch, a) - accuracy_tolerance

    a                  = the candidate's validation accuracy after `epoch`
    reachable(epoch, a) = max( a + min_margin + margin_per_epoch * epochs_left,           (prior)
                               max final val accuracy of the complete trials whose
                               val accuracy after `epoch` was <= a + similar_slack
                               + min_margin )                                              (learned)
    epochs_left        = epochs - (epoch + 1)  + the recovery epochs that follow distillation
                         for this candidate (pruning fine-tuning, QAT)

The learned part looks at the learning curves of the study's own complete trials: a
candidate is given the best outcome of any trial that was no better at the same
epoch.  That is what protects a candidate that is still climbing (on digits, with an
earlier training schedule, a DS-conv candidate sat at 0.29 validation accuracy after
its first epoch and finished at 0.96) once the study has seen one like it; the
learned part only ever raises the bar.  The prior margin adds a fixed gain per epoch
still to run, counting the recovery epochs that follow distillation (pruning
fine-tuning, QAT).  ``accuracy_tolerance`` is the accuracy the rule may give up: a
candidate that could at most edge past a no-costlier point is not worth finishing.

**Defaults** (``margin_per_epoch=0``, ``min_margin=0``, learned part on,
``accuracy_tolerance=0.01``) were chosen with ``benchmarks/frontier_ceiling.py``:
digits' 144-configuration joint space evaluated exhaustively, searches replayed on
it, 29 trials (20% of the space), the same search with and without the rule on
paired seeds.  There validation accuracy saturates (0.98-0.99 after the first of 4
distillation epochs, 0.994-0.997 at best in the end) and what decides a candidate is
its cost, known before training.  Any prior margin per epoch, counted over the 3-6
recovery epochs, lifts ``reachable`` above every point: the old default (0.2 per
epoch, ``min_margin=0.02``) stopped 0 of 29 candidates and cost 1-6% more time (the
pre-training measurement).  With the random sampler (10 seeds, identical proposals
with and without the rule) the curve of saving vs loss was: ``accuracy_tolerance``
0 / 0.01 / 0.02 / 0.03 / 0.05 (no prior margin, learned part on) saved 0 / 21 / 25 /
27 / 32% of training time (-6 / 15 / 19 / 21 / 26% of wall time, the pre-training
measurement included) at 0 / 0.1 / 0.1 / 0.1 / 0.2% hypervolume loss (worst seed
0.7%); adding a prior of 0.005 / 0.01 per epoch to the 0.05 tolerance, it fell to
26 / 7%.  The default tolerance is 0.01, not 0.05: at 0.05 the README's 20-trial
digits demo stopped 12 of 20 candidates, some of them the near-baseline ones a user
wants (a cheaper point within 5 points is a poor reason to drop a candidate that could
be 4 points more accurate; hypervolume with a 0.5 accuracy reference barely notices);
at 0.01 it stopped 3 and kept a 0.9917-test, 1.50x-faster candidate on the front.
With the default search (seeds 0-2) 0.01 saved 16% of training time (16 / 5 / 17% per
seed) at no hypervolume loss (95.7% of the ceiling).  With slimtune's default search (TPE after a warm start; seeds 0-2) the rule stopped 7
of 29 candidates and saved 17% of training time (14-20% per seed) at no hypervolume
loss (95.7% of the ceiling with it, 92.5% without: TPE ranks stopped candidates
after every complete one and looks elsewhere); over seeds 0-9, 24% with one seed of
ten losing 30% (its later proposals changed).  A good sampler proposes few candidates
that the rule can stop; after the same warm start, GP saved 36% (with stopped trials
shown to it as pending points: without them it re-proposed what the rule had stopped
and lost 22% of the hypervolume).  Where curves keep rising (longer training, harder data) the learned part keeps candidates the
study has seen rise; the first such candidate may be stopped by a no-costlier point
that is already better than it can be shown to reach.

Accuracies on both sides are *validation* accuracies (never test): a complete
trial's final validation accuracy against the candidate's validation accuracy so far.

Costs: a complete trial offers its final, measured costs; the candidate offers its
pre-training ones, which for early-exit models are the shortest path (a lower bound:
the rule gets more cautious, never less).  Comparing a trial's own pre-training
latency instead was tried and stopped good candidates: an early-exit trial's
shortest path was 3x below its real latency.  Latency is noisy (on a loaded 2-core
machine a static model's pre-training latency was 0.4x to 1.6x its final one), so
a point counts as no slower only when its latency times ``1 + latency_tolerance`` is
at most the candidate's (size and MACs are exact: no tolerance).  Because the
comparison point must be no costlier in *every* cost objective, a candidate cheaper
than everything seen so far is never stopped.

Stopped candidates are recorded as PRUNED Optuna trials with the reason in the user
attribute ``stopped_reason``.  Turn the rule off with ``early_stopping=False``
(``--no-early-stopping``).

Example:
    >>> rule = FrontierEarlyStopping(accuracy_tolerance=0.05)
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
    """Stop a candidate that a no-costlier complete trial beats by more than it can
    still gain.

    Args:
        min_margin: accuracy margin after the last epoch.
        margin_per_epoch: prior margin per epoch still to run.
        learn_margin: also give the candidate the best final accuracy of complete
            trials that were no better after the same epoch (their learning curves).
        similar_slack: how much better than the candidate a trial may have been at
            that epoch and still count as "no better".
        latency_tolerance: relative latency noise allowed for before a point counts
            as no slower.
        accuracy_tolerance: accuracy the rule may give up: a no-costlier point at most
            this much below what the candidate can reach already stops it (the
            candidate could only add a sliver of accuracy at a higher cost).
    """

    min_margin: float = 0.0
    margin_per_epoch: float = 0.0
    learn_margin: bool = True
    similar_slack: float = 0.05
    latency_tolerance: float = 0.2
    accuracy_tolerance: float = 0.01

    def __post_init__(self) -> None:
        for name in ("min_margin", "margin_per_epoch", "similar_slack", "latency_tolerance", "accuracy_tolerance"):
            if not (getattr(self, name) >= 0):
                raise ValueError(f"`{name}` must be >= 0, but got {getattr(self, name)!r}.")

    def reachable(self, epoch: int, epochs: int, val_accuracy: float, points: Sequence[FrontierPoint] = (),
                  *, extra_epochs: int = 0) -> float:
        """The validation accuracy a candidate at ``val_accuracy`` after 0-based
        ``epoch`` of ``epochs`` may still reach (plus ``min_margin``), given the complete
        trials ``points`` and ``extra_epochs`` of training after distillation."""
        bound = val_accuracy + self.margin(epoch, epochs, extra_epochs=extra_epochs)
        if self.learn_margin:
            finals = [p.val_accuracy for p in points
                      if len(p.curve) == epochs and 0 <= epoch < epochs and p.curve[epoch] <= val_accuracy + self.similar_slack]
            if finals:
                bound = max(bound, max(finals) + self.min_margin)
        return bound

    def margin(self, epoch: int, epochs: int, *, extra_epochs: int = 0) -> float:
        """The prior margin after 0-based ``epoch`` of ``epochs`` distillation epochs,
        with ``extra_epochs`` of recovery training (pruning fine-tuning, QAT) to follow."""
        return self.min_margin + self.margin_per_epoch * (max(0, epochs - (epoch + 1)) + max(0, extra_epochs))

    def lowest_bar(self, epochs: int, *, extra_epochs: int = 0) -> float:
        """The lowest validation accuracy a point needs to stop any candidate (one at 0
        after its last epoch): a study whose best point is not above it stops nothing."""
        return self.margin(epochs - 1, epochs, extra_epochs=extra_epochs) - self.accuracy_tolerance

    def _no_costlier(self, point: FrontierPoint, costs: Mapping[str, float]) -> bool:
        for name, cost in costs.items():
            mine = point.costs[name] * (1.0 + self.latency_tolerance) if name == "latency_ms" else point.costs[name]
            if mine > cost:
                return False
        return True

    def check(self, epoch: int, val_accuracy: float, pre: Any, points: Sequence[FrontierPoint],
              cost_objectives: Sequence[str], epochs: int, *, history: Sequence[FrontierPoint] | None = None,
              extra_epochs: int = 0) -> str | None:
        """The stop reason, or ``None`` to go on.  ``pre`` has the cost attributes
        (``latency_ms``, ``size_bytes``, ``macs``); ``history`` (default ``points``)
        are the complete trials whose curves the learned bound reads; ``extra_epochs``
        the recovery epochs that follow distillation for this candidate."""
        reachable = self.reachable(epoch, epochs, val_accuracy, points if history is None else history,
                                   extra_epochs=extra_epochs)
        costs = {name: float(getattr(pre, name)) for name in cost_objectives}
        best: FrontierPoint | None = None
        for point in points:
            if point.val_accuracy > reachable - self.accuracy_tolerance and self._no_costlier(point, costs):
                if best is None or point.val_accuracy > best.val_accuracy:
                    best = point
        if best is None:
            return None
        compared = ", ".join(f"{name} {best.costs[name]:.4g} <= {costs[name]:.4g}" for name in cost_objectives)
        within = f" - {self.accuracy_tolerance:g} tolerance" if self.accuracy_tolerance else ""
        return (f"early stop after epoch {epoch + 1}/{epochs}: val accuracy {val_accuracy:.4f} can reach "
                f"{reachable:.4f}{within} at most < {best.val_accuracy:.4f} of trial {best.trial}, which is no costlier "
                f"({compared})")

    def should_stop_fn(self, points: Sequence[FrontierPoint], cost_objectives: Sequence[str], epochs: int, *,
                       extra_epochs: int = 0):
        """The ``should_stop(epoch, val_accuracy, pre)`` callable for ``Evaluator.evaluate``
        (learned bounds from every point's curve; comparisons with the non-dominated points)."""
        history = list(points)
        front = frontier_points_only(points, cost_objectives)

        def should_stop(epoch: int, val_accuracy: float, pre: Any) -> str | None:
            return self.check(epoch, val_accuracy, pre, front, cost_objectives, epochs, history=history,
                              extra_epochs=extra_epochs)

        return should_stop

    def to_dict(self) -> dict[str, Any]:
        return {"rule": "frontier", **asdict(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "FrontierEarlyStopping | None":
        if not data:
            return None
        names = ("min_margin", "margin_per_epoch", "learn_margin", "similar_slack", "latency_tolerance",
                 "accuracy_tolerance")
        known = {k: data[k] for k in names if k in data}
        return cls(**known)


def frontier_points_only(points: Sequence[FrontierPoint], cost_objectives: Sequence[str]) -> list[FrontierPoint]:
    """The non-dominated points under (val accuracy, costs): the same answer as all
    points, since a dominated point stops nothing its dominator would not."""
    from slimtune.studies._frontier import non_dominated_mask  # the one dominance rule

    rows = [{"accuracy": p.val_accuracy, **{c: p.costs[c] for c in cost_objectives}} for p in points]
    return [p for p, keep in zip(points, non_dominated_mask(rows, ("accuracy", *cost_objectives))) if keep]


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
