"""Heartbeats of a RUNNING trial, so that the trial of a worker that died is found and
failed by the others (Optuna's stale-trial detection, for RDB storages).

The first beat is written right after Optuna's ``ask`` created the trial, before anything
that can fail (:class:`TrialStart`, handed to the backend as ``on_ask``).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import warnings
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator

from slimtune.search._interrupts import fault

if TYPE_CHECKING:  # pragma: no cover
    import optuna

logger = logging.getLogger(__name__)

#: Seconds :meth:`Heartbeat.stop` waits for a beat in flight.
STOP_WAIT_S = 10.0

#: Optuna system attribute set right after a trial's first heartbeat, holding its
#: worker's identity (:func:`worker_identity`): a RUNNING trial older than the grace
#: period without it never beat, so Optuna's stale-trial detection (which skips trials
#: without a heartbeat row) would never fail it; slimtune does.  A trial whose worker
#: is known to be gone (:func:`worker_gone`) is finished at once.
BEATING_ATTR = "slimtune:heartbeat"
#: Optuna system attribute naming who runs a RUNNING trial (set right after ``ask`` when
#: the runner is given one, e.g. a Ray task's token): an executor that loses that worker
#: fails the trial at once instead of waiting for its heartbeat to go stale.
OWNER_ATTR = "slimtune:owner"


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _start_time(pid: int) -> str:
    """When process ``pid`` started (Linux: clock ticks since boot; empty elsewhere)."""
    stat = _read(f"/proc/{pid}/stat")
    return stat.rpartition(")")[2].split()[19] if stat else ""


def _pid_namespace() -> str:
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return ""


def worker_identity() -> dict[str, Any]:
    """This process as the worker of a trial: host, boot, PID namespace, PID and the
    process's start time (so a PID used again by another process is told apart)."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "boot": _read("/proc/sys/kernel/random/boot_id"),
            "pidns": _pid_namespace(), "pid": pid, "started": _start_time(pid)}


def worker_gone(identity: Any) -> bool:
    """Whether the worker ``identity`` names has certainly stopped: it ran on this host,
    boot and PID namespace (Linux), and its process is gone (or a zombie, or another
    process now has its PID).  ``False`` when that cannot be known (another machine)."""
    if not isinstance(identity, dict) or not identity.get("boot") or not identity.get("pidns"):
        return False
    here = worker_identity()
    if any(identity.get(k) != here[k] for k in ("host", "boot", "pidns")):
        return False
    pid = identity.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    if pid == here["pid"]:
        return identity.get("started") != here["started"]
    stat = _read(f"/proc/{pid}/stat")
    if not stat:
        return True
    fields = stat.rpartition(")")[2].split()
    return fields[0] in ("Z", "X") or (bool(identity.get("started")) and fields[19] != identity["started"])


class Heartbeat:
    """Optuna heartbeats for one RUNNING trial (RDBStorage with a ``heartbeat_interval``).

    The first beat is written at once, in the caller's thread, then
    :data:`BEATING_ATTR` is set; a thread beats every interval until :meth:`stop`.
    A trial of a crashed worker is then failed by the others after the grace period.
    """

    def __init__(self, trial: "optuna.trial.Trial") -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        storage = trial.storage
        interval = getattr(storage, "get_heartbeat_interval", lambda: None)()
        if not interval:
            return
        trial_id = trial._trial_id  # noqa: SLF001 - Optuna's own heartbeat thread uses the same id
        storage.record_heartbeat(trial_id)
        storage.set_trial_system_attr(trial_id, BEATING_ATTR, worker_identity())

        def beat() -> None:
            while not self._stop.wait(interval):
                try:
                    storage.record_heartbeat(trial_id)
                except Exception:  # noqa: BLE001 - a missed beat is not fatal
                    logger.debug("heartbeat failed", exc_info=True)

        self._thread = threading.Thread(target=beat, name=f"slimtune-heartbeat-{trial.number}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=STOP_WAIT_S)  # a beat waiting for a lost server is left behind


@contextmanager
def heartbeat(trial: "optuna.trial.Trial") -> Iterator[None]:
    """Heartbeats for ``trial`` while the block runs (see :class:`Heartbeat`)."""
    beat = Heartbeat(trial)
    try:
        yield
    finally:
        beat.stop()


class TrialStart:
    """Handed to the backend as ``on_ask``: called with the trial right after Optuna's
    ``ask`` created it, before anything else can fail; starts its heartbeat."""

    def __init__(self, owner: str | None = None) -> None:
        self.trial: "optuna.trial.Trial | None" = None
        self.heartbeat: Heartbeat | None = None
        self.owner = owner

    def __call__(self, trial: "optuna.trial.Trial") -> None:
        self.trial = trial
        if self.owner is not None:
            trial.storage.set_trial_system_attr(trial._trial_id, OWNER_ATTR, self.owner)  # noqa: SLF001
        fault("after_ask")
        self.heartbeat = Heartbeat(trial)

    def stop(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat.stop()


def fail_stale_trials(study: "optuna.Study") -> None:
    """Mark RUNNING trials of dead workers (no heartbeat) as FAIL."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
