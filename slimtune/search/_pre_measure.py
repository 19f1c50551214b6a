"""What is known of a candidate before it trains: its compressed structure compiled and
timed beside the baseline (a cautious, low estimate), each exit path of an early-exit
model on its own, and the packed size; early stopping reads it
(:mod:`slimtune.search._early_stopping`)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence

import torch
from torch import nn

#: Untimed calls before a candidate's structure is timed for early stopping.
PRE_WARMUP = 20

@dataclass(frozen=True)
class PreMeasurement:
    """What is known about a candidate before it is trained: its compressed structure
    compiled and timed (for early-exit models, the shortest path: a lower bound), and
    the length of that compiled structure's packed file (``size_bytes``; the trained
    weights pack to within a few bytes of it, see :mod:`slimtune.search.packed`).

    ``reference_latency_ms`` is the baseline timed interleaved with the candidate (the
    same statistic), so that early stopping compares same-run speed-ups, not
    milliseconds read minutes apart on a machine whose speed drifts.

    Early-exit models also carry each exit path timed and counted on its own
    (``path_latency_ms``, ``path_macs``: leaving at each enabled exit in order, then the
    final head), so that once the candidate has trained an epoch its costs can be read
    at the exit rates it has then (:meth:`at_exit_rates`)."""

    latency_ms: float
    macs: int
    size_bytes: int
    path_latency_ms: tuple[float, ...] = ()
    path_macs: tuple[int, ...] = ()
    reference_latency_ms: float | None = None  # the baseline timed interleaved with these (same statistic)

    def at_exit_rates(self, exit_rates: "Sequence[float] | None") -> "PreMeasurement":
        """The costs at ``exit_rates`` (one share per path): latency and MACs are the
        paths' weighted by the rates, as a measurement of the trained model weights its
        path medians (``mean_of_path_medians``); itself for a static model or rates of
        the wrong length.  An estimate, not a bound: the rates change as the exit heads
        learn (early stopping allows for it with its latency tolerance)."""
        if not exit_rates or len(exit_rates) != len(self.path_latency_ms) or len(self.path_macs) != len(exit_rates):
            return self
        return replace(self, latency_ms=float(sum(r * t for r, t in zip(exit_rates, self.path_latency_ms))),
                       macs=int(round(sum(r * m for r, m in zip(exit_rates, self.path_macs)))))


def cautious_latencies(compiled: dict[str, Any], x: torch.Tensor, threads: int) -> dict[str, float]:
    """A cautious (low) latency of each compiled model on ``x``, timed interleaved on
    the clock of the final measurement (:func:`~slimtune.search._timing.latency_clock`):
    the 10th percentile of 30 calibrated samples after :data:`PRE_WARMUP` calls.  Early
    stopping compares finished trials against it, and a high one would reject a
    candidate that is really faster (the median after 5 warm-up calls read an 8-bit
    digits model at 0.029-0.056 ms that measured 0.026 ms trained)."""
    from slimtune.search._profiling import _runtime_of
    from slimtune.search._timing import latency_clock, measure_latency

    inputs = {name: c.prepare(x) for name, c in compiled.items()}
    runners = {name: (lambda c=c, xi=inputs[name]: c.run_one(xi)) for name, c in compiled.items()}
    clock = latency_clock(threads, all(_runtime_of(c).calls_on_caller_thread for c in compiled.values()))
    timings = measure_latency(runners, warmup=PRE_WARMUP, repeats=30, rounds=3, clock=clock, loops=None)
    return {name: sorted(t)[len(t) // 10] for name, t in timings.items()}


def path_thresholds(n: int) -> list[list[float]]:
    """Thresholds of ``n`` exits that send every sample down one path: leaving at each
    exit in order (its threshold 0, the ones before it above any confidence), then
    through the final head (every threshold above any confidence)."""
    return [[2.0] * k + [0.0] * (n - k) for k in range(n + 1)]  # a max softmax probability is <= 1


class Thresholded(nn.Module):
    """A model with dynamic exits (its normalised ``segments``) whose thresholds are
    replaced: what a runtime compiles to time one exit path of it."""

    def __init__(self, segments: list, thresholds: Sequence[float]) -> None:
        super().__init__()
        self.trunks = nn.ModuleList(trunk for trunk, _, _ in segments)
        self.heads = nn.ModuleList(head if head is not None else nn.Identity() for _, head, _ in segments)
        self.thresholds = [float(t) for t in thresholds]

    def segments(self) -> list:
        last = len(self.trunks) - 1
        return [(trunk, None if i == last else self.heads[i], None if i == last else self.thresholds[i])
                for i, trunk in enumerate(self.trunks)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The path these thresholds force: the trunks up to the first exit at threshold
        0 (or all of them), then its head."""
        for i, trunk in enumerate(self.trunks):
            x = trunk(x)
            if i < len(self.thresholds) and self.thresholds[i] <= 0.0:
                return self.heads[i](x)
        return x
