"""Warm starts claimed, each exactly once across workers, and proposed again once when
they did not complete.

A study's warm starts (:mod:`~slimtune.search._warm_start`) are planned once, when its
first session starts on a study without trials, as rows of a :class:`ClaimStore` (the
study database's table ``slimtune_warm_starts``; :class:`MemoryClaims` for a study
without one).  Before each trial a worker takes the next row with a compare-and-set
the database serialises (:meth:`ClaimStore.take`), asks Optuna for a trial holding
exactly its values (:meth:`~slimtune.search._backends._interface.Backend.propose_given`,
no waiting trial another worker could pop), and binds the trial to the row.  A row
whose trial ended FAIL (a crash, Ctrl-C, a failed candidate), or whose claimer stopped
before asking, is taken once more, by whichever session comes next.

Optuna's ``enqueue_trial(skip_if_exists=True)``, used before, checks then inserts: two
workers starting together both enqueued the same warm start (half a 4-trial budget
spent twice), and a study resumed after an early crash never proposed the rest.

Example:
    >>> claim = claim_next(store, planned=lambda: [{"quant.bits": 8}], worker="host:123")  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Mapping, Protocol, Sequence

#: Claims of one warm start: the first, and one more when that trial did not complete.
MAX_ATTEMPTS = 2
#: A claim not bound to a trial after this many seconds: its worker stopped in between.
UNBOUND_AFTER_S = 600.0


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


@dataclass
class WarmStartRow:
    """One planned warm start: its position in the plan, values, claims so far, the
    trial of the last claim (``None``: not asked yet) and when it was claimed."""

    position: int
    values: dict[str, Any]
    attempts: int = 0
    trial_number: int | None = None
    claimed_at: datetime | None = None


@dataclass(frozen=True)
class Claim:
    """A warm start this worker took: propose exactly ``values``."""

    position: int
    attempts: int
    values: dict[str, Any]


class ClaimStore(Protocol):
    """Where a study's warm starts and their claims live."""

    def rows(self) -> list[WarmStartRow]:
        """The plan, by position (empty: none planned)."""

    def add_plan(self, planned: Sequence[Mapping[str, Any]]) -> None:
        """Store the plan unless one is stored (another worker's plan wins, whole)."""

    def append(self, values: Mapping[str, Any]) -> None:
        """Add one row after the last (a promotion, :mod:`~slimtune.search._promotion`)."""

    def has_trials(self) -> bool:
        """Whether the study has any trial (then no plan is made now)."""

    def trial_states(self, numbers: Sequence[int]) -> dict[int, str]:
        """The state of each of these trials (COMPLETE, PRUNED, FAIL, RUNNING...)."""

    def take(self, position: int, seen_attempts: int, worker: str) -> bool:
        """Claim row ``position`` if its claims are still ``seen_attempts`` (one
        statement: of two workers, one wins); whether this one did."""

    def bind(self, position: int, trial_number: int) -> None:
        """The trial that holds the claimed values."""

    def release(self, position: int, attempts: int) -> None:
        """Undo claim number ``attempts`` (the trial did not hold its values)."""


def _retry_due(row: WarmStartRow, states: Mapping[int, str], now: datetime) -> bool:
    """Whether a claimed row is due its second claim: its trial failed, or its claimer
    stopped between the claim and the ask."""
    if row.trial_number is not None:
        return states.get(row.trial_number) == "FAIL"
    return row.claimed_at is not None and (now - row.claimed_at).total_seconds() > UNBOUND_AFTER_S


def claim_next(store: ClaimStore, *, planned: Callable[[], Sequence[Mapping[str, Any]]], worker: str) -> Claim | None:
    """The next warm start for this worker, claimed in ``store``; ``None`` when none is
    left.  The plan (``planned()``) is stored first if the study has neither a plan
    nor trials (a study resumed by an older slimtune, or started without warm starts,
    gets none)."""
    rows = store.rows()
    if not rows:
        if store.has_trials():
            return None
        wanted = list(planned())
        if not wanted:
            return None
        store.add_plan(wanted)
        rows = store.rows()
    retried = [r.trial_number for r in rows if r.attempts == 1 and r.trial_number is not None]
    states = store.trial_states(retried) if retried else {}
    now = utcnow()
    for row in rows:
        if row.attempts >= MAX_ATTEMPTS or (row.attempts == 1 and not _retry_due(row, states, now)):
            continue
        if store.take(row.position, row.attempts, worker):
            return Claim(row.position, row.attempts + 1, dict(row.values))
    return None


@dataclass
class MemoryClaims:
    """A :class:`ClaimStore` in this process's memory, for an Optuna study without
    slimtune's tables (one worker; a replayed search)."""

    study: Any  # optuna.Study
    _rows: list[WarmStartRow] = field(default_factory=list)

    def rows(self) -> list[WarmStartRow]:
        return [WarmStartRow(r.position, dict(r.values), r.attempts, r.trial_number, r.claimed_at) for r in self._rows]

    def add_plan(self, planned: Sequence[Mapping[str, Any]]) -> None:
        if not self._rows:
            self._rows = [WarmStartRow(i, dict(v)) for i, v in enumerate(planned)]

    def append(self, values: Mapping[str, Any]) -> None:
        self._rows.append(WarmStartRow(len(self._rows), dict(values)))

    def has_trials(self) -> bool:
        return bool(self.study.get_trials(deepcopy=False))

    def trial_states(self, numbers: Sequence[int]) -> dict[int, str]:
        wanted = set(numbers)
        return {t.number: t.state.name for t in self.study.get_trials(deepcopy=False) if t.number in wanted}

    def take(self, position: int, seen_attempts: int, worker: str) -> bool:
        row = self._rows[position]
        if row.attempts != seen_attempts:
            return False
        row.attempts, row.trial_number, row.claimed_at = seen_attempts + 1, None, utcnow()
        return True

    def bind(self, position: int, trial_number: int) -> None:
        self._rows[position].trial_number = trial_number

    def release(self, position: int, attempts: int) -> None:
        row = self._rows[position]
        if row.attempts == attempts:
            row.attempts, row.trial_number = attempts - 1, None
