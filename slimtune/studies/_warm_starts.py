"""A study's warm starts and their claims in ``slimtune_warm_starts``: the
:class:`~slimtune.search._warm_claims.ClaimStore` of a study database.

Each claim is one ``UPDATE ... WHERE attempts = <seen>``: the database serialises two
workers' updates of a row (SQLite takes its write lock, PostgreSQL re-reads the row
after the first commits), so exactly one of them sees its row count at 1.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from slimtune.search._warm_claims import WarmStartRow, utcnow
from slimtune.studies._database import retry_locked
from slimtune.studies._schema import CandidateRecord, WarmStartRecord

if TYPE_CHECKING:  # pragma: no cover
    from slimtune.studies._database import Database


class StudyWarmStarts:
    """The warm starts of study ``study_id`` in ``db``; ``optuna_states(numbers)`` reads
    Optuna's states of trials (a trial without slimtune's record has only that one)."""

    def __init__(self, db: "Database", study_id: int, *, has_trials: Callable[[], bool],
                 optuna_states: Callable[[Sequence[int]], Mapping[int, str]]) -> None:
        self.db = db
        self.study_id = study_id
        self._has_trials = has_trials
        self._optuna_states = optuna_states

    def rows(self) -> list[WarmStartRow]:
        with self.db.session() as session:
            records = session.scalars(select(WarmStartRecord).where(WarmStartRecord.study_id == self.study_id)
                                      .order_by(WarmStartRecord.position)).all()
            return [WarmStartRow(r.position, dict(r.params), r.attempts, r.trial_number, r.claimed_at)
                    for r in records]

    def add_plan(self, planned: Sequence[Mapping[str, Any]]) -> None:
        def write() -> None:
            with self.db.session() as session:
                session.add_all(WarmStartRecord(study_id=self.study_id, position=i, params=dict(values), attempts=0)
                                for i, values in enumerate(planned))

        try:
            retry_locked(write)
        except IntegrityError:  # another worker stored its plan first: that one stands
            pass

    def append(self, values: Mapping[str, Any]) -> None:
        """One row after the last; two workers appending at once: the second retries
        after the first (the position is unique)."""
        from sqlalchemy import func

        def write() -> None:
            with self.db.session() as session:
                last = session.scalar(select(func.max(WarmStartRecord.position))
                                      .where(WarmStartRecord.study_id == self.study_id))
                session.add(WarmStartRecord(study_id=self.study_id, position=0 if last is None else last + 1,
                                            params=dict(values), attempts=0))

        for attempt in range(20):
            try:
                retry_locked(write)
                return
            except IntegrityError:  # another worker took that position meanwhile
                if attempt == 19:
                    raise

    def has_trials(self) -> bool:
        return self._has_trials()

    def trial_states(self, numbers: Sequence[int]) -> dict[int, str]:
        states = dict(self._optuna_states(numbers))
        with self.db.session() as session:
            for number, state in session.execute(
                    select(CandidateRecord.trial_number, CandidateRecord.state)
                    .where(CandidateRecord.study_id == self.study_id,
                           CandidateRecord.trial_number.in_(list(numbers)))).all():
                states[number] = state  # the record says how the trial ended, whatever Optuna was told
        return states

    def _update(self, position: int, seen_attempts: int, **values: Any) -> bool:
        def write() -> int:
            with self.db.session() as session:
                return session.execute(
                    update(WarmStartRecord)
                    .where(WarmStartRecord.study_id == self.study_id, WarmStartRecord.position == position,
                           WarmStartRecord.attempts == seen_attempts)
                    .values(**values)).rowcount

        return retry_locked(write) == 1

    def take(self, position: int, seen_attempts: int, worker: str) -> bool:
        return self._update(position, seen_attempts, attempts=seen_attempts + 1, trial_number=None,
                            claimed_at=utcnow(), worker=worker[:256])

    def bind(self, position: int, trial_number: int) -> None:
        def write() -> None:
            with self.db.session() as session:
                session.execute(update(WarmStartRecord)
                                .where(WarmStartRecord.study_id == self.study_id, WarmStartRecord.position == position)
                                .values(trial_number=trial_number))

        retry_locked(write)

    def release(self, position: int, attempts: int) -> None:
        self._update(position, attempts, attempts=attempts - 1, trial_number=None)
