"""The dashboard's constraint controls, the model they select, and its export.

The choice is ``Study.select``'s rule (that of :func:`slimtune.studies._frontier.select_rows`,
the baseline rule included) applied to the dashboard's own rows, in a background
thread (:class:`~slimtune.widgets._background.LatestOnly`): the same answer and the same
"nothing fits" message as ``study.select``, without reading the study again.

Example:
    >>> selection = Selection(study, book, lock, on_selected=print)   # doctest: +SKIP
    >>> selection.select(max_latency_ms=0.5).trial                      # doctest: +SKIP
"""

from __future__ import annotations

import html
import re
import threading
from pathlib import Path
from typing import Any, Callable, Mapping

import ipywidgets as widgets

from slimtune.studies import Candidate
from slimtune._dominance import DEFAULT_OBJECTIVES, beaten_by_baseline
from slimtune.studies._frontier import Limits, no_candidate_message, selection_may_change
from slimtune.widgets import _axes as R
from slimtune.widgets._background import LatestOnly


class Selection:
    """Constraint boxes, the selected model (``candidate``) and the Export button.

    ``on_selected(trial or None)`` is called (under ``lock``) when the choice changes;
    ``say(message, kind)`` reports an export; errors go to ``on_error``.
    """

    def __init__(self, study: Any, book: Any, lock: threading.RLock, *, baseline: Mapping[str, Any] | None,
                 on_selected: Callable[[Any], None], say: Callable[..., None],
                 on_error: Callable[[BaseException], None], guarded: Callable[[Callable], Callable]) -> None:
        self.study, self.book, self.lock = study, book, lock
        self.baseline = baseline  # shown beside the choice
        self._on_selected, self._say = on_selected, say
        self._candidate: Any = None
        self._export_path_auto = True
        self._setting_path = self._quiet_limits = False
        self._selector = LatestOnly(self._select_now, on_error=on_error,
                                    name=f"slimtune-select-{getattr(study, 'name', 'study')}")
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
        self.max_latency.observe(guarded(self._limits_changed), names=["value"])
        self.min_accuracy.observe(guarded(self._limits_changed), names=["value"])
        self.export_path.observe(guarded(self._path_edited), names=["value"])
        self.export_button.on_click(guarded(lambda _: self.export()))
        hint = widgets.HTML("<span style='color:#888;font-size:11.5px'>(0 = no limit)</span>")
        self.row = widgets.HBox([self.max_latency, self.min_accuracy, hint, self.export_path, self.export_button],
                                layout=widgets.Layout(align_items="center", flex_flow="row wrap"))
        self.widget = widgets.VBox([self.row, self.selection])
        self.widget.add_class("slimtune-card")

    # -- choosing ----------------------------------------------------------------------
    def constraints(self) -> dict[str, float]:
        """The limits the boxes hold (0 = no limit), as ``study.select`` arguments."""
        out = {}
        if self.max_latency.value > 0:
            out["max_latency_ms"] = float(self.max_latency.value)
        if self.min_accuracy.value > 0:
            out["min_accuracy"] = float(self.min_accuracy.value)
        return out

    def apply(self) -> None:
        """Choose again, in the background, under the current limits."""
        self._selector.submit(self.constraints())

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for a pending choice; ``True`` when none is left."""
        return self._selector.wait(timeout)

    @property
    def candidate(self) -> Any:
        """The model the constraint controls select (what Export writes), or None."""
        return self._candidate

    def select(self, *, max_latency_ms: float | None = None, min_accuracy: float | None = None) -> Any:
        """Set the constraint boxes (None = no limit) and return the model they select."""
        self._selector.wait()
        self._quiet_limits = True
        try:
            self.max_latency.value = float(max_latency_ms or 0.0)
            self.min_accuracy.value = float(min_accuracy or 0.0)
        finally:
            self._quiet_limits = False
        self._select_now(self.constraints())
        return self._candidate

    def may_change(self, fresh: list[Mapping[str, Any]]) -> bool:
        """Whether new trials can change the choice (then it is made again): one of
        them fits the limits, is not beaten by the baseline and ranks before it."""
        with self.lock:
            trial = getattr(self._candidate, "trial", None) if self._candidate is not None else None
            current = self.book.get(trial)
        return selection_may_change(current, [r for r in fresh if R.is_complete(r)], Limits(**self.constraints()),
                                    baseline=self._rule_baseline(), objectives=self._objectives())

    def _select_now(self, constraints: dict[str, float]) -> None:
        """``study.select``'s answer over the dashboard's rows, shown unless the limits
        changed meanwhile (a newer request is then pending)."""
        with self.lock:
            rows = [r for r in self.book.complete if r.get("accuracy") is not None]
        if not rows:
            self._show(None, "No complete trial yet.", constraints)
            return
        limits, baseline, objectives = Limits(**constraints), self._rule_baseline(), self._objectives()
        # select_rows' rule (fitting rows by rank, the first the baseline does not beat),
        # the baseline asked about one row at a time until one passes
        fitting = sorted((r for r in rows if limits.fits(r)), key=limits.key)
        chosen = next((r for r in fitting if not beaten_by_baseline(r, baseline, objectives)), None)
        candidate, message = None, ""
        if chosen is not None:
            with self.lock:
                row = self.book.full([chosen["trial"]])[0]
                make = getattr(self.study, "candidate_of", None)  # a study read on one of its targets
                candidate = make(row) if make is not None else Candidate(self.study, row)
        else:
            message = no_candidate_message(str(getattr(self.study, "name", "study")), rows, fitting, limits, baseline)
        if constraints == self.constraints():
            self._show(candidate, message, constraints)

    def _rule_baseline(self) -> Mapping[str, Any] | None:
        """The baseline ``study.select`` compares with."""
        row = getattr(self.study, "baseline_row", None)
        return row() if callable(row) else self.baseline

    def _objectives(self) -> tuple[str, ...]:
        return tuple(getattr(self.study, "objectives", DEFAULT_OBJECTIVES))

    def _show(self, candidate: Any, message: str, constraints: dict[str, float]) -> None:
        with self.lock:
            self._candidate = candidate
            trial = getattr(candidate, "trial", None) if candidate is not None else None
            self._on_selected(trial)
            self.export_button.disabled = candidate is None
            if candidate is None:
                self.selection.value = f"<span class='none'>{html.escape(message)}</span>"
                return
            row = self.book.get(trial) or {}
            under = " and ".join(f"{k.replace('_', ' ').replace(' ms', ' (ms)')} {v:g}"
                                 for k, v in constraints.items()) or "no constraint"
            facts = " · ".join(f"{name} {shown}{f' ({change})' if change else ''}"
                               for name, shown, change in R.deltas(row, self.baseline)) if row else ""
            self.selection.value = (f"<b>Selected: trial {html.escape(str(trial))}</b> "
                                    f"<span style='color:#666'>({html.escape(under)})</span><br>{html.escape(facts)}")
            if self._export_path_auto:
                self._set_path(f"{safe_filename(str(getattr(self.study, 'name', 'study')))}-trial{trial}.onnx")

    def _limits_changed(self, change: dict[str, Any]) -> None:
        if not self._quiet_limits:
            self.apply()

    # -- export ------------------------------------------------------------------------
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

    def _set_path(self, path: str) -> None:
        self._export_path_auto = True
        self._setting_path = True
        try:
            self.export_path.value = path
        finally:
            self._setting_path = False

    def _path_edited(self, change: dict[str, Any]) -> None:
        if not self._setting_path:
            self._export_path_auto = False


def safe_filename(name: str) -> str:
    """``widgets <i>x</i> & co`` -> ``widgets-i-x-i-co``."""
    keep = re.sub(r"[^A-Za-z0-9_.]+", "-", name).strip("-.")
    return keep or "study"
