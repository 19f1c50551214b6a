"""Stop signals and worker processes of ``slimtune run``.

SIGINT, SIGTERM and SIGHUP (a closed terminal) become
:class:`~slimtune.search._interrupts.Interrupted`: the running trial is recorded as
failed with the signal's name.  ``--workers K`` runs K child processes whose lines are
relayed; on a signal each child is stopped once with it, and only the parent says so.
A child dies with its parent (:func:`die_with_parent`: a parent killed outright leaves
no orphan training on), and resolves modules exactly as its parent
(:func:`worker_command`: the parent's ``sys.path``, not the working directory).

The pieces another executor reuses for the same guarantees: :func:`worker_command`,
:func:`worker_environment`, :func:`die_with_parent` (in the worker) and
:func:`stop_children`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from typing import Any, Iterator, Sequence

import click

from slimtune.search._interrupts import Interrupted  # light: no torch

#: Exit codes after a stop signal (128 + the signal's number).
EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143, "SIGHUP": 129}
#: The signals that stop a run (SIGHUP where the platform has it).
STOP_SIGNALS = tuple(getattr(signal, name) for name in EXIT_CODES if hasattr(signal, name))
#: A worker's environment: the parent's module search path (JSON) and process id.
PATH_ENV = "SLIMTUNE_WORKER_PATH"
PARENT_ENV = "SLIMTUNE_PARENT_PID"
#: What a worker runs (``python -c``): the parent's ``sys.path`` set before anything is
#: imported (``python -m`` would put the working directory first), then the command.
# a worker finds modules on its parent's path only (the directory a parent's task was
# found in is on it), never in its own working directory
WORKER_BOOT = ("import json, os, sys; sys.path[:] = json.loads(os.environ['SLIMTUNE_WORKER_PATH']); "
               "from slimtune.tasks import _imports; _imports.LOOK_IN_CURRENT_DIRECTORY = False; "
               "from slimtune.cli import main; main(prog_name='slimtune')")
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


@contextlib.contextmanager
def stop_signals() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP raise :class:`Interrupted` once (the runner records
    the running trial as failed with that reason); later ones are ignored while it does."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        raise Interrupted(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def worker_argv(ctx: click.Context, skip: set[str]) -> list[str]:
    """The command line of ``ctx``'s command, without the options in ``skip``."""
    argv: list[str] = []
    for param in ctx.command.params:
        if not isinstance(param, click.Option) or param.name in skip:
            continue
        value = ctx.params.get(param.name)
        if value is None or (param.multiple and not value):
            continue
        if param.is_flag:
            if param.secondary_opts:
                argv.append(param.opts[0] if value else param.secondary_opts[0])
            elif value:
                argv.append(param.opts[0])
            continue
        for item in (value if param.multiple else (value,)):
            argv += [param.opts[0], str(item)]
    return argv


def worker_command(args: Sequence[str]) -> list[str]:
    """The command line of a worker running ``slimtune ARGS`` with this interpreter; its
    environment (:func:`worker_environment`) carries the module search path."""
    return [sys.executable, "-c", WORKER_BOOT, *args]


def worker_environment(storage: str, workers: int) -> dict[str, str]:
    """A worker's environment: the storage URL (not on the command line, where ``ps``
    shows it), this process's ``sys.path`` and id, and a share of the cores unless the
    user chose (torch reads ``OMP_NUM_THREADS`` at start)."""
    import json

    path = [os.path.abspath(p) for p in sys.path]  # '' is this process's working directory, not the child's
    env = {**os.environ, "SLIMTUNE_STORAGE": storage, PATH_ENV: json.dumps(path), PARENT_ENV: str(os.getpid())}
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
    return env


def is_worker() -> bool:
    """Whether this process is a worker started by :func:`worker_environment`'s parent."""
    return bool(os.environ.get(PARENT_ENV))


def die_with_parent() -> None:
    """In a worker: end with SIGTERM (the running trial recorded as interrupted) when
    the parent that started it dies, however it dies.  Linux: ``prctl(PR_SET_PDEATHSIG)``;
    elsewhere a thread that waits for the end of the pipe the parent holds as our stdin."""
    parent = int(os.environ.get(PARENT_ENV, "0") or 0)
    if not parent:
        return
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
        if armed:
            if os.getppid() != parent:  # it died before the signal was armed
                os.kill(os.getpid(), signal.SIGTERM)
            return
    import threading

    def watch() -> None:
        try:
            while sys.stdin.buffer.read(4096):
                pass
        except (OSError, ValueError):
            pass
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="slimtune-parent-watch", daemon=True).start()


def stop_children(children: Sequence[Any], signal_name: str) -> None:
    """Send each child that still runs the stop signal once (SIGINT, SIGTERM or SIGHUP:
    they record their running trial as interrupted by it), then wait for them."""
    sig = getattr(signal, signal_name, signal.SIGTERM)
    for child in children:
        if child.poll() is None:
            try:
                child.send_signal(sig)
            except ProcessLookupError:
                pass
    for child in children:
        child.wait()


def run_workers(ctx: click.Context, workers: int, n_trials: int | None, seed: int | None, as_json: bool) -> list[str]:
    """Run ``workers`` child processes of this ``run`` against the study (created by
    now); relay their lines; on a stop signal stop each child once and wait for it.
    Returns what went wrong, one string per failed worker."""
    import subprocess
    import threading

    if n_trials is not None:
        shares = [n_trials // workers + (i < n_trials % workers) for i in range(workers)]
    else:
        shares = [None] * workers
    base = worker_argv(ctx, {"workers", "worker_id", "n_trials", "seed", "as_json", "storage"})
    env = worker_environment(ctx.params["storage"], workers)
    children: list[tuple[int, subprocess.Popen]] = []
    for i, share in enumerate(shares):
        if share == 0:
            continue
        args = ["run", *base, "--worker-id", str(i)]
        args += ["--trials", str(share)] if share is not None else []
        args += ["--seed", str(seed + i)] if seed is not None else []
        # own session: a terminal's Ctrl-C or hang-up reaches the parent only, which stops each child once;
        # stdin: a pipe held open while the parent lives (what a child watches where prctl is missing)
        children.append((i, subprocess.Popen(worker_command(args), env=env, stdin=subprocess.PIPE,
                                             stdout=subprocess.PIPE, text=True, bufsize=1, start_new_session=True)))

    def relay(i: int, child: subprocess.Popen) -> None:
        for line in child.stdout:
            try:
                click.echo(f"[worker {i}] {line.rstrip()}", err=as_json)
            except OSError:  # the terminal is gone (SIGHUP): keep draining the pipe
                pass

    threads = [threading.Thread(target=relay, args=pair, daemon=True) for pair in children]
    for t in threads:
        t.start()
    try:
        for _, child in children:
            child.wait()
    except Interrupted as exc:
        stop_children([child for _, child in children], exc.signal_name)
        raise
    finally:
        for t in threads:
            t.join(timeout=5)
    return [f"worker {i} exited with code {child.returncode}" for i, child in children if child.returncode != 0]
