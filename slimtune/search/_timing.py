"""Timing calls of compiled models: interleaved rounds, calibrated inner loops, two clocks.

Each runner (a zero-argument call) is timed in **samples**: a sample is ``loops``
consecutive calls timed together (``loops`` calibrated so that a sample lasts at
least :data:`MIN_SAMPLE_MS`, as pyperf calibrates its loops and Google Benchmark its
iterations, so that the clock's cost and resolution do not weigh on fast models),
and the samples are taken in ``rounds``: in each round every runner takes its share
back to back (its caches warm, as when a deployed model is called again and again),
the order rotating from round to round so that slow phases of a noisy machine hit
every runner alike.

Every sample is read on two clocks: the wall clock (``time.perf_counter_ns``) and the
calling thread's on-CPU time (``time.thread_time_ns``, which leaves out the time the
scheduler gave other processes).  A runtime whose single-threaded calls run wholly on
the calling thread (ONNX Runtime and torch at 1 thread) is timed on the on-CPU clock:
on a machine shared with other busy processes its wall-clock times measure the
scheduler as much as the model (``benchmarks/latency_fidelity.py --under-load``).  On
an idle core the two clocks agree.  With more threads, or a runtime that computes on
threads of its own, only the wall clock measures the call.  Both figures are kept.
"""

from __future__ import annotations

import gc
import math
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

#: The clocks a latency can be read on.
CLOCKS = ("cpu", "wall")
#: Calibrated inner loops: a sample lasts at least this long (ms) on the clock used.
MIN_SAMPLE_MS = 0.2
#: At most this many calls per sample.
MAX_LOOPS = 64


@dataclass(frozen=True)
class Timings:
    """Per-call times (ms) of each runner's samples on both clocks, and the loops per sample."""

    cpu: dict[str, list[float]]
    wall: dict[str, list[float]]
    loops: dict[str, int]

    def on(self, clock: str) -> dict[str, list[float]]:
        """The samples on ``clock`` (``cpu`` or ``wall``)."""
        if clock not in CLOCKS:
            raise ValueError(f"`clock` must be one of {', '.join(CLOCKS)}, but got {clock!r}.")
        return self.cpu if clock == "cpu" else self.wall


def latency_clock(threads: int, calls_on_caller_thread: bool) -> str:
    """The clock a latency is read on: the on-CPU time of the calling thread when a
    call runs wholly on it (one thread, a runtime that says so), else the wall clock."""
    return "cpu" if int(threads) == 1 and calls_on_caller_thread else "wall"


def _clock(name: str) -> Callable[[], int]:
    return time.thread_time_ns if name == "cpu" else time.perf_counter_ns


def calibrate_loops(run: Callable[[], object], *, clock: str = "cpu", min_ms: float = MIN_SAMPLE_MS,
                    max_loops: int = MAX_LOOPS, calls: int = 7) -> int:
    """Calls per sample so that a sample lasts at least ``min_ms`` on ``clock``: from
    the median of ``calls`` single calls (one slow call, e.g. the first after another
    process ran, does not decide), at most ``max_loops``."""
    read = _clock(clock)
    times = []
    for _ in range(calls):
        start = read()
        run()
        times.append((read() - start) / 1e6)
    typical = sorted(times)[len(times) // 2]
    return int(min(max_loops, max(1, math.ceil(min_ms / typical)))) if typical > 0 else max_loops


def time_runners(runners: Mapping[str, Callable[[], object]], *, warmup: int = 20, repeats: int = 200,
                 rounds: int = 10, loops: "int | Mapping[str, int] | None" = 1,
                 clock: str = "wall") -> Timings:
    """``repeats`` samples of each runner, interleaved in ``rounds`` (see the module
    docstring), after ``warmup`` untimed calls of each.  ``loops``: calls per sample
    (one number, one per runner, or ``None`` to calibrate each runner on ``clock``);
    a sample's time is per call.  The garbage collector is paused while timing.

    Raises:
        ValueError: ``repeats`` or ``rounds`` below 1, ``warmup`` below 0, or an unknown clock.
    """
    if repeats < 1 or rounds < 1 or warmup < 0:
        raise ValueError(f"`repeats` and `rounds` must be >= 1 and `warmup` >= 0, "
                         f"but got {repeats}, {rounds}, {warmup}.")
    if clock not in CLOCKS:
        raise ValueError(f"`clock` must be one of {', '.join(CLOCKS)}, but got {clock!r}.")
    names = list(runners)
    rounds = min(rounds, repeats)
    shares = [repeats // rounds + (1 if r < repeats % rounds else 0) for r in range(rounds)]
    for _ in range(warmup):
        for name in names:
            runners[name]()
    if loops is None:
        per = {name: calibrate_loops(runners[name], clock=clock) for name in names}
    elif isinstance(loops, Mapping):
        per = {name: max(1, int(loops.get(name, 1))) for name in names}
    else:
        per = dict.fromkeys(names, max(1, int(loops)))
    cpu: dict[str, list[float]] = {name: [] for name in names}
    wall: dict[str, list[float]] = {name: [] for name in names}
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        on_cpu, on_wall = time.thread_time_ns, time.perf_counter_ns
        for r, share in enumerate(shares):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                run, n, cpu_out, wall_out = runners[name], per[name], cpu[name], wall[name]
                scale = 1e6 * n
                for _ in range(share):
                    w0, c0 = on_wall(), on_cpu()
                    for _ in range(n):
                        run()
                    c1, w1 = on_cpu(), on_wall()
                    cpu_out.append((c1 - c0) / scale)
                    wall_out.append((w1 - w0) / scale)
    finally:
        if was_enabled:
            gc.enable()
    return Timings(cpu=cpu, wall=wall, loops=per)


def measure_latency(runners: Mapping[str, Callable[[], object]], *, warmup: int = 20, repeats: int = 200,
                    rounds: int = 10, clock: str = "wall",
                    loops: "int | Mapping[str, int] | None" = 1) -> dict[str, list[float]]:
    """Time each runner ``repeats`` times (ms per call), interleaved across runners
    (:func:`time_runners`), on ``clock``.

    Returns:
        ``{name: [ms, ...]}`` with exactly ``repeats`` samples per runner.
    """
    return time_runners(runners, warmup=warmup, repeats=repeats, rounds=rounds, loops=loops, clock=clock).on(clock)


#: Rounds of interleaving a measurement's samples are split into (each runner takes
#: ``repeats / ROUNDS`` samples back to back per round).
ROUNDS = 40
#: The percentile of the samples that is a latency: noise on a shared machine only ever
#: adds time (another process's cache traffic, a slower core), so a low percentile is
#: what reproduces (the minimum, as Julia's BenchmarkTools judges, is the extreme; a
#: low percentile of many samples is steadier than it).
LATENCY_PERCENTILE = 10


def percentile(values: "Sequence[float]", q: float = LATENCY_PERCENTILE) -> float:
    """The ``q``-th percentile of ``values`` (linear interpolation, numpy's default)."""
    ordered = sorted(float(v) for v in values)
    if not ordered:
        return float("nan")
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def static_latencies(runners: Mapping[str, Callable[[], object]], *, warmup: int, repeats: int,
                     clock: str) -> tuple[dict[str, float], Timings]:
    """The latency of each runner as a measurement reads a static model: the
    :data:`LATENCY_PERCENTILE`-th percentile of the per-call times of ``repeats``
    calibrated samples on ``clock``, interleaved in :data:`ROUNDS` rounds; with the
    timings (both clocks)."""
    timings = time_runners(runners, warmup=warmup, repeats=repeats, rounds=min(ROUNDS, repeats), loops=None,
                           clock=clock)
    return {name: percentile(values) for name, values in timings.on(clock).items()}, timings
