"""The dashboard's target selector: a study timed on several targets is shown on one
at a time, chosen in a dropdown.

Switching reads the study on the chosen target (``study.on_target``: that target's
accuracy, latency and speed-up beside the baseline timed there, and its front) and
redraws the plot, the Pareto table and the selected model from it; Export then
writes the artifact timed on that target.  A study with one target gets no selector.

Example:
    >>> dash = StudyDashboard(study)                       # doctest: +SKIP
    >>> dash.target.value = "openvino:64@1"                # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import ipywidgets as widgets

from slimtune.studies._feed import TrialFeed
from slimtune.widgets import _axes as R
from slimtune.widgets._plot import FrontierPlot
from slimtune.widgets._trials import TrialBook


def target_options(study: Any) -> list[tuple[str, str]]:
    """``(label, key)`` of each target of ``study``, the first marked as the search's."""
    targets = list(getattr(study, "targets", None) or ())
    return [(f"{t.key} ({t.label()}){' · drove the search' if k == 0 else ''}", t.key)
            for k, t in enumerate(targets)]


def attach_target_selector(dash: Any) -> widgets.Dropdown | None:
    """Put a target dropdown under ``dash``'s header when its study has several
    targets (``dash.target``); ``None`` otherwise."""
    options = target_options(dash.study)
    if len(options) < 2:
        return None
    dropdown = widgets.Dropdown(options=options, value=options[0][1], description="target",
                                layout=widgets.Layout(width="460px"))
    dash._targeted_study = dash.study  # noqa: SLF001 - the study itself, whatever target is shown
    dropdown.observe(dash._status.guarded(lambda change: switch_target(dash, change["new"])), names=["value"])
    children = list(dash.children)
    children.insert(children.index(dash.header) + 1, dropdown)
    dash.children = children
    return dropdown


def switch_target(dash: Any, key: str) -> None:
    """Show ``dash``'s study on target ``key``: its rows, baseline, plot, front and selection."""
    study = dash._targeted_study  # noqa: SLF001
    view = study.on_target(key)
    with dash._lock:  # noqa: SLF001
        dash.study = view
        dash.baseline = R.baseline_row(view.baseline)
        dash.book = TrialBook(TrialFeed(view), view, dash.baseline)
        old = dash.plot
        dash.plot = FrontierPlot(objective=dash.objective.value, on_pick=dash.inspect_row, on_error=dash.report_error,
                                 metric=str(getattr(study, "metric_name", "accuracy")), whole=dash._whole)  # noqa: SLF001
        dash.plot.set_log_x(dash.log_x.value)
        _replace_figure(dash, old, dash.plot)
        selector = dash.selector
        selector.study, selector.book, selector.baseline = view, dash.book, dash.baseline
        dash.plot.set_baseline(dash.baseline)
        dash._show_fresh(dash.book.load(), opening=True)  # noqa: SLF001
    selector.apply()
    shown = dash.details.trial
    if shown is not None and shown in dash.book:
        dash.inspect(shown)  # the same trial, with this target's figures
    else:
        dash.details.clear()


def _replace_figure(dash: Any, old: FrontierPlot, new: FrontierPlot) -> None:
    """Put ``new``'s figure and legend where ``old``'s are in the dashboard's layout."""
    stack = [dash]
    while stack:
        box = stack.pop()
        children = list(getattr(box, "children", ()) or ())
        if old.figure in children:
            box.children = [new.figure if c is old.figure else new.legend if c is old.legend else c for c in children]
            old.figure.close()
            old.legend.close()
            return
        stack.extend(c for c in children if isinstance(c, widgets.Box))
