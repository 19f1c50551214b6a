"""Stop signals and worker processes of ``slimtune run``: SIGINT and SIGTERM become
:class:`~slimtune.search._interrupts.Interrupted` (the running trial is recorded as
failed), and ``--workers K`` runs K child processes (``python -m slimtune.cli run``)
whose lines are relayed, each stopped once on a signal.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any, Iterator

import click

from slimtune.search._interrupts import Interrupted  # light: no torch


#: Exit codes after a stop signal (128 + the signal's number).
EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}


@contextlib.contextmanager
def stop_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Interrupted` once (the runner records the
    running trial as failed with that reason); later ones are ignored while it does."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Interrupted(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
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


def run_workers(ctx: click.Context, workers: int, n_trials: int | None, seed: int | None, as_json: bool) -> list[str]:
    """Run ``workers`` child processes of this ``run`` against the study (created by
    now); relay their lines; on SIGINT/SIGTERM stop each child once and wait for it.
    Returns what went wrong, one string per failed worker."""
    import os
    import signal
    import subprocess
    import threading

    if n_trials is not None:
        shares = [n_trials // workers + (i < n_trials % workers) for i in range(workers)]
    else:
        shares = [None] * workers
    base = worker_argv(ctx, {"workers", "worker_id", "n_trials", "seed", "as_json", "storage"})
    from slimtune.tasks import worker_environment

    # not on the command line: `ps` shows it; the task module resolves to the parent's file
    env = worker_environment({**os.environ, "SLIMTUNE_STORAGE": ctx.params["storage"]})
    # the workers share the cores: unless the user chose, each gets its part of them (torch reads this at start)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
    children: list[tuple[int, subprocess.Popen]] = []
    for i, share in enumerate(shares):
        if share == 0:
            continue
        argv = [sys.executable, "-m", "slimtune.cli", "run", *base, "--worker-id", str(i)]
        argv += ["--trials", str(share)] if share is not None else []
        argv += ["--seed", str(seed + i)] if seed is not None else []
        # own session: a terminal's Ctrl-C reaches the parent only, which stops each child once
        children.append((i, subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, text=True, bufsize=1,
                                             start_new_session=True)))

    def relay(i: int, child: subprocess.Popen) -> None:
        for line in child.stdout:
            click.echo(f"[worker {i}] {line.rstrip()}", err=as_json)

    threads = [threading.Thread(target=relay, args=pair, daemon=True) for pair in children]
    for t in threads:
        t.start()
    try:
        for _, child in children:
            child.wait()
    except Interrupted as exc:
        sig = signal.SIGTERM if exc.signal_name == "SIGTERM" else signal.SIGINT
        for _, child in children:
            if child.poll() is None:
                child.send_signal(sig)
        for _, child in children:
            child.wait()
        raise
    finally:
        for t in threads:
            t.join(timeout=5)
    return [f"worker {i} exited with code {child.returncode}" for i, child in children if child.returncode != 0]
