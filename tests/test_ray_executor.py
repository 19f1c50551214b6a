"""``slimtune run --executor ray``: trials as Ray tasks on a real local Ray cluster (a
head node and a worker node, each its own raylet process on this machine), with the
guarantees of ``--workers``: exactly ``--trials`` trained, each warm start trained once,
a killed worker's trial failed at once and replaced, Ctrl-C stops the tasks, and
nothing left RUNNING.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from slimtune.studies._errors import StudyError
from slimtune.studies._ray_executor import absolute_storage, check_one_machine

ROOT = Path(__file__).resolve().parents[1]


def test_a_sqlite_file_is_refused_for_a_cluster_on_other_machines() -> None:
    check_one_machine("sqlite:////x/s.db", ["10.0.0.1", "10.0.0.1"], "10.0.0.1")  # two nodes, one machine
    check_one_machine("postgresql://u@h/db", ["10.0.0.1", "10.0.0.2"], "10.0.0.1")
    with pytest.raises(StudyError, match=r"needs every Ray node on this machine \(10\.0\.0\.1\), but the cluster "
                                         r"has nodes on 10\.0\.0\.2: use a PostgreSQL --storage\."):
        check_one_machine("sqlite:////x/s.db", ["10.0.0.1", "10.0.0.2"], "10.0.0.1")
    assert absolute_storage("sqlite:///s.db") == f"sqlite:///{Path('s.db').resolve()}"
    assert absolute_storage("sqlite:////abs/s.db") == "sqlite:////abs/s.db"


HAS_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAS_RAY, reason="Ray is not installed (pip install 'slimtune[ray]')")


def _run_cli(tmp_path: Path, args: list[str], *, without_ray: bool = False) -> subprocess.CompletedProcess:
    """``slimtune run`` on digits with ``args``; ``without_ray``: Ray made unimportable first."""
    start = ["-c", "import sys; sys.modules['ray'] = None; from slimtune.cli import main; main()"] if without_ray \
        else ["-m", "slimtune.cli"]
    return subprocess.run([sys.executable, *start, "run", "--study", "s", "--task", "digits", "--trials", "1",
                           "--storage", f"sqlite:///{tmp_path / 's.db'}", *args],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)


@pytest.mark.parametrize("args, message", [
    pytest.param(["--executor", "ray", "--device", "cuda:1"], "`--device` cuda:1: Ray chooses each trial's GPU",
                 marks=needs_ray),
    pytest.param(["--executor", "ray", "--device", "cuda"], "--device cuda with --executor ray needs --gpus-per-trial",
                 marks=needs_ray),
    pytest.param(["--executor", "ray", "--backend", "nni"], "--executor ray runs the Optuna backend", marks=needs_ray),
    (["--cpus-per-trial", "2"], "--cpus-per-trial place trials on a Ray cluster: add --executor ray."),
])
def test_ray_options_that_cannot_work_are_one_line(tmp_path, args, message) -> None:
    proc = _run_cli(tmp_path, args)
    assert proc.returncode == 2 and proc.stderr.startswith("Error: ") and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "s.db").exists()


def test_executor_ray_without_ray_installed_is_one_line(tmp_path) -> None:
    proc = _run_cli(tmp_path, ["--executor", "ray"], without_ray=True)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip() == "Error: --executor ray needs Ray: pip install 'slimtune[ray]'."
    assert not (tmp_path / "s.db").exists()


@needs_ray
def test_an_address_that_takes_no_connection_is_one_line_at_once(tmp_path) -> None:
    import socket

    with socket.socket() as s:  # a port of this machine that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = _run_cli(tmp_path, ["--executor", "ray", "--address", f"127.0.0.1:{port}"])  # Ray alone: 5+ minutes
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        f"Error: --executor ray: cannot reach the Ray cluster at '127.0.0.1:{port}' (Connection refused within 10 s)."]
    bad = _run_cli(tmp_path, ["--executor", "ray", "--address", "head-node"])
    assert bad.returncode == 2 and "expected HOST:PORT" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


# -- a real cluster ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster():
    """A head node and a worker node, one CPU each, on this machine (real raylets)."""
    pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    os.environ.setdefault("RAY_agent_register_timeout_ms", "120000")  # loaded 2-core machines start agents slowly
    temp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths have a length limit
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "temp_dir": temp,
                                                            "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()


def _command(study: str, url: str, address: str, trials: int, epochs: int = 2) -> list[str]:
    return [sys.executable, "-m", "slimtune.cli", "run", "--study", study, "--task", "digits", "--trials", str(trials),
            "--epochs", str(epochs), "--no-early-stopping", "--executor", "ray", "--address", address, "--workers", "2",
            "--storage", url]


def _running_owners(url: str, study: str) -> list[tuple[int, str]]:
    import optuna
    from optuna.trial import TrialState

    from slimtune.search._heartbeat import OWNER_ATTR

    try:
        trials = optuna.load_study(study_name=study, storage=url).get_trials(deepcopy=False,
                                                                             states=(TrialState.RUNNING,))
    except Exception:  # noqa: BLE001 - not created yet
        return []
    return [(t.number, t.system_attrs[OWNER_ATTR]) for t in trials if OWNER_ATTR in t.system_attrs]


def _wait_for_running(proc: subprocess.Popen, url: str, study: str, count: int = 1) -> list[tuple[int, str]]:
    deadline = time.monotonic() + 480
    while time.monotonic() < deadline and proc.poll() is None:
        owners = _running_owners(url, study)
        if len(owners) >= count:
            return owners
        time.sleep(0.2)
    raise AssertionError(f"no RUNNING trial with an owner appeared (exit code {proc.poll()})")


def _study_rows(url: str, study: str) -> list[dict]:
    from slimtune.studies import Study

    with Study.load(study, storage=url) as s:
        return s.trials()


@pytest.mark.slow
def test_four_trials_on_two_ray_workers_lose_nothing_when_a_worker_is_killed(tmp_path, cluster, digits_baseline):
    import optuna

    from slimtune.search._task_space import build_space
    from slimtune.search._warm_start import warm_start_trials
    from slimtune.tasks import get_task

    url = f"sqlite:///{tmp_path / 'k.db'}"
    proc = subprocess.Popen(_command("k", url, cluster.address, 4), cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        number, owner = _wait_for_running(proc, url, "k")[0]
        pid = int(owner.rsplit(":", 1)[1])  # token@ip:pid of the Ray worker running the trial
        os.kill(pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert f"[ray] a task was lost: trial {number} failed: its Ray worker was lost" in err
    rows = _study_rows(url, "k")
    assert not [r for r in rows if r["state"] == "RUNNING"]
    lost = [r for r in rows if r["trial"] == number]
    assert lost[0]["state"] == "FAIL" and "its Ray worker was lost" in lost[0]["error"]
    trained = [r for r in rows if r["trial"] != number]
    assert len(trained) == 4 and all(r["state"] == "COMPLETE" for r in trained)
    assert sum(f"trial {r['trial']} COMPLETE" in out for r in trained) == 4  # a line per trial, as --workers prints
    # each warm start trained once (the one the lost task held went to the task in its place)
    task = get_task("digits")
    starts = warm_start_trials(build_space(task), task)
    searched = list(starts[0])
    trained_params = [{k: r["params"][k] for k in searched} for r in trained]
    assert sorted(map(repr, trained_params)) == sorted(map(repr, starts[:4]))
    assert len({t.number for t in optuna.load_study(study_name="k", storage=url).trials}) == 5


@pytest.mark.slow
def test_ctrl_c_stops_the_ray_tasks_and_fails_their_trials(tmp_path, cluster, digits_baseline):
    url = f"sqlite:///{tmp_path / 'c.db'}"
    # 40 epochs: the trials seen RUNNING are still training when Ctrl-C reaches them (with 2,
    # on an idle machine, one could finish and record itself in between)
    proc = subprocess.Popen(_command("c", url, cluster.address, 6, epochs=40), cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        running = _wait_for_running(proc, url, "c")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert "Interrupted by SIGINT" in err
    rows = _study_rows(url, "c")
    assert rows and not [r for r in rows if r["state"] == "RUNNING"]
    by_number = {r["trial"]: r for r in rows}
    for number, _ in running:
        assert by_number[number]["state"] == "FAIL" and "interrupted" in (by_number[number]["error"] or "")
    assert len(rows) < 6


@pytest.mark.slow
def test_seeded_ray_tasks_propose_different_candidates(tmp_path, cluster, digits_baseline):
    """Two Ray workers opening their sessions at once on a seeded study each get another
    seed (as --workers gives worker i seed + i), so no candidate is trained twice."""
    url = f"sqlite:///{tmp_path / 'r.db'}"
    cmd = _command("r", url, cluster.address, 4) + ["--sampler", "random", "--seed", "0", "--no-warm-start",
                                                   "--epochs", "1"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _study_rows(url, "r")
    assert len(rows) == 4 and all(r["state"] == "COMPLETE" for r in rows)
    assert len({repr(sorted(r["params"].items())) for r in rows}) == 4
