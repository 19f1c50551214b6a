"""A real PostgreSQL server stopped under a running `slimtune run`: a short outage is
ridden out (the connection is retried, ``$SLIMTUNE_STORAGE_RETRY_S``) and the run
completes its trials; a longer one ends the run with one ``Error:`` line and exit code 2,
and the next run on the study fails the trial that was in flight and trains the asked
ones (nothing stays RUNNING).  The worker is held at a fault point
(``SLIMTUNE_FAULT=before_eval:sleepN``) while the test stops the server.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

ROOT = Path(__file__).resolve().parents[1]
TASK = "tests.user_task:make_task"
FAST = ["--epochs", "1", "--latency-repeats", "3", "--no-early-stopping"]
pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def server(postgres_server):
    return postgres_server


def _run(url: str, study: str, trials: int, **env: str) -> subprocess.Popen:
    full = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    return subprocess.Popen([sys.executable, "-m", "slimtune.cli", "run", "--study", study, "--task", TASK,
                             "--trials", str(trials), "--seed", "0", *FAST, "--fidelity", "full", "--storage", url],
                            env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _held(proc: subprocess.Popen, times: int) -> list[str]:
    """Read stderr until the worker reached ``before_eval`` the ``times``-th time."""
    seen, lines, deadline = 0, [], time.monotonic() + 300
    for line in proc.stderr:
        lines.append(line)
        if "slimtune-fault: before_eval" in line:
            seen += 1
            if seen == times:
                return lines
        assert time.monotonic() < deadline
    raise AssertionError(f"never reached the fault point (exit {proc.wait()}):\n{''.join(lines)[-3000:]}")


def _states(url: str, study: str) -> dict[int, str]:
    trials = optuna.load_study(study_name=study, storage=url).get_trials(deepcopy=False)
    return {t.number: t.state.name for t in trials}


def test_a_short_outage_is_ridden_out(server):
    """The server goes down while trial 0 trains and stays down until the run is waiting
    for it (``Lost the connection ... retrying``); back within the retry window, the run
    reconnects (``Reconnected``), ends with exit 0 and both asked trials COMPLETE."""
    run = _run(server.url, "ride", 2, SLIMTUNE_FAULT="before_eval:sleep2", SLIMTUNE_STORAGE_RETRY_S="60")
    before = _held(run, 1)
    try:
        server.stop()
        for line in run.stderr:  # the worker wakes, trains and tries to record: it waits
            before.append(line)
            if "Lost the connection to" in line:
                break
        time.sleep(2)  # a few attempts fail meanwhile
    finally:
        server.start()
    out, err = run.communicate(timeout=600)
    err = "".join(before) + err
    assert run.returncode == 0, err[-3000:]
    assert "Lost the connection to" in err and "retrying for up to 60 s" in err, err[-3000:]
    assert "Reconnected to" in err and "Traceback" not in err, err[-3000:]
    assert _states(server.url, "ride") == {0: "COMPLETE", 1: "COMPLETE"}


@pytest.mark.slow
def test_a_long_outage_ends_the_run_and_the_next_run_fails_the_trial_in_flight(server):
    """Retry window 2 s, server down until the run gave up: exit 2, one ``Error:`` line
    naming the lost connection, no traceback; trial 1 (in flight) is left RUNNING by a
    process that is gone, and the next run fails it and trains its asked trial."""
    run = _run(server.url, "outage", 2, SLIMTUNE_FAULT="before_eval:sleep2", SLIMTUNE_STORAGE_RETRY_S="2")
    before = _held(run, 2)  # trial 0 complete, trial 1 held
    try:
        server.stop()
        out, err = run.communicate(timeout=300)
    finally:
        server.start()
    err = "".join(before) + err
    errors = [ln for ln in err.splitlines() if ln.startswith("Error: ")]
    assert run.returncode == 2 and len(errors) == 1 and "Traceback" not in err, err[-3000:]
    assert errors[0].startswith("Error: lost the connection to postgresql+psycopg://"), errors
    assert "trials trained" not in out
    assert _states(server.url, "outage") == {0: "COMPLETE", 1: "RUNNING"}  # its worker could not write

    again = _run(server.url, "outage", 1)
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err[-3000:]
    assert _states(server.url, "outage") == {0: "COMPLETE", 1: "FAIL", 2: "COMPLETE"}
    trial = optuna.load_study(study_name="outage", storage=server.url).trials[1]
    assert "worker stopped" in trial.user_attrs.get("error", ""), trial.user_attrs


@pytest.mark.slow
def test_a_trial_cut_by_an_outage_is_failed_with_the_cause(server, monkeypatch):
    """The server stops while a trial is between two statements of a transaction (here:
    the early-stopping read, done on a connection opened before): Optuna raises its
    ``StorageInternalError ... e.g. exceeding max length``; the trial is failed with the
    real cause (``lost the connection to ...``) once the server is back, and the search
    goes on."""
    import threading

    from slimtune import Study

    monkeypatch.setenv("SLIMTUNE_STORAGE_RETRY_S", "60")
    st = Study.create_or_load("cut", storage=server.url, task="digits", early_stopping=True, seed=0,
                              settings={"epochs": 1, "latency_repeats": 3, "latency_warmup": 1,
                                        "calibration_size": 64},
                              fixed={"prune.ratio": 0.0, "quant.mode": "ptq"})
    other = optuna.storages.RDBStorage(server.url, skip_table_creation=True)
    other.get_all_studies()  # connected before the outage

    def cut(costs):
        server.stop()
        threading.Timer(3.0, server.start).start()
        other.get_all_studies()  # raises: the server is gone

    try:
        st.frontier_points = cut
        (row,) = st.optimize(n_trials=1, progress=False)
        assert row["state"] == "FAIL", row
        assert row["error"].startswith(f"lost the connection to {server.url}"), row["error"]
        del st.frontier_points
        assert st.optimize(n_trials=1, progress=False)[0]["state"] == "COMPLETE"
    finally:
        st.close()
        other.engine.dispose()
    assert _states(server.url, "cut") == {0: "FAIL", 1: "COMPLETE"}
