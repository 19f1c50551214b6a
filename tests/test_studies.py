"""The study database and the frontier on plain data (no training)."""

from __future__ import annotations

import hashlib
import itertools
import random
import sqlite3

import optuna
import pytest
from sqlalchemy import inspect

from slimtune.studies import Database, SchemaVersionError, Study, StudyError, hypervolume, mask_url, non_dominated
from slimtune._dominance import dominates, loss_vector, non_dominated_mask
from slimtune.studies._frontier import check_objectives
from slimtune.studies._schema import SCHEMA_VERSION

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _brute_force_front(rows, objectives):
    losses = [loss_vector(r, objectives) for r in rows]
    return [r for r, a in zip(rows, losses) if not any(all(x <= y for x, y in zip(b, a)) and b != a for b in losses)]


# -- non-dominated rows ------------------------------------------------------------
def test_non_dominated_small_example():
    rows = [
        {"trial": 0, "accuracy": 0.90, "latency_ms": 1.0},
        {"trial": 1, "accuracy": 0.80, "latency_ms": 2.0},  # dominated by 0
        {"trial": 2, "accuracy": 0.95, "latency_ms": 3.0},
        {"trial": 3, "accuracy": 0.70, "latency_ms": 0.5},
        {"trial": 4, "accuracy": 0.90, "latency_ms": 1.0},  # equal to 0: both kept
        {"trial": 5, "accuracy": 0.95, "latency_ms": 3.5},  # dominated by 2 (same accuracy, slower)
        {"trial": 6, "accuracy": float("nan"), "latency_ms": 0.1},  # never on the front
    ]
    front = [r["trial"] for r in non_dominated(rows, ("accuracy", "latency_ms"))]
    assert front == [0, 2, 3, 4]


@pytest.mark.parametrize("objectives", [("accuracy", "latency_ms"), ("accuracy", "latency_ms", "size_bytes")])
def test_non_dominated_matches_brute_force_and_optuna(objectives):
    rng = random.Random(0)
    for _ in range(20):
        rows = [{"trial": i, "accuracy": rng.choice([0.5, 0.7, 0.9, rng.random()]), "latency_ms": rng.choice([1.0, 2.0, rng.random()]),
                 "size_bytes": rng.randrange(5)} for i in range(rng.randrange(1, 25))]
        mine = [r["trial"] for r in non_dominated(rows, objectives)]
        assert mine == [r["trial"] for r in _brute_force_front(rows, objectives)]
        study = optuna.create_study(directions=["maximize"] + ["minimize"] * (len(objectives) - 1))
        for r in rows:
            study.add_trial(optuna.trial.create_trial(values=[float(r[o]) for o in objectives]))
        assert sorted(mine) == sorted(t.number for t in study.best_trials)


def test_dominates_and_mask():
    assert dominates((0, 0), (0, 1)) and not dominates((0, 1), (0, 1)) and not dominates((0, 2), (1, 1))
    assert non_dominated_mask([], ("accuracy", "latency_ms")) == []
    assert non_dominated_mask([{"accuracy": 1.0}], ("accuracy", "latency_ms")) == [False]  # missing objective


def test_check_objectives():
    assert check_objectives("accuracy, size_bytes") == ("accuracy", "size_bytes")
    for bad in (["latency_ms"], ["accuracy"], ["accuracy", "speed"], ["accuracy", "macs", "macs"]):
        with pytest.raises(StudyError):
            check_objectives(bad)


# -- hypervolume -------------------------------------------------------------------
def test_hypervolume_2d_and_3d():
    assert hypervolume([(1, 1)], (2, 2)) == pytest.approx(1.0)
    # staircase: (0,2),(1,1),(2,0) inside ref (3,3): 3*1 + 2*1 + 1*1 = 6
    assert hypervolume([(0, 2), (1, 1), (2, 0)], (3, 3)) == pytest.approx(6.0)
    # dominated and outside points add nothing
    assert hypervolume([(0, 2), (1, 1), (2, 0), (2, 2), (5, -1)], (3, 3)) == pytest.approx(6.0)
    assert hypervolume([], (1, 1)) == 0.0
    assert hypervolume([(0, 0, 0)], (1, 2, 3)) == pytest.approx(6.0)
    # two overlapping boxes in 3-D: 1*1*2 + 2*1*1 - 1*1*1 = 3
    assert hypervolume([(0, 0, 1), (0, 1, 0)], (1, 2, 2)) == pytest.approx(3.0)


def test_hypervolume_matches_grid_count():
    rng = random.Random(1)
    pts = [(rng.randrange(6), rng.randrange(6)) for _ in range(8)]
    count = sum(1 for x, y in itertools.product(range(6), range(6)) if any(px <= x and py <= y for px, py in pts))
    assert hypervolume(pts, (6, 6)) == pytest.approx(count)


# -- the database ------------------------------------------------------------------
def test_mask_url_hides_passwords():
    assert mask_url("postgresql://bob:s3cret@db.example/st") == "postgresql://bob:***@db.example/st"
    assert "s3cret" not in mask_url("not a url bob:s3cret@host")
    assert mask_url("sqlite:///slimtune.db") == "sqlite:///slimtune.db"


def test_database_creates_prefixed_tables_with_version(tmp_path):
    url = f"sqlite:///{tmp_path / 'st.db'}"
    db = Database.open(url)
    with db.session():
        pass
    tables = set(inspect(db.engine).get_table_names())
    db.dispose()
    assert tables == {"slimtune_schema_version", "slimtune_studies", "slimtune_candidates", "slimtune_weights",
                      "slimtune_warm_starts", "slimtune_target_measurements",
                      "slimtune_fidelities"}
    with sqlite3.connect(tmp_path / "st.db") as conn:
        assert conn.execute("select version from slimtune_schema_version").fetchall() == [(SCHEMA_VERSION,)]
    # opening again changes nothing and keeps the version
    Database.open(url).dispose()


def test_session_rolls_back_on_error(tmp_path):
    from slimtune.studies._schema import SchemaVersion

    db = Database.open(f"sqlite:///{tmp_path / 'st.db'}")
    with pytest.raises(RuntimeError):
        with db.session() as session:
            session.get(SchemaVersion, 1).version = 1234
            raise RuntimeError("boom")
    with db.session() as session:
        assert session.get(SchemaVersion, 1).version == SCHEMA_VERSION
    db.dispose()


def test_missing_database_is_not_created_for_reading(tmp_path):
    path = tmp_path / "absent.db"
    with pytest.raises(StudyError, match="No study database"):
        Database.open(f"sqlite:///{path}", create=False)
    with pytest.raises(StudyError, match="No study database"):
        Study.load("x", storage=f"sqlite:///{path}")
    assert not path.exists()


def test_bad_storage_urls_are_study_errors(tmp_path):
    with pytest.raises(StudyError, match="Bad storage URL"):
        Database.open("nosuchdb://u:pw@host/db")
    with pytest.raises(StudyError) as info:
        Database.open("nosuchdb://u:topsecret@host/db")
    assert "topsecret" not in str(info.value)
    with pytest.raises(StudyError, match="does not exist"):
        Database.open(f"sqlite:///{tmp_path / 'no' / 'dir.db'}")


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_newer_schema_is_refused_and_not_altered(tmp_path):
    path = tmp_path / "future.db"
    Database.open(f"sqlite:///{path}").dispose()
    with sqlite3.connect(path) as conn:
        conn.execute("update slimtune_schema_version set version = ?, slimtune_version = '9.9'", (SCHEMA_VERSION + 1,))
    before = _digest(path)
    for create in (True, False):
        with pytest.raises(SchemaVersionError, match="newer"):
            Database.open(f"sqlite:///{path}", create=create)
    with pytest.raises(SchemaVersionError):
        Study.create_or_load("s", storage=f"sqlite:///{path}", task="tests.user_task:make_task")
    assert _digest(path) == before


def test_create_or_load_without_task_writes_nothing(tmp_path):
    path = tmp_path / "new.db"
    with pytest.raises(StudyError):
        Study.create_or_load("s", storage=f"sqlite:///{path}")
    assert not path.exists()


def test_bad_arguments_fail_before_the_database(tmp_path):
    path = tmp_path / "new.db"
    url = f"sqlite:///{path}"
    for kwargs in ({"objectives": ["accuracy"]}, {"max_latency_ms": -1}, {"settings": {"runtime": "tvm"}},
                   {"settings": {"nope": 1}}, {"sampler": "cmaes"}, {"early_stopping": "yes"}):
        with pytest.raises(ValueError):
            Study.create_or_load("s", storage=url, task="tests.user_task:make_task", **kwargs)
    assert not path.exists()
