"""The dashboard's controls and how its parts are laid out.

:class:`Controls` holds the x-axis toggle, the log-x box, the trials box, Start, Stop
and the watch box (the dashboard connects them); :func:`layout` places every part:
header, run row, plot beside the details, the selection card, the Pareto table, the
status line and the error area.

Example:
    >>> controls = Controls(objective="latency", n_trials=10, watch=True)
    >>> controls.objective.value
    'latency'
"""

from __future__ import annotations

import ipywidgets as widgets

from slimtune.widgets._style import CSS

#: The x axis choices: (label, ``objective=`` name).
AXIS_CHOICES = [("latency", "latency"), ("speed-up", "speedup"), ("packed size", "size"),
                ("artifact size", "artifact"), ("MACs", "macs")]


class Controls:
    """The search and display controls of a dashboard."""

    def __init__(self, *, objective: str, n_trials: int, watch: bool) -> None:
        self.objective = widgets.ToggleButtons(options=AXIS_CHOICES, value=objective, description="x axis",
                                               style={"button_width": "96px"})
        self.log_x = widgets.Checkbox(value=False, description="log x", indent=False,
                                      layout=widgets.Layout(width="70px"))
        self.n_trials = widgets.BoundedIntText(value=int(n_trials), min=1, max=100_000, description="trials",
                                               layout=widgets.Layout(width="150px"))
        self.start_button = widgets.Button(description="Start", icon="play", button_style="success",
                                           tooltip="Run more trials in the background",
                                           layout=widgets.Layout(width="90px"))
        self.stop_button = widgets.Button(description="Stop", icon="stop", button_style="warning", disabled=True,
                                          tooltip="End after the current trial (nothing is lost)",
                                          layout=widgets.Layout(width="90px"))
        self.watch_box = widgets.Checkbox(value=bool(watch), description="watch database", indent=False,
                                          layout=widgets.Layout(width="140px"))


def layout(*, header: widgets.Widget, controls: Controls, progress: widgets.Widget, plot: object,
           details: widgets.Widget, selection: object, table: widgets.Widget, status: object) -> list[widgets.Widget]:
    """The dashboard's children, top to bottom (``plot``: a FrontierPlot, ``selection``:
    a Selection, ``status``: a Status)."""
    c = controls
    run_row = widgets.HBox([c.n_trials, c.start_button, c.stop_button, c.watch_box, progress],
                           layout=widgets.Layout(align_items="center", flex_flow="row wrap"))
    details_box = widgets.VBox([details], layout=widgets.Layout(flex="2 1 300px", max_height="440px", overflow="auto",
                                                                min_width="280px"))
    details_box.add_class("slimtune-card")
    axis_row = widgets.HBox([c.objective, c.log_x], layout=widgets.Layout(align_items="center"))
    plot_box = widgets.VBox([axis_row, plot.figure, plot.legend], layout=widgets.Layout(flex="3 1 480px"))
    main = widgets.HBox([plot_box, details_box], layout=widgets.Layout(align_items="flex-start", flex_flow="row wrap"))
    for row in (run_row, main, selection.row, progress, axis_row):
        row.add_class("slimtune-row")  # CSS gap: ipywidgets' Layout has no `gap`
    return [widgets.HTML(CSS), header, run_row, main, selection.widget, table, status.line, status.errors]
