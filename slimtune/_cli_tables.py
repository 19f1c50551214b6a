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

from slimtune.search._measurement import same_run_speedup
from slimtune._vocabulary import STATE_WORDS, state_word

#: Width the tables fit unless ``--wide`` is given.
WIDTH = 100

#: The compact codes, explained under every table that uses them.
LEGEND = ("params: p<ratio><w|c>[r] pruning (weight/channel, r = rewind), q<bits>[ptq|qat] quantization, "
          "T<temperature> a<alpha> distillation, ds{i,..} depthwise-separable convs, lr{i:rank share,..} low-rank "
          "groups, ex{i@threshold,..} early exits; no p/ds/lr/ex: none")



def _num(value: Any, digits: int = 2) -> str:
    return f"{float(value):.{digits}f}"


def _indices(prefix: str, names: Sequence[str]) -> dict[str, int]:
    """Position of each ``prefix.*`` parameter among ``names`` (the space's order)."""
    return {n: i for i, n in enumerate(n for n in names if n.startswith(prefix))}


def compact_params(params: Mapping[str, Any], names: Sequence[str] | None = None) -> str:
    """Every active parameter in a short form, e.g. ``p0.28w q8ptq T4.0 a0.70 ds{1} ex{1@0.90}``.

    ``names`` is the space's parameter order (it numbers the DS-convs); parameters of
    families it does not know are shown as ``name=value``.
    """
    names = list(names or params)
    parts: list[str] = []
    known: set[str] = set()
    ratio = params.get("prune.ratio")
    known |= {"prune.ratio", "prune.granularity", "prune.rewind"}
    if ratio is not None and float(ratio) > 0:
        gran = str(params.get("prune.granularity", ""))[:1]
        parts.append(f"p{_num(ratio)}{gran}{'r' if params.get('prune.rewind') in (True, 'true', 'True') else ''}")
    bits = params.get("quant.bits")
    known |= {"quant.bits", "quant.mode"}
    if bits is not None:
        parts.append(f"q{int(bits)}{params.get('quant.mode', '') if int(bits) < 16 else ''}")
    known |= {"distill.temperature", "distill.alpha"}
    if params.get("distill.temperature") is not None:
        parts.append(f"T{_num(params['distill.temperature'], 1)}")
    if params.get("distill.alpha") is not None:
        parts.append(f"a{_num(params['distill.alpha'])}")
    ds_index = _indices("dsconv.", names + [n for n in params if n not in names])
    on = [str(i) for n, i in ds_index.items() if params.get(n) in (True, "true", "True")]
    known |= set(ds_index)
    if on:
        parts.append("ds{" + ",".join(on) + "}")
    lr_index = _indices("lowrank.", names + [n for n in params if n not in names])
    known |= set(lr_index)
    factorized = [f"{i}:{_num(params[n])}" for n, i in lr_index.items()
                  if params.get(n) is not None and float(params[n]) < 1.0]
    if factorized:
        parts.append("lr{" + ",".join(factorized) + "}")
    exits = sorted({n.split(".")[1] for n in params if n.startswith("exits.")}, key=lambda k: (len(k), k))
    known |= {n for n in params if n.startswith("exits.")}
    enabled = [f"{k}@{_num(params.get(f'exits.{k}.threshold', float('nan')))}" for k in exits
               if params.get(f"exits.{k}.enabled") in (True, "true", "True")]
    if enabled:
        parts.append("ex{" + ",".join(enabled) + "}")
    for name, value in params.items():
        if name not in known:
            parts.append(f"{name}={_num(value, 3) if isinstance(value, float) else value}")
    return " ".join(parts)


def dsconv_legend(names: Iterable[str]) -> str:
    """``ds{i}`` and ``lr{i}``: which conv or layer group each index is (from the space's
    parameter names)."""
    names = list(names)
    out = []
    for prefix, code in (("dsconv.", "ds"), ("lowrank.", "lr")):
        layers = [n.split(".", 1)[1] for n in names if n.startswith(prefix)]
        if layers:
            out.append(f"{code}{{i}}: " + ", ".join(f"{i} = {layer}" for i, layer in enumerate(layers)))
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


HEADER = (f"{'trial':>6} {'state':<8} {'val_acc':>7} {'test_acc':>8} {'lat_ms':>7} {'speedup':>7} {'pack_KiB':>8} "
          f"{'art_KiB':>7} {'MACs':>7} {'flags':<5}  params")
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
                wide: bool = False) -> list[str]:
    """One trial as table lines (its parameters wrapped to ``WIDTH`` unless ``wide``)."""
    star = "*" if (mark_pareto and row.get("pareto")) else " "
    state = state_word(row.get("state", ""))
    if row.get("state") == "COMPLETE":
        size, artifact = row.get("size_bytes"), row.get("artifact_bytes")
        metrics = " ".join([
            _cell(val_accuracy(row), ".4f", 7), _cell(test_accuracy(row), ".4f", 8),
            _cell(row.get("latency_ms"), ".4f", 7), f"{'-' if speedup(row) is None else f'{speedup(row):.2f}x':>7}",
            _cell(None if size is None else size / 1024, ".1f", 8),
            _cell(None if not artifact else artifact / 1024, ".1f", 7), f"{_macs(row.get('macs')):>7}",
        ])
    else:
        metrics = " ".join(f"{'':>{w}}" for w in (7, 8, 7, 7, 8, 7, 7))
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
    if note:
        indent = " " * 8
        lines += [indent + n for n in ([note] if wide else textwrap.wrap(note, WIDTH - len(indent)))]
    return lines


def table_lines(rows: Sequence[Mapping[str, Any]], names: Sequence[str], *, mark_pareto: bool = True,
                wide: bool = False) -> list[str]:
    """The header, one block per trial, then the legend of the codes and flags used."""
    markers = FlagMarkers()
    lines = [HEADER]
    for row in rows:
        lines += trial_lines(row, names, markers, mark_pareto=mark_pareto, wide=wide)
    notes = [("* = on the frontier; " if mark_pareto else "") + "speedup = this trial's baseline latency, timed "
             "in the same run, / its latency; pack_KiB = the packed model file (export --format packed), art_KiB = "
             "the timed .onnx/TorchScript artifact"]
    notes.append(LEGEND)
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

