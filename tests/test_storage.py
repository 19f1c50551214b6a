"""The study is storage: where its SQL is, how many SQL statements opening a big study
takes, and the one select rule that the dashboard and ``Study.select`` share (what
``studies/`` may import is ``test_layers.py``'s, over the whole package).

The studies here are synthetic (``benchmarks/overhead.py``'s bulk writer: the trials a
worker writes, Optuna's and slimtune's rows, no model trained) in real SQLite files.
"""

from __future__ import annotations

import ast
import json
import math
import shutil
import warnings
from pathlib import Path

import pytest
from tests._bench import load_benchmark

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
ROOT = Path(__file__).resolve().parents[1]
NAME = "synthetic-storage"


def _overhead_bench():
    return load_benchmark("overhead")


@pytest.fixture(scope="module")
def small_study(tmp_path_factory) -> Path:
    """A SQLite file holding study NAME with 200 synthetic trials."""
    path = tmp_path_factory.mktemp("storage") / "study.db"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _overhead_bench().bulk_synthetic_study(f"sqlite:///{path}", NAME, 200)
    return path


# -- where the SQL is -------------------------------------------------------------------------
def _imports(tree: ast.AST):
    """``(function name or None, imported module)`` for every import in a module,
    module level and inside functions alike."""

    def visit(node: ast.AST, function: str | None):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield from visit(child, child.name)
                continue
            if isinstance(child, ast.Import):
                yield from ((function, alias.name) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                assert child.level == 0, "relative import"
                yield function, child.module or ""
            yield from visit(child, function)

    yield from visit(tree, None)


def test_all_sql_of_a_study_is_in_the_storage_module():
    """Only the storage modules (slimtune's tables, Optuna's tables read in bulk; and the
    connection module's schema check and migrations, the engines' reconnection, and the
    warm starts' compare-and-set claims) build SQL statements."""
    allowed = {"_storage.py", "_optuna_tables.py", "_database.py", "_schema.py", "_connections.py", "_warm_starts.py"}
    offenders = []
    for path in sorted((ROOT / "slimtune" / "studies").glob("*.py")):
        if path.name in allowed:
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            called = node.func.attr if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) else None
            if called in ("session", "execute", "scalar", "scalars"):
                offenders.append(f"{path.name}:{node.lineno} .{called}(...)")
        for function, module in _imports(tree):
            if module == "sqlalchemy":
                offenders.append(f"{path.name}: {function or '<module>'} imports sqlalchemy")
    assert not offenders, offenders


# -- statements per open -------------------------------------------------------------------------
def _statements_to_open_and_sort(storage: str) -> tuple[int, int]:
    """``(SQL statements, complete trials)`` of ``Study.load`` + ``frontier()``."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    from slimtune.studies import Study

    count = [0]

    def counted(*_args) -> None:
        count[0] += 1

    event.listen(Engine, "before_cursor_execute", counted)
    try:
        study = Study.load(NAME, storage=storage)
        try:
            front = study.frontier()
            complete = len(study.trials(states=("COMPLETE",)))
        finally:
            study.close()
    finally:
        event.remove(Engine, "before_cursor_execute", counted)
    assert front, "a synthetic study has a front"
    return count[0], complete


def test_opening_2000_trials_takes_as_many_statements_as_200(small_study, tmp_path):
    storage = f"sqlite:///{small_study}"
    small, complete_small = _statements_to_open_and_sort(storage)
    big_path = tmp_path / "big.db"
    shutil.copy(small_study, big_path)
    big_storage = f"sqlite:///{big_path}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _overhead_bench().bulk_synthetic_study(big_storage, NAME, 1800)  # 1800 more: 2000 trials
    big, complete_big = _statements_to_open_and_sort(big_storage)
    assert complete_big > 5 * complete_small  # the trials are there (about 90% complete)
    assert big == small, (small, big)  # a few bulk reads, whatever the number of trials
    assert big <= 60, big


def test_bulk_rows_are_the_rows_optuna_gives(small_study, tmp_path):
    """The bulk read of Optuna's tables gives the same rows as Optuna's own objects,
    for trials with slimtune's record and for one without (added with plain Optuna)."""
    import optuna
    from optuna.trial import TrialState, create_trial

    from slimtune.studies import Study

    path = tmp_path / "plain.db"
    shutil.copy(small_study, path)
    study = Study.load(NAME, storage=f"sqlite:///{path}")
    try:
        dists = {"plain.bits": optuna.distributions.CategoricalDistribution([32, 8, 4]),
                 "plain.ratio": optuna.distributions.FloatDistribution(0.0, 0.9)}
        study.optuna_study.add_trial(create_trial(
            state=TrialState.COMPLETE, values=[0.5, 0.01], params={"plain.bits": 8, "plain.ratio": 0.25},
            distributions=dists, user_attrs={"size_bytes": 10, "macs": 20, "backend": "plain", "flags": ["x"]},
            system_attrs={"constraints:latency_ms": -1.0}))
        fast = study.trials()
        study._storage.optuna_trials = lambda *_a, fallback: fallback()  # noqa: SLF001 - Optuna's get_trials
        slow = study.trials()
    finally:
        study.close()
    plain = fast[-1]
    assert plain["params"]["plain.bits"] == 8 and plain["backend"] == "plain" and plain["size_bytes"] == 10
    assert plain["constraints"] == {"latency_ms": -1.0}
    assert len(fast) == 201 and json.dumps(fast) == json.dumps(slow)  # same values, same key order


def test_rows_read_with_json_extract_are_the_rows_of_whole_records(small_study, tmp_path):
    """On SQLite a row's six measurement fields are read with ``json_extract``; the rows
    are those built from whole records, also when a measurement holds a NaN (which
    SQLite's JSON parser refuses or reads as null)."""
    from sqlalchemy import create_engine, text

    from slimtune.studies import Study

    path = tmp_path / "nan.db"
    shutil.copy(small_study, path)
    storage = f"sqlite:///{path}"
    study = Study.load(NAME, storage=storage)
    whole = study._storage.candidates  # noqa: SLF001

    def rows(*, light: bool) -> str:
        study._storage.candidates = whole if light else (  # noqa: SLF001
            lambda study_id, numbers=None, measurement_keys=None: whole(study_id, numbers))
        return json.dumps(study.trials())

    try:
        assert rows(light=True) == rows(light=False)
        engine = create_engine(storage)
        with engine.begin() as conn:  # one measurement with a NaN p95, as Measurement's default
            number, measurement = conn.execute(text(
                "SELECT trial_number, measurement FROM slimtune_candidates WHERE state = 'COMPLETE' LIMIT 1")).one()
            changed = {**json.loads(measurement), "latency_p95_ms": float("nan")}
            conn.execute(text("UPDATE slimtune_candidates SET measurement = :m WHERE trial_number = :n"),
                         {"m": json.dumps(changed), "n": number})
        engine.dispose()
        light = rows(light=True)
        assert light == rows(light=False)
        assert math.isnan(next(r for r in json.loads(light) if r["trial"] == number)["latency_p95_ms"])
    finally:
        study.close()


# -- one select rule ---------------------------------------------------------------------------
def test_dashboard_selection_decision_agrees_with_study_select(small_study, tmp_path):
    """A new trial more accurate than the selected one, but beaten by the baseline timed
    in its own run, cannot change ``Study.select``'s answer; the dashboard must not
    think it can.  A new trial that beats both does change it, for both."""
    from optuna.trial import TrialState, create_trial

    from slimtune.studies import Study
    from slimtune.widgets import StudyDashboard

    path = tmp_path / "select.db"
    shutil.copy(small_study, path)
    study = Study.load(NAME, storage=f"sqlite:///{path}")
    dash = StudyDashboard(study, watch=False)
    try:
        assert dash.wait(60)
        chosen = study.select()
        assert dash.candidate.trial == chosen.trial
        base = study.baseline_row()
        assert base["accuracy"] > chosen.accuracy  # synthetic trials are all below the baseline
        beaten = {"accuracy": (chosen.accuracy + base["accuracy"]) / 2, "latency_ms": 2.0,
                  "reference_latency_ms": 1.0}  # more accurate than the choice, twice the baseline's run time
        better = {"accuracy": base["accuracy"] + 0.001, "latency_ms": 0.5, "reference_latency_ms": 1.0}
        for attrs, changes in ((beaten, False), (better, True)):
            number = len(study.optuna_study.get_trials(deepcopy=False))
            study.optuna_study.add_trial(create_trial(
                state=TrialState.COMPLETE, values=[attrs["accuracy"], attrs["latency_ms"]],
                user_attrs={**attrs, "size_bytes": 1000, "macs": 1000}))
            row = next(r for r in study.trials() if r["trial"] == number)
            decision = dash._selection_may_change([row])  # noqa: SLF001 - the decision itself
            now = study.select().trial
            assert decision is changes and (now != chosen.trial) is changes, (attrs, decision, now)
    finally:
        dash.close()
        study.close()


def test_sqlite_studies_commit_without_fsync_in_wal_mode(tmp_path):
    """Both engines of a SQLite study (slimtune's and Optuna's) commit with
    synchronous=NORMAL once the file is in WAL mode (a full fsync per commit was a
    visible share of a short trial); a rollback-journal file keeps SQLite's default."""
    import sqlite3

    from sqlalchemy import create_engine, text

    from slimtune.studies._database import Database, commit_without_fsync_in_wal
    from slimtune.studies._optuna import optuna_storage

    url = f"sqlite:///{tmp_path / 's.db'}"
    db = Database.open(url)
    db.enable_wal()  # what a search does first (read-only commands leave the file alone)
    storage = optuna_storage(url)
    with db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
    with storage.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1
    plain = tmp_path / "plain.db"
    sqlite3.connect(plain).close()
    engine = commit_without_fsync_in_wal(create_engine(f"sqlite:///{plain}"))
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL: not WAL, left alone
