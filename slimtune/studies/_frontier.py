"""The accuracy-cost frontier: objective directions, non-dominated rows, hypervolume.

Pure functions over plain rows (``dict`` objects carrying the objective names as keys),
so the same code serves the study database, the early-stopping rule, the benchmark
and the widgets.

Example:
    >>> rows = [{"accuracy": 0.9, "latency_ms": 1.0}, {"accuracy": 0.8, "latency_ms": 2.0}]
    >>> [r["accuracy"] for r in non_dominated(rows, ("accuracy", "latency_ms"))]
    [0.9]
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

from slimtune.studies._errors import StudyError

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


def check_objectives(objectives: Iterable[str] | str) -> tuple[str, ...]:
    """Validate objective names: ``accuracy`` plus at least one cost, no duplicates.

    A comma-separated string (``"accuracy,latency_ms"``) is accepted too.

    Raises:
        StudyError: (a ``ValueError``) naming the bad value.
    """
    if isinstance(objectives, str):
        objectives = [o.strip() for o in objectives.split(",") if o.strip()]
    names = tuple(objectives)
    unknown = [n for n in names if n not in OBJECTIVES]
    if unknown:
        raise StudyError(f"Unknown objective {unknown[0]!r}; the objectives are {', '.join(OBJECTIVES)}.")
    if len(set(names)) != len(names):
        raise StudyError(f"`objectives` has a duplicate: {', '.join(names)}.")
    if "accuracy" not in names or len(names) < 2:
        raise StudyError(
            "`objectives` must contain 'accuracy' and at least one of "
            f"{', '.join(COST_OBJECTIVES)}, but got {', '.join(names) or 'nothing'}."
        )
    return names


def loss_vector(row: Mapping[str, Any], objectives: Sequence[str]) -> tuple[float, ...]:
    """The row's objective values turned into losses (every one minimized)."""
    out = []
    for name in objectives:
        value = float(row[name])
        out.append(-value if DIRECTIONS[name] == "maximize" else value)
    return tuple(out)


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """Whether loss vector ``a`` Pareto-dominates ``b`` (no worse anywhere, better somewhere)."""
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def non_dominated_mask(rows: Sequence[Mapping[str, Any]], objectives: Sequence[str]) -> list[bool]:
    """``True`` for each row no other row dominates (equal rows are all kept, as in
    Optuna's ``best_trials``).  Rows with a missing or NaN objective are never on it."""
    losses: list[tuple[float, ...] | None] = []
    for row in rows:
        try:
            vec = loss_vector(row, objectives)
        except (KeyError, TypeError, ValueError):
            vec = None
        losses.append(None if vec is None or any(math.isnan(v) for v in vec) else vec)
    if len(objectives) == 2:
        return _non_dominated_mask_2d(losses)
    valid = [v for v in losses if v is not None]
    return [v is not None and not any(dominates(w, v) for w in valid) for v in losses]


def _non_dominated_mask_2d(losses: Sequence[tuple[float, ...] | None]) -> list[bool]:
    """The same rule for two objectives in O(n log n): sweep by the first loss; a point
    is dominated by an earlier group (strictly smaller first loss) with second loss <=
    its own, or within its group by a strictly smaller second loss."""
    mask = [False] * len(losses)
    order = sorted((i for i, v in enumerate(losses) if v is not None), key=lambda i: losses[i])  # type: ignore[index]
    best_before = math.inf
    start = 0
    while start < len(order):
        end = start
        first = losses[order[start]][0]  # type: ignore[index]
        while end < len(order) and losses[order[end]][0] == first:  # type: ignore[index]
            end += 1
        group = order[start:end]
        group_min = min(losses[i][1] for i in group)  # type: ignore[index]
        for i in group:
            second = losses[i][1]  # type: ignore[index]
            mask[i] = not (best_before <= second or second > group_min)
        best_before = min(best_before, group_min)
        start = end
    return mask


def baseline_point(row: Mapping[str, Any], baseline: Mapping[str, Any]) -> dict[str, Any]:
    """The baseline as it stands beside ``row``: its own accuracy, size and MACs, and
    the latency it had when timed interleaved with that trial (``reference_latency_ms``,
    falling back to the baseline's stored latency when the trial has none)."""
    point = dict(baseline)
    point["speedup"] = 1.0
    if row.get("reference_latency_ms") is not None:
        point["latency_ms"] = row["reference_latency_ms"]
    return point


def beaten_by_baseline(row: Mapping[str, Any], baseline: Mapping[str, Any] | None, objectives: Sequence[str]) -> bool:
    """Whether the baseline dominates ``row`` under ``objectives``, latency compared
    within the trial's own run: such a trial is never on the front nor selected."""
    if not baseline:
        return False
    try:
        return dominates(loss_vector(baseline_point(row, baseline), objectives), loss_vector(row, objectives))
    except (KeyError, TypeError, ValueError):
        return False


def baseline_on_front(baseline: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], objectives: Sequence[str]) -> bool:
    """Whether no row dominates the baseline, each compared with the baseline as timed
    in that row's own run."""
    for row in rows:
        try:
            if dominates(loss_vector(row, objectives), loss_vector(baseline_point(row, baseline), objectives)):
                return False
        except (KeyError, TypeError, ValueError):
            continue
    return True


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
