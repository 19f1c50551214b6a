"""Crashes, interrupts and parallel workers: every asked trial ends COMPLETE, PRUNED or
FAIL, nothing completed is lost, every view agrees.

Faults are injected in-process (exceptions) and in real worker processes
(``SLIMTUNE_FAULT=POINT:sleep`` holds a worker at a chosen point; the test then kills
or signals it).  Heartbeats are shortened to 1 s / grace 2 s through the environment.
"""

from __future__ import annotations

import os
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest

from slimtune import Study
from slimtune.studies import list_studies

optuna.logging.set_verbosity(optuna.logging.WARNING)

ROOT = Path(__file__).resolve().parents[1]
FAST = {"epochs": 1, "latency_repeats": 5, "latency_warmup": 2, "calibration_size": 64}
CHEAP = {"prune.ratio": 0.0, "quant.mode": "ptq"}  # no recovery epochs after distillation
# the runs below use fidelity="full": one trial per call (how rung 0 and promotions recover:
# tests/test_fidelity.py)
HEARTBEAT = {"SLIMTUNE_HEARTBEAT_INTERVAL": "1", "SLIMTUNE_HEARTBEAT_GRACE": "2"}
GRACE_S = 2


@pytest.fixture
def short_heartbeats(monkeypatch):
    for key, value in HEARTBEAT.items():
        monkeypatch.setenv(key, value)


def _optuna_states(storage: str, name: str) -> dict[int, str]:
    study = optuna.load_study(study_name=name, storage=storage)
    return {t.number: t.state.name for t in study.get_trials(deepcopy=False)}


def _create(storage: str, name: str, **kwargs) -> None:
    Study.create_or_load(name, storage=storage, task="digits", settings=FAST, fixed=CHEAP, seed=0,
                         early_stopping=False, **kwargs).close()


def _integrity(path: Path) -> str:
    with sqlite3.connect(path) as conn:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]


class Worker:
    """``slimtune run`` in a real process, its stderr read by a thread (so the test can
    wait for the ``slimtune-fault: POINT`` line without blocking)."""

    def __init__(self, args: list[str], cwd: Path, **env: str) -> None:
        full_env = {**os.environ, "PYTHONPATH": str(ROOT), **HEARTBEAT, **env}
        self.proc = subprocess.Popen([sys.executable, "-m", "slimtune.cli", "run", *args], cwd=cwd, env=full_env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.stderr.append(line)
            self.lines.put(line)

    def wait_for(self, point: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=1)
            except queue.Empty:
                assert self.proc.poll() is None, "worker exited early:\n" + "".join(self.stderr)[-3000:]
                continue
            if f"slimtune-fault: {point}" in line:
                return
        raise AssertionError(f"worker never reached {point}:\n" + "".join(self.stderr)[-3000:])

    def finish(self, timeout: float = 600) -> tuple[int, str]:
        self.proc.wait(timeout=timeout)
        time.sleep(0.2)  # the reader thread drains stderr
        return self.proc.returncode, "".join(self.stderr)


# -- in-process: exceptions injected after `ask` ---------------------------------------
def test_every_asked_trial_ends_whatever_raises(tmp_path, short_heartbeats, monkeypatch):
    storage = f"sqlite:///{tmp_path / 'inject.db'}"
    st = Study.create_or_load("inject", storage=storage, task="digits", settings=FAST, fixed=CHEAP, seed=0,
                              early_stopping=True)

    # 1. the early-stopping read fails (between `ask` and training)
    def unreadable(costs):
        raise RuntimeError("frontier unreadable")

    st.frontier_points = unreadable
    (row,) = st.optimize(n_trials=1, progress=False, fidelity="full")
    assert row["state"] == "FAIL" and "frontier unreadable" in row["error"]

    # 2. Ctrl-C there: the trial is failed with the reason, then the interrupt goes on
    def interrupted(costs):
        raise KeyboardInterrupt

    st.frontier_points = interrupted
    with pytest.raises(KeyboardInterrupt):
        st.optimize(n_trials=1, progress=False, fidelity="full")
    del st.frontier_points

    # 3. the sampler raises while sampling (Optuna's `ask` has created the trial by then)
    class BrokenSampler(optuna.samplers.RandomSampler):
        def sample_independent(self, *args, **kwargs):
            raise RuntimeError("sampler broke")

    (row,) = st.optimize(n_trials=1, progress=False, fidelity="full", sampler=BrokenSampler())
    assert row["state"] == "FAIL" and "sampler broke" in row["error"]

    # 4. right after `ask`, before the first heartbeat
    monkeypatch.setenv("SLIMTUNE_FAULT", "after_ask:raise")
    (row,) = st.optimize(n_trials=1, progress=False, fidelity="full")
    assert row["state"] == "FAIL" and "injected fault at after_ask" in row["error"]
    monkeypatch.delenv("SLIMTUNE_FAULT")

    # 5. a failed candidate whose record cannot be written: Optuna is told FAIL and
    #    the error surfaces
    def unwritable(outcome):
        raise RuntimeError("disk full")

    monkeypatch.setenv("SLIMTUNE_FAULT", "before_eval:raise")
    st.record = unwritable
    with pytest.raises(RuntimeError, match="disk full"):
        st.optimize(n_trials=1, progress=False, fidelity="full")
    del st.record
    monkeypatch.delenv("SLIMTUNE_FAULT")

    # the search goes on: the next trial completes
    (row,) = st.optimize(n_trials=1, progress=False, fidelity="full")
    assert row["state"] == "COMPLETE", row.get("error")
    states = _optuna_states(storage, "inject")
    assert states == {0: "FAIL", 1: "FAIL", 2: "FAIL", 3: "FAIL", 4: "FAIL", 5: "COMPLETE"}
    rows = {r["trial"]: r for r in st.trials()}
    assert rows[1]["error"] == "interrupted (KeyboardInterrupt)"
    assert [rows[n]["state"] for n in range(6)] == [states[n] for n in range(6)]
    summary = {s["name"]: s for s in list_studies(storage)}["inject"]
    assert (summary["complete"], summary["failed"], summary["trials"]) == (1, 5, 6)
    st.close()


def test_trial_failed_as_stale_after_its_record_stays_complete_everywhere(tmp_path, short_heartbeats):
    """Optuna fails a trial as stale between slimtune's record and `tell` (another
    worker's stale-trial detection while this machine slept past the grace period):
    `show`, `studies`, `select` and `export` all keep the recorded model."""
    storage = f"sqlite:///{tmp_path / 'stale.db'}"
    st = Study.create_or_load("stale", storage=storage, task="digits", settings=FAST, fixed=CHEAP, seed=0,
                              early_stopping=False)
    record = st.record

    def record_then_failed_elsewhere(outcome):
        row = record(outcome)
        other = optuna.load_study(study_name="stale", storage=storage)
        other.tell(outcome.number, state=optuna.trial.TrialState.FAIL)  # what a stale-trial sweep does
        return row

    st.record = record_then_failed_elsewhere
    st.optimize(n_trials=1, progress=False, fidelity="full")
    del st.record
    assert _optuna_states(storage, "stale") == {0: "FAIL"}
    (row,) = st.trials()
    assert row["state"] == "COMPLETE" and row["optuna_state"] == "FAIL" and row["pareto"]
    summary = {s["name"]: s for s in list_studies(storage)}["stale"]
    assert (summary["complete"], summary["failed"]) == (1, 0)
    assert st.select(min_accuracy=0.0).row["trial"] == 0
    assert st.candidate(0).export(tmp_path / "t0.onnx").stat().st_size > 0
    st.close()


# -- real processes: SIGKILL at chosen points --------------------------------------------
@pytest.mark.slow
def test_killed_workers_trials_are_failed_and_counted(tmp_path, short_heartbeats):
    """One worker killed between `ask` and its first heartbeat (Optuna's stale-trial
    detection skips such a trial), one killed while its heartbeat runs: both trials are
    failed when the study next runs, and `studies` counts them as `show` does."""
    path = tmp_path / "kill.db"
    storage = f"sqlite:///{path}"
    _create(storage, "kill")
    args = ["--study", "kill", "--trials", "1", "--fidelity", "full", "--storage", storage]
    early = Worker(args, tmp_path, SLIMTUNE_FAULT="after_ask:sleep")
    early.wait_for("after_ask")
    late = Worker(args, tmp_path, SLIMTUNE_FAULT="before_eval:sleep")
    late.wait_for("before_eval")
    for w in (early, late):
        w.proc.kill()
        w.finish()
    # the second worker may already have failed the first one's trial (older than the grace period)
    assert _optuna_states(storage, "kill")[1] == "RUNNING"
    assert _integrity(path) == "ok"
    time.sleep(GRACE_S + 1.5)

    st = Study.load("kill", storage=storage)
    (row,) = st.optimize(n_trials=1, progress=False, fidelity="full")  # the study is next run
    assert row["state"] == "COMPLETE", row.get("error")
    states = _optuna_states(storage, "kill")
    assert sorted(states.values()) == ["COMPLETE", "FAIL", "FAIL"], states
    rows = st.trials()
    failed = [r for r in rows if r["state"] == "FAIL"]
    assert len(failed) == 2 and all("worker stopped" in r["error"] for r in failed)
    summary = {s["name"]: s for s in list_studies(storage)}["kill"]
    assert (summary["trials"], summary["complete"], summary["failed"], summary["running"]) == (3, 1, 2, 0)
    st.close()
    assert _integrity(path) == "ok"


@pytest.mark.slow
def test_kill_between_record_and_tell_loses_nothing(tmp_path, short_heartbeats):
    """Killed after slimtune's record is committed and before Optuna's `tell`: every
    view shows the trial COMPLETE; the next run tells Optuna the recorded values; the
    model can be selected and exported."""
    path = tmp_path / "tell.db"
    storage = f"sqlite:///{path}"
    _create(storage, "tell")
    worker = Worker(["--study", "tell", "--trials", "1", "--fidelity", "full", "--storage", storage], tmp_path,
                    SLIMTUNE_FAULT="before_tell:sleep")
    worker.wait_for("before_tell")
    worker.proc.kill()
    worker.finish()
    assert _optuna_states(storage, "tell") == {0: "RUNNING"}
    time.sleep(GRACE_S + 1.5)  # long enough for Optuna's stale-trial detection to fail it

    st = Study.load("tell", storage=storage)
    (before,) = st.trials()
    assert before["state"] == "COMPLETE"
    assert {s["name"]: s for s in list_studies(storage)}["tell"]["complete"] == 1
    st.optimize(n_trials=1, progress=False, fidelity="full")
    trial0 = optuna.load_study(study_name="tell", storage=storage).trials[0]
    assert trial0.state.name == "COMPLETE"
    # told from the record as the study tells its samplers: latency as its same-run ratio
    assert trial0.values == [before["accuracy"], before["latency_ms"] / before["reference_latency_ms"]]
    row0 = st.trials()[0]
    assert row0["state"] == "COMPLETE" and row0["accuracy"] == before["accuracy"]
    summary = {s["name"]: s for s in list_studies(storage)}["tell"]
    assert (summary["complete"], summary["failed"]) == (sum(r["state"] == "COMPLETE" for r in st.trials()), 0)
    assert st.select(min_accuracy=0.0).row["trial"] in (0, 1)
    out = st.candidate(0).export(tmp_path / "trial0.onnx")
    assert out.stat().st_size > 0
    st.close()
    assert _integrity(path) == "ok"


@pytest.mark.slow
def test_sigterm_and_sigint_fail_the_trial_with_the_reason(tmp_path):
    path = tmp_path / "signals.db"
    storage = f"sqlite:///{path}"
    _create(storage, "signals")
    args = ["--study", "signals", "--trials", "1", "--fidelity", "full", "--storage", storage]
    results = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        worker = Worker(args, tmp_path, SLIMTUNE_FAULT="before_eval:sleep")
        worker.wait_for("before_eval")
        worker.proc.send_signal(sig)
        results[sig] = worker.finish(timeout=120)
    (rc_term, err_term), (rc_int, err_int) = results[signal.SIGTERM], results[signal.SIGINT]
    assert rc_term == 143 and rc_int == 130
    for err, name in ((err_term, "SIGTERM"), (err_int, "SIGINT")):
        assert "Traceback" not in err
        assert f"Interrupted by {name}" in err
    assert _optuna_states(storage, "signals") == {0: "FAIL", 1: "FAIL"}
    st = Study.load("signals", storage=storage)
    assert [r["error"] for r in st.trials()] == ["interrupted (SIGTERM)", "interrupted (SIGINT)"]
    st.close()
    assert _integrity(path) == "ok"


# -- parallel workers on SQLite ------------------------------------------------------------
@pytest.mark.slow
def test_two_sqlite_workers_run_exactly_the_asked_trials(tmp_path):
    path = tmp_path / "workers.db"
    storage = f"sqlite:///{path}"
    _create(storage, "workers")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "slimtune.cli", "run", "--study", "workers", "--trials", "4",
                           "--workers", "2", "--seed", "3", "--fidelity", "full", "--storage", storage], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("[worker 0] trial") == 2 and done.stdout.count("[worker 1] trial") == 2
    assert "Frontier:" in done.stdout
    states = _optuna_states(storage, "workers")
    assert states == {0: "COMPLETE", 1: "COMPLETE", 2: "COMPLETE", 3: "COMPLETE"}
    with sqlite3.connect(path) as conn:
        numbers = [n for (n,) in conn.execute("SELECT trial_number FROM slimtune_candidates ORDER BY trial_number")]
        weights = conn.execute("SELECT COUNT(*) FROM slimtune_weights").fetchone()[0]
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    assert numbers == [0, 1, 2, 3] and weights == 4
    assert mode == "wal"
    assert _integrity(path) == "ok"


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGHUP, 129)], ids=["ctrl-c", "closed-terminal"])
def test_a_signal_stops_every_worker_cleanly(tmp_path, sig, code):
    """SIGINT (Ctrl-C) or SIGHUP (the terminal closed) to `run --workers 2` reaches each
    worker once: each records its running trial as interrupted by it; the parent says so
    once and exits 130 or 129."""
    name = sig.name
    path = tmp_path / "stop.db"
    storage = f"sqlite:///{path}"
    _create(storage, "stop")
    parent = Worker(["--study", "stop", "--trials", "2", "--workers", "2", "--fidelity", "full", "--storage", storage], tmp_path,
                    SLIMTUNE_FAULT="before_eval:sleep")
    parent.wait_for("before_eval")
    parent.wait_for("before_eval")
    parent.proc.send_signal(sig)
    rc, err = parent.finish(timeout=120)
    assert rc == code, err[-3000:]
    assert "Traceback" not in err and err.count(f"Interrupted by {name}") == 1, err  # said once, by the parent
    assert _optuna_states(storage, "stop") == {0: "FAIL", 1: "FAIL"}
    with Study.load("stop", storage=storage) as st:
        assert [r["error"] for r in st.trials()] == [f"interrupted ({name})"] * 2
    assert _integrity(path) == "ok"


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the children from /proc")
def test_workers_die_with_a_parent_killed_outright(tmp_path):
    """SIGKILL to the parent of `run --workers 2` (no handler runs): its workers do not
    train on as orphans; each records its running trial as interrupted and ends."""
    path = tmp_path / "orphans.db"
    storage = f"sqlite:///{path}"
    _create(storage, "orphans")
    parent = Worker(["--study", "orphans", "--trials", "2", "--workers", "2", "--fidelity", "full", "--storage", storage], tmp_path,
                    SLIMTUNE_FAULT="before_eval:sleep")
    parent.wait_for("before_eval")
    parent.wait_for("before_eval")
    pid = parent.proc.pid
    children = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    assert len(children) == 2
    parent.proc.kill()
    parent.finish(timeout=60)
    deadline = time.monotonic() + 120
    while any(_alive(c) for c in children) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not any(_alive(c) for c in children), "workers still run after their parent was killed"
    assert _optuna_states(storage, "orphans") == {0: "FAIL", 1: "FAIL"}
    with Study.load("orphans", storage=storage) as st:
        assert [r["error"] for r in st.trials()] == ["interrupted (SIGTERM)"] * 2
    assert _integrity(path) == "ok"
