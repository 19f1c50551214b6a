"""The Pareto table: the plot's front as sortable rows; picking a row inspects it."""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import ipywidgets as widgets

from slimtune.widgets import _axes as R

#: Sortable columns: label -> (row field, descending by default).
SORT_KEYS: dict[str, tuple[str, bool]] = {
    "accuracy": ("accuracy", True),
    "latency": ("latency_ms", False),
    "size": ("size_bytes", False),
    "MACs": ("macs", False),
    "trial": ("trial", False),
}

HEADER = (f"{'':2}{'trial':>6}  {'val acc':>8}  {'Δ acc':>8}  {'test acc':>8}  {'latency':>10}  {'speed-up':>8}  "
          f"{'size':>10}  {'MACs':>8}  knobs")


def row_label(row: Mapping[str, Any], baseline: Mapping[str, Any] | None, *, selected: bool = False) -> str:
    """One fixed-width line of the table (plain text: a ``<select>`` option)."""
    acc = R.value(row, "accuracy")
    base = R.value(baseline or {}, "accuracy")
    delta = "" if math.isnan(acc) or math.isnan(base) else f"{(acc - base) * 100:+.2f}pp"
    return (f"{'★' if selected else '':2}{str(row.get('trial')):>6}  {R.format_accuracy(acc):>8}  {delta:>8}  "
            f"{R.format_accuracy(R.value(row, 'test_accuracy')):>8}  "
            f"{R.format_cost(R.value(row, 'latency_ms'), R.AXES['latency']):>10}  "
            f"{R.format_cost(R.value(row, 'speedup'), R.AXES['speedup']):>8}  "
            f"{R.format_cost(R.value(row, 'size_bytes'), R.AXES['size']):>10}  "
            f"{R.format_cost(R.value(row, 'macs'), R.AXES['macs']):>8}  {R.params_summary(row.get('params') or {})}")


class ParetoTable:
    """The front's trials, sorted by a chosen column; ``on_pick(row)`` on a row pick."""

    def __init__(self, *, on_pick: Callable[[Mapping[str, Any]], None] | None = None,
                 on_error: Callable[[BaseException], None] | None = None) -> None:
        self._on_pick = on_pick
        self._on_error = on_error
        self._rows: list[Mapping[str, Any]] = []
        self._baseline: Mapping[str, Any] | None = None
        self._selected: Any = None
        self._labels: dict[tuple, str] = {}  # row_label by (trial, starred, its params object)
        self._quiet = False  # set while options are rewritten, so no pick fires
        self.sort_by = widgets.Dropdown(options=list(SORT_KEYS), value="accuracy", description="Sort by",
                                        layout=widgets.Layout(width="200px"))
        self.descending = widgets.ToggleButton(value=True, icon="arrow-down", tooltip="Descending",
                                               layout=widgets.Layout(width="40px"))
        self.title = widgets.HTML("<b>Pareto front</b>")
        self.header = widgets.HTML(f"<pre class='slimtune-table-header'>{HEADER}</pre>")
        self.list = widgets.Select(options=[], rows=6, layout=widgets.Layout(width="100%"))
        self.list.add_class("slimtune-table")
        self.sort_by.observe(self._reporting(self._sort_changed), names=["value"])
        self.descending.observe(self._reporting(self._direction_changed), names=["value"])
        self.list.observe(self._reporting(self._picked), names=["value"])
        controls = widgets.HBox([self.title, self.sort_by, self.descending], layout=widgets.Layout(align_items="center"))
        controls.add_class("slimtune-row")
        self.widget = widgets.VBox([
            controls,
            self.header, self.list,
        ], layout=widgets.Layout(width="100%"))
        self.widget.add_class("slimtune-pareto")

    @property
    def trials(self) -> list[Any]:
        """Trial numbers in the order shown."""
        return [value for _, value in self.list.options]

    def set_rows(self, rows: Sequence[Mapping[str, Any]], baseline: Mapping[str, Any] | None = None) -> None:
        self._rows = list(rows)
        if baseline is not None and baseline is not self._baseline:
            self._baseline = baseline
            self._labels.clear()
        self._render()

    def set_selected(self, trial: Any) -> None:
        """Star the row of the model the constraints select."""
        if trial != self._selected:
            self._selected = trial
            self._render()

    def show(self, trial: Any) -> None:
        """Highlight the row of ``trial`` (if it is on the front) without firing a pick."""
        self._quiet = True
        try:
            self.list.value = trial if trial in self.trials else None
        finally:
            self._quiet = False

    def _reporting(self, handler: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
        """Observer exceptions are otherwise swallowed: send them to ``on_error``."""
        def wrapper(change: dict[str, Any]) -> None:
            try:
                handler(change)
            except Exception as exc:
                if self._on_error is None:
                    raise
                self._on_error(exc)

        return wrapper

    def _render(self) -> None:
        key, _ = SORT_KEYS[self.sort_by.value]
        ordered = R.sorted_rows(self._rows, key, descending=self.descending.value)
        options = [(self._label(r), r.get("trial")) for r in ordered]
        self._quiet = True
        try:
            current = self.list.value
            with self.list.hold_sync():
                self.list.options = options
                self.list.rows = max(3, min(10, len(options)))
                self.list.value = current if current in [v for _, v in options] else None
        finally:
            self._quiet = False

    def _label(self, row: Mapping[str, Any]) -> str:
        """The row's line, written once (a new front point rewrites one line, not all)."""
        starred = row.get("trial") == self._selected
        key = (row.get("trial"), starred, id(row.get("params")))
        label = self._labels.get(key)
        if label is None:
            label = self._labels[key] = row_label(row, self._baseline, selected=starred)
        return label

    def _sort_changed(self, change: dict[str, Any]) -> None:
        self.descending.value = SORT_KEYS[change["new"]][1]  # the natural direction first
        self._render()

    def _direction_changed(self, change: dict[str, Any]) -> None:
        self.descending.icon = "arrow-down" if change["new"] else "arrow-up"
        self.descending.tooltip = "Descending" if change["new"] else "Ascending"
        self._render()

    def _picked(self, change: dict[str, Any]) -> None:
        if self._quiet or change["new"] is None or self._on_pick is None:
            return
        for row in self._rows:
            if row.get("trial") == change["new"]:
                self._on_pick(row)
                return
