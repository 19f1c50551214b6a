"""Every SQL statement a study makes, beside the schema (:mod:`slimtune.studies._schema`).

:class:`StudyStorage` reads and writes slimtune's tables through one
:class:`~slimtune.studies._database.Database` (engine, sessions, schema version), and
reads Optuna's trials of a study in bulk: a handful of ``SELECT`` statements over
Optuna's RDB tables instead of Optuna's per-trial ORM objects (those reads are in
:mod:`slimtune.studies._optuna_tables`; ``benchmarks/overhead.py`` times a study of
10,000 trials).  Only reads go to Optuna's tables
(Optuna's API does every write); if its tables do not look as expected the read falls
back to Optuna's own ``get_all_trials``.

Example:
    >>> storage = StudyStorage(Database.open("sqlite:///slimtune.db"))
    >>> record = storage.find_study("digits-demo")
    >>> candidates = storage.candidates(record.id)
"""

from __future__ import annotations

import gc
import sqlite3
from contextlib import contextmanager
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, Sequence

from sqlalchemy import JSON, Text, case, func, or_, select, type_coerce
from sqlalchemy.exc import SQLAlchemyError

from slimtune.studies._database import Database, retry_locked
from slimtune.studies._optuna_tables import (STUDIES, TRIALS, TrialFigures, TrialView, fetch_rows, loads_json,
                                             read_figures, read_trials)
from slimtune.studies._schema import (CandidateRecord, FidelityRecord, StudyRecord, TargetMeasurementRecord,
                                       WeightsRecord)

if TYPE_CHECKING:  # pragma: no cover
    from optuna.trial import FrozenTrial

#: The candidate columns a trial row reads (everything but the rebuild recipe).
ROW_COLUMNS = tuple(c for c in CandidateRecord.__table__.columns if c.name != "recipe")



class StudyStorage:
    """slimtune's tables (and a bulk read of Optuna's) for the studies of one database."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # -- studies -----------------------------------------------------------------------
    def find_study(self, name: str) -> StudyRecord | None:
        """The study called ``name``, or ``None``."""
        with self.db.session() as session:
            return session.scalar(select(StudyRecord).where(StudyRecord.study_name == name))

    def study_exists(self, name: str) -> bool:
        with self.db.session() as session:
            return session.scalar(select(StudyRecord.id).where(StudyRecord.study_name == name)) is not None

    def add_study(self, record: StudyRecord) -> None:
        """Insert a new study (``IntegrityError`` when another worker created it first)."""
        with self.db.session() as session:
            session.add(record)

    def set_task_fingerprint(self, study_id: int, fingerprint: str) -> None:
        with self.db.session() as session:
            session.get(StudyRecord, study_id).task_fingerprint = fingerprint

    def set_space(self, study_id: int, space: dict[str, Any], fingerprint: str) -> None:
        with self.db.session() as session:
            record = session.get(StudyRecord, study_id)
            record.space, record.space_fingerprint = space, fingerprint

    def has_candidates(self, study_id: int) -> bool:
        with self.db.session() as session:
            return session.scalar(select(CandidateRecord.id).where(CandidateRecord.study_id == study_id).limit(1)) is not None

    def summaries(self) -> list[tuple[StudyRecord, dict[int, str]]]:
        """Every study (by creation) with its candidates' states by trial number."""
        with self.db.session() as session:
            records = session.scalars(select(StudyRecord).order_by(StudyRecord.id)).all()
            states: dict[int, dict[int, str]] = {}
            for study_id, number, state in session.execute(
                    select(CandidateRecord.study_id, CandidateRecord.trial_number, CandidateRecord.state)).all():
                states.setdefault(study_id, {})[number] = state
        return [(r, states.get(r.id, {})) for r in records]

    # -- candidates --------------------------------------------------------------------
    def candidates(self, study_id: int, numbers: Iterable[int] | None = None, *,
                   measurement_keys: Sequence[str] | None = None) -> dict[int, Any]:
        """The study's candidate records (every column but the recipe, with attribute
        access) by trial number; only ``numbers`` when given.

        With ``measurement_keys`` a record's ``measurement`` holds only those keys: on
        SQLite they are read with ``json_extract`` instead of decoding every
        measurement in Python (its latency samples are most of a record), unless the
        measurement holds a NaN or an infinity, which SQLite's JSON does not parse
        (then every measurement is decoded in Python); the other JSON columns are
        decoded here, in one pass.
        """
        query = select(*ROW_COLUMNS).where(CandidateRecord.study_id == study_id)
        if numbers is not None:
            query = query.where(CandidateRecord.trial_number.in_(list(numbers)))
        with quiet_gc():
            if measurement_keys is not None and self.db.engine.dialect.name == "sqlite":
                try:
                    return _light_candidates(self.db, query, measurement_keys)
                except (SQLAlchemyError, sqlite3.Error):  # the driver's own error when read past SQLAlchemy (_fetch)
                    pass  # a NaN in a measurement (SQLite < 3.42), or a SQLite without its JSON functions
            with self.db.engine.connect() as conn:
                return {r.trial_number: r for r in conn.execute(query).all()}

    def candidate(self, study_id: int, number: int, *, with_weights: bool = False
                  ) -> tuple[CandidateRecord | None, WeightsRecord | None]:
        """One candidate record (``None`` when missing) and, when asked, its weights."""
        with self.db.session() as session:
            rec = session.scalar(select(CandidateRecord).where(CandidateRecord.study_id == study_id,
                                                               CandidateRecord.trial_number == number))
            weights = session.get(WeightsRecord, rec.id) if rec is not None and with_weights else None
        return rec, weights

    def complete_costs(self, study_id: int, cost_objectives: Sequence[str]) -> list[tuple]:
        """``(trial_number, val_accuracy, info, reference_latency_ms, *costs)`` of the
        complete candidates (the reference: the baseline timed in the same run)."""
        columns = [getattr(CandidateRecord, c) for c in cost_objectives]
        reference = CandidateRecord.measurement["reference_latency_ms"].as_float()
        with self.db.engine.connect() as conn:
            return list(conn.execute(
                select(CandidateRecord.trial_number, CandidateRecord.val_accuracy, CandidateRecord.info, reference,
                       *columns)
                .where(CandidateRecord.study_id == study_id, CandidateRecord.state == "COMPLETE")))

    def add_candidate(self, record: CandidateRecord, weights: Mapping[str, Any] | None,
                      extra: Sequence[Any] = (), fidelity: Mapping[str, Any] | None = None) -> None:
        """Insert a candidate, its weights, the ``extra`` records that go with it (its
        measurements on other targets) and its fidelity (``epochs``, ``full_epochs``,
        ``promoted_from``) in one transaction (retried while SQLite reports "database
        is locked")."""

        def write() -> None:
            with self.db.session() as session:
                session.add(record)
                session.flush()
                if weights is not None:
                    session.add(WeightsRecord(candidate_id=record.id, **weights))
                session.add_all(list(extra))
                if fidelity is not None:
                    session.add(FidelityRecord(study_id=record.study_id, trial_number=record.trial_number,
                                               epochs=int(fidelity["epochs"]), full_epochs=int(fidelity["full_epochs"]),
                                               promoted_from=fidelity.get("promoted_from")))

        retry_locked(write)

    def fidelities(self, study_id: int) -> dict[int, dict[str, Any]]:
        """The stored fidelity of each trial that has one, by trial number (one
        statement; none where the table is missing: a database no slimtune with
        fidelities has run trials in, read-only)."""
        from slimtune.search._fidelity import Fidelity

        try:
            with self.db.engine.connect() as conn:
                rows = conn.execute(select(FidelityRecord.trial_number, FidelityRecord.epochs,
                                           FidelityRecord.full_epochs, FidelityRecord.promoted_from)
                                    .where(FidelityRecord.study_id == study_id)).all()
        except SQLAlchemyError:
            return {}
        return {n: Fidelity(e, f, p).to_dict() for n, e, f, p in rows}

    # -- measurements on a study's other targets ----------------------------------------
    def target_figures(self, study_id: int, target: str, trial: int | None = None) -> dict[int, Any]:
        """``{trial number: record (no artifact)}`` of one target of a study, or of its
        ``trial`` only (none when the table is missing: a database no trial with several
        targets was written to)."""
        from sqlalchemy import inspect

        table = TargetMeasurementRecord
        columns = [c for c in table.__table__.columns if c.name != "artifact"]
        with self.db.engine.connect() as conn:
            if not inspect(conn).has_table(table.__tablename__):
                return {}
            query = select(*columns).where(table.study_id == study_id, table.target == target)
            if trial is not None:
                query = query.where(table.trial_number == trial)
            return {r.trial_number: r for r in conn.execute(query).all()}

    def target_artifact(self, study_id: int, trial: int, target: str) -> tuple[bytes, str] | None:
        """The artifact one trial was timed with on ``target``, and its format."""
        table = TargetMeasurementRecord
        with self.db.engine.connect() as conn:
            row = conn.execute(select(table.artifact, table.artifact_format).where(
                table.study_id == study_id, table.trial_number == trial, table.target == target)).first()
        return None if row is None or not row[0] else (bytes(row[0]), row[1] or "onnx")

    # -- Optuna's trials, read in bulk ---------------------------------------------------
    def optuna_trials(self, optuna_study_id: int, study_id: int, *,
                      fallback: Callable[[], Sequence["FrozenTrial"]],
                      trial_ids: Sequence[int] | None = None) -> Sequence["TrialView | FrozenTrial"]:
        """Optuna's trials of a study (only ``trial_ids`` when given), by trial id, with
        what slimtune's record of each (study ``study_id``) does not already say: the
        parameters and user attributes of trials without a record, and of the others
        only the metrics the record lacks.

        Five statements whatever the number of trials.  ``fallback()`` (Optuna's
        ``get_trials``) answers when Optuna's tables are not as expected.
        """
        try:
            with self.db.engine.connect() as conn, quiet_gc():
                return read_trials(conn, optuna_study_id, study_id, trial_ids)
        except (SQLAlchemyError, KeyError, ValueError):
            wanted = None if trial_ids is None else set(trial_ids)
            return [t for t in fallback() if wanted is None or t._trial_id in wanted]  # noqa: SLF001

    # -- what a live view reads ----------------------------------------------------------
    def trial_figures(self, optuna_study_id: int, study_id: int, objectives: Sequence[str], *,
                      constraints: bool = False) -> "TrialFigures | None":
        """The figures of every trial of a study (what a plot of it and the select rule
        read, no parameters), in five statements (six with ``constraints``); ``None``
        when Optuna's tables are not as expected."""
        try:
            with self.db.engine.connect() as conn, quiet_gc():
                return read_figures(conn, optuna_study_id, study_id, tuple(objectives), constraints)
        except (SQLAlchemyError, KeyError, ValueError):
            return None

    def trial_changes(self, optuna_study_id: int, study_id: int, *, trials_after: int, trial_ids: Sequence[int],
                      records_after: int) -> tuple[list[tuple[int, int, str]], list[tuple[int, int]]]:
        """``(Optuna's (trial id, number, state), slimtune's (record id, trial number))``
        of the trials with an id above ``trials_after`` or in ``trial_ids``, and of the
        records with an id above ``records_after``: two statements over id ranges, whose
        cost follows what they return, not the size of the study."""
        # `study_id + 0` keeps the planner on the trial id's range (an index on
        # study_id would read every trial of the study)
        trials = (select(TRIALS.c.trial_id, TRIALS.c.number, TRIALS.c.state)
                  .where((TRIALS.c.study_id + 0) == optuna_study_id,
                         or_(TRIALS.c.trial_id > trials_after, TRIALS.c.trial_id.in_(list(trial_ids))))
                  .order_by(TRIALS.c.trial_id))
        records = (select(CandidateRecord.id, CandidateRecord.trial_number)
                   .where(CandidateRecord.study_id == study_id, CandidateRecord.id > records_after)
                   .order_by(CandidateRecord.id))
        with self.db.engine.connect() as conn:
            return ([tuple(r) for r in conn.execute(trials).all()], [tuple(r) for r in conn.execute(records).all()])

    def optuna_study_id(self, name: str) -> int | None:
        """The id of Optuna's study ``name`` in Optuna's tables (``None`` when it is
        missing or the tables cannot be read: Optuna's API then says why)."""
        try:
            with self.db.engine.connect() as conn:
                return conn.execute(select(STUDIES.c.study_id).where(STUDIES.c.study_name == name)).scalar()
        except SQLAlchemyError:
            return None

    def optuna_states(self, optuna_study_id: int, *, fallback: Callable[[], dict[int, str]]) -> dict[int, str]:
        """The state of each of Optuna's trials of a study, by trial number (one
        statement; ``fallback()`` when Optuna's tables are not as expected)."""
        try:
            with self.db.engine.connect() as conn:
                return dict(conn.execute(select(TRIALS.c.number, TRIALS.c.state)
                                         .where(TRIALS.c.study_id == optuna_study_id).order_by(TRIALS.c.trial_id)).all())
        except SQLAlchemyError:
            return fallback()


@contextmanager
def quiet_gc() -> Iterator[None]:
    """No garbage collection during a bulk read: every object it makes is kept, and each
    collection would walk them all and the whole heap for nothing (a third of the time of
    reading 50,000 trials)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _light_candidates(db: Database, query: Any, measurement_keys: Sequence[str]) -> dict[int, SimpleNamespace]:
    """:meth:`StudyStorage.candidates` on SQLite, ``measurement`` reduced to
    ``measurement_keys`` (read by ``json_extract``)."""
    text = type_coerce(CandidateRecord.measurement, Text)
    odd = (func.instr(text, "NaN") > 0) | (func.instr(text, "Infinity") > 0)
    json_columns = [c.name for c in ROW_COLUMNS if isinstance(c.type, JSON) and c.name != "measurement"]
    columns = [type_coerce(c, Text).label(c.name) if c.name in json_columns else c
               for c in ROW_COLUMNS if c.name != "measurement"]
    # a NaN makes SQLite < 3.42 fail the query (the caller then decodes in Python); newer
    # ones read it as JSON5, so such a measurement is decoded here, whole.  The keys come
    # as one JSON array (one parse of the measurement for them all)
    extracted = func.json_extract(text, *[f'$."{key}"' for key in measurement_keys])
    query = query.with_only_columns(*columns, case((odd, text), else_=None), extracted)
    with db.engine.connect() as conn:
        result = fetch_rows(conn, query)
    names = [c.name for c in columns]
    out = {}
    for r in result:
        fields = dict(zip(names, r))
        for name in json_columns:
            fields[name] = loads_json(fields[name])
        raw, picked = r[len(names)], r[len(names) + 1]
        if raw is not None:
            fields["measurement"] = loads_json(raw)
        else:  # one key: its value itself; several: a JSON array of them
            fields["measurement"] = dict(zip(measurement_keys, loads_json(picked) if len(measurement_keys) > 1
                                             else [picked]))
        out[fields["trial_number"]] = SimpleNamespace(**fields)
    return out
