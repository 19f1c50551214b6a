"""The details pane: one trial's params by family, its measurements and the deltas
against the baseline.  Every value is escaped before it reaches HTML."""

from __future__ import annotations

import html
from typing import Any, Mapping

import ipywidgets as widgets

from slimtune._vocabulary import state_phrase
from slimtune.search._fidelity import fidelity_label, is_training_free
from slimtune.widgets import _axes as R

PLACEHOLDER = "<div class='slimtune-details-empty'>Click a point (or a row of the Pareto table) to see its details.</div>"


def details_html(row: Mapping[str, Any], baseline: Mapping[str, Any] | None = None) -> str:
    """The details of ``row`` as an HTML fragment."""
    esc = html.escape
    state = str(row.get("state", "COMPLETE")).upper()
    badge = "" if state == "COMPLETE" else f" <span class='slimtune-badge'>{esc(state_phrase(state))}</span>"
    pareto = " <span class='slimtune-badge slimtune-front'>on the front</span>" if row.get("pareto") else ""
    parts = [f"<div class='slimtune-details' data-trial='{esc(str(row.get('trial')))}'>",
             f"<h4>Trial {esc(str(row.get('trial')))}{badge}{pareto}</h4>"]
    reason = row.get("stopped_reason") or row.get("error")
    if reason:
        parts.append(f"<div class='slimtune-note'>{esc(str(reason))}</div>")
    if state == "COMPLETE":
        parts.append(f"<div class='slimtune-line'><b>fidelity</b> {esc(fidelity_label(row))}"
                     + (" (not trained: calibrated only)" if is_training_free(row) else "") + "</div>")
    parts.append("<table class='slimtune-kv'><tr><th></th><th>value</th><th>vs baseline</th></tr>")
    for name, shown, change in R.deltas(row, baseline):
        parts.append(f"<tr><td>{esc(name)}</td><td class='num'>{esc(shown)}</td><td class='num'>{esc(change)}</td></tr>")
    parts.append("</table>")
    rates = row.get("exit_rates")
    if rates:
        shares = " / ".join(f"{float(r) * 100:.0f}%" for r in rates)
        parts.append(f"<div class='slimtune-line'><b>exit rates</b> (exits…final): {esc(shares)}</div>")
    parts.append("<div class='slimtune-families'>")
    for title, items in R.group_params(row.get("params") or {}):
        cells = "".join(f"<tr><td>{esc(name)}</td><td class='num'>{esc(R.format_param(val))}</td></tr>"
                        for name, val in items)
        parts.append(f"<div class='slimtune-family'><b>{esc(title)}</b><table class='slimtune-kv'>{cells}</table></div>")
    parts.append("</div>")
    flags = row.get("flags") or []
    if flags:
        items = "".join(f"<li>{esc(str(f))}</li>" for f in flags)
        parts.append(f"<div class='slimtune-line'><b>notes</b><ul>{items}</ul></div>")
    parts.append("</div>")
    return "".join(parts)


class DetailsPane:
    """An HTML widget showing the last clicked trial."""

    def __init__(self) -> None:
        self.widget = widgets.HTML(PLACEHOLDER, layout=widgets.Layout(width="100%"))
        self.widget.add_class("slimtune-details-pane")
        self.trial: Any = None

    def show(self, row: Mapping[str, Any], baseline: Mapping[str, Any] | None = None) -> None:
        self.trial = row.get("trial")
        self.widget.value = details_html(row, baseline)

    def clear(self) -> None:
        self.trial = None
        self.widget.value = PLACEHOLDER
