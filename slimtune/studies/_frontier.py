"""The frontier of a study: which objectives a study may have, and the ``select`` rule
(limits, ranking, and why nothing fits).

Dominance itself (directions, the non-dominated sort, the baseline rule, hypervolume)
is :mod:`slimtune._dominance`, below both ``search`` and ``studies``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from slimtune._dominance import COST_OBJECTIVES, OBJECTIVES, beaten_by_baseline_mask, relative_latency
from slimtune.studies._errors import StudyError


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


# -- the select rule ----------------------------------------------------------------------
#: What ``select(split=...)`` ranks by: the validation accuracy (the objective) or the test one.
SPLITS = {"val": "accuracy", "test": "test_accuracy"}


@dataclass(frozen=True)
class Limits:
    """What ``Study.select`` is asked for (``None``: no limit).  Sizes in KiB (1024 B);
    ``min_accuracy`` applies to the accuracy of ``split``."""

    max_latency_ms: float | None = None
    min_accuracy: float | None = None
    max_size_kb: float | None = None
    max_artifact_kb: float | None = None
    split: str = "val"

    @property
    def accuracy(self) -> str:
        """The row field ranked and limited: ``accuracy`` or ``test_accuracy``."""
        return SPLITS[self.split]

    def fits(self, row: Mapping[str, Any], skip: str = "") -> bool:
        """Whether ``row`` meets every limit but ``skip`` (``latency``, ``accuracy``,
        ``size`` or ``artifact``).  A trial with no recorded artifact length never meets
        ``max_artifact_kb``."""
        return ((skip == "latency" or self.max_latency_ms is None or row["latency_ms"] <= self.max_latency_ms)
                and (skip == "accuracy" or self.min_accuracy is None or row[self.accuracy] >= self.min_accuracy)
                and (skip == "size" or self.max_size_kb is None or row["size_bytes"] <= self.max_size_kb * 1024)
                and (skip == "artifact" or self.max_artifact_kb is None
                     or (row.get("artifact_bytes") or math.inf) <= self.max_artifact_kb * 1024))

    def key(self, row: Mapping[str, Any]) -> tuple:
        """The ranking: most accurate first, ties to lower latency (relative to the
        baseline timed in the same run), smaller size, earlier trial."""
        return (-row[self.accuracy], relative_latency(row), row["size_bytes"], row["trial"])


def select_rows(rows: Sequence[Mapping[str, Any]], limits: Limits, *, baseline: Mapping[str, Any] | None,
                objectives: Sequence[str]) -> tuple[list[Mapping[str, Any]], list[Mapping[str, Any]]]:
    """The ``select`` rule over complete rows: ``(fitting, eligible)``, both ranked by
    :meth:`Limits.key`: the rows within the limits, and those of them the baseline does
    not beat (timed in their own runs).  ``eligible[0]`` is the answer."""
    scored = [r for r in rows if r.get(limits.accuracy) is not None]
    fitting = sorted((r for r in scored if limits.fits(r)), key=limits.key)
    beaten = beaten_by_baseline_mask(fitting, baseline, objectives)
    return fitting, [r for r, out in zip(fitting, beaten) if not out]


def selection_may_change(current: Mapping[str, Any] | None, new_rows: Sequence[Mapping[str, Any]], limits: Limits, *,
                         baseline: Mapping[str, Any] | None, objectives: Sequence[str]) -> bool:
    """Whether complete ``new_rows`` can change what :func:`select_rows` chose
    (``current``, ``None`` when nothing was): one of them is eligible and ranks before it."""
    _, eligible = select_rows(new_rows, limits, baseline=baseline, objectives=objectives)
    return bool(eligible) and (current is None or limits.key(eligible[0]) < limits.key(current))


def no_candidate_message(study_name: str, rows: Sequence[Mapping[str, Any]], fitting: Sequence[Mapping[str, Any]],
                         limits: Limits, baseline: Mapping[str, Any]) -> str:
    """Why ``select`` found nothing among the complete ``rows``: nothing beats the
    baseline among the ``fitting`` ones, or nothing fits; it names the closest
    alternatives."""
    max_latency_ms, min_accuracy, split = limits.max_latency_ms, limits.min_accuracy, limits.split
    max_size_kb, max_artifact_kb = limits.max_size_kb, limits.max_artifact_kb
    acc, fits, key = limits.accuracy, limits.fits, limits.key
    asked = " and ".join(a for a in (
        f"latency_ms <= {max_latency_ms:g}" if max_latency_ms is not None else "",
        f"{split} accuracy >= {min_accuracy:g}" if min_accuracy is not None else "",
        f"size <= {max_size_kb:g} KiB" if max_size_kb is not None else "",
        f"artifact <= {max_artifact_kb:g} KiB" if max_artifact_kb is not None else "") if a) or "no limits"
    if fitting:
        return (
            f"Nothing beats the baseline under {asked}: the baseline ({_describe(baseline, acc)}) dominates every "
            f"one of the {len(fitting)} fitting trials when timed in their own runs (e.g. {_describe(fitting[0], acc)}, "
            f"baseline {fitting[0].get('reference_latency_ms') or baseline['latency_ms']:.4g} ms in that run); "
            "keep the baseline.")
    alternatives: list[str] = []
    if max_latency_ms is not None:
        near = sorted((r for r in rows if fits(r, "latency")), key=lambda r: (relative_latency(r), -r[acc]))
        if near:
            alternatives.append(f"the fastest meeting the other limits is {_describe(near[0], acc)}")
    if min_accuracy is not None:
        near = sorted((r for r in rows if fits(r, "accuracy")), key=key)
        if near:
            alternatives.append(f"the most accurate meeting the other limits is {_describe(near[0], acc)}")
    if max_size_kb is not None:
        near = sorted((r for r in rows if fits(r, "size")), key=lambda r: (r["size_bytes"], -r[acc]))
        if near:
            alternatives.append(f"the smallest meeting the other limits is {_describe(near[0], acc)}")
    if max_artifact_kb is not None:
        near = sorted((r for r in rows if fits(r, "artifact") and r.get("artifact_bytes")),
                      key=lambda r: (r["artifact_bytes"], -r[acc]))
        if near:
            alternatives.append(f"the smallest artifact meeting the other limits is {_describe(near[0], acc)}, "
                                f"artifact {near[0]['artifact_bytes'] / 1024:.1f} KiB")
    if not alternatives:
        fastest = min(rows, key=lambda r: (relative_latency(r), -r[acc]))
        best = min(rows, key=key)
        alternatives.append(f"the fastest is {_describe(fastest, acc)}; the most accurate is {_describe(best, acc)}")
    return f"No complete trial of study {study_name!r} fits {asked}: " + "; ".join(alternatives) + "."


def _describe(row: Mapping[str, Any], acc: str = "accuracy") -> str:
    label = "test accuracy" if acc == "test_accuracy" else "val accuracy"
    trial = "baseline" if row.get("trial") == "baseline" else f"trial {row['trial']}"
    ratio = relative_latency(row)
    same_run = f" = {1 / ratio:.2f}x the baseline's speed in its run" if (
        trial != "baseline" and row.get("reference_latency_ms") and ratio > 0) else ""
    return (f"{trial} ({label} {row[acc]:.4f}, latency {row['latency_ms']:.4g} ms{same_run}, "
            f"{row['size_bytes'] / 1024:.1f} KiB)")
