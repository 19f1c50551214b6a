"""The study dashboard: live frontier plot, details, Pareto table, search controls.

``dashboard(study)`` (or ``StudyDashboard(study)``) reads a study; it never writes to it
except through the study's own ``optimize`` (Start) and a candidate's ``export``
(Export).  Opening it reads every trial's figures once, in one bulk read
(:class:`~slimtune.studies._feed.TrialFeed`); a trial is read in full only when shown.
Trials then arrive two more ways, and all go through :meth:`StudyDashboard.add_rows`:
the callback of a search started here (a background thread), and the watcher, whose
poll asks the database which trials are new or finished (two small statements, however
big the study).

Example:
    >>> from slimtune import Study                                        # doctest: +SKIP
    >>> from slimtune.widgets import dashboard                            # doctest: +SKIP
    >>> dash = dashboard(Study.load("demo"))                              # doctest: +SKIP
    >>> dash.start(10)                    # search in the background      # doctest: +SKIP
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Mapping

import ipywidgets as widgets

from slimtune.studies._feed import TrialFeed
from slimtune.studies._storage import quiet_gc
from slimtune.widgets import _axes as R
from slimtune.widgets._background import BackgroundSearch, Watcher
from slimtune.widgets._controls import Controls, layout
from slimtune.widgets._details import DetailsPane
from slimtune.widgets._plot import FrontierPlot
from slimtune.widgets._selection import Selection
from slimtune.widgets._static import render_html
from slimtune.widgets._status import SearchProgress, Status, header_html
from slimtune.widgets._table import ParetoTable
from slimtune.widgets._target_selector import attach_target_selector
from slimtune.widgets._trials import TrialBook


def dashboard(study: Any, **kwargs: Any) -> "StudyDashboard":
    """A live dashboard of ``study`` (a ``slimtune.Study``); see :class:`StudyDashboard`."""
    return StudyDashboard(study, **kwargs)


class StudyDashboard(widgets.VBox):
    """A live dashboard of one study (an ipywidget; display it or return it from a cell).

    Args:
        study: a ``slimtune.Study``.
        objective: the cost on the x axis: ``latency`` (default), ``speedup`` (against
            the baseline timed in the same run as each trial), ``size`` (the packed
            model file, KiB), ``artifact`` (the timed .onnx/TorchScript file, KiB) or ``macs``.
        watch: poll the database for trials written by other processes (the CLI,
            other workers) every ``interval`` seconds.
        interval: the watch period in seconds.
        n_trials: the default number of trials Start runs.
    """

    def __init__(self, study: Any, *, objective: str = "latency", watch: bool = True, interval: float = 2.0,
                 n_trials: int = 10, **kwargs: Any) -> None:
        R.check_axis(objective)
        self.study = study
        self._lock = threading.RLock()
        self._search: BackgroundSearch | None = None
        self._watcher: Watcher | None = None
        self._interval = float(interval)
        self._last_poll_error = ""
        self.baseline = R.baseline_row(getattr(study, "baseline", None))
        self.book = TrialBook(TrialFeed(study), study, self.baseline)

        self._status = Status()
        self.status, self.errors = self._status.line, self._status.errors
        guarded = self._status.guarded
        self.plot = FrontierPlot(objective=objective, on_pick=self.inspect_row, on_error=self.report_error,
                                 metric=str(getattr(study, "metric_name", "accuracy")), whole=self._whole)
        self.details = DetailsPane()
        self.table = ParetoTable(on_pick=self.inspect_row, on_error=self.report_error)
        self.progress = SearchProgress()
        self.header = widgets.HTML("")
        self.header.add_class("slimtune-header")
        self.selector = Selection(study, self.book, self._lock, baseline=self.baseline, on_selected=self._mark_selected,
                                  say=self._say, on_error=self.report_error, guarded=guarded)
        controls = Controls(objective=objective, n_trials=n_trials, watch=watch)
        for name in ("objective", "log_x", "n_trials", "start_button", "stop_button", "watch_box"):
            setattr(self, name, getattr(controls, name))
        for name in ("max_latency", "min_accuracy", "selection", "export_path", "export_button"):
            setattr(self, name, getattr(self.selector, name))
        self.objective.observe(guarded(self._objective_changed), names=["value"])
        self.log_x.observe(guarded(lambda change: self.plot.set_log_x(change["new"])), names=["value"])
        self.watch_box.observe(guarded(lambda change: self.watch(change["new"])), names=["value"])
        self.start_button.on_click(guarded(lambda _: self.start(self.n_trials.value)))
        self.stop_button.on_click(guarded(lambda _: self.stop()))
        super().__init__(children=layout(header=self.header, controls=controls, progress=self.progress.widget,
                                         plot=self.plot, details=self.details.widget, selection=self.selector,
                                         table=self.table.widget, status=self._status), **kwargs)
        self.add_class("slimtune-dashboard")

        self.plot.set_baseline(self.baseline)
        with self._lock, quiet_gc():  # every row read is kept: a collection would only walk them
            self._show_fresh(self.book.load(), opening=True)
        self.selector.apply()
        self.target = attach_target_selector(self)  # a study timed on several targets: which one is shown
        if watch:
            self.watch(True)

    # ------------------------------------------------------------------ errors
    def report_error(self, exc: BaseException) -> None:
        """Show an exception raised in a callback or a background thread."""
        self._status.report(exc)

    def _say(self, message: str, *, kind: str = "") -> None:
        self._status.say(message, kind=kind)

    # ------------------------------------------------------------------ data
    @property
    def rows(self) -> list[dict[str, Any]]:
        """The final (complete, pruned, failed) trials shown, in arrival order, as
        ``Study.trials()`` rows (read in full the first time: one bulk read)."""
        with self._lock:
            rows = self.book.full([r.get("trial") for r in self.book.rows])
            for row in rows:
                row["pareto"] = R.is_complete(row) and self.book.on_front(row)
            return rows

    def add_rows(self, rows: list[Mapping[str, Any]]) -> int:
        """Show new trials (running ones are counted, final ones plotted once); returns
        how many points were added."""
        with self._lock:
            fresh = self.book.add(rows)
            self._show_fresh(fresh)
            return len(fresh)

    def _show_fresh(self, fresh: list[dict[str, Any]], *, opening: bool = False) -> None:
        if fresh:
            front = [r.get("trial") for r in self.plot.front]
            self.plot.add(fresh)
            if opening or [r.get("trial") for r in self.plot.front] != front:
                self._show_front()
            if not opening and self.selector.may_change(fresh):
                self.selector.apply()
        self._update_header()

    def _show_front(self) -> None:
        """The Pareto table: the plot's front, its rows made whole (one read at most)."""
        self.table.set_rows(self.book.full([r.get("trial") for r in self.plot.front]), self.baseline)

    def _whole(self, row: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            return self.book.full([row.get("trial")])[0] if row.get("trial") in self.book else row

    def _update_header(self) -> None:
        self.header.value = header_html(str(getattr(self.study, "name", "study")), _task_name(self.study),
                                        self.book.counts, len(self.plot.front), self.baseline)

    # ------------------------------------------------------------------ inspect
    def inspect(self, trial: Any) -> None:
        """Fill the details pane with trial ``trial`` (as a click on its point does)."""
        with self._lock:
            row = self.book.get(trial)
        if row is None:
            raise KeyError(f"Trial {trial!r} is not shown (known: {len(self.book)} final trials).")
        self.inspect_row(row)

    def inspect_row(self, row: Mapping[str, Any]) -> None:
        with self._lock:
            row = self._whole(dict(row))
            on_front = R.is_complete(row) and row.get("trial") in self.book and self.book.on_front(row)
        self.details.show(dict(row, pareto=on_front), self.baseline)
        self.plot.mark_inspected(row.get("trial"))
        self.table.show(row.get("trial"))

    def _objective_changed(self, change: dict[str, Any]) -> None:
        with self._lock:
            self.plot.set_objective(change["new"])
            self._show_front()
            self._update_header()

    # ------------------------------------------------------------------ select / export
    def _mark_selected(self, trial: Any) -> None:
        self.plot.mark_selected(trial)
        self.table.set_selected(trial)

    def _selection_may_change(self, fresh: list[dict[str, Any]]) -> bool:
        """Whether new trials can change the selected model (see ``Selection.may_change``)."""
        return self.selector.may_change(fresh)

    @property
    def candidate(self) -> Any:
        """The model the constraint controls select (what Export writes), or None."""
        return self.selector.candidate

    def select(self, *, max_latency_ms: float | None = None, min_accuracy: float | None = None) -> Any:
        """Set the constraint controls (None = no limit) and return the model they
        select (``study.select``'s answer, highlighted)."""
        return self.selector.select(max_latency_ms=max_latency_ms, min_accuracy=min_accuracy)

    def export(self, path: str | None = None) -> Path:
        """Write the selected model to ``path`` (default: the path box)."""
        return self.selector.export(path)

    # ------------------------------------------------------------------ search
    @property
    def running(self) -> bool:
        """Whether a search started from this dashboard is running."""
        return self._search is not None and self._search.running

    def start(self, n_trials: int | None = None, *, timeout: float | None = None, **optimize_kwargs: Any) -> None:
        """Run ``n_trials`` more trials in a background thread (the notebook stays usable)."""
        if self.running:
            raise RuntimeError("A search is already running from this dashboard; Stop it first.")
        n = int(n_trials if n_trials is not None else self.n_trials.value)
        self._search = BackgroundSearch(self.study, n_trials=n, timeout=timeout, on_trial=self._on_trial,
                                        on_finish=self._on_finish, optimize_kwargs=optimize_kwargs)
        self.progress.start(n)
        self.start_button.disabled = True
        self.stop_button.disabled = False
        self._say(f"Searching: {n} trials in the background.")
        self._search.start()

    def stop(self) -> None:
        """End the search after the current trial (that trial is kept)."""
        if self._search is None or not self._search.running:
            self._say("No search is running.")
            return
        self._search.stop()
        self.stop_button.disabled = True
        self._say("Stopping after the current trial…")

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the search started here and the pending selection are done;
        ``True`` when they are."""
        done = self._search.join(timeout) if self._search is not None else True
        return self.selector.wait(timeout) and done

    def _on_trial(self, row: Any) -> None:  # search thread
        try:
            self.progress.advance()
            if getattr(self.study, "target", None) is not None:  # shown on another target: its figures are read
                self.refresh()
            else:
                self.add_rows([_as_row(row)])
        except Exception as exc:  # never break the search because of the display
            self.report_error(exc)

    def _on_finish(self, error: BaseException | None) -> None:  # search thread
        search = self._search
        stopped = search is not None and search.stop_event.is_set()
        try:
            self.refresh(force=True)  # anything the callback missed
        except Exception as exc:
            self.report_error(exc)
        self.start_button.disabled = False
        self.stop_button.disabled = True
        if error is not None:
            self.progress.finish("failed", ok=False)
            self.report_error(error)
        elif stopped:
            self.progress.finish("stopped")
            self._say("Search stopped; every finished trial is stored.", kind="ok")
        else:
            self.progress.finish("done")
            self._say("Search finished.", kind="ok")

    # ------------------------------------------------------------------ watch
    @property
    def watching(self) -> bool:
        return self._watcher is not None and self._watcher.running

    def watch(self, on: bool = True, *, interval: float | None = None) -> None:
        """Refresh from the database every ``interval`` s (trials from other processes)."""
        if interval is not None:
            self._interval = float(interval)
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None
        if on:
            self._watcher = Watcher(self.refresh, interval=self._interval, on_error=self._poll_failed,
                                    name=f"slimtune-watch-{getattr(self.study, 'name', 'study')}")
            self._watcher.start()
        if self.watch_box.value != bool(on):
            self.watch_box.value = bool(on)

    def refresh(self, *, force: bool = False) -> int:
        """Ask the database which trials are new or changed since the last look (two
        small statements), read those and show them; returns how many were added.
        ``force`` is accepted for compatibility: every refresh is exact."""
        with self._lock:
            added = self.add_rows(self.book.poll())
        self._last_poll_error = ""
        return added

    def _poll_failed(self, exc: BaseException) -> None:
        message = f"{type(exc).__name__}: {exc}"
        if message != self._last_poll_error:  # one report per distinct problem
            self._last_poll_error = message
            self.report_error(exc)

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Stop watching and close every widget of the dashboard (a search started here
        keeps running to its end; its trials are stored)."""
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None
        for widget in _descendants(self):
            if widget is not self:
                widget.close()
        super().close()

    def _repr_html_(self) -> str:
        """The plain fallback where no widget frontend runs (inline SVG + front table)."""
        with self._lock:
            rows = self.book.rows
        return render_html(title=str(getattr(self.study, "name", "study")), task=_task_name(self.study),
                           rows=rows, baseline=self.baseline, objective=self.objective.value)

    def __repr__(self) -> str:
        return (f"StudyDashboard(study={getattr(self.study, 'name', '?')!r}, trials={len(self.book)}, "
                f"front={len(self.plot.front)})")


def _descendants(root: widgets.Widget) -> list[widgets.Widget]:
    """Every widget reachable from ``root`` through its synced traits (children, marks,
    axes, scales, tooltips, layouts, styles)."""
    seen: dict[int, widgets.Widget] = {}
    stack: list[Any] = [root]
    while stack:
        item = stack.pop()
        if isinstance(item, widgets.Widget):
            if id(item) in seen:
                continue
            seen[id(item)] = item
            stack.extend(getattr(item, name, None) for name in item.keys)
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
    return list(seen.values())


def _as_row(row: Any) -> dict[str, Any]:
    if isinstance(row, Mapping):
        return dict(row)
    if hasattr(row, "to_dict"):
        return dict(row.to_dict())
    raise TypeError(f"A trial callback row must be a mapping, but got {type(row).__name__}.")


def _task_name(study: Any) -> str | None:
    for attr in ("task_name", "task"):
        val = getattr(study, attr, None)
        if val is None:
            continue
        return str(getattr(val, "name", val))
    return None
