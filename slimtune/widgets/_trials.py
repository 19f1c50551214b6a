"""The trials a dashboard shows, and what it reads of them.

:class:`TrialBook` holds every final trial of the study (complete, stopped, failed) as a
row: at first its figures only, read for all trials at once (a study's "points", see
:mod:`slimtune.studies._feed`), then in full once it is shown (details, hover, the
Pareto table, the selected model).  It counts the trials by state, remembers the
running ones, and knows the study's own front (the "on the front" of a trial's details:
the study's objectives, the baseline rule), kept point by point once first asked for.
Callers hold the dashboard's lock.

Example:
    >>> book = TrialBook(TrialFeed(study), study)
    >>> fresh = book.load()          # every final trial, figures only
    >>> row = book.full([7])[0]      # trial 7 in full (one read)
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

from slimtune._dominance import DEFAULT_OBJECTIVES, beaten_by_baseline, loss_matrix
from slimtune.widgets._axes import FINAL_STATES
from slimtune.widgets._front import ParetoSet


class TrialBook:
    """A study's final trials, by number in arrival order (see the module)."""

    def __init__(self, feed: Any, study: Any, baseline: Mapping[str, Any] | None = None) -> None:
        self.feed = feed
        self.baseline = baseline
        self.objectives = tuple(getattr(study, "objectives", DEFAULT_OBJECTIVES))
        constraints = getattr(study, "constraints", None)
        self._feasible_only = bool(getattr(constraints, "active", False))
        self._rows: dict[Any, dict[str, Any]] = {}  # final trials by number
        self._full: set[Any] = set()  # numbers whose row is whole
        self.running: set[Any] = set()
        self.complete: list[dict[str, Any]] = []  # complete rows, in arrival order
        self._front: ParetoSet | None = None  # the study's front over _eligible (built on first use)
        self._eligible: list[dict[str, Any]] = []
        self._eligible_at: dict[Any, int] = {}

    # -- what is known -----------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, trial: Any) -> bool:
        return trial in self._rows

    def get(self, trial: Any) -> dict[str, Any] | None:
        return self._rows.get(trial)

    @property
    def rows(self) -> list[dict[str, Any]]:
        """Every final trial's row as held (figures, or whole once shown), in arrival order."""
        return list(self._rows.values())

    # -- reading -----------------------------------------------------------------------
    def load(self) -> list[dict[str, Any]]:
        """Read every trial's figures (one bulk read); returns the new final rows."""
        return self.add(self.feed.points(), copy=False)

    def poll(self) -> list[dict[str, Any]]:
        """The rows (whole) of the trials new or changed since the last look."""
        changed = self.feed.changed()
        return self.feed.rows(changed) if changed else []

    def full(self, trials: Iterable[Any]) -> list[dict[str, Any]]:
        """The rows of ``trials`` made whole (the missing ones read at once, each row
        completed in place); a trial the database does not hold keeps its row."""
        wanted = [t for t in trials if t in self._rows]
        missing = [t for t in wanted if t not in self._full]
        if missing:
            for row in self.feed.rows(missing):
                held = self._rows.get(row["trial"])
                if held is not None:
                    held.update({k: v for k, v in row.items() if k != "pareto"})
            self._full.update(missing)
        return [self._rows[t] for t in wanted]

    def add(self, rows: Sequence[Mapping[str, Any]], *, copy: bool = True) -> list[dict[str, Any]]:
        """Take new trials (running ones are counted, final ones kept once); returns the
        new final rows."""
        fresh = []
        for row in rows:
            number = row.get("trial")
            if number in self._rows:
                continue
            state = row.get("state", "COMPLETE")
            if state not in FINAL_STATES:  # a trial's state, as the rows spell it, or in another case
                state = str(state).upper()
            if state in FINAL_STATES:
                kept = dict(row) if copy else row
                fresh.append(kept)
                self._rows[number] = kept
                self.running.discard(number)
                if "params" in kept:
                    self._full.add(number)
                if state == "COMPLETE":
                    self.complete.append(kept)
                    if self._front is not None:
                        self._eligible_row(kept)
            else:
                self.running.add(number)
        return fresh

    # -- the study's front -------------------------------------------------------------
    def on_front(self, row: Mapping[str, Any]) -> bool:
        """Whether ``row`` is on the study's front (as ``Study.trials()`` marks
        ``pareto``: no complete, and with constraints feasible, trial dominates it, nor
        the baseline timed in its own run)."""
        if self._front is None:
            for kept in self.complete:
                self._eligible_row(kept)
            self._front = ParetoSet(loss_matrix(self._eligible, self.objectives, baseline_latency_ms=self._base_ms()))
        index = self._eligible_at.get(row.get("trial"))
        return (index is not None and index in self._front
                and not beaten_by_baseline(row, self.baseline, self.objectives))

    def _base_ms(self) -> float | None:
        """The baseline's stored latency: what a row without its own reference is divided by."""
        return (self.baseline or {}).get("latency_ms")

    def _eligible_row(self, row: dict[str, Any]) -> None:
        if self._feasible_only and not row.get("feasible", True):
            return
        index = len(self._eligible)
        self._eligible.append(row)
        self._eligible_at[row.get("trial")] = index
        if self._front is not None:
            self._front.add(index, loss_matrix([row], self.objectives, baseline_latency_ms=self._base_ms())[0])

    @property
    def counts(self) -> tuple[int, int, int]:
        """``(complete, stopped or failed, running)`` trials."""
        return len(self.complete), len(self._rows) - len(self.complete), len(self.running)


