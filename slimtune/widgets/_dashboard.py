"""The study dashboard: live frontier plot, details, Pareto table, search controls.

``StudyDashboard(study)`` (or ``study.dashboard()``) reads a study; it never writes
to it except through the study's own ``optimize`` (Start) and a candidate's
``export`` (Export).  Trials arrive three ways and all go through :meth:`add_rows`:
the initial load, the callback of a search started here (a background thread), and
the watcher that polls the database for trials other processes write.

Example:
    >>> from slimtune import Study                                       # doctest: +SKIP
    >>> study = Study.create_or_load("demo", task="digits")              # doctest: +SKIP
    >>> dash = study.dashboard()          # or StudyDashboard(study)     # doctest: +SKIP
    >>> dash.start(10)                    # search in the background     # doctest: +SKIP
"""

from __future__ import annotations

import functools
import html
import math
import re
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Mapping

import ipywidgets as widgets

from slimtune.widgets import _axes as R
from slimtune.widgets._background import BackgroundSearch, LatestOnly, Watcher
from slimtune.widgets._details import DetailsPane
from slimtune.widgets._plot import FrontierPlot
from slimtune.widgets._static import render_html
from slimtune.widgets._style import CSS
from slimtune.widgets._table import ParetoTable

#: Errors of the user's input (no model fits, bad path...): shown as a message, no traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, LookupError, OSError)


def _fmt_duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "–"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class SearchProgress:
    """Trials done / planned and an ETA while a search started here runs."""

    def __init__(self) -> None:
        self.bar = widgets.IntProgress(value=0, min=0, max=1, bar_style="info",
                                       layout=widgets.Layout(width="220px", display="none"))
        self.label = widgets.HTML("")
        self.label.add_class("slimtune-progress-label")
        self.widget = widgets.HBox([self.bar, self.label], layout=widgets.Layout(align_items="center"))
        self.planned = 0
        self.done = 0
        self._t0 = 0.0

    def start(self, planned: int) -> None:
        self.planned, self.done, self._t0 = int(planned), 0, time.monotonic()
        with self.bar.hold_sync():
            self.bar.max, self.bar.value, self.bar.bar_style = self.planned, 0, "info"
            self.bar.layout.display = None
        self.label.value = f"0 / {self.planned} trials · starting…"

    def advance(self) -> None:
        self.done += 1
        self.bar.value = min(self.done, self.planned)
        elapsed = time.monotonic() - self._t0
        per = elapsed / self.done
        eta = per * max(0, self.planned - self.done)
        self.label.value = (f"{self.done} / {self.planned} trials · {per:.1f} s/trial · "
                            f"ETA {_fmt_duration(eta)}")

    def finish(self, message: str, *, ok: bool = True) -> None:
        self.bar.bar_style = "success" if ok else "warning"
        elapsed = time.monotonic() - self._t0
        self.label.value = f"{self.done} / {self.planned} trials in {_fmt_duration(elapsed)} · {html.escape(message)}"


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
        self._rows: dict[Any, dict[str, Any]] = {}  # final trials by number
        self._running_trials: set[Any] = set()
        self._search: BackgroundSearch | None = None
        self._watcher: Watcher | None = None
        self._interval = float(interval)
        self._candidate: Any = None
        self._export_path_auto = True
        self._last_poll_error = ""
        self._signature: Any = None
        self._selector = LatestOnly(self._select_now, on_error=self.report_error,
                                    name=f"slimtune-select-{getattr(study, 'name', 'study')}")
        self.baseline = R.baseline_row(getattr(study, "baseline", None))

        self.plot = FrontierPlot(objective=objective, on_pick=self.inspect_row, on_error=self.report_error,
                                 metric=str(getattr(study, "metric_name", "accuracy")))
        self.details = DetailsPane()
        self.table = ParetoTable(on_pick=self.inspect_row, on_error=self.report_error)
        self.progress = SearchProgress()
        self.errors = widgets.Output(layout=widgets.Layout(max_height="200px", overflow="auto"))
        self.status = widgets.HTML("")
        self.status.add_class("slimtune-status")
        self._build_controls(objective, n_trials, watch)
        super().__init__(children=self._layout(), **kwargs)
        self.add_class("slimtune-dashboard")

        self.plot.set_baseline(self.baseline)
        self._opening = True
        try:
            self.refresh(force=True)
        finally:
            self._opening = False
        self._apply_constraints()
        if watch:
            self.watch(True)

    # ------------------------------------------------------------------ layout
    def _build_controls(self, objective: str, n_trials: int, watch: bool) -> None:
        self.header = widgets.HTML("")
        self.header.add_class("slimtune-header")
        self.objective = widgets.ToggleButtons(options=[("latency", "latency"), ("speed-up", "speedup"),
                                                        ("packed size", "size"), ("artifact size", "artifact"),
                                                        ("MACs", "macs")],
                                               value=objective, description="x axis",
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
        self.max_latency = widgets.BoundedFloatText(value=0.0, min=0.0, max=1e9, step=0.01,
                                                    description="max latency (ms)", style={"description_width": "initial"},
                                                    layout=widgets.Layout(width="200px"))
        self.min_accuracy = widgets.BoundedFloatText(value=0.0, min=0.0, max=1.0, step=0.005,
                                                     description="min accuracy", style={"description_width": "initial"},
                                                     layout=widgets.Layout(width="180px"))
        self.selection = widgets.HTML("")
        self.selection.add_class("slimtune-selected")
        self.export_path = widgets.Text(value="", placeholder="model file", layout=widgets.Layout(width="220px"))
        self.export_button = widgets.Button(description="Export", icon="download", disabled=True,
                                            tooltip="Write the selected model to the file",
                                            layout=widgets.Layout(width="90px"))

        self.objective.observe(self._guarded(self._objective_changed), names=["value"])
        self.log_x.observe(self._guarded(lambda change: self.plot.set_log_x(change["new"])), names=["value"])
        self.watch_box.observe(self._guarded(lambda change: self.watch(change["new"])), names=["value"])
        self._quiet_limits = False
        self.max_latency.observe(self._guarded(self._limits_changed), names=["value"])
        self.min_accuracy.observe(self._guarded(self._limits_changed), names=["value"])
        self.export_path.observe(self._guarded(self._path_edited), names=["value"])
        self.start_button.on_click(self._guarded(lambda _: self.start(self.n_trials.value)))
        self.stop_button.on_click(self._guarded(lambda _: self.stop()))
        self.export_button.on_click(self._guarded(lambda _: self.export()))

    def _layout(self) -> list[widgets.Widget]:
        run_row = widgets.HBox([self.n_trials, self.start_button, self.stop_button, self.watch_box,
                                self.progress.widget],
                               layout=widgets.Layout(align_items="center", flex_flow="row wrap"))
        details_box = widgets.VBox([self.details.widget],
                                   layout=widgets.Layout(flex="2 1 300px", max_height="440px", overflow="auto",
                                                         min_width="280px"))
        details_box.add_class("slimtune-card")
        axis_row = widgets.HBox([self.objective, self.log_x], layout=widgets.Layout(align_items="center"))
        plot_box = widgets.VBox([axis_row, self.plot.figure, self.plot.legend],
                                layout=widgets.Layout(flex="3 1 480px"))
        main = widgets.HBox([plot_box, details_box], layout=widgets.Layout(align_items="flex-start",
                                                                           flex_flow="row wrap"))
        hint = widgets.HTML("<span style='color:#888;font-size:11.5px'>(0 = no limit)</span>")
        constraints = widgets.HBox([self.max_latency, self.min_accuracy, hint, self.export_path, self.export_button],
                                   layout=widgets.Layout(align_items="center", flex_flow="row wrap"))
        select_box = widgets.VBox([constraints, self.selection])
        select_box.add_class("slimtune-card")
        for row in (run_row, main, constraints, self.progress.widget, axis_row):
            row.add_class("slimtune-row")  # CSS gap: ipywidgets' Layout has no `gap`
        return [widgets.HTML(CSS), self.header, run_row, main, select_box, self.table.widget, self.status, self.errors]

    # ------------------------------------------------------------------ errors
    def _guarded(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                self.report_error(exc)
                return None

        return wrapper

    def report_error(self, exc: BaseException) -> None:
        """Show an exception raised in a callback or a background thread."""
        if isinstance(exc, USER_ERRORS):
            self._say(f"{type(exc).__name__}: {exc}", kind="err")
            return
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        self.errors.append_stderr(text)
        self._say(f"{type(exc).__name__}: {exc} (traceback below)", kind="err")

    def _say(self, message: str, *, kind: str = "") -> None:
        cls = f" class='{kind}'" if kind else ""
        self.status.value = f"<span{cls}>{html.escape(message)}</span>"

    # ------------------------------------------------------------------ data
    def _load_rows(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.study.trials()]

    @property
    def rows(self) -> list[dict[str, Any]]:
        """The final (complete, pruned, failed) trials shown, in arrival order."""
        with self._lock:
            return list(self._rows.values())

    def add_rows(self, rows: list[Mapping[str, Any]]) -> int:
        """Show new trials (running ones are counted, final ones plotted once); returns
        how many points were added."""
        with self._lock:
            fresh = []
            for row in rows:
                number = row.get("trial")
                if number in self._rows:
                    continue
                if R.is_final(row):
                    fresh.append(dict(row))
                    self._running_trials.discard(number)
                else:
                    self._running_trials.add(number)
            for row in fresh:
                self._rows[row.get("trial")] = row
            if fresh:
                self.plot.add(fresh)
                self.table.set_rows(self.plot.front, self.baseline)
                if not getattr(self, "_opening", False) and self._selection_may_change(fresh):
                    self._apply_constraints()
            self._update_header()
            return len(fresh)

    def _update_header(self) -> None:
        esc = html.escape
        name = str(getattr(self.study, "name", "study"))
        task = _task_name(self.study)
        done = sum(1 for r in self._rows.values() if R.is_complete(r))
        other = len(self._rows) - done
        parts = [f"<b>{esc(name)}</b>"]
        if task:
            parts.append(f"task {esc(task)}")
        counts = f"{done} complete" + (f", {other} stopped/failed" if other else "")
        if self._running_trials:
            counts += f", {len(self._running_trials)} running"
        parts.append(counts)
        parts.append(f"{len(self.plot.front)} on the front")
        b = self.baseline or {}
        if b:
            parts.append(f"baseline {R.format_accuracy(R.value(b, 'accuracy'))} · "
                         f"{R.format_cost(R.value(b, 'latency_ms'), R.AXES['latency'])} · "
                         f"{R.format_cost(R.value(b, 'size_bytes'), R.AXES['size'])}")
        self.header.value = ("slimtune <span class='sep'>›</span>" + parts[0]
                             + "<span class='sub'>" + "<span class='sep'>·</span>".join(parts[1:]) + "</span>")

    # ------------------------------------------------------------------ inspect
    def inspect(self, trial: Any) -> None:
        """Fill the details pane with trial ``trial`` (as a click on its point does)."""
        with self._lock:
            row = self._rows.get(trial)
        if row is None:
            raise KeyError(f"Trial {trial!r} is not shown (known: {len(self._rows)} final trials).")
        self.inspect_row(row)

    def inspect_row(self, row: Mapping[str, Any]) -> None:
        self.details.show(row, self.baseline)
        self.plot.mark_inspected(row.get("trial"))
        self.table.show(row.get("trial"))

    def _objective_changed(self, change: dict[str, Any]) -> None:
        with self._lock:
            self.plot.set_objective(change["new"])
            self.table.set_rows(self.plot.front, self.baseline)
            self._update_header()

    # ------------------------------------------------------------------ select / export
    def _constraints(self) -> dict[str, float]:
        out = {}
        if self.max_latency.value > 0:
            out["max_latency_ms"] = float(self.max_latency.value)
        if self.min_accuracy.value > 0:
            out["min_accuracy"] = float(self.min_accuracy.value)
        return out

    def _apply_constraints(self) -> None:
        """Ask the study, in the background, which model the constraints select
        (``study.select`` reads every trial: the widgets must not wait for it)."""
        self._selector.submit(self._constraints())

    def _select_now(self, constraints: dict[str, float]) -> None:
        """Call ``study.select`` and highlight its answer (unless the limits changed
        meanwhile: a newer request is then pending)."""
        if not any(R.is_complete(r) for r in self.rows):
            self._set_candidate(None, "No complete trial yet.", constraints)
            return
        try:
            candidate = self.study.select(**constraints)
        except (ValueError, LookupError) as exc:
            candidate, message = None, str(exc)
        else:
            message = ""
        if constraints == self._constraints():
            self._set_candidate(candidate, message, constraints)

    def _selection_may_change(self, fresh: list[dict[str, Any]]) -> bool:
        """Whether new trials can change ``study.select``'s answer (it is asked again
        only then: on a big study each call reads every trial).  The frontier module's
        select rule, the baseline rule included: a new trial must fit the limits, not
        be beaten by the baseline, and rank before the current choice."""
        from slimtune.studies._frontier import DEFAULT_OBJECTIVES, Limits, selection_may_change

        current = self._rows.get(getattr(self._candidate, "trial", None)) if self._candidate is not None else None
        return selection_may_change(current, [r for r in fresh if R.is_complete(r)], Limits(**self._constraints()),
                                    baseline=self.baseline,
                                    objectives=tuple(getattr(self.study, "objectives", DEFAULT_OBJECTIVES)))

    def _set_candidate(self, candidate: Any, message: str, constraints: dict[str, float]) -> None:
        with self._lock:
            self._show_candidate(candidate, message, constraints)

    def _show_candidate(self, candidate: Any, message: str, constraints: dict[str, float]) -> None:
        self._candidate = candidate
        trial = getattr(candidate, "trial", None) if candidate is not None else None
        if isinstance(trial, Mapping):  # a row
            trial = trial.get("trial")
        self.plot.mark_selected(trial)
        self.table.set_selected(trial)
        self.export_button.disabled = candidate is None
        if candidate is None:
            self.selection.value = f"<span class='none'>{html.escape(message)}</span>"
            return
        row = self._rows.get(trial) or {}
        under = " and ".join(f"{k.replace('_', ' ').replace(' ms', ' (ms)')} {v:g}"
                             for k, v in constraints.items()) or "no constraint"
        facts = " · ".join(f"{name} {shown}{f' ({change})' if change else ''}"
                           for name, shown, change in R.deltas(row, self.baseline)) if row else ""
        self.selection.value = (f"<b>Selected: trial {html.escape(str(trial))}</b> "
                                f"<span style='color:#666'>({html.escape(under)})</span><br>{html.escape(facts)}")
        if self._export_path_auto:
            self._set_path(f"{_safe_filename(str(getattr(self.study, 'name', 'study')))}-trial{trial}.onnx")

    def _set_path(self, path: str) -> None:
        self._export_path_auto = True
        self._setting_path = True
        try:
            self.export_path.value = path
        finally:
            self._setting_path = False

    def _path_edited(self, change: dict[str, Any]) -> None:
        if not getattr(self, "_setting_path", False):
            self._export_path_auto = False

    @property
    def candidate(self) -> Any:
        """The model the constraint controls select (what Export writes), or None."""
        return self._candidate

    def select(self, *, max_latency_ms: float | None = None, min_accuracy: float | None = None) -> Any:
        """Set the constraint controls (None = no limit) and return the model they
        select (``study.select``'s answer, highlighted)."""
        self._selector.wait()
        self._quiet_limits = True
        try:
            self.max_latency.value = float(max_latency_ms or 0.0)
            self.min_accuracy.value = float(min_accuracy or 0.0)
        finally:
            self._quiet_limits = False
        self._select_now(self._constraints())
        return self._candidate

    def _limits_changed(self, change: dict[str, Any]) -> None:
        if not self._quiet_limits:
            self._apply_constraints()

    def export(self, path: str | None = None) -> Path:
        """Write the selected model to ``path`` (default: the path box)."""
        if self._candidate is None:
            raise ValueError("No model is selected: loosen the constraints first.")
        target = Path(path or self.export_path.value or "model.onnx").expanduser()
        written = self._candidate.export(target)
        out = Path(written) if isinstance(written, (str, Path)) else target
        size = out.stat().st_size if out.exists() else 0
        self._say(f"Exported trial {getattr(self._candidate, 'trial', '?')} to {out} ({size / 1024:.1f} KiB).",
                  kind="ok")
        return out

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
        return self._selector.wait(timeout) and done

    def _on_trial(self, row: Any) -> None:  # search thread
        try:
            self.progress.advance()
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
        """Read the database once; returns how many trials were added.  Unless
        ``force``, the trial rows are read only when the study's trial list changed."""
        signature = _trial_signature(self.study)
        if not force and signature is not None and signature == self._signature:
            return 0
        added = self.add_rows(self._load_rows())
        self._signature = signature
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
        return render_html(title=str(getattr(self.study, "name", "study")), task=_task_name(self.study),
                           rows=self.rows, baseline=self.baseline, objective=self.objective.value)

    def __repr__(self) -> str:
        return (f"StudyDashboard(study={getattr(self.study, 'name', '?')!r}, trials={len(self._rows)}, "
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


def _trial_signature(study: Any) -> Any:
    """A cheap fingerprint of the study's trial list: (trials, finished trials) from
    Optuna's cached storage (it fetches only new and unfinished trials), or None when
    the study has no Optuna study to ask."""
    optuna_study = getattr(study, "optuna_study", None)
    if optuna_study is None:
        return None
    trials = optuna_study.get_trials(deepcopy=False)
    return len(trials), sum(1 for t in trials if t.state.is_finished())


def _task_name(study: Any) -> str | None:
    for attr in ("task_name", "task"):
        val = getattr(study, attr, None)
        if val is None:
            continue
        return str(getattr(val, "name", val))
    return None


def _safe_filename(name: str) -> str:
    """``widgets <i>x</i> & co`` -> ``widgets-i-x-i-co``."""
    keep = re.sub(r"[^A-Za-z0-9_.]+", "-", name).strip("-.")
    return keep or "study"
