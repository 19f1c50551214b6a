"""What the study database's engines do about faults: a database server that went away
is reconnected to with backoff (:func:`reconnecting`), and a SQLite file is known by
its identity (:class:`FileIdentity`), so a run notices when the file under it was
deleted or replaced.

Example:
    >>> engine = reconnecting(create_engine(url, pool_pre_ping=True), url)   # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine

from slimtune._storage_faults import StorageLost, is_disconnect, retry_seconds
from slimtune._urls import mask_url, scrub

logger = logging.getLogger(__name__)

#: Pauses between two connection attempts grow from the first to the last (seconds).
BACKOFF = (0.5, 1.0, 2.0, 4.0, 5.0)

_warned: set[str] = set()
_warned_lock = threading.Lock()


def reconnecting(engine: Engine, url: str, *, connected: bool = False) -> Engine:
    """``engine`` (on a database server, not SQLite) made to reconnect: once it has
    connected (``connected``: it already has), a new connection that fails because the
    server went away is tried again, with growing pauses, for up to
    :func:`~slimtune._storage_faults.retry_seconds` (60 s); with the pool's pre-ping
    (:func:`~slimtune.studies._database.engine_options`) a server restarted between
    two writes costs a wait, not the run.  After a wait that failed, the next
    connection is tried once, until one succeeds.  A server never reached fails at once.
    """
    if engine.dialect.name == "sqlite":
        return engine
    state = {"connected": connected, "gave_up": False}

    @event.listens_for(engine, "do_connect")
    def connect(dialect: Any, conn_rec: Any, cargs: Any, cparams: Any) -> Any:
        if not state["connected"] or state["gave_up"]:
            conn = dialect.connect(*cargs, **cparams)
            state["connected"], state["gave_up"] = True, False
            return conn
        deadline = time.monotonic() + retry_seconds()
        attempt, lost_at = 0, None
        while True:
            try:
                conn = dialect.connect(*cargs, **cparams)
            except Exception as exc:  # noqa: BLE001 - only a server gone away is waited for
                if not is_disconnect(exc) or time.monotonic() >= deadline:
                    state["gave_up"] = is_disconnect(exc)
                    raise
                if lost_at is None:
                    lost_at = time.monotonic()
                    _warn_once(url, f"Lost the connection to {mask_url(url)} ({scrub(_first(exc), url)}); "
                                    f"retrying for up to {retry_seconds():.0f} s.")
                time.sleep(min(BACKOFF[min(attempt, len(BACKOFF) - 1)], max(0.0, deadline - time.monotonic())))
                attempt += 1
                continue
            if lost_at is not None:
                _forget(url, f"Reconnected to {mask_url(url)} after {time.monotonic() - lost_at:.0f} s.")
            return conn

    return engine


def _first(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _warn_once(url: str, message: str) -> None:
    with _warned_lock:
        if url in _warned:
            return
        _warned.add(url)
    logger.warning(message)


def _forget(url: str, message: str) -> None:
    with _warned_lock:
        if url not in _warned:
            return
        _warned.discard(url)
    logger.warning(message)


@dataclass(frozen=True)
class FileIdentity:
    """A SQLite file as a run opened it: its path, device and inode."""

    path: str
    device: int
    inode: int

    @classmethod
    def of(cls, path: str) -> "FileIdentity":
        stat = os.stat(path)
        return cls(os.path.abspath(path), stat.st_dev, stat.st_ino)

    def check(self) -> None:
        """Raise :class:`~slimtune._storage_faults.StorageLost` when the file at the
        path is gone or another file (another device or inode)."""
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            raise StorageLost(f"the study database {self.path} was deleted during the run; nothing more was "
                              "written (the running trial is lost with it)") from None
        if (stat.st_dev, stat.st_ino) != (self.device, self.inode):
            raise StorageLost(f"the study database {self.path} was replaced by another file during the run; "
                              "nothing more was written to either") from None
