"""Reads of Optuna's RDB tables joined with slimtune's records, in bulk: the trial rows
of a study and the figures of its trials in a handful of ``SELECT`` statements (what
:class:`~slimtune.studies._storage.StudyStorage` answers with), and the JSON decoding
they share.  Only reads: Optuna's API does every write to its tables.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from sqlalchemy import DateTime, Float, Integer, String, Text, case, column, func, or_, select, table, type_coerce
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from slimtune.studies._schema import CandidateRecord

if TYPE_CHECKING:  # pragma: no cover
    from optuna.trial import TrialState

#: The Optuna user attributes a trial row reads (see :func:`slimtune.studies._rows.make_row`).
ROW_ATTRS = ("accuracy", "test_accuracy", "latency_ms", "size_bytes", "artifact_bytes", "macs", "val_accuracy",
             "reference_latency_ms", "stopped_reason", "error", "backend", "tuner", "flags", "exit_rates",
             "fingerprint_id")

#: Optuna's constraint values live in trial system attributes under this key (and ``key:name``).
CONSTRAINTS_KEY = "constraints"

# Optuna's RDB tables, only the columns read here (a read that fails falls back to Optuna's API).
STUDIES = table("studies", column("study_id", Integer), column("study_name", String))
TRIALS = table("trials", column("trial_id", Integer), column("number", Integer), column("study_id", Integer),
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


_scan = json.JSONDecoder().scan_once  # json.loads less its per-call whitespace regexes


def loads_json(text: str | None) -> Any:
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
    joined = link.table.join(TRIALS, TRIALS.c.trial_id == link).outerjoin(
        records, (records.c.study_id == study_id) & (records.c.trial_number == TRIALS.c.number))
    return joined, records


def read_trials(conn: Any, optuna_study_id: int, study_id: int, trial_ids: Sequence[int] | None = None
                 ) -> list[TrialView]:
    from optuna.trial import TrialState

    if trial_ids is None:
        of_study = TRIALS.c.study_id == optuna_study_id
    else:  # found by id (`study_id + 0`: not among all the study's trials, as an index on study_id would)
        of_study = ((TRIALS.c.study_id + 0) == optuna_study_id) & TRIALS.c.trial_id.in_(list(trial_ids))
    rows = fetch_rows(conn, select(TRIALS.c.trial_id, TRIALS.c.number, TRIALS.c.state, TRIALS.c.datetime_start,
                               TRIALS.c.datetime_complete).where(of_study).order_by(TRIALS.c.trial_id))
    views = {trial_id: TrialView(number, TrialState[state], {}, {}, None, {}, start, complete)
             for trial_id, number, state, start, complete in rows}
    for trial_id, _, value, kind in conn.execute(  # a record's metrics stand for the values (see make_row)
            select(_values.c.trial_id, _values.c.objective, _values.c.value, _values.c.value_type)
            .select_from(_values.join(TRIALS, TRIALS.c.trial_id == _values.c.trial_id))
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
        views[trial_id].user_attrs[key] = loads_json(value)
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
    on = (records.c.study_id == study_id) & (records.c.trial_number == TRIALS.c.number)
    return select(TRIALS.c.trial_id).select_from(TRIALS.outerjoin(records, on)).where(
        of_study, or_(records.c.id.is_(None), *[records.c[name].is_(None) for name in RECORD_METRICS]))


def _constraints(conn: Any, of_study: Any) -> dict[int, dict[str, float]]:
    """Each trial's constraint values (only trials that have some), by trial id."""
    system: dict[int, dict[str, Any]] = {}
    for trial_id, key, value in conn.execute(
            select(_system_attrs.c.trial_id, _system_attrs.c.key, _system_attrs.c.value_json)
            .select_from(_system_attrs.join(TRIALS, TRIALS.c.trial_id == _system_attrs.c.trial_id))
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


#: The record columns a live view (and a summary) reads (then ``reference_latency_ms`` and ``pre``).
FIGURE_COLUMNS = ("id", "state", "val_accuracy", *RECORD_METRICS, "fingerprint_id", "stopped_reason")


def fetch_rows(conn: Any, query: Any) -> list[Sequence]:
    """Every row of ``query``: on SQLite straight from the driver (datetimes parsed as
    SQLAlchemy writes them), without SQLAlchemy's row objects (a third of a big read)."""
    result = conn.execute(query)
    if conn.dialect.name != "sqlite":
        return result.all()
    try:
        rows = result.cursor.fetchall()
    except conn.dialect.dbapi.Error as exc:  # raised as SQLAlchemy raises the driver's errors
        raise DBAPIError.instance(None, None, exc, conn.dialect.dbapi.Error, dialect=conn.dialect) from exc
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


def read_figures(conn: Any, optuna_study_id: int, study_id: int, objectives: tuple[str, ...],
                  constraints: bool) -> TrialFigures:
    of_study = TRIALS.c.study_id == optuna_study_id
    trials = fetch_rows(conn, select(TRIALS.c.trial_id, TRIALS.c.number, TRIALS.c.state).where(of_study)
                    .order_by(TRIALS.c.trial_id))
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
    for tid, k, value, kind in fetch_rows(conn, select(_values.c.trial_id, _values.c.objective, _values.c.value,
                                                    _values.c.value_type)
                                      .where(_among(_values.c.trial_id, list(lacks), conn))):
        if lacks[tid] is None or objectives[k] in lacks[tid]:
            values.setdefault(tid, {})[k] = _value(value, kind)
    attrs: dict[int, dict[str, Any]] = {}
    for tid, key, value in fetch_rows(conn, select(_user_attrs.c.trial_id, _user_attrs.c.key, _user_attrs.c.value_json)
                                  .where(or_(_among(_user_attrs.c.trial_id, without, conn)
                                             & _user_attrs.c.key.in_(ROW_ATTRS),
                                             _among(_user_attrs.c.trial_id, some, conn)
                                             & _user_attrs.c.key.in_(RECORD_METRICS)))):
        if lacks[tid] is None or key in lacks[tid]:
            attrs.setdefault(tid, {})[key] = loads_json(value)
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
            rows = fetch_rows(conn, query.with_only_columns(CandidateRecord.trial_number, *columns, extracted, pre))
        except SQLAlchemyError:
            pass
    out = {r[0]: r[1:] for r in (rows if rows is not None else fetch_rows(conn, query))}
    for number, fields in out.items():
        if isinstance(fields[-2], str) or fields[-1] is not None:
            ref, pre_text = fields[-2], fields[-1]
            if isinstance(ref, str):
                ref = (loads_json(ref) or {}).get("reference_latency_ms")
            out[number] = (*fields[:-2], ref, None if pre_text is None else loads_json(pre_text))
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
