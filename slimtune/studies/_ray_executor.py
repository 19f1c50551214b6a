"""Trials of a study as Ray tasks (``slimtune run --executor ray``): Ray places each
trial on the cluster's resources (``cpus_per_trial``, ``gpus_per_trial``), ``workers``
at a time, every task writing into the study's database.

The guarantees of local workers hold:

- exactly ``n_trials`` trials train (a proposal early stopping rejects before training
  does not count, as in one process);
- a new study's warm starts are each trained once: every task's runner claims the next
  one from the study database (:mod:`~slimtune.search._warm_claims`), and the warm start
  of a trial lost with its worker (failed here) is claimed again by a later task;
- a task whose Ray worker is lost (the process killed, its node gone) has its trial
  failed at once (by the owner token the trial carries), and another task runs in its
  place; nothing is left RUNNING;
- Ctrl-C (:class:`~slimtune.search._interrupts.Interrupted`) cancels the tasks: each
  running trial is interrupted and recorded as failed, as a local worker's is.

Example:
    >>> RayExecutor(study, workers=2, cpus_per_trial=1).run(n_trials=8, on_row=print)
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Mapping

from slimtune.search._fidelity import counts_toward_budget
from slimtune.search._interrupts import Interrupted
from slimtune.studies._errors import StudyError

logger = logging.getLogger(__name__)

#: Environment variables handed to every task (the cache folder, the int8 format, the
#: test-only fault hook); never ``SLIMTUNE_STORAGE`` (the storage goes in the task's arguments).
PASSED_ENV = ("SLIMTUNE_CACHE_DIR", "SLIMTUNE_INT8_FORMAT", "SLIMTUNE_FAULT")
#: Milliseconds a Ray instance started here gives its agents to start (Ray's default
#: aborted the raylet at load 6 on 2 cores, when the dashboard agent took over 15 s).
AGENT_TIMEOUT_MS = 120_000
#: Times a Ray instance of its own is started before giving up (Ray waits a fixed 30 s for
#: its node to register; at load 9 on 2 cores that was once too short).
LOCAL_START_TRIES = 3
#: Seconds between looks at the running tasks.
POLL_S = 0.25
#: Seconds a cancelled task is given to record its interrupted trial before it is killed.
CANCEL_GRACE_S = 30.0
#: Seconds given to open a TCP connection to ``--address`` before Ray is asked to join it
#: (Ray itself retries an unreachable head for minutes); ``$SLIMTUNE_RAY_CONNECT_S``.
CONNECT_S = 10.0


class RayUnavailable(StudyError):
    """Ray is not installed, or the cluster cannot be reached."""


def cluster_address(address: str | None) -> str:
    """The cluster ``address`` names: itself, else ``$RAY_ADDRESS``, else ``local`` (a Ray
    instance of its own, never one found running on this machine)."""
    return address or os.environ.get("RAY_ADDRESS") or "local"


def check_reachable(address: str, timeout: float | None = None) -> None:
    """Raise :class:`RayUnavailable` at once when ``address`` (``host:port`` or
    ``ray://host:port``) takes no TCP connection; ``auto`` and ``local`` are Ray's own."""
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise RayUnavailable(f"--address {address!r}: expected HOST:PORT (the head's GCS port, 6379 by default) "
                             "or ray://HOST:PORT.")
    timeout = float(os.environ.get("SLIMTUNE_RAY_CONNECT_S", CONNECT_S)) if timeout is None else timeout
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as exc:
        reason = "no answer" if isinstance(exc, TimeoutError) else (exc.strerror or type(exc).__name__)
        raise RayUnavailable(f"--executor ray: cannot reach the Ray cluster at {address!r} "
                             f"({reason} within {timeout:g} s).") from None


def import_ray():
    try:
        import ray
    except ImportError:
        raise RayUnavailable("--executor ray needs Ray: pip install 'slimtune[ray]'.") from None
    return ray


def absolute_storage(url: str) -> str:
    """``url`` with a relative SQLite path made absolute (tasks run in other folders)."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and ":memory:" not in url:
        return prefix + str(Path(url[len(prefix):]).resolve())
    return url


def check_one_machine(storage: str, node_ips: list[str], here: str) -> None:
    """A SQLite file serves tasks on this machine only: refuse a cluster with nodes elsewhere."""
    if not storage.startswith("sqlite"):
        return
    elsewhere = sorted({ip for ip in node_ips if ip != here})
    if elsewhere:
        raise StudyError(f"--executor ray with a SQLite file needs every Ray node on this machine ({here}), but the "
                         f"cluster has nodes on {', '.join(elsewhere)}: use a PostgreSQL --storage.")


class RayExecutor:
    """Runs trials of ``study`` (open, created by now) as Ray tasks.

    Args:
        study: the study (its storage URL unmasked is read from it).
        workers: trials running at once.
        address: the cluster (``ray.init``'s ``address``); ``None``: ``$RAY_ADDRESS``,
            else a Ray instance started on this machine for this run.
        cpus_per_trial, gpus_per_trial: the resources Ray reserves for each trial.
        device, amp: where each task trains (resolved on the node Ray chose).
        backend, seed, options: the search backend, the sampler seed and its options.
    """

    def __init__(self, study: Any, *, workers: int, address: str | None = None, cpus_per_trial: float = 1.0,
                 gpus_per_trial: float = 0.0, device: str | None = None, amp: str | None = None,
                 backend: str = "optuna", seed: int | None = None, warm_start: bool = True,
                 options: Mapping[str, Any] | None = None) -> None:
        self.study = study
        self.workers = int(workers)
        self.address = address
        self.cpus_per_trial = float(cpus_per_trial)
        self.gpus_per_trial = float(gpus_per_trial)
        self.backend = backend
        settings = {k: v for k, v in (("device", device), ("amp", amp)) if v is not None}
        self.spec = {"name": study.name, "storage": absolute_storage(study._db.url), "settings": settings,  # noqa: SLF001
                     "task": study.info()["task_spec"],  # the task this driver opened (and so trusts)
                     "backend": backend, "options": dict(options or {}), "seed": seed, "warm_start": bool(warm_start),
                     "threads": max(1, int(self.cpus_per_trial))}
        self._started_ray = False
        self.lost: list[str] = []

    # -- Ray ----------------------------------------------------------------------------
    def connect(self):
        """Join the cluster (or start Ray here) and check the storage suits it."""
        ray = import_ray()
        if not ray.is_initialized():
            env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True,
                                      "runtime_env": {"env_vars": env} if env else None}
            address = cluster_address(self.address)
            if address == "local":
                kwargs["num_cpus"] = os.cpu_count()
                # Ray's raylet gives its Python agents a short time to start; a loaded machine needs more
                os.environ.setdefault("RAY_agent_register_timeout_ms", str(AGENT_TIMEOUT_MS))
            check_reachable(address)
            handlers = _stop_handlers()
            tries = LOCAL_START_TRIES if address == "local" else 1
            try:
                for attempt in range(1, tries + 1):
                    try:
                        ray.init(address=address, **kwargs)
                        break
                    except Exception as exc:  # noqa: BLE001 - Ray raises a bare Exception when its node starts late
                        ray.shutdown()
                        if attempt == tries:
                            what = "start Ray on this machine" if address == "local" else \
                                f"reach the Ray cluster at {address!r}"
                            raise RayUnavailable(f"--executor ray: cannot {what}: "
                                                 f"{(str(exc).strip() or type(exc).__name__).splitlines()[0]}") from None
                        logger.warning("Ray did not start (%s); trying again", _first_line(exc))
            finally:
                _restore(handlers)  # Ray installs its own: Ctrl-C must still stop the trials as the caller says
            self._started_ray = True
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        check_one_machine(self.spec["storage"], [n["NodeManagerAddress"] for n in nodes],
                          ray.util.get_node_ip_address())
        return ray

    def close(self) -> None:
        if self._started_ray:
            import ray

            ray.shutdown()
            self._started_ray = False

    # -- trials -------------------------------------------------------------------------
    def run(self, n_trials: int | None = None, *, timeout: float | None = None,
            on_row: Callable[[dict, str], Any] | None = None,
            on_lost: Callable[[list[int], str], Any] | None = None) -> list[dict]:
        """Run trials until ``n_trials`` have trained (or no new one after ``timeout``
        seconds); ``on_row(row, where)`` for each finished trial, ``on_lost(trials,
        why)`` when a task's worker is lost.  Returns the rows."""
        if n_trials is None and timeout is None:
            raise ValueError("Give `n_trials` or `timeout`, or the search never ends.")
        ray = self.connect()
        from slimtune.studies._ray_task import trial_task

        task = ray.remote(trial_task).options(num_cpus=self.cpus_per_trial, num_gpus=self.gpus_per_trial,
                                              max_retries=0, name="slimtune-trial")
        pending: dict[Any, str] = {}
        rows: list[dict] = []
        trained, started, losses, slot = 0, time.monotonic(), 0, 0
        try:
            while True:
                open_budget = n_trials is None or trained + len(pending) < n_trials
                in_time = timeout is None or time.monotonic() - started < timeout
                while len(pending) < self.workers and open_budget and in_time:
                    owner = uuid.uuid4().hex[:12]
                    pending[task.remote(self.spec, owner, slot)] = owner
                    slot += 1
                    open_budget = n_trials is None or trained + len(pending) < n_trials
                if not pending:
                    break
                done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0)
                if not done:  # wait here, not inside Ray: a stop signal then arrives as the caller raises it
                    time.sleep(POLL_S)
                    continue
                for ref in done:
                    owner = pending.pop(ref)
                    try:
                        result = ray.get(ref)
                    except ray.exceptions.RayTaskError as exc:  # the task itself raised (not its trial)
                        raise StudyError(f"A Ray trial task failed: {_first_line(exc)}") from None
                    except (ray.exceptions.RayError, OSError) as exc:  # its worker or node was lost
                        losses += 1
                        why = f"its Ray worker was lost ({type(exc).__name__}: {_first_line(exc)})"
                        failed = self.study.fail_trials_of(owner, why)
                        self.lost.append(why)
                        if on_lost is not None:
                            on_lost(failed, why)
                        if n_trials is not None and losses > n_trials + self.workers:
                            raise StudyError(f"Ray lost {losses} trial tasks; stopping ({why}).")
                        continue
                    for row in result["rows"]:
                        rows.append(row)
                        trained += counts_toward_budget(row)
                        if on_row is not None:
                            on_row(row, result["where"])
        except KeyboardInterrupt as exc:  # Ray's own calls turn the caller's Interrupted into a KeyboardInterrupt
            stop = exc if isinstance(exc, Interrupted) else Interrupted("SIGINT")
            self._cancel(ray, pending, f"interrupted ({stop.signal_name})")
            raise stop from None
        except BaseException:
            self._cancel(ray, pending, "the Ray driver stopped")
            raise
        finally:
            self.study.recover_trials()
        return rows

    def _cancel(self, ray, pending: dict, reason: str) -> None:
        """Interrupt every running task (each records its trial as failed), wait for
        them a while, then kill what is left and fail its trials here."""
        for ref in pending:
            ray.cancel(ref)
        deadline = time.monotonic() + CANCEL_GRACE_S
        left = list(pending)
        while left and time.monotonic() < deadline:
            _, left = ray.wait(left, num_returns=len(left), timeout=1.0)
        for ref in left:
            ray.cancel(ref, force=True)
        for owner in pending.values():
            try:
                self.study.fail_trials_of(owner, reason)
            except Exception:  # noqa: BLE001 - the next worker's recovery fails it
                logger.warning("could not fail the trial of task %s", owner, exc_info=True)


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "cause", None) or exc).strip()
    return text.splitlines()[-1] if text else type(exc).__name__


def _stop_handlers() -> dict:
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}


def _restore(handlers: dict) -> None:
    import signal

    for sig, handler in handlers.items():
        if handler is not None:
            signal.signal(sig, handler)
