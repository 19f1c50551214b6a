"""A throwaway PostgreSQL server from Debian's ``postgresql`` package, for the tests
and ``benchmarks/scale.py`` (never used by a study itself: users bring their server).

Example:
    >>> with temporary_postgres() as url:          # doctest: +SKIP
    ...     Study.create("s", storage=url, task="digits")

The server listens on 127.0.0.1 on a free port with trust authentication, keeps its
data in a temporary directory and is stopped and removed on exit.  As root it runs as
the ``postgres`` user (``initdb`` refuses root).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator


class PostgresUnavailable(RuntimeError):
    """The server binaries, psycopg or a way to drop root privileges are missing."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres(cmd: list[str]) -> list[str]:
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            raise PostgresUnavailable("running as root without runuser: cannot start PostgreSQL as the postgres user")
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


def _bindir() -> Path:
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not bins:
        raise PostgresUnavailable("PostgreSQL server binaries not found (apt-get install postgresql)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise PostgresUnavailable("psycopg is not installed (pip install 'slimtune[postgres]')") from None
    return Path(bins[-1]).parent


@contextlib.contextmanager
def temporary_postgres() -> Iterator[str]:
    """Start a server; yield its SQLAlchemy URL (``postgresql+psycopg://...``); stop it."""
    bindir = _bindir()
    # Not under a private temporary directory: the server runs as the postgres user.
    root = Path(tempfile.mkdtemp(prefix="slimtune-pg-"))
    os.chmod(root, 0o777)
    data, port = root / "data", _free_port()
    try:
        subprocess.run(_as_postgres([str(bindir / "initdb"), "-D", str(data), "--auth=trust", "-U", "postgres",
                                     "-E", "UTF8"]), check=True, capture_output=True)
        subprocess.run(_as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-w",
                                     "-o", f"-h 127.0.0.1 -p {port} -k {root}", "start"]),
                       check=True, capture_output=True)
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(_as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
                           capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
