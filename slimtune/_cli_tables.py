"""The CLI's text tables: trial rows in 100 columns, compact parameters, flag markers.

Pure functions over plain trial rows (no torch, no database), so ``slimtune show``
starts fast and the tests can hold the layout.

Example:
    >>> compact_params({"prune.ratio": 0.28, "prune.granularity": "weight", "quant.bits": 8,
    ...                 "quant.mode": "ptq", "distill.temperature": 4.0, "distill.alpha": 0.7})
    'p0.28w q8ptq T4.0 a0.70'
"""

from __future__ import annotations

import textwrap
from typing import Any, Iterable, Mapping, Sequence

from slimtune.search._fidelity import fidelity_note
from slimtune.search._measurement import same_run_speedup
from slimtune.spaces import Knob, knob_classes
from slimtune._vocabulary import state_word

#: Width the tables fit unless ``--wide`` is given.
WIDTH = 100


def _num(value: Any, digits: int = 2) -> str:
    return f"{float(value):.{digits}f}"


def codes_legend() -> str:
    """The compact codes, explained under every table that uses them (each knob's
    ``compact_legend``)."""
    codes = [cls.compact_legend for cls in knob_classes() if cls.compact_legend]
    return "params: " + ", ".join(codes) + "; a family left out: off"


def compact_params(params: Mapping[str, Any], names: Sequence[str] | None = None) -> str:
    """Every active parameter in a short form, e.g. ``p0.28w q8ptq T4.0 a0.70 ds{1} ex{1@0.90}``:
    each knob writes its own (:meth:`slimtune.spaces.Knob.compact`), in registration order.

    ``names`` is the space's parameter order (it numbers e.g. the DS-convs); parameters
    of families without a compact code are shown as ``name=value``.
    """
    order = list(names or params)
    order += [n for n in params if n not in order]
    parts: list[str] = []
    known: set[str] = set()
    for cls in knob_classes():
        if cls.compact is Knob.compact:  # no code of its own: name=value below
            continue
        prefix = cls.family + "."
        mine = {n: v for n, v in params.items() if n.startswith(prefix)}
        if not mine:
            continue
        known |= set(mine)
        text = cls.compact(mine, [n for n in order if n.startswith(prefix)])
        if text:
            parts.append(text)
    for name, value in params.items():
        if name not in known:
            parts.append(f"{name}={_num(value, 3) if isinstance(value, float) else value}")
    return " ".join(parts)


def dsconv_legend(names: Iterable[str]) -> str:
    """What the ``{i}`` of numbered codes (``ds{i}``, ``lr{i}``) stand for, from the
    space's parameter names."""
    names = list(names)
    out = []
    for cls in knob_classes():
        layers = [n.split(".", 1)[1] for n in names if n.startswith(cls.family + ".")] if cls.compact_index else []
        if layers:
            out.append(f"{cls.compact_index}{{i}}: " + ", ".join(f"{i} = {layer}" for i, layer in enumerate(layers)))
    return "; ".join(out)


def val_accuracy(row: Mapping[str, Any]) -> float | None:
    """What the search optimizes: the validation accuracy of the timed artifact."""
    value = row.get("val_accuracy", row.get("accuracy"))
    return None if value is None else float(value)


def test_accuracy(row: Mapping[str, Any]) -> float | None:
    """The test-split accuracy, reported apart (never seen by the search)."""
    value = row.get("test_accuracy")
    return None if value is None else float(value)


def speedup(row: Mapping[str, Any]) -> float | None:
    """``reference_latency_ms / latency_ms`` of the same trial (the baseline timed in the
    same run; ``None`` when either is missing)."""
    return same_run_speedup(row.get("reference_latency_ms"), row.get("latency_ms"))


def _macs(value: Any) -> str:
    if value is None:
        return ""
    value = float(value)
    return f"{value / 1e6:.2f}M" if value >= 1e5 else f"{value / 1e3:.1f}k"


def _cell(value: float | None, fmt: str, width: int) -> str:
    return f"{'-' if value is None else format(value, fmt):>{width}}"


def metric_labels(metric: str = "accuracy") -> tuple[str, str]:
    """The column names of the task's metric on validation and test: ``val_acc`` and
    ``test_acc`` for accuracy, else the metric's name (``val_f1_macro``, ...)."""
    return ("val_acc", "test_acc") if metric == "accuracy" else (f"val_{metric}", f"test_{metric}")


def header(metric: str = "accuracy") -> str:
    """The table's header line (the metric columns named after ``metric``)."""
    val, test = metric_labels(metric)
    return (f"{'trial':>6} {'state':<8} {val:>7} {test:>8} {'lat_ms':>7} {'speedup':>7} {'pack_KiB':>8} "
            f"{'art_KiB':>7} {'MACs':>7} {'flags':<5}  params")


HEADER = header()
PARAMS_AT = len(HEADER) - len("params")


class FlagMarkers:
    """Gives each distinct flag text a letter; the letters go in the table's ``flags``
    column and the texts under it."""

    def __init__(self) -> None:
        self.letters: dict[str, str] = {}

    def mark(self, flags: Iterable[str]) -> str:
        out = []
        for flag in flags or ():
            if flag not in self.letters:
                self.letters[flag] = "abcdefghijklmnopqrstuvwxyz"[len(self.letters) % 26]
            out.append(self.letters[flag])
        return "".join(dict.fromkeys(out))

    def lines(self) -> list[str]:
        return [f"  {letter} = {flag}" for flag, letter in self.letters.items()]


def trial_lines(row: Mapping[str, Any], names: Sequence[str], markers: FlagMarkers, *, mark_pareto: bool = True,
                wide: bool = False, metric: str = "accuracy") -> list[str]:
    """One trial as table lines (its parameters wrapped to ``WIDTH`` unless ``wide``)."""
    star = "*" if (mark_pareto and row.get("pareto")) else " "
    state = state_word(row.get("state", ""))
    val_width, test_width = (max(width, len(label)) for width, label in zip((7, 8), metric_labels(metric)))
    if row.get("state") == "COMPLETE":
        size, artifact = row.get("size_bytes"), row.get("artifact_bytes")
        metrics = " ".join([
            _cell(val_accuracy(row), ".4f", val_width), _cell(test_accuracy(row), ".4f", test_width),
            _cell(row.get("latency_ms"), ".4f", 7), f"{'-' if speedup(row) is None else f'{speedup(row):.2f}x':>7}",
            _cell(None if size is None else size / 1024, ".1f", 8),
            _cell(None if not artifact else artifact / 1024, ".1f", 7), f"{_macs(row.get('macs')):>7}",
        ])
    else:
        metrics = " ".join(f"{'':>{w}}" for w in (val_width, test_width, 7, 7, 8, 7, 7))
    head = f"{row.get('trial', ''):>5}{star} {state:<8} {metrics} {markers.mark(row.get('flags') or []):<5}  "
    params = compact_params(row.get("params") or {}, names) or "-"
    if wide:
        lines = [head + params]
    else:
        chunks = textwrap.wrap(params, WIDTH - len(head), break_on_hyphens=False) or [params]
        lines = [head + chunks[0]] + [" " * len(head) + c for c in chunks[1:]]
    note = None
    if row.get("state") == "PRUNED" and row.get("stopped_reason"):
        note = str(row["stopped_reason"])
    elif row.get("state") == "FAIL" and row.get("error"):
        note = str(row["error"]).splitlines()[-1]
    elif row.get("state") == "COMPLETE":
        note = fidelity_note(row)
    if note:
        indent = " " * 8
        lines += [indent + n for n in ([note] if wide else textwrap.wrap(note, WIDTH - len(indent)))]
    return lines


def table_lines(rows: Sequence[Mapping[str, Any]], names: Sequence[str], *, mark_pareto: bool = True,
                wide: bool = False, metric: str = "accuracy") -> list[str]:
    """The header, one block per trial, then the legend of the codes and flags used;
    the metric columns are named after the task's ``metric``."""
    markers = FlagMarkers()
    lines = [header(metric)]
    for row in rows:
        lines += trial_lines(row, names, markers, mark_pareto=mark_pareto, wide=wide, metric=metric)
    notes = [("* = on the frontier; " if mark_pareto else "") + "speedup = this trial's baseline latency, timed "
             "in the same run, / its latency; pack_KiB = the packed model file (export --format packed), art_KiB = "
             "the timed .onnx/TorchScript artifact"]
    notes.append(codes_legend())
    legend = dsconv_legend(names)
    if legend:
        notes.append(legend)
    for note in notes:
        lines += [note] if wide else textwrap.wrap(note, WIDTH, subsequent_indent="  ")
    if markers.letters:
        lines.append("flags:")
        flag_lines = markers.lines()
        lines += flag_lines if wide else [w for f in flag_lines for w in textwrap.wrap(f, WIDTH, subsequent_indent="      ")]
    return lines

