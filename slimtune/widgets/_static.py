"""A plain HTML rendering of a study (inline SVG plot + front table), for places where
no widget frontend runs: nbconvert, GitHub, a notebook reopened without its kernel.

Every user-provided string (study and task names, param values, notes) is escaped.
"""

from __future__ import annotations

import html
import math
from typing import Any, Mapping, Sequence

from slimtune.widgets import _axes as R
from slimtune.widgets._plot import COLORS

WIDTH, HEIGHT = 560, 300
MARGIN = {"left": 58, "right": 14, "top": 12, "bottom": 40}


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo] if math.isfinite(lo) else []
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step) + 1)]


def svg_plot(rows: Sequence[Mapping[str, Any]], baseline: Mapping[str, Any] | None, objective: str = "latency") -> str:
    """Accuracy against the chosen cost as an inline SVG (all trials, front, baseline)."""
    axis = R.check_axis(objective)
    pts = [(axis.unit_scale * R.value(r, axis.key), R.value(r, "accuracy"), R.is_complete(r)) for r in rows]
    pts = [p for p in pts if not (math.isnan(p[0]) or math.isnan(p[1]))]
    base = None
    if baseline:
        bx, by = axis.unit_scale * R.value(baseline, axis.key), R.value(baseline, "accuracy")
        base = None if math.isnan(bx) or math.isnan(by) else (bx, by)
    xs = [p[0] for p in pts] + ([base[0]] if base else [])
    ys = [p[1] for p in pts] + ([base[1]] if base else [])
    if not xs:
        return "<div>No measured trials yet.</div>"
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    padx = (x1 - x0) * 0.05 or abs(x0) * 0.1 or 1.0
    pady = (y1 - y0) * 0.06 or 0.01
    x0, x1, y0, y1 = x0 - padx, x1 + padx, y0 - pady, y1 + pady
    pw = WIDTH - MARGIN["left"] - MARGIN["right"]
    ph = HEIGHT - MARGIN["top"] - MARGIN["bottom"]

    def sx(v: float) -> float:
        return MARGIN["left"] + (v - x0) / (x1 - x0) * pw

    def sy(v: float) -> float:
        return MARGIN["top"] + (1 - (v - y0) / (y1 - y0)) * ph

    out = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{WIDTH}' height='{HEIGHT}' "
           f"viewBox='0 0 {WIDTH} {HEIGHT}' font-family='sans-serif' font-size='11'>",
           f"<rect x='{MARGIN['left']}' y='{MARGIN['top']}' width='{pw}' height='{ph}' fill='white' stroke='#ccc'/>"]
    for t in _ticks(x0, x1):
        out.append(f"<line x1='{sx(t):.1f}' x2='{sx(t):.1f}' y1='{MARGIN['top']}' y2='{MARGIN['top'] + ph}' stroke='#eee'/>"
                   f"<text x='{sx(t):.1f}' y='{HEIGHT - MARGIN['bottom'] + 14}' text-anchor='middle'>{t:.4g}</text>")
    for t in _ticks(y0, y1):
        out.append(f"<line x1='{MARGIN['left']}' x2='{MARGIN['left'] + pw}' y1='{sy(t):.1f}' y2='{sy(t):.1f}' stroke='#eee'/>"
                   f"<text x='{MARGIN['left'] - 6}' y='{sy(t) + 4:.1f}' text-anchor='end'>{t:.3f}</text>")
    out.append(f"<text x='{MARGIN['left'] + pw / 2}' y='{HEIGHT - 6}' text-anchor='middle'>{html.escape(axis.label)}</text>"
               f"<text transform='translate(14 {MARGIN['top'] + ph / 2}) rotate(-90)' text-anchor='middle'>Validation accuracy</text>")
    # every point in one path of zero-length round-capped segments, one per cell of 3 x 3
    # pixels (the dots are 5-6 px wide: what shares a cell looks the same): bounded
    # however many trials the study has
    for complete, color, width in ((False, COLORS["other"], 5), (True, COLORS["trial"], 6)):
        dots: dict[tuple[int, int], str] = {}
        for x, y, c in pts:
            if c == complete:
                dots.setdefault((round(sx(x) / 3), round(sy(y) / 3)), f"M{sx(x):.1f} {sy(y):.1f}h0")
        d = "".join(dots.values())
        if d:
            out.append(f"<path d='{d}' stroke='{color}' stroke-width='{width}' stroke-linecap='round' opacity='0.8'/>")
    done_rows = [r for r in rows if R.is_complete(r)]
    front_rows = R.front_rows(done_rows, objective, baseline)
    if front_rows:
        front = [(axis.unit_scale * R.value(r, axis.key), R.value(r, "accuracy")) for r in front_rows]
        d = f"M{sx(front[0][0]):.1f} {sy(front[0][1]):.1f}"
        for (_, _), (bx2, by2) in zip(front, front[1:]):
            d += f"H{sx(bx2):.1f}V{sy(by2):.1f}"
        out.append(f"<path d='{d}' fill='none' stroke='{COLORS['front']}' stroke-width='2'/>")
    if base:
        cx, cy = sx(base[0]), sy(base[1])
        out.append(f"<path d='M{cx:.1f} {cy - 6:.1f}l6 6l-6 6l-6 -6z' fill='{COLORS['baseline']}'/>"
                   f"<text x='{cx + 8:.1f}' y='{cy - 6:.1f}'>baseline</text>")
    out.append("</svg>")
    return "".join(out)


def render_html(*, title: str, task: str | None, rows: Sequence[Mapping[str, Any]],
                baseline: Mapping[str, Any] | None, objective: str = "latency", max_rows: int = 20) -> str:
    """The whole fallback: title line, SVG plot and the front as a table."""
    esc = html.escape
    final = [r for r in rows if R.is_final(r)]
    front = R.front_rows(final, objective, baseline)
    head = f"<b>slimtune study {esc(title)}</b>"
    if task:
        head += f" · task {esc(task)}"
    head += f" · {len(final)} trials, {len(front)} on the {esc(objective)} front"
    table = ["<table><tr><th>trial</th><th>val acc</th><th>test acc</th><th>latency (ms)</th><th>speed-up (same run)</th>"
             "<th>packed (KiB)</th><th>MACs (M)</th><th>knobs</th></tr>"]
    for r in sorted(front, key=lambda r: -R.value(r, "accuracy"))[:max_rows]:
        table.append(
            f"<tr><td>{esc(str(r.get('trial')))}</td><td>{R.format_accuracy(R.value(r, 'accuracy'))}</td>"
            f"<td>{R.format_accuracy(R.value(r, 'test_accuracy'))}</td>"
            f"<td>{R.value(r, 'latency_ms'):.3f}</td><td>{R.format_cost(R.value(r, 'speedup'), R.AXES['speedup'])}</td>"
            f"<td>{R.value(r, 'size_bytes') / 1024:.1f}</td>"
            f"<td>{R.value(r, 'macs') / 1e6:.3g}</td><td>{esc(R.params_summary(r.get('params') or {}))}</td></tr>")
    table.append("</table>")
    if len(front) > max_rows:
        table.append(f"<div>… {len(front) - max_rows} more on the front</div>")
    return (f"<div class='slimtune-static'>{STATIC_CSS}<div>{head}</div>{svg_plot(final, baseline, objective)}"
            f"{''.join(table)}</div>")


STATIC_CSS = ("<style>.slimtune-static{font-family:system-ui,sans-serif;font-size:13px}"
              ".slimtune-static table{border-collapse:collapse;font-size:12px}"
              ".slimtune-static th{color:#666;font-weight:normal;border-bottom:1px solid #ddd}"
              ".slimtune-static td,.slimtune-static th{padding:1px 8px;text-align:right}"
              ".slimtune-static td:last-child,.slimtune-static th:last-child{text-align:left}</style>")
