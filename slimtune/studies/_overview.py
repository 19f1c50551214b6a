"""A study summed up the way ``slimtune show`` and ``select`` print it, in a number of
SQL statements that does not grow with the study: every trial's figures in one bulk
read (:meth:`~slimtune.studies._feed.TrialFeed.points`: with the machine fingerprint
and the stop reason of each), the counts, the frontier and the ``select`` rule computed
on those; full rows (parameters, flags) are read only for the trials printed (the
front, the chosen one).

Example:
    >>> overview = Overview.read(study)
    >>> overview.counts["COMPLETE"], overview.rejected
    (1840, 0)
    >>> front = overview.front()          # Study.frontier()'s rows, read in full
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from slimtune._dominance import relative_latency
from slimtune.search._early_stopping import rejected_before_training
from slimtune.search._fidelity import is_training_free
from slimtune.studies._feed import TrialFeed
from slimtune.studies._rows import mark_pareto
from slimtune.studies._storage import quiet_gc

if TYPE_CHECKING:  # pragma: no cover
    from slimtune.studies._study import Study

#: The states a summary counts.
COUNTED_STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING")


class Overview:
    """Every trial of a study as figures (``points``: the fields of a row that the
    counts, the frontier and ``select`` read, ``pareto`` marked as ``Study.trials()``
    marks it), and the way to read some of them in full."""

    def __init__(self, study: "Study", points: list[dict[str, Any]], feed: TrialFeed | None = None) -> None:
        self.study = study
        self.points = points
        self._feed = feed  # None: the points are whole rows already
        self.complete = [p for p in points if p["state"] == "COMPLETE"]

    @classmethod
    def read(cls, study: "Study") -> "Overview":
        """The study's trials as figures (see the module); through ``study.trials()``
        when Optuna's tables cannot be read in bulk."""
        feed = TrialFeed(study)
        with quiet_gc():  # tens of thousands of new dicts, all kept: no collection walks them
            points = feed.points()
            if not feed.bulk:
                return cls.of_rows(study, study.trials())
            mark_pareto(points, study.objectives, feasible_only=study.constraints.active, baseline=study.baseline_row())
        return cls(study, points, feed)

    @classmethod
    def of_rows(cls, study: "Study", rows: list[dict[str, Any]]) -> "Overview":
        """The same from whole rows already read (``Study.trials()``)."""
        return cls(study, rows)

    # -- what a summary counts ------------------------------------------------------------
    @property
    def counts(self) -> dict[str, int]:
        """Trials by state (:data:`COUNTED_STATES`)."""
        return {s: sum(1 for p in self.points if p["state"] == s) for s in COUNTED_STATES}

    @property
    def training_free(self) -> int:
        """Complete training-free (rung 0) trials: they do not use up ``--trials``."""
        return sum(1 for p in self.complete if is_training_free(p))

    @property
    def rejected(self) -> int:
        """Trials early stopping rejected before any training."""
        return sum(1 for p in self.points if rejected_before_training(p))

    def fingerprints(self) -> dict[str, int]:
        """Machine fingerprints of the complete trials, with their counts."""
        counts: dict[str, int] = {}
        for p in self.complete:
            key = p.get("fingerprint_id") or "?"
            counts[key] = counts.get(key, 0) + 1
        return counts

    # -- what is printed ------------------------------------------------------------------
    def front(self, *, fingerprint: str | None = None) -> list[dict[str, Any]]:
        """``Study.frontier()``: the complete trials on the front (of one machine's
        trials with ``fingerprint``), sorted by the first cost objective, in full."""
        rows = self.complete
        if fingerprint is not None:
            rows = [dict(p) for p in rows if p.get("fingerprint_id") == fingerprint]
            mark_pareto(rows, self.study.objectives, feasible_only=self.study.constraints.active,
                        baseline=self.study.baseline_row())
        cost = self.study.objectives[1]

        def compared(p: dict[str, Any]) -> float:  # latency as the same-run ratio the front was decided on
            return relative_latency(p) if cost == "latency_ms" else p[cost]

        return self.full(sorted((p for p in rows if p["pareto"]), key=lambda p: (compared(p), -p["accuracy"], p["trial"])))

    def full(self, points: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """``points`` as whole ``Study.trials()`` rows, in the same order (one read of
        them all; ``pareto`` as the points have it)."""
        if self._feed is None or not points:
            return list(points)
        whole = {r["trial"]: r for r in self._feed.rows([p["trial"] for p in points])}
        out = []
        for p in points:
            row = whole.get(p["trial"])
            out.append(dict(p) if row is None else {**row, "pareto": p["pareto"]})
        return out
