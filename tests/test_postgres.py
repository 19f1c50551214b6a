"""Several workers on one study in a real PostgreSQL server (Debian's postgresql).

The server is started by the test itself in a temporary directory on 127.0.0.1 and
stopped afterwards; without the server binaries the test is skipped with the reason.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def postgres_url(postgres_server):
    return postgres_server.url


def test_two_workers_join_one_study(postgres_url, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "slimtune.cli", "run", "--study", "pg-study", "--task", "digits", "--trials", "2",
           "--storage", postgres_url, "--epochs", "1", "--latency-repeats", "5", "--no-early-stopping"]
    workers = [subprocess.Popen([*cmd, "--seed", str(seed)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for seed in (0, 1)]
    outputs = [w.communicate(timeout=600) for w in workers]
    for w, (out, err) in zip(workers, outputs):
        assert w.returncode == 0, err[-2000:]
    study = optuna.load_study(study_name="pg-study", storage=postgres_url)
    trials = study.get_trials(deepcopy=False)
    free = [t for t in trials if (t.user_attrs.get("fidelity") or {}).get("epochs") == 0]
    assert len(trials) == 5 and len(free) == 1, [t.user_attrs.get("fidelity") for t in trials]  # rung 0: once
    assert sorted(t.number for t in trials) == [0, 1, 2, 3, 4]
    assert all(t.state == optuna.trial.TrialState.COMPLETE and len(t.values) == 2 for t in trials), [(t.number, t.state.name, t.user_attrs.get("stopped_reason")) for t in trials]
    assert not list(tmp_path.glob("*.db"))  # nothing fell back to SQLite
    # the CLI reads it back, with both workers' trials on one frontier
    show = subprocess.run([sys.executable, "-m", "slimtune.cli", "show", "pg-study", "--storage", postgres_url, "--json"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert show.returncode == 0, show.stderr
    rows = json.loads(show.stdout)
    rows = rows["trials"] if isinstance(rows, dict) else rows
    assert sorted(r["trial"] for r in rows) == [0, 1, 2, 3, 4]
    assert any(r["pareto"] for r in rows)
    _the_printed_commands_run_with_a_password(postgres_url, tmp_path, env)


def _the_printed_commands_run_with_a_password(postgres_url: str, tmp_path: Path, env: dict[str, str]) -> None:
    """`select`'s export line never prints the password (a masked one would not run):
    it says --storage "$SLIMTUNE_STORAGE", which runs once that is set; with the URL in
    the environment it prints no --storage at all (one would override it)."""
    secret = f"{postgres_url}?password=S3cret"  # the test server trusts 127.0.0.1: a password it ignores
    picked = subprocess.run([sys.executable, "-m", "slimtune.cli", "select", "pg-study", "--max-latency-ms", "1000",
                             "--storage", secret], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert picked.returncode == 0, picked.stderr
    assert "S3cret" not in picked.stdout + picked.stderr
    line = next(ln for ln in picked.stdout.splitlines() if ln.startswith("export: "))[len("export: "):]
    assert line.endswith('--storage "$SLIMTUNE_STORAGE"') and "SLIMTUNE_STORAGE=URL" in picked.stdout, picked.stdout
    done = subprocess.run(["sh", "-c", line.replace("slimtune ", f"{sys.executable} -m slimtune.cli ", 1)],
                          cwd=tmp_path, env={**env, "SLIMTUNE_STORAGE": secret}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and (tmp_path / "model.onnx").stat().st_size > 1000, done.stderr
    from_env = subprocess.run([sys.executable, "-m", "slimtune.cli", "select", "pg-study", "--max-latency-ms", "1000"],
                              cwd=tmp_path, env={**env, "SLIMTUNE_STORAGE": secret}, capture_output=True, text=True,
                              timeout=300)
    assert from_env.returncode == 0, from_env.stderr
    line = next(ln for ln in from_env.stdout.splitlines() if ln.startswith("export: "))
    assert "--storage" not in line and "S3cret" not in from_env.stdout, line


@pytest.mark.slow
def test_four_workers_and_a_killed_one(postgres_url, tmp_path, monkeypatch):
    """4 worker processes x 2 trials give exactly 8 complete trials with their
    candidate rows and weights; a fifth worker SIGKILLed between `ask` and its first
    heartbeat leaves a trial that the others fail (nothing stays RUNNING)."""
    import signal
    import time

    from sqlalchemy import create_engine, text

    from slimtune import Study
    from slimtune.studies import list_studies

    heartbeat = {"SLIMTUNE_HEARTBEAT_INTERVAL": "1", "SLIMTUNE_HEARTBEAT_GRACE": "10"}
    env = {**os.environ, "PYTHONPATH": str(ROOT), **heartbeat}
    Study.create_or_load("pg-four", storage=postgres_url, task="digits", early_stopping=False,
                         settings={"epochs": 1, "latency_repeats": 5, "latency_warmup": 2, "calibration_size": 64},
                         fixed={"prune.ratio": 0.0, "quant.mode": "ptq"}).close()
    cmd = [sys.executable, "-m", "slimtune.cli", "run", "--study", "pg-four", "--storage", postgres_url]
    doomed = subprocess.Popen([*cmd, "--trials", "1"], cwd=tmp_path, env={**env, "SLIMTUNE_FAULT": "after_ask:sleep"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for line in doomed.stderr:
        if "slimtune-fault: after_ask" in line:
            break
    doomed.send_signal(signal.SIGKILL)
    doomed.wait(timeout=60)
    started = time.monotonic()
    workers = [subprocess.Popen([*cmd, "--trials", "2", "--seed", str(seed)], cwd=tmp_path, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for seed in range(4)]
    outputs = [w.communicate(timeout=1500) for w in workers]
    for w, (out, err) in zip(workers, outputs):
        assert w.returncode == 0, err[-2000:]
    if time.monotonic() - started < 12:  # the workers were quicker than the grace period
        time.sleep(11)
    for key, value in heartbeat.items():
        monkeypatch.setenv(key, value)
    with Study.load("pg-four", storage=postgres_url) as st:  # what the next run does first (a no-op if done)
        st.recover_trials()
    trials = optuna.load_study(study_name="pg-four", storage=postgres_url).get_trials(deepcopy=False)
    engine = create_engine(postgres_url)
    with engine.connect() as conn:
        # the doomed worker's trial 0 was the training-free one (rung 0): proposed again once it failed (if a
        # worker claimed after that), not counted in --trials
        free = conn.execute(text("SELECT count(*) FROM slimtune_fidelities f JOIN slimtune_studies s ON "
                                 "s.id = f.study_id WHERE s.study_name = 'pg-four' AND f.epochs = 0")).scalar()
        rows = conn.execute(text("SELECT c.trial_number, c.state, length(w.state_dict) FROM slimtune_candidates c "
                                 "LEFT JOIN slimtune_weights w ON w.candidate_id = c.id "
                                 "WHERE c.study_name = 'pg-four' ORDER BY c.trial_number")).all()
    engine.dispose()
    assert free in (0, 1)
    assert sorted(t.number for t in trials) == list(range(9 + free))
    states = {t.number: t.state.name for t in trials}
    assert states[0] == "FAIL" and sorted(states.values()) == ["COMPLETE"] * (8 + free) + ["FAIL"], states
    assert [r[0] for r in rows] == list(range(1, 9 + free))  # no duplicates, every complete trial recorded
    assert all(r[1] == "COMPLETE" and r[2] for r in rows)
    summary = {s["name"]: s for s in list_studies(postgres_url)}["pg-four"]
    assert (summary["trials"], summary["complete"], summary["failed"], summary["running"]) == (9 + free, 8 + free, 1, 0)


def test_early_stopping_reads_each_trials_same_run_reference_from_postgres(postgres_url):
    """The rule compares latencies as same-run speed-ups: a complete trial's reference is
    read out of its measurement's JSON by the database (a JSON path on PostgreSQL too)."""
    from slimtune import Study

    st = Study.create_or_load("pg-es", storage=postgres_url, task="digits",
                              settings={"epochs": 1, "latency_repeats": 5, "latency_warmup": 2, "calibration_size": 64},
                              fixed={"quant.bits": 8, "quant.mode": "ptq", "prune.ratio": 0.0})
    try:
        (row,) = st.optimize(n_trials=1, progress=False)
        assert row["state"] == "COMPLETE", row
        (point,) = st.frontier_points(("latency_ms",))
        assert point.reference_latency_ms == pytest.approx(row["reference_latency_ms"]) and point.reference_latency_ms > 0
    finally:
        st.close()
