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


class PostgresServer:
    """A running throwaway server: its SQLAlchemy ``url``; :meth:`stop` and :meth:`start`
    take it down and bring it back on the same data directory and port (the fault tests
    stop it under a run)."""

    def __init__(self, bindir: Path, root: Path, port: int) -> None:
        self.bindir, self.root, self.port = bindir, root, port
        self.data = root / "data"
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"

    def _ctl(self, *args: str, check: bool = True) -> None:
        subprocess.run(_as_postgres([str(self.bindir / "pg_ctl"), "-D", str(self.data), *args]), check=check,
                       capture_output=True)

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        self._ctl("-l", str(self.root / "server.log"), "-w", "-o", f"-h 127.0.0.1 -p {self.port} -k {self.root}",
                  "start")

    def stop(self, *, check: bool = True) -> None:
        """Stop it the fast way (open sessions are cut) and wait until it is down."""
        self._ctl("-m", "fast", "-w", "stop", check=check)

    @property
    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()


@contextlib.contextmanager
def temporary_postgres_server() -> Iterator[PostgresServer]:
    """Start a server; yield it (:class:`PostgresServer`); stop and remove it."""
    bindir = _bindir()
    # Not under a private temporary directory: the server runs as the postgres user.
    root = Path(tempfile.mkdtemp(prefix="slimtune-pg-"))
    os.chmod(root, 0o777)
    server = PostgresServer(bindir, root, _free_port())
    try:
        subprocess.run(_as_postgres([str(bindir / "initdb"), "-D", str(server.data), "--auth=trust", "-U",
                                     "postgres", "-E", "UTF8"]), check=True, capture_output=True)
        server.start()
        yield server
    finally:
        if server.running:
            server.stop(check=False)
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def temporary_postgres() -> Iterator[str]:
    """Start a server; yield its SQLAlchemy URL (``postgresql+psycopg://...``); stop it."""
    with temporary_postgres_server() as server:
        yield server.url
