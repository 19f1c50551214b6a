"""The SQLite file of a study deleted or replaced while `slimtune run` trains: the run
stops with one line and exit code 2, and writes nothing more (no record lands in a file
that is not the one it opened).  Real processes, real files: the worker is held at a
fault point (``SLIMTUNE_FAULT=before_eval:sleepN``) while the test changes the file.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests._disk import fill_disk

ROOT = Path(__file__).resolve().parents[1]
TASK = "tests.user_task:make_task"
FAST = ["--epochs", "1", "--latency-repeats", "3", "--no-early-stopping"]
HOLD_S = 20


def _slimtune(*args: str, **env: str) -> subprocess.Popen:
    full = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    return subprocess.Popen([sys.executable, "-m", "slimtune.cli", *args], env=full, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for_fault(proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 300
    for line in proc.stderr:
        if "slimtune-fault: before_eval" in line:
            return
        assert time.monotonic() < deadline
    raise AssertionError(f"never reached the fault point (exit {proc.wait()})")


def _counts(path: Path) -> tuple[int, int]:
    with sqlite3.connect(path) as conn:
        counts = (conn.execute("SELECT COUNT(*) FROM trials").fetchone()[0],
                  conn.execute("SELECT COUNT(*) FROM slimtune_candidates").fetchone()[0])
    conn.close()
    return counts


@pytest.fixture(scope="module")
def study_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("faults") / "made.db"
    made = _slimtune("run", "--study", "f", "--task", TASK, "--trials", "1", "--seed", "0", *FAST, "--json",
                     "--storage", f"sqlite:///{path}")
    out, err = made.communicate(timeout=600)
    assert made.returncode == 0, err[-3000:]
    return path


@pytest.mark.parametrize("change", ["deleted", "replaced"])
def test_a_study_file_changed_during_a_run_stops_it_with_one_line(study_file, tmp_path, change):
    path = tmp_path / "s.db"
    shutil.copy(study_file, path)
    snapshot = tmp_path / "snapshot.db"
    shutil.copy(study_file, snapshot)  # the same study, as a backup of it would be: another file
    run = _slimtune("run", "--study", "f", "--task", TASK, "--trials", "2", "--json", "--storage", f"sqlite:///{path}",
                    SLIMTUNE_FAULT=f"before_eval:sleep{HOLD_S}")
    _wait_for_fault(run)
    for side in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        side.unlink(missing_ok=True)
    if change == "replaced":
        shutil.copy(snapshot, path)
    out, err = run.communicate(timeout=600)
    lines = err.strip().splitlines()
    assert run.returncode == 2 and len(lines) == 1 and lines[0].startswith("Error: "), err[-3000:]
    assert f"was {change}" in lines[0] and "during the run" in lines[0] and "Traceback" not in err
    assert "trials trained" not in out
    if change == "replaced":
        assert _counts(path) == _counts(snapshot)  # nothing written into the file that replaced it


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MiB tmpfs mounted in a temporary directory (root only), unmounted after."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    where = tmp_path / "disk"
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(where)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_a_full_disk_is_named_by_its_line(small_disk):
    """A real SQLite write on a full tmpfs: the line says ``disk full`` (fast: the run's
    end to end version is below)."""
    from slimtune._storage_faults import storage_fault

    path = small_disk / "s.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (x BLOB)")
    conn.commit()
    assert fill_disk(small_disk / "filler") == 28  # ENOSPC
    with pytest.raises(sqlite3.OperationalError) as caught:
        conn.execute("INSERT INTO t VALUES (?)", (os.urandom(100_000),))
        conn.commit()
    conn.close()
    line = storage_fault(caught.value, f"sqlite:///{path}")
    assert line == f"disk full: could not write to sqlite:///{path} (database or disk is full)", line


def test_a_file_size_limit_is_named_by_its_line(tmp_path):
    """SQLite says only ``disk I/O error`` when a write passes ``ulimit -f``; the line
    names the limit (a real child process with the limit set, a real SQLite file)."""
    path = tmp_path / "s.db"
    child = subprocess.run([sys.executable, "-c", f"""
import os, resource, sqlite3
from slimtune._storage_faults import storage_fault
conn = sqlite3.connect({str(path)!r})
conn.execute("PRAGMA journal_mode=WAL"); conn.execute("CREATE TABLE t (x BLOB)"); conn.commit()
limit = os.path.getsize({str(path)!r} + "-wal")
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
try:
    conn.execute("INSERT INTO t VALUES (?)", (os.urandom(100_000),)); conn.commit()
except sqlite3.OperationalError as exc:
    print(str(exc)); print(storage_fault(exc, "sqlite:///{path}"))
"""], env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120)
    said, line = child.stdout.strip().splitlines()
    assert said == "disk I/O error", child.stdout + child.stderr
    assert line.startswith("file size limit reached (ulimit -f: ") and f"could not write to sqlite:///{path}" in line


def _run_paused_in_trial_1(study_file: Path, folder: Path) -> tuple[Path, str, subprocess.Popen]:
    """A copy of the one-trial study in ``folder`` and a `run` of its trial 1, waiting
    before that trial's training (each trial sleeps 2 s there)."""
    path = folder / "s.db"
    shutil.copy(study_file, path)
    url = f"sqlite:///{path}"
    run = _slimtune("run", "--study", "f", "--task", TASK, "--trials", "2", "--json", "--storage", url,
                    SLIMTUNE_FAULT="before_eval:sleep2")
    _wait_for_fault(run)
    return path, url, run


def _one_error_line(run: subprocess.Popen) -> tuple[str, str]:
    """The run's stdout and its one stderr line (the fault hook's notes aside): exit 2,
    no traceback."""
    out, err = run.communicate(timeout=600)
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("slimtune-fault:")]
    assert run.returncode == 2 and len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return out, lines[0]


def _intact_rows(path: Path, query: str) -> list[tuple]:
    """``query``'s rows from the SQLite file at ``path``, once ``PRAGMA integrity_check`` says ok."""
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = conn.execute(query).fetchall()
    conn.close()
    return rows


@pytest.mark.slow
def test_a_full_disk_stops_the_run_with_one_line_and_keeps_the_database(study_file, small_disk):
    """The disk holding the study file fills while trial 1 trains: exit 2, one line that
    says the disk is full, the file intact with trial 0; once space is freed the same
    command resumes, fails the trial that could not be written and trains the asked ones."""
    path, url, run = _run_paused_in_trial_1(study_file, small_disk)
    assert fill_disk(small_disk / "filler") == 28  # ENOSPC
    out, line = _one_error_line(run)
    assert line.startswith(f"Error: disk full: could not write to {url}"), line
    assert "trials trained" not in out
    (small_disk / "filler").unlink()
    states = dict(_intact_rows(path, "SELECT number, state FROM trials"))
    kept = _intact_rows(path, "SELECT trial_number, state FROM slimtune_candidates")
    assert states == {0: "COMPLETE", 1: "RUNNING"} and kept == [(0, "COMPLETE")], (states, kept)

    again = _slimtune("run", "--study", "f", "--task", TASK, "--trials", "2", "--json", "--storage", url)
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err[-3000:]
    states = dict(_intact_rows(path, "SELECT number, state FROM trials"))
    assert states == {0: "COMPLETE", 1: "FAIL", 2: "COMPLETE", 3: "COMPLETE"}, states


@pytest.mark.slow
def test_a_file_size_limit_stops_the_run_with_one_line_that_names_it(study_file, tmp_path):
    """``ulimit -f`` reached while trial 1 is recorded (set on the running process with
    ``prlimit``): SQLite only says ``disk I/O error``; the line names the limit, exit 2,
    and the file stays intact with trial 0."""
    if shutil.which("prlimit") is None:
        pytest.skip("prlimit (util-linux) is not installed")
    path, url, run = _run_paused_in_trial_1(study_file, tmp_path)
    limit = Path(f"{path}-wal").stat().st_size
    subprocess.run(["prlimit", f"--pid={run.pid}", f"--fsize={limit}:{limit}"], check=True)
    _, line = _one_error_line(run)
    assert line.startswith(f"Error: file size limit reached (ulimit -f: {limit} bytes): could not write to {url}"), line
    assert _intact_rows(path, "SELECT trial_number, state FROM slimtune_candidates") == [(0, "COMPLETE")]
