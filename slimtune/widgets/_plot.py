"""The live frontier plot: every trial a point, the Pareto front a step line (bqplot).

Points are only ever appended: :meth:`FrontierPlot.add` extends the points and moves
the front (kept point by point, :mod:`~slimtune.widgets._front`), it never rebuilds the
figure.  What is sent to the browser stays bounded: two float columns per mark, thinned
beyond a few thousand points to one point per cell of a grid finer than a dot
(:mod:`~slimtune.widgets._thin`), the front always whole; hover text comes from Python
(a round trip on hover), however many params a trial has.
"""

from __future__ import annotations

import html
import math
from itertools import count, repeat
from typing import Any, Callable, Sequence

import bqplot as bq
import ipywidgets as widgets
import numpy as np

from slimtune._dominance import DIRECTIONS
from slimtune.widgets import _axes as R
from slimtune.widgets._front import ParetoSet
from slimtune.widgets._thin import Thinning

#: (fill colour, role) used by the marks, kept in one place so the legend, the
#: static fallback and the docs agree.
COLORS = {
    "trial": "#4c78a8",
    "other": "#b0b0b0",
    "front": "#e45756",
    "baseline": "#222222",
    "selected": "#2ca02c",
    "inspected": "#222222",
}

PickCallback = Callable[[dict[str, Any]], None]


class FrontierPlot:
    """Accuracy against one cost (latency, packed or artifact size, MACs), one point per trial.

    Complete trials are blue dots; pruned and failed ones grey crosses (a trial with
    no measurement at all is drawn at the plot's bottom-right edge, so every trial is
    a point); the front of the complete trials is a red step line; the baseline a
    black diamond.  ``on_pick(row)`` is called when a point is clicked; ``whole(row)``,
    when given, completes a row (its params) before its hover card is written.

    Example:
        >>> plot = FrontierPlot(objective="latency")
        >>> plot.add([{"trial": 0, "accuracy": 0.9, "latency_ms": 0.2, "state": "COMPLETE"}])
        >>> plot.n_points
        1
    """

    def __init__(self, *, objective: str = "latency", on_pick: PickCallback | None = None,
                 on_error: Callable[[BaseException], None] | None = None, height: str = "420px",
                 metric: str = "accuracy", whole: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> None:
        self.axis = R.check_axis(objective)
        self._on_pick = on_pick
        self._on_error = on_error
        self._whole = whole  # makes a row whole (its params) before its hover card is written
        self._done: list[dict[str, Any]] = []  # complete trials, in plotting order
        self._other: list[dict[str, Any]] = []  # pruned / failed trials
        self._where: dict[Any, tuple[list[dict[str, Any]], int]] = {}  # trial -> (its list, index)
        self._x = np.zeros(0)  # plotted coordinates of _done, in its order
        self._y = np.zeros(0)
        self._pareto = ParetoSet(np.zeros((0, 2)))  # _done's non-dominated points (indices)
        self._front: np.ndarray = np.zeros(0, dtype=int)  # indices into _done: the front drawn
        self._thin = {"done": Thinning(), "other": Thinning()}
        self._shown = {"done": np.zeros(0, dtype=int), "other": np.zeros(0, dtype=int)}  # indices drawn
        self._edge_xy: tuple[float, float] | None = None
        self._baseline: dict[str, Any] | None = None
        self._inspected: int | None = None
        self._selected: int | None = None

        self.x_scale = bq.LinearScale()
        self.y_scale = bq.LinearScale()
        self.x_axis = bq.Axis(scale=self.x_scale, label=self.axis.label, tick_format=self.axis.tick_format,
                              grid_color="#eeeeee", label_offset="36px")
        self.y_axis = bq.Axis(scale=self.y_scale, side="left", label=f"Validation {metric.replace('_', ' ')}", tick_format=".3f",
                              grid_color="#eeeeee", label_offset="46px")
        scales = {"x": self.x_scale, "y": self.y_scale}
        self.tooltip = widgets.HTML(layout=widgets.Layout(max_width="380px"))
        self.tooltip.add_class("slimtune-tooltip")
        self.front_line = bq.Lines(x=[], y=[], scales=scales, colors=[COLORS["front"]], stroke_width=2.5,
                                   interpolation="step-after", labels=["Pareto front"],
                                   interactions={}, enable_hover=False)
        self.selected_mark = self._ring(scales, COLORS["selected"], size=420, width=3.5, label="selected model")
        self.inspected_mark = self._ring(scales, COLORS["inspected"], size=220, width=2.0, label="inspected")
        self.trials_mark = bq.Scatter(x=[], y=[], scales=scales, colors=[COLORS["trial"]], default_size=58,
                                      opacities=[0.75], stroke="white", stroke_width=0.8,
                                      labels=["trials"], tooltip=self.tooltip,
                                      interactions={"hover": "tooltip"})
        self.others_mark = bq.Scatter(x=[], y=[], scales=scales, colors=[COLORS["other"]], marker="cross",
                                      default_size=48, opacities=[0.9], labels=["stopped / failed"], tooltip=self.tooltip, interactions={"hover": "tooltip"})
        self.baseline_mark = bq.Scatter(x=[], y=[], scales=scales, colors=[COLORS["baseline"]], marker="diamond",
                                        default_size=110, names=[], display_names=True, labels=["baseline"], interactions={}, enable_hover=False)
        for mark in (self.trials_mark, self.others_mark):
            mark.on_element_click(self._reporting(self._clicked))
            mark.on_hover(self._reporting(self._hovered))
        self.figure = bq.Figure(
            marks=[self.front_line, self.selected_mark, self.inspected_mark, self.baseline_mark,
                   self.others_mark, self.trials_mark],
            axes=[self.x_axis, self.y_axis], animation_duration=0, padding_y=0.06, padding_x=0.04,
            fig_margin={"top": 16, "bottom": 52, "left": 66, "right": 16},             layout=widgets.Layout(width="100%", height=height, min_width="360px"),
        )
        self.figure.add_class("slimtune-plot")
        # an HTML legend beside the figure: bqplot's own sits on top of the data
        self.legend = widgets.HTML(legend_html())

    @staticmethod
    def _ring(scales: dict[str, Any], color: str, *, size: int, width: float, label: str) -> bq.Scatter:
        return bq.Scatter(x=[], y=[], scales=scales, colors=[color], stroke=color, fill=False, default_size=size,
                          stroke_width=width, interactions={}, enable_hover=False, labels=[label])

    # ----------------------------------------------------------------- data
    @property
    def n_points(self) -> int:
        """Trials drawn (complete plus pruned/failed)."""
        return len(self._done) + len(self._other)

    @property
    def front(self) -> list[dict[str, Any]]:
        """The complete trials on the current front, cheapest first."""
        return [self._done[i] for i in self._front]

    def rows(self) -> list[dict[str, Any]]:
        return self._done + self._other

    def set_baseline(self, row: dict[str, Any] | None) -> None:
        self._baseline = row
        self._edge_xy = None
        self._draw_baseline()
        if self._done:
            self._draw_done()
        if self._other:
            self._draw_other()

    def add(self, rows: Sequence[dict[str, Any]]) -> None:
        """Append trials (final states only); the figure is updated, not rebuilt."""
        done: list[dict[str, Any]] = []
        other: list[dict[str, Any]] = []
        for r in rows:
            state = r.get("state", "COMPLETE")
            (done if state == "COMPLETE" or str(state).upper() == "COMPLETE" else other).append(r)
        edge = self._edge()
        if done:
            start = len(self._done)
            self._done.extend(done)
            self._where.update(zip((r.get("trial") for r in done), zip(repeat(self._done), count(start))))
            x, y = self._coordinates(done)
            self._x, self._y = np.concatenate([self._x, x]), np.concatenate([self._y, y])
            if len(done) > 64:  # many at once: sorted again; a few: each against the front
                self._pareto = ParetoSet(self._losses(self._done, self._y))
            else:
                for i, loss in enumerate(self._losses(done, y)):
                    self._pareto.add(start + i, loss)
            self._edge_xy = None  # the measured data's edge may have moved
            self._draw_done()
        if other:
            start = len(self._other)
            self._other.extend(other)
            self._where.update(zip((r.get("trial") for r in other), zip(repeat(self._other), count(start))))
        if other or (done and self._edge() != edge):  # unmeasured trials sit at the data's edge
            self._draw_other()

    def set_objective(self, name: str) -> None:
        """Switch the x axis to ``latency``, ``speedup``, ``size``, ``artifact`` or ``macs``."""
        self.axis = R.check_axis(name)
        with self.x_axis.hold_sync():
            self.x_axis.label = self.axis.label
            self.x_axis.tick_format = self.axis.tick_format
        self._x = self._coordinates(self._done)[0]
        self._pareto = ParetoSet(self._losses(self._done, self._y))
        self._edge_xy = None
        for thinning in self._thin.values():
            thinning.reset()
        self._draw_done(force=True)
        self._draw_other()
        self._draw_baseline()

    @property
    def marks(self) -> list[bq.Mark]:
        return list(self.figure.marks)

    def set_log_x(self, log: bool) -> None:
        """A logarithmic x axis (costs often span decades: pruning, exits, bits)."""
        scale = bq.LogScale() if log else bq.LinearScale()
        self._log_x = bool(log)
        for thinning in self._thin.values():  # cells of equal size on the screen
            thinning.log_x = self._log_x
            thinning.reset()
        with self.figure.hold_sync():
            for mark in self.figure.marks:
                mark.scales = {"x": scale, "y": self.y_scale}
            self.x_axis.scale = scale
            self.x_scale = scale
            self._set_log_ticks()
        self._draw_done(force=True)
        self._draw_other()

    def _set_log_ticks(self) -> None:
        """1-2-5 ticks per decade (bqplot labels every minor tick of a log axis)."""
        if not getattr(self, "_log_x", False):
            self.x_axis.tick_values = None
            return
        xs = np.concatenate([self._x, np.asarray(self.baseline_mark.x, dtype=float)])
        xs = xs[np.isfinite(xs) & (xs > 0)]
        if xs.size == 0:
            return
        lo, hi = math.floor(math.log10(xs.min())), math.ceil(math.log10(xs.max()))
        ticks = [m * 10.0 ** e for e in range(lo, hi + 1) for m in (1, 2, 5)]
        self.x_axis.tick_values = np.array([t for t in ticks if xs.min() / 1.5 <= t <= xs.max() * 1.5])

    def mark_inspected(self, trial: int | None) -> None:
        self._inspected = trial
        self._draw_ring(self.inspected_mark, trial)

    def mark_selected(self, trial: int | None) -> None:
        self._selected = trial
        self._draw_ring(self.selected_mark, trial)

    def find(self, trial: int | None) -> dict[str, Any] | None:
        pool, index = self._where.get(trial, (None, 0))
        return None if pool is None else pool[index]

    # ----------------------------------------------------------------- drawing
    def _xy(self, row: dict[str, Any]) -> tuple[float, float]:
        x = R.value(row, self.axis.key)
        if math.isnan(x) and isinstance(row.get("pre"), dict):
            x = R.value(row["pre"], self.axis.key)  # measured before training, then stopped
        y = R.value(row, "accuracy")
        if math.isnan(y):
            y = R.value(row, "val_accuracy")
        return x * self.axis.unit_scale, y

    def _needs_edge(self, row: dict[str, Any]) -> bool:
        x, y = self._xy(row)
        return math.isnan(x) or math.isnan(y)

    def _coordinates(self, rows: Sequence[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
        """The plotted ``(x, y)`` of rows (as :meth:`_xy`, read as columns)."""
        try:
            x = np.array([r.get(self.axis.key) for r in rows], dtype=float) * self.axis.unit_scale
            y = np.array([r.get("accuracy") for r in rows], dtype=float)
        except (TypeError, ValueError):  # something that is not a number: one row at a time
            xy = np.array([self._xy(r) for r in rows], dtype=float).reshape(-1, 2)
            return xy[:, 0], xy[:, 1]
        for i in np.flatnonzero(np.isnan(x) | np.isnan(y)):
            x[i], y[i] = self._xy(rows[i])
        return x, y

    def _losses(self, rows: Sequence[dict[str, Any]], y: np.ndarray) -> np.ndarray:
        """The rows' cost (as the front compares it: latency as its same-run ratio,
        :func:`~slimtune.widgets._axes.compared`) and accuracy ``y`` as losses."""
        sign = -1.0 if DIRECTIONS[self.axis.key] == "maximize" else 1.0
        x = R.compared(rows, self.axis, self._baseline)
        return np.column_stack([sign * x, -np.asarray(y, dtype=float)])

    def _edge(self) -> tuple[float, float]:
        """Bottom-right corner of the measured data: where unmeasured trials are drawn."""
        if self._edge_xy is None:
            xs, ys = self._x, self._y
            if self._baseline:
                bx, by = self._xy(self._baseline)
                xs, ys = np.append(xs, bx), np.append(ys, by)
            xs, ys = xs[~np.isnan(xs)], ys[~np.isnan(ys)]
            self._edge_xy = (float(xs.max()) if xs.size else 1.0), (float(ys.min()) if ys.size else 0.0)
        return self._edge_xy

    def _draw_done(self, *, force: bool = False) -> None:
        x, y = self._x, self._y
        losses = self._pareto.losses
        order = np.lexsort((self._pareto.indices, losses[:, 1], losses[:, 0])) if len(losses) else []
        self._front = R.not_beaten_by_baseline(self._done, self._pareto.indices[order], self.axis, self._baseline)
        self._send("done", self.trials_mark, x, y, force=force)
        with self.front_line.hold_sync():
            self.front_line.x = x[self._front]
            self.front_line.y = y[self._front]
        self._draw_ring(self.inspected_mark, self._inspected)
        self._draw_ring(self.selected_mark, self._selected)
        if getattr(self, "_log_x", False):
            self._set_log_ticks()

    def _draw_other(self) -> None:
        edge_x, edge_y = self._edge()
        x, y = self._coordinates(self._other)
        self._send("other", self.others_mark, np.where(np.isnan(x), edge_x, x), np.where(np.isnan(y), edge_y, y),
                   force=True)

    def _send(self, pool: str, mark: bq.Scatter, x: np.ndarray, y: np.ndarray, *, force: bool) -> None:
        """Draw the points a mark shows (all, or thinned; the front always); unless
        ``force`` (the coordinates changed), nothing is sent when that set is unchanged."""
        shown = self._thin[pool].update(x, y, keep=self._front if pool == "done" else None)
        if not force and np.array_equal(shown, self._shown[pool]):
            return
        self._shown[pool] = shown
        with mark.hold_sync():  # float32: half the bytes, plenty for a plot
            mark.x = x[shown].astype(np.float32)
            mark.y = y[shown].astype(np.float32)

    def _draw_baseline(self) -> None:
        if not self._baseline:
            return
        bx, by = self._xy(self._baseline)
        if math.isnan(bx) or math.isnan(by):
            return
        with self.baseline_mark.hold_sync():
            self.baseline_mark.x = np.array([bx])
            self.baseline_mark.y = np.array([by])
            self.baseline_mark.names = np.array(["baseline"])

    def _draw_ring(self, mark: bq.Scatter, trial: int | None) -> None:
        row = self.find(trial) if trial is not None else None
        xy = self._xy(row) if row is not None else (math.nan, math.nan)
        if row is not None and self._needs_edge(row):
            xy = self._edge()
        with mark.hold_sync():
            if math.isnan(xy[0]) or math.isnan(xy[1]):
                mark.x, mark.y = np.zeros(0), np.zeros(0)
            else:
                mark.x, mark.y = np.array([xy[0]]), np.array([xy[1]])

    # ----------------------------------------------------------------- events
    def _reporting(self, handler: Callable[..., None]) -> Callable[..., None]:
        """Exceptions in bqplot callbacks are otherwise only logged: send them on."""
        def wrapper(*args: Any) -> None:
            try:
                handler(*args)
            except Exception as exc:
                if self._on_error is None:
                    raise
                self._on_error(exc)

        return wrapper

    def _row_for(self, mark: Any, index: Any) -> dict[str, Any] | None:
        """The row of the ``index``-th point a mark draws."""
        pool, shown = (self._done, self._shown["done"]) if mark is self.trials_mark else (self._other,
                                                                                            self._shown["other"])
        try:
            return pool[int(shown[int(index)])]
        except (TypeError, ValueError, IndexError):
            return None

    def _clicked(self, mark: Any, event: dict[str, Any]) -> None:
        row = self._row_for(mark, (event.get("data") or {}).get("index"))
        if row is not None and self._on_pick is not None:
            self._on_pick(row)

    def _hovered(self, mark: Any, event: dict[str, Any]) -> None:
        point = event.get("point") or event.get("data") or {}
        row = self._row_for(mark, point.get("index"))
        if row is not None:
            self.tooltip.value = tooltip_html(self._whole(row) if self._whole is not None else row)


def tooltip_html(row: dict[str, Any]) -> str:
    """The hover card of one trial (every value escaped)."""
    lines = [f"<b>{html.escape(R.trial_title(row))}</b>"]
    acc = R.value(row, "accuracy")
    lines.append(
        f"val acc {R.format_accuracy(acc)} (test {R.format_accuracy(R.value(row, 'test_accuracy'))})"
        f" · {R.format_cost(R.value(row, 'latency_ms'), R.AXES['latency'])}"
        f" ({R.format_cost(R.value(row, 'speedup'), R.AXES['speedup'])} vs baseline, same run)"
        f" · {R.format_cost(R.value(row, 'size_bytes'), R.AXES['size'])}"
        f" · {R.format_cost(R.value(row, 'macs'), R.AXES['macs'])} MACs"
    )
    lines.append(html.escape(R.params_summary(row.get("params") or {})))
    return "<div class='slimtune-tip'>" + "<br>".join(lines) + "</div>"


def legend_html() -> str:
    """The plot's legend as a row of inline SVG symbols."""
    def item(symbol: str, label: str) -> str:
        return (f"<span class='slimtune-legend-item'><svg width='16' height='12' viewBox='0 0 16 12'>{symbol}</svg>"
                f"{label}</span>")

    c = COLORS
    return "<div class='slimtune-legend'>" + "".join([
        item(f"<circle cx='8' cy='6' r='4' fill='{c['trial']}'/>", "trial"),
        item(f"<path d='M8 2v8M4 6h8' stroke='{c['other']}' stroke-width='3'/>", "stopped / failed"),
        item(f"<path d='M1 10H7V3H15' fill='none' stroke='{c['front']}' stroke-width='2.5'/>", "Pareto front"),
        item(f"<path d='M8 1l5 5l-5 5l-5 -5z' fill='{c['baseline']}'/>", "baseline"),
        item(f"<circle cx='8' cy='6' r='5' fill='none' stroke='{c['selected']}' stroke-width='2.5'/>", "selected model"),
        item(f"<circle cx='8' cy='6' r='4.5' fill='none' stroke='{c['inspected']}' stroke-width='1.5'/>", "inspected"),
    ]) + "</div>"
