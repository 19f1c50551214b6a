"""Pareto dominance over plain rows: objective directions, the non-dominated sort (a 2-D
sweep, a lexicographic scan above), the baseline rule, hypervolume.

The one place these are written, below both ``search`` (early stopping, the progress
bar) and ``studies`` (the frontier, ``select``); the widgets, the CLI and the benchmarks
call them too.  Pure functions over plain rows (``dict`` objects carrying the objective
names as keys) or over loss matrices (every column minimized), vectorised with numpy so
that a study of 10,000 trials sorts in milliseconds.

Example:
    >>> rows = [{"accuracy": 0.9, "latency_ms": 1.0}, {"accuracy": 0.8, "latency_ms": 2.0}]
    >>> [r["accuracy"] for r in non_dominated(rows, ("accuracy", "latency_ms"))]
    [0.9]
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

#: Every objective a study may use, with its direction.
OBJECTIVES: dict[str, str] = {
    "accuracy": "maximize",
    "latency_ms": "minimize",
    "size_bytes": "minimize",
    "macs": "minimize",
}
#: The direction of every figure a frontier can be drawn over (objectives, and what the
#: dashboard can put on an axis: the same-run speed-up, the artifact's size).
DIRECTIONS: dict[str, str] = {**OBJECTIVES, "test_accuracy": "maximize", "speedup": "maximize",
                              "artifact_bytes": "minimize"}
DEFAULT_OBJECTIVES: tuple[str, ...] = ("accuracy", "latency_ms")
COST_OBJECTIVES: tuple[str, ...] = ("latency_ms", "size_bytes", "macs")


def directions(objectives: Sequence[str]) -> tuple[str, ...]:
    """``maximize`` / ``minimize`` for each name (objectives and axis figures)."""
    return tuple(DIRECTIONS[name] for name in objectives)


def _number(value: Any) -> float:
    """``float(value)``, NaN when it is missing or not a number."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def loss_vector(row: Mapping[str, Any], objectives: Sequence[str]) -> tuple[float, ...]:
    """The row's objective values turned into losses (every one minimized)."""
    out = []
    for name in objectives:
        value = float(row[name])
        out.append(-value if DIRECTIONS[name] == "maximize" else value)
    return tuple(out)


def loss_matrix(rows: Sequence[Mapping[str, Any]], objectives: Sequence[str]) -> np.ndarray:
    """The rows' losses as an ``(n, k)`` array (every column minimized); a missing or
    non-numeric value is NaN."""
    signs = np.array([-1.0 if DIRECTIONS[name] == "maximize" else 1.0 for name in objectives])
    try:  # numbers and None (NaN) straight into the array
        values = np.array([[row.get(name) for name in objectives] for row in rows], dtype=float)
    except (TypeError, ValueError):  # something else: each value read by _number
        values = np.array([[_number(row.get(name)) for name in objectives] for row in rows], dtype=float)
    return values.reshape(len(rows), len(objectives)) * signs


def dominates_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pareto dominance, row by row (arrays broadcast): ``a[i]`` no worse than ``b[i]``
    in every loss and better in one.  A NaN on either side never dominates."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return np.all(a <= b, axis=-1) & np.any(a < b, axis=-1)


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """Whether loss vector ``a`` Pareto-dominates ``b`` (no worse anywhere, better somewhere)."""
    return bool(dominates_rows(np.asarray(a, dtype=float), np.asarray(b, dtype=float)))


def non_dominated_losses(losses: np.ndarray) -> np.ndarray:
    """``True`` for each row of the loss matrix that no other row dominates; rows with
    a NaN are never on the front, equal rows are all kept (as in Optuna's
    ``best_trials``)."""
    losses = np.asarray(losses, dtype=float)
    mask = np.zeros(len(losses), dtype=bool)
    if losses.size == 0:
        return mask
    valid = np.flatnonzero(~np.isnan(losses).any(axis=1))
    if valid.size:
        kept = losses[valid]
        mask[valid] = _sweep_2d(kept) if kept.shape[1] == 2 else _scan(kept)
    return mask


def _sweep_2d(losses: np.ndarray) -> np.ndarray:
    """Two losses in O(n log n): sorted by the first loss, a point is dominated by an
    earlier group (strictly smaller first loss) whose best second loss is <= its own, or
    within its own group by a strictly smaller second loss."""
    order = np.lexsort((losses[:, 1], losses[:, 0]))
    first, second = losses[order, 0], losses[order, 1]
    starts = np.flatnonzero(np.r_[True, first[1:] != first[:-1]])
    group = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(order)]))
    group_min = second[starts]  # sorted by the second loss within a group
    best_before = np.r_[np.inf, np.minimum.accumulate(group_min)[:-1]]
    keep = np.empty(len(order), dtype=bool)
    keep[order] = (second <= group_min[group]) & (second < best_before[group])
    return keep


def _scan(losses: np.ndarray) -> np.ndarray:
    """Any number of losses: scan in lexicographic order (a later point never dominates
    an earlier one) and test each point against the front so far (a point dominated by
    anything is dominated by a front member)."""
    order = np.lexsort(losses.T[::-1])
    front = np.empty_like(losses)
    size = 0
    keep = np.zeros(len(losses), dtype=bool)
    for i in order:
        if size and dominates_rows(front[:size], losses[i]).any():
            continue
        front[size] = losses[i]
        size += 1
        keep[i] = True
    return keep


def non_dominated_mask(rows: Sequence[Mapping[str, Any]], objectives: Sequence[str]) -> list[bool]:
    """``True`` for each row no other row dominates (equal rows are all kept, as in
    Optuna's ``best_trials``).  Rows with a missing or NaN objective are never on it."""
    return non_dominated_losses(loss_matrix(rows, objectives)).tolist()


def front_order(x: Sequence[float], y: Sequence[float], *, x_objective: str, y_objective: str = "accuracy") -> np.ndarray:
    """Indices of the non-dominated points of a 2-D plot (each axis in its objective's
    direction), best ``x`` first (then best ``y``, then index)."""
    losses = loss_matrix([{x_objective: a, y_objective: b} for a, b in zip(x, y)], (x_objective, y_objective))
    keep = np.flatnonzero(non_dominated_losses(losses))
    return keep[np.lexsort((keep, losses[keep, 1], losses[keep, 0]))] if keep.size else keep


def baseline_point(row: Mapping[str, Any], baseline: Mapping[str, Any]) -> dict[str, Any]:
    """The baseline as it stands beside ``row``: its own accuracy, size and MACs, and
    the latency it had when timed interleaved with that trial (``reference_latency_ms``,
    falling back to the baseline's stored latency when the trial has none)."""
    point = dict(baseline)
    point["speedup"] = 1.0
    if row.get("reference_latency_ms") is not None:
        point["latency_ms"] = row["reference_latency_ms"]
    return point


def _baseline_losses(rows: Sequence[Mapping[str, Any]], baseline: Mapping[str, Any],
                     objectives: Sequence[str]) -> np.ndarray:
    """The losses of :func:`baseline_point` beside each row, as a matrix."""
    losses = np.repeat(loss_matrix([baseline_point({}, baseline)], objectives), len(rows), axis=0)
    if "latency_ms" in objectives:  # minimized: the loss is the latency itself
        references = [r.get("reference_latency_ms") for r in rows]
        timed = np.array([v is not None for v in references], dtype=bool)
        values = np.array([_number(v) for v in references], dtype=float)
        column = losses[:, list(objectives).index("latency_ms")]
        column[timed] = values[timed]
    return losses


def beaten_by_baseline_mask(rows: Sequence[Mapping[str, Any]], baseline: Mapping[str, Any] | None,
                            objectives: Sequence[str]) -> np.ndarray:
    """For each row, whether the baseline dominates it under ``objectives``, latency
    compared within the trial's own run: such a trial is never on the front nor
    selected.  A missing value on either side means not beaten."""
    if not baseline or not rows:
        return np.zeros(len(rows), dtype=bool)
    return dominates_rows(_baseline_losses(rows, baseline, objectives), loss_matrix(rows, objectives))


def beaten_by_baseline(row: Mapping[str, Any], baseline: Mapping[str, Any] | None, objectives: Sequence[str]) -> bool:
    """:func:`beaten_by_baseline_mask` for one row."""
    return bool(beaten_by_baseline_mask([row], baseline, objectives)[0])


def baseline_on_front(baseline: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], objectives: Sequence[str]) -> bool:
    """Whether no row dominates the baseline, each compared with the baseline as timed
    in that row's own run."""
    if not rows:
        return True
    return not dominates_rows(loss_matrix(rows, objectives), _baseline_losses(rows, baseline, objectives)).any()


def non_dominated(rows: Sequence[Mapping[str, Any]], objectives: Sequence[str]) -> list[Mapping[str, Any]]:
    """The rows on the frontier, in their original order."""
    return [row for row, keep in zip(rows, non_dominated_mask(rows, objectives)) if keep]


def hypervolume(points: Iterable[Sequence[float]], reference: Sequence[float]) -> float:
    """Hypervolume dominated by loss vectors ``points`` (every coordinate minimized) and
    bounded by ``reference``; points not strictly better than the reference in every
    coordinate add nothing.  Exact (sweep in 2-D, slicing above)."""
    ref = tuple(float(r) for r in reference)
    pts = [tuple(float(x) for x in p) for p in points]
    pts = [p for p in pts if len(p) == len(ref) and all(x < r for x, r in zip(p, ref))]
    if not pts:
        return 0.0
    if len(ref) == 1:
        return ref[0] - min(p[0] for p in pts)
    # slice along the first coordinate
    pts.sort()
    volume = 0.0
    for i, p in enumerate(pts):
        upper = pts[i + 1][0] if i + 1 < len(pts) else ref[0]
        width = upper - p[0]
        if width > 0:
            volume += width * hypervolume([q[1:] for q in pts[: i + 1]], ref[1:])
    return volume
