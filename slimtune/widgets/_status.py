"""What the dashboard says about itself: the header line, the progress of a search
started from it, the status line and the error area.

Errors raised in widget callbacks and background threads are otherwise swallowed:
:meth:`Status.guarded` wraps a callback so that they reach the status line (the user's
own mistakes as one line, anything else with its traceback in the error area).

Example:
    >>> status = Status()
    >>> status.say("Search finished.", kind="ok")
"""

from __future__ import annotations

import functools
import html
import math
import time
import traceback
from typing import Any, Callable, Mapping

import ipywidgets as widgets

from slimtune.widgets import _axes as R

#: Errors of the user's input (no model fits, bad path...): shown as a message, no traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, LookupError, OSError)


class Status:
    """The status line and the error area below it."""

    def __init__(self) -> None:
        self.line = widgets.HTML("")
        self.line.add_class("slimtune-status")
        self.errors = widgets.Output(layout=widgets.Layout(max_height="200px", overflow="auto"))

    def say(self, message: str, *, kind: str = "") -> None:
        """Show ``message`` (escaped); ``kind`` ``ok`` or ``err`` colours it."""
        cls = f" class='{kind}'" if kind else ""
        self.line.value = f"<span{cls}>{html.escape(message)}</span>"

    def report(self, exc: BaseException) -> None:
        """Show an exception raised in a callback or a background thread."""
        if isinstance(exc, USER_ERRORS):
            self.say(f"{type(exc).__name__}: {exc}", kind="err")
            return
        self.errors.append_stderr("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
        self.say(f"{type(exc).__name__}: {exc} (traceback below)", kind="err")

    def guarded(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` with its exceptions reported instead of raised."""
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                self.report(exc)
                return None

        return wrapper


def format_duration(seconds: float) -> str:
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
                            f"ETA {format_duration(eta)}")

    def finish(self, message: str, *, ok: bool = True) -> None:
        self.bar.bar_style = "success" if ok else "warning"
        elapsed = time.monotonic() - self._t0
        self.label.value = (f"{self.done} / {self.planned} trials in {format_duration(elapsed)} · "
                            f"{html.escape(message)}")


def header_html(name: str, task: str | None, counts: tuple[int, int, int], front: int,
                baseline: Mapping[str, Any] | None) -> str:
    """The header line: study, task, trials by state, front size, the baseline's figures
    (every value escaped)."""
    esc = html.escape
    done, other, running = counts
    parts = [f"<b>{esc(name)}</b>"]
    if task:
        parts.append(f"task {esc(task)}")
    text = f"{done} complete" + (f", {other} stopped/failed" if other else "")
    if running:
        text += f", {running} running"
    parts.append(text)
    parts.append(f"{front} on the front")
    b = baseline or {}
    if b:
        parts.append(f"baseline {R.format_accuracy(R.value(b, 'accuracy'))} · "
                     f"{R.format_cost(R.value(b, 'latency_ms'), R.AXES['latency'])} · "
                     f"{R.format_cost(R.value(b, 'size_bytes'), R.AXES['size'])}")
    return ("slimtune <span class='sep'>›</span>" + parts[0]
            + "<span class='sub'>" + "<span class='sep'>·</span>".join(parts[1:]) + "</span>")
