"""Bad input: one clear line (``Error: ...``), exit code 2, nothing written.

Every refused command runs the real CLI against a real study database, and the
database file must be byte-for-byte unchanged afterwards.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from slimtune.cli import main
from tests._legacy import rename_study

ROOT = Path(__file__).resolve().parents[1]
TASK = "tests.user_task:make_task"  # 96 tiny images: seconds per trial
FAST = ["--epochs", "1", "--latency-repeats", "3"]
UNSAFE = "best$(touch${IFS}marker)"


def invoke(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(main, list(args), env=env)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def one_line_exit_2(result, *needles: str) -> str:
    """The refusal is exit code 2 and exactly one stderr line ``Error: ...``."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    """A study of 2 real trials made by `slimtune run`."""
    path = tmp_path_factory.mktemp("bad-input") / "study.db"
    url = f"sqlite:///{path}"
    made = invoke("run", "--study", "c", "--task", TASK, "--trials", "2", "--seed", "0", "--no-early-stopping",
                  *FAST, "--storage", url, "--json")
    assert made.exit_code == 0, made.output
    return path, url


@pytest.fixture()
def cwd(tmp_path, monkeypatch):
    """An empty working directory: a refused command must leave it empty."""
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


# (arguments, words the one line must hold); "{url}" is the study database, "{tmp}" a temp dir
REFUSED_ON_THE_STUDY = [
    # unknown knob or parameter (with a suggestion), values outside the domain, unsupported bits
    (["run", "--study", "c", "--task", TASK, "--trials", "1", "--fix", "prune.ration=0.3"], ["prune.ration", "prune.ratio"]),
    (["run", "--study", "c", "--task", TASK, "--trials", "1", "--fix", "nosuch.knob=1"], ["nosuch.knob"]),
    (["run", "--study", "c", "--task", TASK, "--trials", "1", "--fix", "prune.ratio=1.5"], ["prune.ratio", "1.5"]),
    (["run", "--study", "c", "--task", TASK, "--trials", "1", "--fix", "distill.temperature=abc"], ["distill.temperature", "abc"]),
    (["run", "--study", "c", "--task", TASK, "--trials", "1", "--fix", "quant.bits=3"], ["quant.bits", "32, 16, 8, 6, 4, 2"]),
    # resuming with another task, space, objectives or settings
    (["run", "--study", "c", "--task", "digits", "--trials", "1"], ["task"]),
    (["run", "--study", "c", "--task", TASK, "--trials", "1", "--fix", "quant.bits=8"], ["another space", "quant.bits"]),
    (["run", "--study", "c", "--trials", "1", "--objectives", "accuracy,size_bytes"], ["objectives"]),
    (["run", "--study", "c", "--trials", "1", "--epochs", "5"], ["settings", "epochs"]),
    # tasks that cannot be used (the database exists: a new study in it must not be written)
    (["run", "--study", "new", "--task", "tests.no_such_module:make_task", "--trials", "1"], ["tests.no_such_module"]),
    (["run", "--study", "new", "--task", "tests.user_task:no_such_callable", "--trials", "1"], ["no_such_callable"]),
    (["run", "--study", "new", "--task", "tests.user_task_broken:make_task", "--trials", "1"],
     ["tests.user_task_broken", "RuntimeError", "not mounted"]),
    (["run", "--study", "new", "--task", "tests.user_task:raising_task", "--trials", "1"],
     ["raising_task", "FileNotFoundError", "/data/train.csv"]),
    (["run", "--study", "new", "--task", "tests.user_task:empty_loader_task", "--trials", "1"], ["val", "no batches"]),
    (["run", "--study", "new", "--task", "tests.user_task:bad_task", "--trials", "1"], ["class logits"]),
    (["run", "--study", "new", "--task", "tests.user_task:not_a_task", "--trials", "1"], ["slimtune.Task", "int"]),
    (["run", "--study", "new", "--task", ":", "--trials", "1"], ["package.module:callable"]),
    # a new study name that is not safe in a shell
    (["run", "--study", UNSAFE, "--task", TASK, "--trials", "1"], ["study name", "letters, digits"]),
    (["run", "--study", "a b", "--task", TASK, "--trials", "1"], ["study name"]),
    # unbounded or meaningless numbers
    (["run", "--study", "c", "--timeout", "nan"], ["--timeout", "finite"]),
    (["run", "--study", "c", "--timeout", "inf"], ["--timeout", "finite"]),
    (["run", "--study", "c", "--timeout", "0"], ["--timeout"]),
    (["run", "--study", "c", "--trials", "1", "--epochs", "1000000000"], ["--epochs", "1000000000"]),
    (["run", "--study", "c", "--trials", "0"], ["--trials"]),
    (["run", "--study", "c", "--trials", "1", "--latency-repeats", "100000000"], ["--latency-repeats"]),
    (["run", "--study", "c", "--trials", "1", "--threads", "0"], ["--threads"]),
    (["run", "--study", "c", "--trials", "1", "--seed", "-1"], ["--seed"]),
    (["run", "--study", "c", "--trials", "1", "--max-latency-ms", "nan"], ["--max-latency-ms", "finite"]),
    (["run", "--study", "c", "--trials", "1", "--max-accuracy-drop", "2"], ["--max-accuracy-drop"]),
    (["run", "--study", "c", "--trials", "x"], ["--trials", "'x'"]),
    (["run", "--study", "c"], ["--trials"]),
    (["run", "--trials", "1"], ["--study"]),
    (["select", "c", "--min-accuracy", "1.5"], ["--min-accuracy"]),
    (["select", "c", "--max-latency-ms", "-1"], ["--max-latency-ms"]),
    (["select", "c"], ["--max-latency-ms"]),
    # missing studies and trials, failed trials, unwritable export paths
    (["show", "nope"], ["No study 'nope'"]),
    (["select", "nope", "--max-latency-ms", "1"], ["No study 'nope'"]),
    (["export", "nope", "--trial", "0", "--out", "{tmp}/x.onnx"], ["No study 'nope'"]),
    (["export", "c", "--trial", "99", "--out", "{tmp}/x.onnx"], ["no trial 99"]),
    (["export", "c", "--trial", "-1", "--out", "{tmp}/x.onnx"], ["no trial -1"]),
    (["export", "c", "--trial", "0", "--out", "{tmp}/no/such/dir/x.onnx"], ["does not exist"]),
    (["export", "c", "--trial", "0", "--out", "{tmp}/a-file/x.onnx"], ["Cannot write", "a-file/x.onnx", "Not a directory"]),
    (["export", "c", "--trial", "0", "--out", "{tmp}/x.onnx", "--format", "tflite"], ["--format", "tflite"]),
    (["frobnicate"], ["frobnicate"]),
]


@pytest.mark.parametrize(("args", "needles"), REFUSED_ON_THE_STUDY, ids=[" ".join(a)[:60] for a, _ in REFUSED_ON_THE_STUDY])
def test_refused_on_a_study_in_one_line_and_nothing_written(db, cwd, tmp_path, args, needles):
    path, url = db
    (tmp_path / "a-file").write_text("a file, not a directory")
    before = digest(path)
    full = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if full[0] != "frobnicate":
        full += ["--storage", url]
    one_line_exit_2(invoke(*full), *needles)
    assert digest(path) == before
    assert list(cwd.iterdir()) == []
    assert not (tmp_path / "x.onnx").exists()
    left = sorted(p.name for p in path.parent.iterdir() if not p.name.endswith(("-wal", "-shm")))
    assert left == ["study.db"]  # no journal, no temp file


def test_the_storage_url_is_checked_and_its_password_never_shown(tmp_path, cwd):
    text = tmp_path / "notes.txt"
    text.write_text("not a database at all\n" * 50)
    other = tmp_path / "app.db"
    with sqlite3.connect(other) as conn:
        conn.execute("create table customers (id integer primary key, name text)")
    conn.close()
    digests = {p: digest(p) for p in (text, other)}
    cases = [
        (["studies", "--storage", "not a url"], ["Bad storage URL"]),
        (["studies", "--storage", "nosuchdb://alice:hunter2@host/db"], ["Bad storage URL", "***"]),
        (["studies", "--storage", "postgresql+psycopg://alice:hunter2@127.0.0.1:9/db"], ["Cannot use", "***"]),
        (["show", "c", "--storage", "postgresql+psycopg://alice:hunter2@127.0.0.1:9/db"], ["***"]),
        (["studies", "--storage", f"sqlite:///{text}"], ["not a database"]),
        (["run", "--study", "s", "--task", TASK, "--trials", "1", "--storage", f"sqlite:///{text}"], ["not a database"]),
        (["studies", "--storage", f"sqlite:///{other}"], ["holds no slimtune studies"]),
        (["show", "c", "--storage", f"sqlite:///{other}"], ["holds no slimtune studies"]),
        (["run", "--study", "s", "--task", TASK, "--trials", "1", "--storage", f"sqlite:///{other}"],
         ["SQLite file of something else", "customers"]),
        (["run", "--study", "s", "--task", TASK, "--trials", "1", "--storage", f"sqlite:///{tmp_path}/none/x.db"],
         ["does not exist"]),
    ]
    for args, needles in cases:
        line = one_line_exit_2(invoke(*args), *needles)
        assert "hunter2" not in line
    assert {p: digest(p) for p in (text, other)} == digests
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.db", "cwd", "notes.txt"]
    assert list(cwd.iterdir()) == []
    # from the environment too: never printed
    line = one_line_exit_2(invoke("studies", env={"SLIMTUNE_STORAGE": "postgresql+psycopg://alice:hunter2@127.0.0.1:9/db"}),
                           "***")
    assert "hunter2" not in line


def test_slimtune_storage_is_the_default_storage(db, cwd):
    path, url = db
    listed = invoke("studies", "--json", env={"SLIMTUNE_STORAGE": url})
    assert listed.exit_code == 0, listed.output
    assert [r["name"] for r in json.loads(listed.stdout)] == ["c"]
    assert invoke("show", "c", "--json", env={"SLIMTUNE_STORAGE": url}).exit_code == 0
    # --storage wins over the environment
    other = cwd.parent / "other.db"
    one_line_exit_2(invoke("studies", "--storage", f"sqlite:///{other}", env={"SLIMTUNE_STORAGE": url}), "No study database")
    from slimtune.studies import Study, list_studies

    os.environ["SLIMTUNE_STORAGE"] = url
    try:
        assert [r["name"] for r in list_studies()] == ["c"]
        with Study.load("c") as study:
            assert study.name == "c" and len(study.trials()) == 3  # the training-free trial (rung 0) + 2
    finally:
        del os.environ["SLIMTUNE_STORAGE"]
    assert list(cwd.iterdir()) == []  # sqlite:///slimtune.db in the cwd was never created


def test_every_credential_of_a_url_is_masked_wherever_the_url_is_shown(db, cwd):
    """A password in the query (``?password=``, ``sslpassword``) or with an unencoded '@'
    never shows: in the line naming the database nor in what the driver said."""
    for url in ("postgresql+psycopg://alice@127.0.0.1:9/db?password=hunter2",
                "postgresql+psycopg://alice:hun@ter2@127.0.0.1:9/db",
                "postgresql+psycopg://alice@127.0.0.1:9/db?sslmode=require&sslpassword=hunter2"):
        for args in (["studies"], ["show", "c"], ["select", "c", "--max-latency-ms", "1"]):
            line = one_line_exit_2(invoke(*args, "--storage", url), "***")
            assert "hunter2" not in line and "ter2" not in line and "hun@" not in line, line
    assert list(cwd.iterdir()) == []


def test_a_read_only_sqlite_uri_is_opened_as_written_and_a_write_is_one_line(db, tmp_path, cwd):
    """``?mode=ro&uri=true``: reading works and leaves the file as it was; no file named
    ``w.db?mode=ro`` appears; a run stops with one line naming the read-only database."""
    path, _ = db
    copy = tmp_path / "ro.db"
    shutil.copy(path, copy)
    before = digest(copy)
    ro = f"sqlite:///{copy}?mode=ro&uri=true"
    shown = invoke("show", "c", "--storage", ro)
    assert shown.exit_code == 0, shown.output
    one_line_exit_2(invoke("show", "c", "--storage", "sqlite:///w.db?mode=ro&uri=true"), "No study database")
    assert list(cwd.iterdir()) == []
    line = one_line_exit_2(invoke("run", "--study", "c", "--task", TASK, "--trials", "1", "--json", "--storage", ro),
                           "database is read-only")
    assert "Traceback" not in line and digest(copy) == before


def test_select_prints_a_quoted_export_line(db, tmp_path, cwd):
    """A study named like a shell command (made before names were restricted) still
    opens, and the export line `select` prints runs as one command, not two."""
    path, _ = db
    legacy = tmp_path / "legacy.db"
    shutil.copy(path, legacy)
    rename_study(legacy, "c", UNSAFE)
    url = f"sqlite:///{legacy}"
    out = invoke("select", UNSAFE, "--max-latency-ms", "1000", "--storage", url)
    assert out.exit_code == 0, out.output
    line = next(l for l in out.stdout.splitlines() if l.startswith("export: "))[len("export: "):]
    # run the line in a real shell whose `slimtune` prints its arguments
    shell = subprocess.run(["sh", "-c", 'slimtune() { printf "%s\\n" "$@"; }; ' + line], cwd=cwd,
                           capture_output=True, text=True, timeout=60)
    assert shell.returncode == 0, shell.stderr
    argv = shell.stdout.splitlines()
    assert argv[:2] == ["export", UNSAFE] and argv[argv.index("--storage") + 1] == url
    assert not (cwd / "marker").exists() and list(cwd.iterdir()) == []
    # the exported line really exports
    exported = invoke(*argv[:argv.index("--out") + 1], str(tmp_path / "m.onnx"), "--storage", url)
    assert exported.exit_code == 0, exported.output
    assert (tmp_path / "m.onnx").stat().st_size > 0


def test_study_names_are_data_not_sql(db, tmp_path):
    path, _ = db
    legacy = tmp_path / "legacy.db"
    shutil.copy(path, legacy)
    name = "c'; drop table slimtune_studies; --"
    rename_study(legacy, "c", name)
    before = digest(legacy)
    url = f"sqlite:///{legacy}"
    listed = invoke("studies", "--json", "--storage", url)
    assert [r["name"] for r in json.loads(listed.stdout)] == [name]
    assert invoke("show", name, "--json", "--storage", url).exit_code == 0
    one_line_exit_2(invoke("show", "x' or '1'='1", "--storage", url), "No study")
    assert digest(legacy) == before


def _write_with_file_size_limit(limit: int):
    import resource
    import signal

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_export_to_a_full_file_system_leaves_no_partial_file(db, tmp_path):
    """A real process whose writes stop at 1 KiB (RLIMIT_FSIZE: a full disk, as
    the process sees it): one line, exit 2, neither the file nor a temp file left."""
    path, _ = db
    copy = tmp_path / "copy.db"
    shutil.copy(path, copy)
    with sqlite3.connect(copy) as conn:  # no -wal/-shm files (they would hit the limit first)
        conn.execute("pragma journal_mode=delete")
    conn.close()
    url = f"sqlite:///{copy}"
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run([sys.executable, "-m", "slimtune.cli", "export", "c", "--trial", "0", "--out",
                           str(out_dir / "m.onnx"), "--storage", url], capture_output=True, text=True, env=env,
                          timeout=300, preexec_fn=_write_with_file_size_limit(1024))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: Cannot write") and "File too large" in lines[0], proc.stderr
    assert list(out_dir.iterdir()) == []


def _read_only(directory) -> tuple[list[str], str]:
    """Make ``directory`` refuse new files (chmod for users; the immutable attribute for
    root, whom permissions do not stop); return the command that undoes it and the
    OS reason a write then gets."""
    if os.geteuid() != 0:
        directory.chmod(0o555)
        return ["chmod", "755", str(directory)], "Permission denied"
    done = subprocess.run(["chattr", "+i", str(directory)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot make a directory read-only as root here: {done.stderr.strip()}")
    return ["chattr", "-i", str(directory)], "Operation not permitted"


def test_export_to_a_read_only_directory(db, tmp_path):
    path, url = db
    out_dir = tmp_path / "ro"
    out_dir.mkdir()
    undo, reason = _read_only(out_dir)
    try:
        one_line_exit_2(invoke("export", "c", "--trial", "0", "--out", str(out_dir / "m.onnx"), "--storage", url),
                        "Cannot write", reason)
        assert list(out_dir.iterdir()) == []
    finally:
        subprocess.run(undo, check=True)


def test_export_replaces_an_existing_file_whole(db, tmp_path):
    path, url = db
    target = tmp_path / "m.onnx"
    target.write_bytes(b"old")
    assert invoke("export", "c", "--trial", "0", "--out", str(target), "--storage", url).exit_code == 0
    from slimtune.studies import Study

    with Study.load("c", storage=url) as study:
        assert target.read_bytes() == study.candidate(0).artifact()[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_python_api_refuses_the_same_input(db, tmp_path):
    from slimtune.search._pipeline import EvalSettings
    from slimtune.studies import Study, StudyError

    path, url = db
    new = tmp_path / "new.db"
    with pytest.raises(StudyError, match="study name"):
        Study.create_or_load(UNSAFE, storage=f"sqlite:///{new}", task=TASK)
    assert not new.exists()
    for bad in ({"epochs": 10**9}, {"latency_repeats": 10**9}, {"lr_scale": math.nan}, {"seed": -1}):
        with pytest.raises(ValueError):
            EvalSettings(**bad)
    before = digest(path)
    with Study.load("c", storage=url) as study:
        for kwargs in ({"timeout": math.nan}, {"timeout": math.inf}, {"timeout": -1}, {"n_trials": 0},
                       {"n_trials": 1.5}):
            with pytest.raises(StudyError):
                study.optimize(progress=False, **kwargs)
    assert digest(path) == before


@pytest.mark.parametrize("command", [["run", "--study", "c", "--task", "digits", "--trials", "1"],
                                     ["eval", "--task", "digits"]])
def test_a_bad_int8_format_variable_is_one_line_before_any_work(db, cwd, monkeypatch, command):
    path, url = db
    monkeypatch.setenv("SLIMTUNE_INT8_FORMAT", "u9s9")
    before = digest(path)
    full = command + (["--storage", url] if command[0] == "run" else [])
    one_line_exit_2(invoke(*full), "SLIMTUNE_INT8_FORMAT", "u9s9", "auto, u8s8, u8u8, s8s8")
    assert digest(path) == before and list(cwd.iterdir()) == []
