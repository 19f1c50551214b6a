"""Work that runs beside the notebook: a search in a thread, and a database watcher.

Widget callbacks must return quickly and the kernel must stay usable while a study
runs, so :class:`BackgroundSearch` runs ``study.optimize`` in a daemon thread (Stop
sets the study's ``stop_event``: the current trial finishes and is stored) and
:class:`Watcher` polls the database on a timer for trials written by other processes.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable


class BackgroundSearch:
    """``study.optimize`` in a daemon thread.

    ``on_trial(row)`` is called (in that thread) after each stored trial, and
    ``on_finish(error_or_None)`` once when the search ends, stopped or not.
    """

    def __init__(self, study: Any, *, n_trials: int, timeout: float | None = None,
                 on_trial: Callable[[dict[str, Any]], None],
                 on_finish: Callable[[BaseException | None], None],
                 optimize_kwargs: dict[str, Any] | None = None) -> None:
        if int(n_trials) < 1:
            raise ValueError(f"`n_trials` must be at least 1, but got {n_trials!r}.")
        self.study = study
        self.n_trials = int(n_trials)
        self.timeout = timeout
        self.stop_event = threading.Event()
        self._on_trial = on_trial
        self._on_finish = on_finish
        self._kwargs = dict(optimize_kwargs or {})
        self._thread: threading.Thread | None = None
        self.started_at: float | None = None
        self.finished_at: float | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def stopping(self) -> bool:
        return self.running and self.stop_event.is_set()

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("This search was already started; create a new BackgroundSearch.")
        self.started_at = time.monotonic()
        name = f"slimtune-search-{getattr(self.study, 'name', 'study')}"
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Ask the search to end after the current trial (nothing is lost)."""
        self.stop_event.set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the search to end; ``True`` when it has."""
        if self._thread is not None:
            self._thread.join(timeout)
        return not self.running

    def _run(self) -> None:
        error: BaseException | None = None
        try:
            self.study.optimize(n_trials=self.n_trials, timeout=self.timeout, callbacks=[self._on_trial],
                                stop_event=self.stop_event, progress=False, **self._kwargs)
        except BaseException as exc:  # reported to the notebook by on_finish
            error = exc
        finally:
            self.finished_at = time.monotonic()
            self._on_finish(error)


class Watcher:
    """Calls ``poll()`` every ``interval`` seconds in a daemon thread until stopped.

    A poll that takes long (reading a big study) stretches the wait after it to
    ``backoff`` times its duration, so watching never takes more than about a third
    of a core.  An exception from ``poll`` goes to ``on_error`` and the watcher keeps
    going (a database that is briefly locked by a writer must not end the watch).
    """

    backoff = 2.0

    def __init__(self, poll: Callable[[], None], *, interval: float = 2.0,
                 on_error: Callable[[BaseException], None] | None = None, name: str = "slimtune-watch") -> None:
        if interval <= 0:
            raise ValueError(f"`interval` must be positive, but got {interval!r}.")
        self.interval = float(interval)
        self._poll = poll
        self._on_error = on_error
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        wait = self.interval
        while not self._stop.wait(wait):
            started = time.monotonic()
            try:
                self._poll()
            except Exception as exc:
                if self._on_error is not None:
                    self._on_error(exc)
            wait = max(self.interval, self.backoff * (time.monotonic() - started))


class LatestOnly:
    """Runs ``fn(arg)`` in a daemon thread for the most recent :meth:`submit` only.

    Requests that arrive while one runs replace each other, so a burst of them (typing
    a limit, a batch of new trials) costs at most two calls.  Used for
    ``study.select``, which reads every trial of the study.
    """

    def __init__(self, fn: Callable[[Any], None], *, on_error: Callable[[BaseException], None] | None = None,
                 name: str = "slimtune-latest") -> None:
        self._fn = fn
        self._on_error = on_error
        self._name = name
        self._lock = threading.Lock()
        self._pending: list[Any] = []  # at most one element
        self._thread: threading.Thread | None = None
        self._idle = threading.Event()
        self._idle.set()

    def submit(self, arg: Any) -> None:
        with self._lock:
            self._pending[:] = [arg]
            self._idle.clear()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
                self._thread.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until no request is pending or running; ``True`` when idle."""
        return self._idle.wait(timeout)

    def _loop(self) -> None:
        while True:
            with self._lock:
                if not self._pending:
                    self._thread = None
                    self._idle.set()
                    return
                arg = self._pending.pop()
            try:
                self._fn(arg)
            except Exception as exc:
                if self._on_error is not None:
                    self._on_error(exc)
