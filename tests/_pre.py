"""What early stopping reads of a candidate before it trains (its costs), for the rule's tests."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Pre:
    latency_ms: float
    size_bytes: int = 1000
    macs: int = 10_000
