"""Trial rows as the widgets see them: axes, families, formatting, the 2-D front.

Pure functions over the plain row dicts that ``Study.trials()`` returns, so the
interactive dashboard, the static HTML fallback and the tests share one reading of
a row.  Nothing here touches ipywidgets.

Example:
    >>> rows = [{"trial": 0, "accuracy": 0.9, "latency_ms": 1.0, "state": "COMPLETE"},
    ...         {"trial": 1, "accuracy": 0.8, "latency_ms": 2.0, "state": "COMPLETE"}]
    >>> [r["trial"] for r in front_rows(rows, "latency")]
    [0]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from slimtune._vocabulary import state_phrase

Row = Mapping[str, Any]


@dataclass(frozen=True)
class Axis:
    """One cost shown on the x axis (which way is better: the frontier module's
    ``DIRECTIONS[key]``)."""

    key: str  # the row field
    label: str  # axis label
    unit_scale: float  # row value * unit_scale = shown value
    unit: str
    tick_format: str


#: The costs the x axis can show, by the name used in the UI and ``objective=``.
#: Sizes are lengths of real files in KiB (1024 B): ``size`` the packed model file
#: (``size_bytes``), ``artifact`` the ONNX/TorchScript file that was timed.
AXES: dict[str, Axis] = {
    "latency": Axis("latency_ms", "Latency (ms, measured)", 1.0, "ms", ".3~f"),
    "speedup": Axis("speedup", "Speed-up vs baseline (×, timed in the same run)", 1.0, "×", ".2~f"),
    "size": Axis("size_bytes", "Size of the packed model file (KiB)", 1 / 1024, "KiB", ".1~f"),
    "artifact": Axis("artifact_bytes", "Size of the timed artifact, ONNX / TorchScript (KiB)", 1 / 1024, "KiB",
                     ".1~f"),
    "macs": Axis("macs", "MACs (millions)", 1e-6, "M", ".3~f"),
}

def families() -> list[tuple[str, str]]:
    """``(parameter prefix, title)`` of every registered knob, in pipeline order (the
    knobs say how they are shown; a new knob needs nothing here)."""
    from slimtune.spaces import STAGES, get_knob, knob_families

    knobs = sorted((get_knob(name) for name in knob_families()), key=lambda k: STAGES.index(k.stage))
    return [(k.family, k.title or k.family) for k in knobs]


FINAL_STATES = ("COMPLETE", "PRUNED", "FAIL")


def check_axis(name: str) -> Axis:
    """The :class:`Axis` called ``name`` (one of :data:`AXES`)."""
    try:
        return AXES[name]
    except KeyError:
        raise ValueError(f"`objective` must be one of {', '.join(AXES)}, but got {name!r}.") from None


def value(row: Row, key: str) -> float:
    """A numeric field of a row, NaN when missing or not a number."""
    raw = row.get(key)
    try:
        out = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan
    return out


def is_complete(row: Row) -> bool:
    return str(row.get("state", "COMPLETE")).upper() == "COMPLETE"


def is_final(row: Row) -> bool:
    return str(row.get("state", "COMPLETE")).upper() in FINAL_STATES


def group_params(params: Mapping[str, Any]) -> list[tuple[str, list[tuple[str, Any]]]]:
    """Params grouped by knob family, in pipeline order; unknown prefixes go to "Other".

    Each family lists ``(name without the family prefix, value)`` sorted naturally
    (``exits.2`` before ``exits.10``).
    """
    known = families()
    groups: dict[str, list[tuple[str, Any]]] = {title: [] for _, title in known}
    titles = dict(known)
    other: list[tuple[str, Any]] = []
    for name, val in params.items():
        prefix, _, rest = str(name).partition(".")
        if prefix in titles and rest:
            groups[titles[prefix]].append((rest, val))
        else:
            other.append((str(name), val))
    out = [(title, sorted(items, key=lambda kv: _natural_key(kv[0]))) for title, items in groups.items() if items]
    if other:
        out.append(("Other", sorted(other, key=lambda kv: _natural_key(kv[0]))))
    return out


def _natural_key(name: str) -> list[Any]:
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in name.split(".")]


def format_param(val: Any) -> str:
    """A param value for display (floats with 4 significant digits)."""
    if isinstance(val, bool):
        return "on" if val else "off"
    if isinstance(val, float):
        return f"{val:.4g}"
    return str(val)


def format_cost(val: float, axis: Axis) -> str:
    if math.isnan(val):
        return "–"
    shown = val * axis.unit_scale
    if axis.key == "latency_ms":
        return f"{shown:.3f} ms"
    if axis.key == "speedup":
        return f"{shown:.2f}×"
    if axis.unit == "KiB":
        return f"{shown:.1f} KiB"
    return f"{shown:.3g} M"


def format_accuracy(val: float) -> str:
    return "–" if math.isnan(val) else f"{val:.4f}"


def params_summary(params: Mapping[str, Any]) -> str:
    """A compact one-line summary of what the knobs do (hover text and the table): each
    registered knob describes its own values (:meth:`slimtune.spaces.Knob.summary`)."""
    from slimtune.spaces._space import summaries

    return ", ".join(summaries(params)) or "no compression"


def trial_title(row: Row) -> str:
    """``trial 7`` or ``trial 7 (stopped early: cannot reach the front)`` (plain text)."""
    state = str(row.get("state", "COMPLETE")).upper()
    head = f"trial {row.get('trial')}"
    if state != "COMPLETE":
        reason = row.get("stopped_reason") or row.get("error")
        head += f" ({state_phrase(state)}{': ' + str(reason) if reason else ''})"
    return head


def hover_text(row: Row) -> str:
    """One line about a trial: title, objectives and key params (plain text)."""
    head = trial_title(row)
    acc = value(row, "accuracy")
    lat = value(row, "latency_ms")
    size = value(row, "size_bytes")
    metrics = f"acc {format_accuracy(acc)} · {format_cost(lat, AXES['latency'])} · {format_cost(size, AXES['size'])}"
    return f"{head} · {metrics} · {params_summary(row.get('params') or {})}"


def front_indices(x: np.ndarray, y: np.ndarray, *, key: str = "latency_ms") -> np.ndarray:
    """Indices of the non-dominated points (x is the row field ``key``, in its
    objective's direction; y the accuracy, maximized), sorted by x (best x first).

    The frontier module's rule (:func:`slimtune.studies._frontier.front_order`): points
    with a NaN coordinate are never on the front; equal points are all kept (as in
    Optuna's ``best_trials``).
    """
    from slimtune._dominance import front_order

    return front_order(np.asarray(x, dtype=float), np.asarray(y, dtype=float), x_objective=key)


def compared(rows: Sequence[Row], axis: Axis, baseline: Row | None = None) -> np.ndarray:
    """What the front on ``axis`` compares for each row: the row field itself, except
    latency, compared as the same-run ratio (:func:`slimtune._dominance.relative_latency`)
    while milliseconds are what is drawn."""
    if axis.key != "latency_ms":
        return np.array([value(r, axis.key) for r in rows], dtype=float)
    from slimtune._dominance import relative_latency

    base = (baseline or {}).get("latency_ms")
    return np.array([relative_latency(r, base) for r in rows], dtype=float)


def front_rows(rows: Sequence[Row], objective: str = "latency", baseline: Row | None = None) -> list[Row]:
    """The complete rows on the accuracy-vs-``objective`` front, cheapest first; with a
    ``baseline``, rows it dominates (latency compared within each trial's run) are off."""
    axis = check_axis(objective)
    done = [r for r in rows if is_complete(r)]
    x = compared(done, axis, baseline)
    y = np.array([value(r, "accuracy") for r in done])
    return [done[i] for i in not_beaten_by_baseline(done, front_indices(x, y, key=axis.key), axis, baseline)]


def not_beaten_by_baseline(rows: Sequence[Row], indices: np.ndarray, axis: Axis, baseline: Row | None) -> np.ndarray:
    """``indices`` without the rows that the baseline dominates on (accuracy, axis)."""
    from slimtune._dominance import beaten_by_baseline_mask

    indices = np.asarray(indices, dtype=int)
    if not baseline or indices.size == 0:
        return indices
    beaten = beaten_by_baseline_mask([rows[int(i)] for i in indices], baseline, ("accuracy", axis.key))
    return indices[~beaten]


def baseline_row(baseline: Any) -> dict[str, Any] | None:
    """The study's baseline (a Measurement, a dict or None) as a plain row."""
    if baseline is None:
        return None
    if isinstance(baseline, Mapping):
        data = dict(baseline)
    elif hasattr(baseline, "to_dict"):
        data = dict(baseline.to_dict())
    else:
        data = {k: getattr(baseline, k, None) for k in ("accuracy", "latency_ms", "size_bytes", "macs", "exit_rates")}
    data.setdefault("trial", "baseline")
    data.setdefault("state", "COMPLETE")
    data["speedup"] = 1.0
    return data


def deltas(row: Row, baseline: Row | None) -> list[tuple[str, str, str]]:
    """``(metric, value, change against the baseline)`` for the details pane.

    Accuracy is the validation accuracy (the objective), test accuracy is shown apart;
    the latency change is the trial's own same-run speed-up
    (``reference_latency_ms / latency_ms``), never a ratio to a baseline timed at
    another moment."""
    out = []
    base = baseline or {}
    for key, label in (("accuracy", "val accuracy"), ("test_accuracy", "test accuracy")):
        acc, base_acc = value(row, key), value(base, key)
        change = "" if math.isnan(acc) or math.isnan(base_acc) else f"{(acc - base_acc) * 100:+.2f} pp"
        out.append((label, format_accuracy(acc), change))
    for name, label in (("latency", "latency"), ("size", "packed size"), ("artifact", "artifact size"),
                        ("macs", "MACs")):
        axis = AXES[name]
        val = value(row, axis.key)
        ref = value(row, "reference_latency_ms") if name == "latency" else value(base, axis.key)
        change = ratio_text(val, ref)
        if name == "latency" and change and change != "same as baseline":
            change += " (same run)"
        out.append((label, format_cost(val, axis), change))
    return out


def ratio_text(val: float, base: float) -> str:
    """``2.10× smaller`` style change of a cost against the baseline."""
    if math.isnan(val) or math.isnan(base) or val <= 0 or base <= 0:
        return ""
    if abs(val - base) / base < 0.005:
        return "same as baseline"
    if val < base:
        return f"{base / val:.2f}× less"
    return f"{val / base:.2f}× more"


def sorted_rows(rows: Iterable[Row], key: str, *, descending: bool) -> list[Row]:
    """Rows sorted by a field, missing values last whatever the direction."""
    rows = list(rows)
    present = [r for r in rows if not math.isnan(value(r, key))]
    missing = [r for r in rows if math.isnan(value(r, key))]
    present.sort(key=lambda r: value(r, key), reverse=descending)
    return present + missing
