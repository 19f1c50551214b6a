"""Every SQL statement a study makes, beside the schema (:mod:`slimtune.studies._schema`).

:class:`StudyStorage` reads and writes slimtune's tables through one
:class:`~slimtune.studies._database.Database` (engine, sessions, schema version), and
reads Optuna's trials of a study in bulk: a handful of ``SELECT`` statements over
Optuna's RDB tables instead of Optuna's per-trial ORM objects (``benchmarks/overhead.py``
times a study of 10,000 trials).  Only reads go to Optuna's tables
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
import json
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, Sequence

from sqlalchemy import JSON, DateTime, Float, Integer, String, Text, case, column, func, or_, select, table, type_coerce
from sqlalchemy.exc import SQLAlchemyError

from slimtune.studies._database import Database, retry_locked
from slimtune.studies._schema import CandidateRecord, StudyRecord, WeightsRecord

if TYPE_CHECKING:  # pragma: no cover
    from optuna.trial import FrozenTrial, TrialState

#: The candidate columns a trial row reads (everything but the rebuild recipe).
ROW_COLUMNS = tuple(c for c in CandidateRecord.__table__.columns if c.name != "recipe")

#: The Optuna user attributes a trial row reads (see :func:`slimtune.studies._rows.make_row`).
ROW_ATTRS = ("accuracy", "test_accuracy", "latency_ms", "size_bytes", "artifact_bytes", "macs", "val_accuracy",
             "reference_latency_ms", "stopped_reason", "error", "backend", "tuner", "flags", "exit_rates",
             "fingerprint_id")

#: Optuna's constraint values live in trial system attributes under this key (and ``key:name``).
CONSTRAINTS_KEY = "constraints"

# Optuna's RDB tables, only the columns read here (a read that fails falls back to Optuna's API).
_studies = table("studies", column("study_id", Integer), column("study_name", String))
_trials = table("trials", column("trial_id", Integer), column("number", Integer), column("study_id", Integer),
                column("state", String), column("datetime_start", DateTime), column("datetime_complete", DateTime))
_values = table("trial_values", column("trial_id", Integer), column("objective", Integer), column("value", Float),
                column("value_type", String))
_params = table("trial_params", column("param_id", Integer), column("trial_id", Integer), column("param_name", String),
                column("param_value", Float), column("distribution_json", Text))
_user_attrs = table("trial_user_attributes", column("trial_user_attribute_id", Integer), column("trial_id", Integer),
                    column("key", String), column("value_json", Text))
_system_attrs = table("trial_system_attributes", column("trial_system_attribute_id", Integer),
                      column("trial_id", Integer), column("key", String), column("value_json", Text))


@dataclass
class TrialView:
    """What a trial row needs of an Optuna trial (the fields of ``FrozenTrial`` that
    :func:`~slimtune.studies._rows.make_row` reads), read in bulk."""

    number: int
    state: "TrialState"
    params: dict[str, Any]
    user_attrs: dict[str, Any]
    values: list[float] | None
    constraints: dict[str, float]
    datetime_start: datetime | None
    datetime_complete: datetime | None


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

    def add_candidate(self, record: CandidateRecord, weights: Mapping[str, Any] | None) -> None:
        """Insert a candidate and its weights in one transaction (retried while SQLite
        reports "database is locked")."""

        def write() -> None:
            with self.db.session() as session:
                session.add(record)
                session.flush()
                if weights is not None:
                    session.add(WeightsRecord(candidate_id=record.id, **weights))

        retry_locked(write)

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
                return _read_trials(conn, optuna_study_id, study_id, trial_ids)
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
                return _read_figures(conn, optuna_study_id, study_id, tuple(objectives), constraints)
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
        trials = (select(_trials.c.trial_id, _trials.c.number, _trials.c.state)
                  .where((_trials.c.study_id + 0) == optuna_study_id,
                         or_(_trials.c.trial_id > trials_after, _trials.c.trial_id.in_(list(trial_ids))))
                  .order_by(_trials.c.trial_id))
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
                return conn.execute(select(_studies.c.study_id).where(_studies.c.study_name == name)).scalar()
        except SQLAlchemyError:
            return None

    def optuna_states(self, optuna_study_id: int, *, fallback: Callable[[], dict[int, str]]) -> dict[int, str]:
        """The state of each of Optuna's trials of a study, by trial number (one
        statement; ``fallback()`` when Optuna's tables are not as expected)."""
        try:
            with self.db.engine.connect() as conn:
                return dict(conn.execute(select(_trials.c.number, _trials.c.state)
                                         .where(_trials.c.study_id == optuna_study_id).order_by(_trials.c.trial_id)).all())
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
        result = _fetch(conn, query)
    names = [c.name for c in columns]
    out = {}
    for r in result:
        fields = dict(zip(names, r))
        for name in json_columns:
            fields[name] = _loads(fields[name])
        raw, picked = r[len(names)], r[len(names) + 1]
        if raw is not None:
            fields["measurement"] = _loads(raw)
        else:  # one key: its value itself; several: a JSON array of them
            fields["measurement"] = dict(zip(measurement_keys, _loads(picked) if len(measurement_keys) > 1
                                             else [picked]))
        out[fields["trial_number"]] = SimpleNamespace(**fields)
    return out


_scan = json.JSONDecoder().scan_once  # json.loads less its per-call whitespace regexes


def _loads(text: str | None) -> Any:
    """JSON text as SQLAlchemy's ``JSON`` type reads it (SQL NULL and JSON null are
    ``None``), the frequent empty values without calling the parser."""
    if text is None or text == "null":
        return None
    if text == "[]":
        return []
    try:
        value, end = _scan(text, 0)
    except StopIteration:
        end = -1
    return value if end == len(text) else json.loads(text)  # json.loads raises on what is not JSON


#: The trial metrics a record may lack (then read from Optuna's user attributes).
RECORD_METRICS = ("accuracy", "test_accuracy", "latency_ms", "size_bytes", "artifact_bytes", "macs")


def _with_record(link: Any, optuna_study_id: int, study_id: int) -> tuple[Any, Any]:
    """``(trials joined to their records, the record table)`` for rows of a trial table
    whose trial id column is ``link``: one study's trials, each with slimtune's record
    of it or NULLs."""
    records = CandidateRecord.__table__
    joined = link.table.join(_trials, _trials.c.trial_id == link).outerjoin(
        records, (records.c.study_id == study_id) & (records.c.trial_number == _trials.c.number))
    return joined, records


def _read_trials(conn: Any, optuna_study_id: int, study_id: int, trial_ids: Sequence[int] | None = None
                 ) -> list[TrialView]:
    from optuna.trial import TrialState

    if trial_ids is None:
        of_study = _trials.c.study_id == optuna_study_id
    else:  # found by id (`study_id + 0`: not among all the study's trials, as an index on study_id would)
        of_study = ((_trials.c.study_id + 0) == optuna_study_id) & _trials.c.trial_id.in_(list(trial_ids))
    rows = _fetch(conn, select(_trials.c.trial_id, _trials.c.number, _trials.c.state, _trials.c.datetime_start,
                               _trials.c.datetime_complete).where(of_study).order_by(_trials.c.trial_id))
    views = {trial_id: TrialView(number, TrialState[state], {}, {}, None, {}, start, complete)
             for trial_id, number, state, start, complete in rows}
    for trial_id, _, value, kind in conn.execute(  # a record's metrics stand for the values (see make_row)
            select(_values.c.trial_id, _values.c.objective, _values.c.value, _values.c.value_type)
            .select_from(_values.join(_trials, _trials.c.trial_id == _values.c.trial_id))
            .where(_values.c.trial_id.in_(_lacking_trials(of_study, study_id)), of_study)
            .order_by(_values.c.trial_id, _values.c.objective)).all():
        view = views[trial_id]
        if view.values is None:
            view.values = []
        view.values.append(_value(value, kind))
    joined, records = _with_record(_user_attrs.c.trial_id, optuna_study_id, study_id)
    lacking = or_(records.c.id.is_(None), *[(_user_attrs.c.key == name) & records.c[name].is_(None)
                                             for name in RECORD_METRICS])
    for trial_id, key, value in conn.execute(
            select(_user_attrs.c.trial_id, _user_attrs.c.key, _user_attrs.c.value_json).select_from(joined)
            .where(_user_attrs.c.trial_id.in_(_lacking_trials(of_study, study_id)), of_study,
                   _user_attrs.c.key.in_(ROW_ATTRS), lacking)).all():
        views[trial_id].user_attrs[key] = _loads(value)
    for trial_id, found in _constraints(conn, of_study).items():
        views[trial_id].constraints = found
    joined, records = _with_record(_params.c.trial_id, optuna_study_id, study_id)
    for trial_id, name, value, distribution in conn.execute(
            select(_params.c.trial_id, _params.c.param_name, _params.c.param_value, _params.c.distribution_json)
            .select_from(joined).where(of_study, records.c.id.is_(None)).order_by(_params.c.param_id)).all():
        views[trial_id].params[name] = _distribution(distribution).to_external_repr(value)
    return list(views.values())


def _value(value: float | None, kind: str) -> float | None:
    """An objective value as Optuna stores it (infinities by their ``value_type``)."""
    return float("inf") if kind == "INF_POS" else float("-inf") if kind == "INF_NEG" else value


def _lacking_trials(of_study: Any, study_id: int) -> Any:
    """Ids of the trials (of ``of_study``) without a record, or whose record lacks a
    metric: the only ones whose values and metric attributes a row reads from Optuna
    (found first, then their rows by trial id: a record lacking a metric is rare)."""
    records = CandidateRecord.__table__
    on = (records.c.study_id == study_id) & (records.c.trial_number == _trials.c.number)
    return select(_trials.c.trial_id).select_from(_trials.outerjoin(records, on)).where(
        of_study, or_(records.c.id.is_(None), *[records.c[name].is_(None) for name in RECORD_METRICS]))


def _constraints(conn: Any, of_study: Any) -> dict[int, dict[str, float]]:
    """Each trial's constraint values (only trials that have some), by trial id."""
    system: dict[int, dict[str, Any]] = {}
    for trial_id, key, value in conn.execute(
            select(_system_attrs.c.trial_id, _system_attrs.c.key, _system_attrs.c.value_json)
            .select_from(_system_attrs.join(_trials, _trials.c.trial_id == _system_attrs.c.trial_id))
            .where(of_study, (_system_attrs.c.key == CONSTRAINTS_KEY) | _system_attrs.c.key.like(f"{CONSTRAINTS_KEY}:%"))
            .order_by(_system_attrs.c.trial_system_attribute_id)).all():
        system.setdefault(trial_id, {})[key] = json.loads(value)
    return {trial_id: constraints_from(attrs) for trial_id, attrs in system.items()}


@dataclass
class TrialFigures:
    """A study's trials as a live view reads them: no parameters, and of Optuna's side
    only what slimtune's records lack (see :func:`slimtune.studies._feed.points`)."""

    trials: list[tuple[int, int, str]]  # Optuna's (trial id, number, state), by trial id
    records: dict[int, tuple]  # by trial number: FIGURE_COLUMNS, reference latency, ``pre`` (if not complete)
    values: dict[int, dict[int, float | None]]  # by trial id: objective index -> value (records lacking it)
    user_attrs: dict[int, dict[str, Any]]  # by trial id: ROW_ATTRS (records lacking them)
    constraints: dict[int, dict[str, float]] | None  # by trial id, when asked for


#: The record columns a live view reads (then ``reference_latency_ms`` and ``pre``).
FIGURE_COLUMNS = ("id", "state", "val_accuracy", *RECORD_METRICS)


def _fetch(conn: Any, query: Any) -> list[Sequence]:
    """Every row of ``query``: on SQLite straight from the driver (datetimes parsed as
    SQLAlchemy writes them), without SQLAlchemy's row objects (a third of a big read)."""
    result = conn.execute(query)
    if conn.dialect.name != "sqlite":
        return result.all()
    try:
        rows = result.cursor.fetchall()
    finally:
        result.close()
    dates = [i for i, c in enumerate(query.selected_columns) if isinstance(c.type, DateTime)]
    if dates:
        rows = [list(r) for r in rows]
        for row in rows:
            for i in dates:
                if row[i] is not None:
                    row[i] = datetime.fromisoformat(row[i])
    return rows


def _read_figures(conn: Any, optuna_study_id: int, study_id: int, objectives: tuple[str, ...],
                  constraints: bool) -> TrialFigures:
    of_study = _trials.c.study_id == optuna_study_id
    trials = _fetch(conn, select(_trials.c.trial_id, _trials.c.number, _trials.c.state).where(of_study)
                    .order_by(_trials.c.trial_id))
    records = _figure_records(conn, study_id)
    lacks: dict[int, tuple[str, ...] | None] = {}  # trial id -> the metrics its record lacks (None: no record)
    for tid, number, _ in trials:
        record = records.get(number)
        if record is None:
            lacks[tid] = None
        elif None in record[3:9]:
            lacks[tid] = tuple(name for name, v in zip(RECORD_METRICS, record[3:9]) if v is None)
    without = [tid for tid, lacking in lacks.items() if lacking is None]
    some = [tid for tid, lacking in lacks.items() if lacking is not None]
    values: dict[int, dict[int, float | None]] = {}
    for tid, k, value, kind in _fetch(conn, select(_values.c.trial_id, _values.c.objective, _values.c.value,
                                                    _values.c.value_type)
                                      .where(_among(_values.c.trial_id, list(lacks), conn))):
        if lacks[tid] is None or objectives[k] in lacks[tid]:
            values.setdefault(tid, {})[k] = _value(value, kind)
    attrs: dict[int, dict[str, Any]] = {}
    for tid, key, value in _fetch(conn, select(_user_attrs.c.trial_id, _user_attrs.c.key, _user_attrs.c.value_json)
                                  .where(or_(_among(_user_attrs.c.trial_id, without, conn)
                                             & _user_attrs.c.key.in_(ROW_ATTRS),
                                             _among(_user_attrs.c.trial_id, some, conn)
                                             & _user_attrs.c.key.in_(RECORD_METRICS)))):
        if lacks[tid] is None or key in lacks[tid]:
            attrs.setdefault(tid, {})[key] = _loads(value)
    return TrialFigures(trials, records, values, attrs, _constraints(conn, of_study) if constraints else None)


def _among(column: Any, ids: list[int], conn: Any) -> Any:
    """``column IN ids``: on SQLite with one parameter, a JSON array (any number of ids)."""
    if conn.dialect.name == "sqlite":
        return column.in_(select(func.json_each(json.dumps(ids)).table_valued("value").c.value))
    return column.in_(ids)


def _figure_records(conn: Any, study_id: int) -> dict[int, tuple]:
    """The records' :data:`FIGURE_COLUMNS`, reference latency and (of trials not
    complete) ``pre``, by trial number."""
    columns = [getattr(CandidateRecord, c) for c in FIGURE_COLUMNS]
    where = CandidateRecord.study_id == study_id
    out: dict[int, tuple] = {}
    if conn.dialect.name != "sqlite":
        reference = CandidateRecord.measurement["reference_latency_ms"].as_float()
        for number, *fields, pre in conn.execute(select(CandidateRecord.trial_number, *columns, reference,
                                                        CandidateRecord.pre).where(where)).all():
            out[number] = (*fields, pre if fields[1] != "COMPLETE" else None)
        return out
    # SQLite parses the JSON; where a NaN or an infinity would stop its parser (before
    # 3.42) or read as null (since), the measurement comes whole
    text = type_coerce(CandidateRecord.measurement, Text)
    odd = (func.instr(text, "NaN") > 0) | (func.instr(text, "Infinity") > 0)
    extracted = func.json_extract(text, '$."reference_latency_ms"')
    pre = case((CandidateRecord.state != "COMPLETE", type_coerce(CandidateRecord.pre, Text)), else_=None)
    query = select(CandidateRecord.trial_number, *columns, case((odd, text), else_=extracted), pre).where(where)
    rows = None
    if conn.dialect.dbapi.sqlite_version_info < (3, 42):  # no error: no NaN, no guard needed
        try:
            rows = _fetch(conn, query.with_only_columns(CandidateRecord.trial_number, *columns, extracted, pre))
        except SQLAlchemyError:
            pass
    out = {r[0]: r[1:] for r in (rows if rows is not None else _fetch(conn, query))}
    for number, fields in out.items():
        if isinstance(fields[-2], str) or fields[-1] is not None:
            ref, pre_text = fields[-2], fields[-1]
            if isinstance(ref, str):
                ref = (_loads(ref) or {}).get("reference_latency_ms")
            out[number] = (*fields[:-2], ref, None if pre_text is None else _loads(pre_text))
    return out


_DISTRIBUTIONS: dict[str, Any] = {}


def _distribution(text: str) -> Any:
    """Optuna's distribution from its JSON (a study has few distinct ones: cached)."""
    found = _DISTRIBUTIONS.get(text)
    if found is None:
        from optuna.distributions import json_to_distribution

        found = _DISTRIBUTIONS[text] = json_to_distribution(text)
    return found


def constraints_from(system_attrs: Mapping[str, Any]) -> dict[str, float]:
    """A trial's constraint values from its system attributes, as Optuna's
    ``FrozenTrial.constraints`` reads them (an old list under ``constraints``, then
    ``constraints:<name>`` keys)."""
    out: dict[str, float] = {str(i): c for i, c in enumerate(system_attrs.get(CONSTRAINTS_KEY) or [])}
    prefix = f"{CONSTRAINTS_KEY}:"
    out.update({key[len(prefix):]: value for key, value in system_attrs.items() if key.startswith(prefix)})
    return out
