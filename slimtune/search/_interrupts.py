"""What can stop a trial midway: a stop signal in the CLI (:class:`Interrupted`) and, in
tests only, an injected fault (:func:`fault`, inert unless ``SLIMTUNE_FAULT`` is set).
Imports nothing heavy: the CLI reads it at start.
"""

from __future__ import annotations

import os
import sys
import time


#: Environment variable of the fault-injection hook (tests only; inert when unset).
FAULT_ENV = "SLIMTUNE_FAULT"
#: The points of a trial where :func:`fault` can act.
FAULT_POINTS = ("after_ask", "before_eval", "before_tell")


class InjectedFault(RuntimeError):
    """Raised by :func:`fault` with ``POINT:raise``."""


class Interrupted(KeyboardInterrupt):
    """SIGINT, SIGTERM or SIGHUP in the CLI: the running trial is marked failed with this reason."""

    def __init__(self, signal_name: str) -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name


def fault(point: str) -> None:
    """Fault injection for tests, inert unless ``SLIMTUNE_FAULT`` names ``point``.

    ``SLIMTUNE_FAULT=POINT:ACTION[,POINT:ACTION]``, POINT one of :data:`FAULT_POINTS`:
    ``after_ask`` (the trial exists, before its first heartbeat), ``before_eval``
    (heartbeat running, before training), ``before_tell`` (slimtune's record
    committed, Optuna not told yet).  ACTION ``sleep`` prints ``slimtune-fault: POINT``
    on stderr and sleeps an hour (a test then kills or interrupts the process), and
    ``sleepN`` N seconds (then the trial goes on: a test changes the world meanwhile);
    ``raise`` raises :class:`InjectedFault`.
    """
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    for item in spec.split(","):
        name, _, action = item.strip().partition(":")
        if name != point:
            continue
        if action.startswith("sleep"):
            print(f"slimtune-fault: {point}", file=sys.stderr, flush=True)
            time.sleep(float(action[len("sleep"):] or 3600))
        elif action == "raise":
            raise InjectedFault(f"injected fault at {point}")
