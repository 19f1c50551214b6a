"""The fault set of issue 24, injected at random moments over N rounds; prints JSON.

    PYTHONPATH=. python benchmarks/faults.py --rounds 12 [--task digits] [--seed 0]

Each round starts `slimtune run` in a real process and injects one fault, in turn:
SIGKILL of the run (half of them with ``--workers 2``, the parent killed), PostgreSQL
stopped under it (for 1 to 2x the retry window ``$SLIMTUNE_STORAGE_RETRY_S``, then
started again), and the disk under a SQLite study filled (a small tmpfs; root only).
Then the same command is run again (the "next command") and the study is read back.

Printed: ``kills``/``kills_survived`` (the database passed its integrity check and the
next command exited 0 and left nothing lost), ``faults_injected`` (each with its exit
code and the run's ``Error:`` line), ``trials_lost`` (trials COMPLETE right after the
fault that are not COMPLETE with their record after the next command; must be 0) and
``left_running`` (trials RUNNING after the next command; must be 0).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))

from tests._disk import fill_disk  # noqa: E402  (the repository root is on the path)

FAST = ["--epochs", "1", "--latency-repeats", "3", "--no-early-stopping"]
RETRY_S = 4


def _start(url: str, study: str, task: str, trials: int, *extra: str, **env: str) -> subprocess.Popen:
    full = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    return subprocess.Popen([sys.executable, "-m", "slimtune.cli", "run", "--study", study, "--task", task,
                             "--trials", str(trials), "--seed", "0", *FAST, *extra, "--storage", url],
                            env=full, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _finish(proc: subprocess.Popen, timeout: float = 900) -> tuple[int, str | None, bool]:
    """The exit code, the ``Error:`` line(s) (a traceback's last line too), and whether
    a lost connection was retried."""
    _, err = proc.communicate(timeout=timeout)
    errors = [ln for ln in err.splitlines() if ln.startswith("Error: ")]
    if "Traceback" in err:
        errors.append("TRACEBACK: " + err.strip().splitlines()[-1])
    return proc.returncode, " | ".join(errors) or None, "Lost the connection to" in err


def _read(url: str, study: str) -> tuple[dict[int, str], set[int], str]:
    """Optuna's trial states, the trials slimtune recorded COMPLETE, the integrity check."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import DBAPIError

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            states = dict(conn.execute(text(
                "SELECT t.number, t.state FROM trials t JOIN studies s ON s.study_id = t.study_id "
                "WHERE s.study_name = :n"), {"n": study}).all())
            recorded = {r[0] for r in conn.execute(text(
                "SELECT trial_number FROM slimtune_candidates WHERE study_name = :n AND state = 'COMPLETE'"),
                {"n": study}).all()}
            integrity = (conn.execute(text("PRAGMA integrity_check")).scalar() if url.startswith("sqlite")
                         else "ok")
    except DBAPIError as exc:  # before the run created its tables
        if "does not exist" not in str(exc) and "no such table" not in str(exc):
            raise
        return {}, set(), "ok"
    finally:
        engine.dispose()
    return {int(k): str(getattr(v, "name", v)) for k, v in states.items()}, recorded, integrity


def _wait_for_first_trial(run: subprocess.Popen, url: str, study: str, timeout: float = 300) -> None:
    """Wait until the run asked for its first trial (start-up takes 5-15 s), so the
    fault lands among trials, not in the imports."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and run.poll() is None:
        if _read(url, study)[0]:
            return
        time.sleep(0.5)


def one_round(kind: str, i: int, rng: random.Random, task: str, trials: int, work: Path, pg) -> dict:
    study = f"r{i}"
    at = rng.uniform(0.0, 8.0)  # seconds after the first trial started
    report: dict = {"round": i, "fault": kind, "at_s": round(at, 1)}
    disk = None
    if kind == "postgres":
        url = pg.url
    elif kind == "disk-full":
        disk = work / f"disk{i}"
        disk.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(disk)], check=True)
        url = f"sqlite:///{disk / 's.db'}"
    else:
        url = f"sqlite:///{work / f'{study}.db'}"
    workers = ["--workers", "2"] if kind == "kill" and rng.random() < 0.5 else []
    report["workers"] = 2 if workers else 1
    try:
        run = _start(url, study, task, trials, *workers, SLIMTUNE_STORAGE_RETRY_S=str(RETRY_S))
        _wait_for_first_trial(run, url, study)
        time.sleep(at)
        if kind == "kill":
            run.send_signal(signal.SIGKILL)
            code, line, retried = run.wait(timeout=60), None, False
            time.sleep(1.0)  # the workers die with their parent
        elif kind == "postgres":
            down = rng.uniform(1.0, 2.0 * RETRY_S)
            report["down_s"] = round(down, 1)
            pg.stop()
            time.sleep(down)
            pg.start()
            code, line, retried = _finish(run)
        else:
            fill_disk(disk / "filler")
            code, line, retried = _finish(run)
            (disk / "filler").unlink()
        report.update(exit=code, line=line, retried=retried)
        before, recorded_before, integrity = _read(url, study)
        report["integrity"] = integrity
        done = {n for n, s in before.items() if s == "COMPLETE"}
        left = max(0, trials - len(done))
        again = _start(url, study, task, max(left, 1))
        report["next_exit"], report["next_line"], _ = _finish(again)
        after, recorded, integrity_after = _read(url, study)
        report["lost"] = sorted(n for n in done if after.get(n) != "COMPLETE" or n not in recorded)
        report["left_running"] = sorted(n for n, s in after.items() if s == "RUNNING")
        report["complete_after"] = sum(s == "COMPLETE" for s in after.values())
        report["all_asked_complete"] = report["complete_after"] >= len(done) + max(left, 1)
        report["integrity_after"] = integrity_after
    finally:
        if disk is not None:
            subprocess.run(["umount", "-l", str(disk)], capture_output=True)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--task", default="tests.user_task:make_task")
    parser.add_argument("--trials", type=int, default=4, help="trials each run asks for")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault("SLIMTUNE_CACHE_DIR", str(Path(tempfile.gettempdir()) / "slimtune-bench-cache"))
    rng = random.Random(args.seed)
    kinds = ["kill", "postgres", "disk-full"]
    if os.geteuid() != 0:
        kinds.remove("disk-full")
    from contextlib import ExitStack

    from slimtune._pgserver import PostgresUnavailable, temporary_postgres_server

    rounds = []
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="slimtune-faults-") as tmp:
        try:
            pg = stack.enter_context(temporary_postgres_server())
        except PostgresUnavailable:
            pg = None
            kinds.remove("postgres")
        for i in range(args.rounds):
            rounds.append(one_round(kinds[i % len(kinds)], i, rng, args.task, args.trials, Path(tmp), pg))
            print(json.dumps(rounds[-1]), file=sys.stderr, flush=True)
    kills = [r for r in rounds if r["fault"] == "kill"]
    print(json.dumps({
        "rounds": len(rounds), "task": args.task, "trials_per_run": args.trials, "retry_s": RETRY_S,
        "kills": len(kills),
        "kills_survived": sum(r["integrity"] == "ok" and r["next_exit"] == 0 and not r["lost"] for r in kills),
        "faults_injected": [{k: r.get(k) for k in ("fault", "at_s", "down_s", "retried", "exit", "line", "next_exit")}
                            for r in rounds if r["fault"] != "kill"],
        "trials_lost": sum(len(r["lost"]) for r in rounds),
        "left_running": sum(len(r["left_running"]) for r in rounds),
        "integrity_failures": sum(r["integrity"] != "ok" or r["integrity_after"] != "ok" for r in rounds),
        "next_command_failures": sum(r["next_exit"] != 0 for r in rounds),
        "rounds_short_of_asked_trials": sum(not r["all_asked_complete"] for r in rounds),
    }, indent=1))


if __name__ == "__main__":
    main()
