"""Faults of the study database, named: what a failed write or a lost connection means
to a user (:func:`storage_fault`: ``disk full``, ``database is read-only``, ``lost the
connection to …``), whether it is worth a retry (:func:`is_disconnect`), and
:class:`StorageLost`, raised when the database under a run is no longer the one it
opened (a SQLite file deleted or replaced), after which nothing more may be written.

Imports nothing heavy: the CLI reads it to print one line instead of a traceback.

Example:
    >>> storage_fault(exc, "sqlite:///s.db")       # doctest: +SKIP
    'disk full: could not write to sqlite:///s.db (database or disk is full)'
"""

from __future__ import annotations

import os
import time
from typing import Callable, Iterator, TypeVar

from slimtune._urls import mask_url, scrub

T = TypeVar("T")

#: Seconds a lost database connection is retried (with backoff) before the write
#: fails; ``$SLIMTUNE_STORAGE_RETRY_S`` overrides it (whole seconds, >= 0).
RETRY_S = 60.0
RETRY_ENV = "SLIMTUNE_STORAGE_RETRY_S"


class StorageLost(RuntimeError):
    """The database a run opened is gone or another one (a SQLite file deleted or
    replaced): nothing more is written, not even the running trial's failure."""


def retry_seconds() -> float:
    """How long a lost connection is retried: :data:`RETRY_S` or ``$SLIMTUNE_STORAGE_RETRY_S``."""
    raw = os.environ.get(RETRY_ENV, "").strip()
    try:
        return max(0.0, float(raw)) if raw else RETRY_S
    except ValueError:
        return RETRY_S


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, its causes and contexts, and the driver errors SQLAlchemy wraps."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [getattr(e, "orig", None), e.__cause__, e.__context__]


_READ_ONLY = ("readonly database", "read-only transaction", "read-only file system", "permission denied",
              "attempt to write a readonly")
_FULL = ("database or disk is full", "no space left on device", "disk full", "file too large",
         "could not extend file", "disk quota exceeded")
_DISCONNECT = ("server closed the connection", "connection refused", "terminating connection",
               "the database system is shutting down", "the database system is starting up",
               "could not connect to server", "connection is closed", "connection timed out",
               "consuming input failed", "connection to server", "lost connection", "connection reset",
               "server has gone away", "ssl syscall error", "broken pipe", "the connection is lost",
               "cannot connect")


_DRIVERS = ("sqlite3", "psycopg", "psycopg2", "pymysql", "MySQLdb")


def _first_line(e: BaseException) -> str:
    """The first line of what the database driver said (the error SQLAlchemy wraps)."""
    driver = next((x for x in _chain(e) if type(x).__module__.split(".")[0] in _DRIVERS), e)
    text = str(driver).strip()
    return text.splitlines()[0].strip() if text else type(driver).__name__


def is_disconnect(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it wraps) is a lost connection to a database server."""
    for e in _chain(exc):
        if getattr(e, "connection_invalidated", False):
            return True
        name = type(e).__name__
        if name in ("DisconnectionError",) or (name == "OperationalError" and
                                               any(s in str(e).lower() for s in _DISCONNECT)):
            return True
    return False


def storage_fault(exc: BaseException, url: str | None) -> str | None:
    """One line naming the storage fault behind ``exc`` (``None``: not a storage fault):
    the cause first (``disk full``, ``database is read-only``, ``lost the connection to
    URL``, ...), then what the driver said, the URL's credentials masked."""
    shown = mask_url(url) if url else "the study database"
    for e in _chain(exc):
        if isinstance(e, StorageLost):
            return str(e)
    for e in _chain(exc):
        text = str(e).lower()
        if type(e).__module__.split(".")[0] not in (*_DRIVERS, "sqlalchemy", "optuna"):
            continue
        if any(s in text for s in _FULL):
            return f"disk full: could not write to {shown} ({scrub(_first_line(e), url or '')})"
        if any(s in text for s in _READ_ONLY):
            return f"database is read-only: could not write to {shown} ({scrub(_first_line(e), url or '')})"
        if "database is locked" in text or "database is busy" in text:
            return (f"database is locked: another process held {shown} longer than the busy timeout "
                    f"({scrub(_first_line(e), url or '')})")
        if "malformed" in text or "not a database" in text:
            return f"the database file is damaged: {shown} ({scrub(_first_line(e), url or '')})"
        if "disk i/o error" in text or "unable to open database file" in text:
            why = _io_cause(url)
            if why is not None:
                return f"{why}: could not write to {shown} ({scrub(_first_line(e), url or '')})"
            return f"cannot read or write the database file of {shown} ({scrub(_first_line(e), url or '')})"
    if is_disconnect(exc):
        return f"lost the connection to {shown} ({scrub(_first_line(exc), url or '')})"
    return None


#: Free bytes below which a failed write of a SQLite file is put down to a full disk.
FULL_BELOW = 1 << 20


def _io_cause(url: str | None) -> str | None:
    """Why a SQLite file gave ``disk I/O error``, when it can be told from outside:
    ``disk full`` (under :data:`FULL_BELOW` bytes free where it lies; SQLite says
    ``disk I/O error`` when the write-ahead log cannot grow) or ``file size limit
    reached`` (the file or its journal at the process's ``ulimit -f``)."""
    if not url or not url.startswith("sqlite:///"):
        return None
    path = url[len("sqlite:///"):].split("?", 1)[0]
    if path.startswith("file:"):
        path = path[len("file:"):]
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        sizes = [os.path.getsize(p) for p in (path, f"{path}-wal", f"{path}-journal") if os.path.exists(p)]
        if limit != resource.RLIM_INFINITY and any(size + 65536 >= limit for size in sizes):
            return f"file size limit reached (ulimit -f: {limit} bytes)"
        fs = os.statvfs(os.path.dirname(os.path.abspath(path)) or ".")
        if fs.f_bavail * fs.f_frsize < FULL_BELOW:
            return "disk full"
    except (OSError, ValueError, ImportError):
        return None
    return None


def retry_disconnects(call: Callable[[], T], *, attempts: int = 3) -> T:
    """``call()``, again when it fails on a lost connection (the next attempt reconnects,
    waiting for the server up to :func:`retry_seconds`); other errors pass at once.
    Only for a call that is one transaction (nothing is half-written when it fails)."""
    for attempt in range(attempts):
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 - only disconnects are retried
            if attempt == attempts - 1 or not is_disconnect(exc):
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")  # pragma: no cover
