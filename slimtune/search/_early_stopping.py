"""Early stopping for multi-objective searches (Optuna's pruners are single-objective).

Before a candidate trains, its compressed structure is compiled and timed, so its
latency, size and MACs are known (:class:`~slimtune.search._pre_measure.PreMeasurement`).
Only its accuracy is still open.  Before any training, after each distillation epoch
and after each recovery epoch (pruning fine-tuning, QAT) the rule asks: *is there a
finished trial that is no costlier and clearly more accurate than this candidate can
still become?*

    stop  if  some complete trial p has   cost_k(p) <= pre.cost_k   for every cost objective k
                                    and   val_accuracy(p) > reachable(epoch, a) - accuracy_tolerance

    a                  = the candidate's validation accuracy after `epoch`
    reachable(epoch, a) = max( a + min_margin + margin_per_epoch * epochs_left,           (prior)
                               max final val accuracy of the complete trials whose
                               val accuracy after `epoch` was <= a + similar_slack
                               + min_margin )                                              (learned)
    epochs_left        = epochs - (epoch + 1)  + the recovery epochs that follow distillation
                         for this candidate (pruning fine-tuning, QAT)

Before training (epoch -1, ``pre_check``) nothing of the candidate is trained yet:

    reachable(-1)      = max( best final val accuracy of the complete trials,
                              the baseline's val accuracy ) + min_margin

that is, compression is taken not to beat the best model seen so far.  It is an
estimate, not a proof (distillation lifted Fashion-MNIST's int8 candidate 0.9 points
above the baseline, and the first such candidate sets the bar for the others); its
price is the hypervolume loss measured below.  A candidate stopped here costs its
pre-training measurement only.  After recovery epoch ``r`` of ``R`` (the candidate's
recovery epochs, all fine-tunes together) at accuracy ``a``:

    reachable(r, a)    = max( a + min_margin + recovery_margin_per_epoch * (R - r - 1),
                              max final val accuracy of the complete trials whose
                              val accuracy after recovery epoch r (of R) was
                              <= a + similar_slack, + min_margin )

The learned part looks at the learning curves of the study's own complete trials: a
candidate is given the best outcome of any trial that was no better at the same
epoch.  That is what protects a candidate that is still climbing (on digits, with an
earlier training schedule, a DS-conv candidate sat at 0.29 validation accuracy after
its first epoch and finished at 0.96) once the study has seen one like it; the
learned part only ever raises the bar.  The prior margin adds a fixed gain per epoch
still to run, counting the recovery epochs that follow distillation (pruning
fine-tuning, QAT).  ``accuracy_tolerance`` is the accuracy the rule may give up: a
candidate that could at most edge past a no-costlier point is not worth finishing.

**Defaults**: ``accuracy_tolerance=0.01``, ``latency_tolerance=0.2``, ``pre_check``,
``recovery_margin_per_epoch=0.02``, learned part on, no prior margin, no near-baseline
zone; chosen by replaying searches against digits' enumerated ceiling
(``benchmarks/frontier_ceiling.py``) and Fashion-MNIST's stored search
(``benchmarks/compression.py``): the training time saved and the hypervolume lost, dated,
are in ``docs/benchmarks.md``.

**Near-baseline zone** (``near_baseline``; off by default): the fastest candidate within
1 validation point of the baseline is what a user looks for first, so with a zone

    zone     = baseline val accuracy - near_baseline
    if reachable >= zone and no point with val accuracy >= zone is no costlier:
        never stop (the candidate may become the cheapest near-baseline point)
    else: the rule above, with accuracy_tolerance

and a stop inside the zone is always by a no-costlier point that is itself within
``near_baseline`` of the baseline's accuracy.  With the shipped 0.01 tolerance a stop
already needs a no-costlier point within a point of what the candidate can reach, so
the zone adds little; pass ``FrontierEarlyStopping(near_baseline=0.01)`` for it.

**The trial budget**: a trial stopped before training costs its pre-training
measurement only, so it does not use up ``n_trials`` (the runner proposes until
``n_trials`` trials have trained, at most 10 proposals per trial); the replays above
count every proposal (``count_rejected``) so that the saving is per proposal.  A stop
after an epoch (early exits, recovery epochs) uses up its trial and saves the epochs it
did not run, so real runs with a trained-trials budget save time there.

Accuracies on both sides are *validation* accuracies (never test): a complete
trial's final validation accuracy against the candidate's validation accuracy so far.

Costs: a complete trial offers its final, measured costs; the candidate offers its
pre-training ones.  For an early-exit model those are, before training, the shortest
path (a lower bound: every sample leaving at the first exit), and after each epoch its
exit paths weighted by the share of validation samples leaving at each one then
(:meth:`~slimtune.search._pre_measure.PreMeasurement.at_exit_rates`; each path is
compiled and timed on its own before training, and the rates come from the validation
pass that gives the epoch's accuracy, so they cost nothing more).  Before that, the
shortest path was all the rule ever saw of an exit candidate: 2-25x below its real
latency, so no point was ever no costlier and exit candidates, half of digits' space,
were never stopped (92% of the training time left after the rule went to them).  The
rates-weighted cost is an estimate, not a bound: the rates move as the exit heads learn
(on digits they hardly moved after the first epoch), and an untrained path times a
little differently from the trained one.  Over digits' 144 early-exit configurations
the estimate after the first epoch was 0.88-1.23x the final latency (10th to 90th
percentile, median 1.02x; 14% above 1.2x, at most 2.1x), which ``latency_tolerance``
allows for in most cases; the shortest path before training was 0.22-1.17x (median
0.54x).  All latencies are compared as **same-run speed-ups** when both sides have
their reference (the baseline timed interleaved with the trial's measurement, and
with the candidate's pre-training timing): on this VM the machine's speed drifted by
up to 40% between measurements minutes apart, and milliseconds from different minutes
stopped candidates that were really faster.  Comparing a trial's own pre-training latency instead
was tried and stopped good candidates.  Latency is noisy (on a loaded 2-core
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


#: How the reason of a stop before any training starts: such a trial is a rejection
#: (its pre-training measurement only) that does not use up the trial budget.
BEFORE_TRAINING = "early stop before training"


def rejected_before_training(row: Mapping[str, Any]) -> bool:
    """Whether a trial row (the study's, or a replay's) was stopped before any training."""
    reason = row.get("stopped_reason") or row.get("stopped") or ""
    return row.get("state") == "PRUNED" and str(reason).startswith(BEFORE_TRAINING)


@dataclass(frozen=True)
class FrontierPoint:
    """A complete trial as the rule sees it.

    Attributes:
        trial: its number.
        val_accuracy: its final validation accuracy (after compression).
        costs: its measured costs by objective name.
        curve: its validation accuracy after each distillation epoch (may be empty).
        recovery_curve: its validation accuracy after each recovery epoch (pruning
            fine-tuning, QAT; may be empty).
        reference_latency_ms: the baseline timed in the same run as its latency
            (``None``: unknown; then latencies are compared in milliseconds).
    """

    trial: int
    val_accuracy: float
    costs: Mapping[str, float]
    curve: tuple[float, ...] = ()
    recovery_curve: tuple[float, ...] = ()
    reference_latency_ms: float | None = None


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
        pre_check: also check before any training (epoch -1), against the best
            validation accuracy seen so far (the study's complete trials and the
            baseline's) plus ``min_margin``.
        recovery_margin_per_epoch: prior margin per recovery epoch still to run, at the
            checks after recovery epochs (pruning fine-tuning, QAT).
        near_baseline: the near-baseline zone: validation accuracy at least the
            baseline's minus this.  A candidate that can still reach the zone is never
            stopped while no point in the zone is no costlier than it (it may become
            the cheapest near-baseline candidate, the one a user looks for first);
            once one is, ``accuracy_tolerance`` applies as everywhere.  Needs the
            baseline's accuracy (unknown: no zone); ``None``: no zone.
    """

    min_margin: float = 0.0
    margin_per_epoch: float = 0.0
    learn_margin: bool = True
    similar_slack: float = 0.05
    latency_tolerance: float = 0.2
    accuracy_tolerance: float = 0.01
    pre_check: bool = True
    recovery_margin_per_epoch: float = 0.02
    near_baseline: float | None = None

    def __post_init__(self) -> None:
        for name in ("min_margin", "margin_per_epoch", "similar_slack", "latency_tolerance", "accuracy_tolerance",
                     "recovery_margin_per_epoch"):
            if not (getattr(self, name) >= 0):
                raise ValueError(f"`{name}` must be >= 0, but got {getattr(self, name)!r}.")
        if self.near_baseline is not None and not (self.near_baseline >= 0):
            raise ValueError(f"`near_baseline` must be >= 0 or None (no zone), but got {self.near_baseline!r}.")

    def reachable(self, epoch: int, epochs: int, val_accuracy: float, points: Sequence[FrontierPoint] = (),
                  *, extra_epochs: int = 0) -> float:
        """The validation accuracy a candidate at ``val_accuracy`` after 0-based
        ``epoch`` of ``epochs`` may still reach (plus ``min_margin``), given the complete
        trials ``points`` and ``extra_epochs`` of training after distillation."""
        prior = val_accuracy + self.margin(epoch, epochs, extra_epochs=extra_epochs)
        return self._learned(prior, [(p.curve, p.val_accuracy) for p in points], epoch, epochs, val_accuracy)

    def reachable_before(self, points: Sequence[FrontierPoint] = (), baseline_accuracy: float = float("nan")) -> float:
        """The validation accuracy a candidate may reach before any training: the best
        final validation accuracy of ``points`` or the baseline's (whichever is higher;
        NaN: unknown), plus ``min_margin``.  Compression does not make a model better
        than the best seen so far by more than that margin (an estimate, not a proof:
        its cost is the hypervolume loss the benchmarks report)."""
        finals = [p.val_accuracy for p in points]
        if baseline_accuracy == baseline_accuracy:  # not NaN
            finals.append(float(baseline_accuracy))
        return (max(finals) if finals else float("inf")) + self.min_margin

    def reachable_in_recovery(self, step: int, steps: int, val_accuracy: float,
                              points: Sequence[FrontierPoint] = ()) -> float:
        """The validation accuracy a candidate at ``val_accuracy`` after 0-based recovery
        epoch ``step`` of ``steps`` may still reach: ``recovery_margin_per_epoch`` per
        recovery epoch left plus ``min_margin`` (prior), or the best final accuracy of
        complete trials whose recovery curve of the same length was no better at that
        epoch (learned; only ever raises the bar)."""
        prior = val_accuracy + self.min_margin + self.recovery_margin_per_epoch * max(0, steps - (step + 1))
        return self._learned(prior, [(p.recovery_curve, p.val_accuracy) for p in points], step, steps, val_accuracy)

    def _learned(self, prior: float, curves: Sequence[tuple[Sequence[float], float]], step: int, steps: int,
                 val_accuracy: float) -> float:
        """``prior``, raised (``learn_margin``) to the best final accuracy (plus
        ``min_margin``) of the ``(curve, final)`` pairs whose curve has ``steps`` points
        and was no better than ``val_accuracy`` (plus ``similar_slack``) at ``step``."""
        if not self.learn_margin or not 0 <= step < steps:
            return prior
        finals = [final for curve, final in curves
                  if len(curve) == steps and curve[step] <= val_accuracy + self.similar_slack]
        return max(prior, max(finals) + self.min_margin) if finals else prior

    def margin(self, epoch: int, epochs: int, *, extra_epochs: int = 0) -> float:
        """The prior margin after 0-based ``epoch`` of ``epochs`` distillation epochs,
        with ``extra_epochs`` of recovery training (pruning fine-tuning, QAT) to follow."""
        return self.min_margin + self.margin_per_epoch * (max(0, epochs - (epoch + 1)) + max(0, extra_epochs))

    def lowest_bar(self, epochs: int, *, extra_epochs: int = 0) -> float:
        """The lowest validation accuracy a point needs to stop any candidate (one at 0
        after its last epoch, or its last recovery epoch): a study whose best point is not
        above it stops nothing."""
        # after the last distillation epoch without recovery, or after the last recovery
        # epoch, the prior is min_margin alone; the check before training needs a point
        # within the tolerance of the best one, which is above this bar too
        return self.min_margin - self.accuracy_tolerance

    def near_zone(self, reachable: float, baseline_accuracy: float = float("nan")) -> float | None:
        """The near-baseline zone's floor (the baseline's validation accuracy minus
        ``near_baseline``) when a candidate that can reach ``reachable`` may still land in
        it; ``None`` when it cannot, or there is no zone (``near_baseline`` None, baseline
        unknown)."""
        if self.near_baseline is None or baseline_accuracy != baseline_accuracy:  # off, or NaN: no baseline
            return None
        floor = float(baseline_accuracy) - self.near_baseline
        return floor if reachable >= floor else None

    def _no_costlier(self, point: FrontierPoint, costs: Mapping[str, float], reference: float | None = None) -> bool:
        """Whether ``point`` costs at most ``costs`` in every objective; latencies as
        same-run speed-ups (each over the baseline timed with it) when both sides have
        their reference (``reference``: the candidate's), else in milliseconds."""
        for name, cost in costs.items():
            mine = point.costs[name]
            if name == "latency_ms":
                if reference and point.reference_latency_ms:
                    mine, cost = mine / point.reference_latency_ms, cost / reference
                mine *= 1.0 + self.latency_tolerance
            if mine > cost:
                return False
        return True

    def check(self, epoch: int, val_accuracy: float | None, pre: Any, points: Sequence[FrontierPoint],
              cost_objectives: Sequence[str], epochs: int, *, history: Sequence[FrontierPoint] | None = None,
              extra_epochs: int = 0, baseline_accuracy: float = float("nan")) -> str | None:
        """The stop reason, or ``None`` to go on.  ``epoch`` is 0-based: -1 before any
        training (``val_accuracy`` None), ``0 .. epochs - 1`` after a distillation epoch,
        ``epochs + r`` after recovery epoch ``r`` (pruning fine-tuning, QAT).  ``pre``
        has the cost attributes (``latency_ms``, ``size_bytes``, ``macs``); ``history``
        (default ``points``) are the complete trials whose curves and finals the bounds
        read; ``extra_epochs`` the recovery epochs that follow distillation for this
        candidate; ``baseline_accuracy`` the baseline's validation accuracy (NaN:
        unknown) for the check before training."""
        history = points if history is None else history
        if epoch < 0:
            if not self.pre_check:
                return None
            reachable = self.reachable_before(history, baseline_accuracy)
            when, now = BEFORE_TRAINING.removeprefix("early stop "), "the candidate"
        elif epoch >= epochs:
            step = epoch - epochs
            steps = max(extra_epochs, step + 1)
            reachable = self.reachable_in_recovery(step, steps, float(val_accuracy), history)
            when, now = f"after recovery epoch {step + 1}/{steps}", f"val accuracy {val_accuracy:.4f}"
        else:
            reachable = self.reachable(epoch, epochs, float(val_accuracy), history, extra_epochs=extra_epochs)
            when, now = f"after epoch {epoch + 1}/{epochs}", f"val accuracy {val_accuracy:.4f}"
        costs = {name: float(getattr(pre, name)) for name in cost_objectives}
        reference = getattr(pre, "reference_latency_ms", None)
        floor = self.near_zone(reachable, baseline_accuracy)
        if floor is not None and not any(p.val_accuracy >= floor and self._no_costlier(p, costs, reference)
                                         for p in points):
            return None  # it may become the cheapest point near the baseline: never stopped
        best: FrontierPoint | None = None
        for point in points:
            if point.val_accuracy > reachable - self.accuracy_tolerance and self._no_costlier(point, costs, reference):
                if best is None or point.val_accuracy > best.val_accuracy:
                    best = point
        if best is None:
            return None
        compared = ", ".join(f"{name} {best.costs[name]:.4g} <= {costs[name]:.4g}" for name in cost_objectives)
        within = f" - {self.accuracy_tolerance:g} tolerance" if self.accuracy_tolerance else ""
        return (f"early stop {when}: {now} can reach {reachable:.4f}{within} at most < {best.val_accuracy:.4f} of trial {best.trial}, which is no costlier "
                f"({compared})")

    def should_stop_fn(self, points: Sequence[FrontierPoint], cost_objectives: Sequence[str], epochs: int, *,
                       extra_epochs: int = 0, baseline_accuracy: float = float("nan")):
        """The ``should_stop(epoch, val_accuracy, pre)`` callable for ``Evaluator.evaluate``
        (learned bounds from every point's curve; comparisons with the non-dominated points)."""
        history = list(points)
        front = frontier_points_only(points, cost_objectives)

        def should_stop(epoch: int, val_accuracy: float | None, pre: Any) -> str | None:
            return self.check(epoch, val_accuracy, pre, front, cost_objectives, epochs, history=history,
                              extra_epochs=extra_epochs, baseline_accuracy=baseline_accuracy)

        return should_stop

    def to_dict(self) -> dict[str, Any]:
        return {"rule": "frontier", **asdict(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "FrontierEarlyStopping | None":
        if not data:
            return None
        names = ("min_margin", "margin_per_epoch", "learn_margin", "similar_slack", "latency_tolerance",
                 "accuracy_tolerance", "pre_check", "recovery_margin_per_epoch", "near_baseline")
        known = {k: data[k] for k in names if k in data}
        return cls(**known)


def frontier_points_only(points: Sequence[FrontierPoint], cost_objectives: Sequence[str]) -> list[FrontierPoint]:
    """The non-dominated points under (val accuracy, costs): the same answer as all
    points, since a dominated point stops nothing its dominator would not."""
    from slimtune._dominance import non_dominated_mask  # the one dominance rule

    rows = [{"accuracy": p.val_accuracy, **{c: p.costs[c] for c in cost_objectives},
             "reference_latency_ms": p.reference_latency_ms} for p in points]
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
                                 tuple(float(v) for v in row.get("val_accuracy_per_epoch") or ()),
                                 tuple(float(v) for v in row.get("val_accuracy_per_recovery_epoch") or ()),
                                 None if row.get("reference_latency_ms") is None else float(row["reference_latency_ms"])))
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
