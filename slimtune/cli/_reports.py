"""What the ``slimtune`` command prints: study summaries, the frontier table, the
commands to run next, one candidate beside its baseline, the study list, the chosen
trial, one line per finished trial of a worker.
"""

from __future__ import annotations

import functools
import json
import shlex
from typing import Any

import click

from slimtune._cli_tables import (
    WIDTH,
    compact_params,
    metric_labels,
    speedup,
    table_lines,
    test_accuracy,
    val_accuracy,
)
from slimtune._defaults import DEFAULT_STORAGE, STORAGE_ENV
from slimtune._dominance import relative_latency
from slimtune._vocabulary import STATE_WORDS, STUDY_COLUMNS, created_text
from slimtune.search._fidelity import fidelity_label, is_training_free


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def param_names(study: Any) -> list[str]:
    return [p["name"] for p in study.space_dict.get("params", [])]


def echo_table(rows: list[dict[str, Any]], study: Any, *, mark_pareto: bool = True, wide: bool = False) -> None:
    for line in table_lines(rows, param_names(study), mark_pareto=mark_pareto, wide=wide,
                            metric=getattr(study, "metric_name", "accuracy")):
        click.echo(line)


def artifact_kib(row: dict[str, Any]) -> str:
    """``, artifact 12.3 KiB`` when the timed artifact's length is known."""
    return f", artifact {row['artifact_bytes'] / 1024:.1f} KiB" if row.get("artifact_bytes") else ""


def echo_wrapped(text: str, *, wide: bool = False) -> None:
    """One logical line, wrapped to the table width unless ``wide``."""
    import textwrap

    for line in [text] if wide else textwrap.wrap(text, WIDTH, subsequent_indent="  ", break_on_hyphens=False):
        click.echo(line)


def echo_summary(study: Any, overview: Any, *, wide: bool = False, study_line: bool = True) -> None:
    """The study in a few lines: its trials by state, the baseline, the constraints, a
    note when latencies come from several machines (``overview``: ``study.overview()``,
    or ``Overview.of_rows`` of rows already read); without ``study_line`` from the
    baseline on (the next target of a study timed on several)."""
    echo = functools.partial(echo_wrapped, wide=wide)
    counts, rejected = overview.counts, overview.rejected  # the rejected are not counted in --trials
    free = overview.training_free  # nor the training-free ones (rung 0)
    base = study.baseline
    if study_line:
        echo(f"Study {study.name!r} in {study.storage}: task {study.task_name}, objectives "
               f"{', '.join(study.objectives)}; "
               + (f"{free} training-free (rung 0, measured without training, not counted in --trials), " if free else "")
               + f"{len(overview.points) - rejected - free} trials trained ({counts['COMPLETE'] - free} "
               f"complete, {counts['PRUNED'] - rejected} {STATE_WORDS['PRUNED']} early, {counts['FAIL']} failed"
               + (f", {counts['RUNNING']} running" if counts["RUNNING"] else "") + f"), {rejected} rejected before "
               "training by early stopping")
        if len(targets := getattr(study, "targets", ())) > 1:
            echo(f"Targets: {', '.join(t.key for t in targets)}; each trial timed on every one, beside the baseline "
                 f"timed there in the same run; {targets[0].key} drove the search")
    echo_target_header(study)
    base_row = base.to_dict()
    test = test_accuracy(base_row)
    metric = getattr(study, "metric_name", "accuracy")
    names = metric_labels(metric)
    echo(f"Baseline: {names[0]} {val_accuracy(base_row):.4f}" + (f", {names[1]} {test:.4f}" if test is not None else "")
         + f", latency {base.latency_ms:.4f} ms ({base.runtime}, {base.threads} thread(s), batch "
         f"{base.batch_size}), packed {base.size_bytes / 1024:.1f} KiB{artifact_kib(base_row)}, {base.macs:,} MACs")
    echo(target_line(base.target()))
    if study.constraints.active:
        echo(f"Constraints: {study.constraints.to_dict()}")
    fingerprints = overview.fingerprints()
    if len(fingerprints) > 1:
        echo(f"note: latencies come from {len(fingerprints)} machine fingerprints ({', '.join(fingerprints)}); "
                   "they are not comparable across machines.")


def target_line(target: dict[str, Any] | None) -> str:
    """``Target: openvino, batch 8, 1 thread; precision as the runtime chose it: bf16 for
    the baseline (...)``: what every latency of the study was timed on."""
    if not target:
        return "Target: not recorded"
    threads = int(target.get("threads") or 1)
    return (f"Target: {target['runtime']}, batch {target['batch_size']}, {threads} thread{'s' if threads != 1 else ''}"
            f"; precision as the runtime chose it: {target.get('precision') or '?'} for the baseline (each "
            "trial's in show --json)")


def echo_frontier(study: Any, overview: Any, front: list[dict[str, Any]], *, wide: bool = False) -> None:
    """``Frontier: n of m complete trials`` and the ``front``'s table."""
    click.echo(f"Frontier: {len(front)} of {len(overview.complete)} complete trials")
    if front:
        echo_table(front, study, wide=wide)


def target_views(study: Any, target: str | None = None) -> list[Any]:
    """The study read on each of its targets (``study.on_target``), the first first;
    only the one ``target`` names when given."""
    targets = getattr(study, "targets", None)
    if target is not None:
        return [study.on_target(target)]
    if not targets or len(targets) == 1:
        return [study]
    return [study.on_target(t) for t in targets]


def echo_target_header(view: Any) -> None:
    """``On onnxruntime:1@1 (target 1 of 2, drove the search):`` for a study timed on
    several targets (``view``: the study, or it read on one target)."""
    targets = getattr(view, "targets", None) or ()
    if len(targets) < 2:
        return
    target = getattr(view, "target", None) or targets[0]
    k = [t.key for t in targets].index(target.key)
    click.echo(f"On {target.key} (target {k + 1} of {len(targets)}, "
               + ("drove the search" if k == 0 else "timed beside the first") + "):")


def echo_report(study: Any, *, wide: bool = False) -> None:
    """What ``run`` and ``refit`` print at the end: the summary, the frontier (one per
    target of a study timed on several) and the commands to run next."""
    fronts = []
    for k, view in enumerate(target_views(study)):
        overview = view.overview()
        fronts.append(overview.front())
        echo_summary(view, overview, wide=wide, study_line=k == 0)
        echo_frontier(view, overview, fronts[-1], wide=wide)
    click.echo("Next:")
    for line in next_steps(study, fronts[0]):  # the first target's: the one the search drove
        click.echo(f"  {line}")


#: What a printed command says in place of a storage URL that holds a password.
STORAGE_PLACEHOLDER = f'"${STORAGE_ENV}"'


def storage_words(storage: str | None = None) -> list[str]:
    """The ``--storage`` words of a command printed for the user to run: none when the
    URL is the default or came from ``$SLIMTUNE_STORAGE`` (the printed command would
    override the environment); ``--storage "$SLIMTUNE_STORAGE"`` when it holds a
    password (never printed: a masked one would not run); else the URL.  ``storage``
    defaults to the running command's ``--storage``."""
    import os

    from click.core import ParameterSource

    from slimtune._urls import has_credentials

    ctx = click.get_current_context(silent=True)
    if storage is None:
        storage = ctx.params.get("storage") if ctx is not None else None
        if ctx is not None and ctx.get_parameter_source("storage") in (ParameterSource.ENVIRONMENT,
                                                                          ParameterSource.DEFAULT):
            return []
    if not storage or storage == DEFAULT_STORAGE or storage == os.environ.get(STORAGE_ENV, "").strip():
        return []
    if has_credentials(storage):
        return ["--storage", STORAGE_PLACEHOLDER]
    return ["--storage", shlex.quote(storage)]


def storage_note(words: list[str]) -> str | None:
    """The line that says how to fill in :data:`STORAGE_PLACEHOLDER`, when it is used."""
    if STORAGE_PLACEHOLDER in words:
        return (f"(the storage URL holds a password, so it is not printed: `export {STORAGE_ENV}=URL` first, "
                "or give it to --storage)")
    return None


def next_steps(study: Any, front: list[dict[str, Any]]) -> list[str]:
    """The commands a user runs next, filled in with this study's name, storage and
    ``front`` (``study.frontier()``)."""
    name = shlex.quote(study.name)
    words = storage_words() if click.get_current_context(silent=True) is not None else (
        [] if study.storage == DEFAULT_STORAGE else ["--storage", shlex.quote(study.storage)])
    storage = "".join(f" {w}" for w in words)
    note = storage_note(words)
    lines = [note] if note else []
    lines.append(f"slimtune show {name} --pareto{storage}")
    if front:
        base = study.baseline
        fast = min(front, key=relative_latency)  # the fastest in its own run; the budget is its ms
        budget = max(fast["latency_ms"], min(base.latency_ms, max(r["latency_ms"] for r in front)))
        # 4 significant digits, rounded up (x1.001 outweighs the rounding) so the trial it names fits
        lines.append(f"slimtune select {name} --max-latency-ms {budget * 1.001:.4g}{storage}")
        best = max(front, key=lambda r: (val_accuracy(r) or 0.0, -relative_latency(r)))
        lines.append(f"slimtune export {name} --trial {best['trial']} --out {_file_name(study.name)}.onnx{storage}")
    return lines


def _file_name(name: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in name).strip("-")
    return safe or "model"


def trial_line(row: dict[str, Any]) -> str:
    """The line of a finished trial (workers of ``run --workers`` and Ray tasks print it)."""
    if row["state"] == "COMPLETE":
        detail = f"accuracy {row['accuracy']:.4f}, latency {row['latency_ms']:.4g} ms"
        if fidelity_label(row) != "full":
            detail += f" ({fidelity_label(row)})"
    else:
        detail = (row.get("stopped_reason") or row.get("error") or "").splitlines()[-1:] or [""]
        detail = detail[0][:120]
    return f"trial {row['trial']} {row['state']}: {detail}"


def echo_trial_line(row: dict[str, Any]) -> None:
    """One line per finished trial (the workers of ``run --workers``)."""
    click.echo(trial_line(row), nl=True)


def export_line(study_name: str, trial: int, storage: str | None = None, target: str | None = None) -> str:
    """A copy-paste ``slimtune export`` command with every word shell-quoted (a study
    name never turns it into another command); the storage as :func:`storage_words`
    gives it (left out when it comes from ``$SLIMTUNE_STORAGE``, never a password)."""
    words = " ".join(shlex.quote(w) for w in ["slimtune", "export", study_name, "--trial", str(trial),
                                               *(["--target", target] if target else []), "--out", "model.onnx"])
    return " ".join([words, *storage_words(storage)])


def echo_evaluation(report: dict[str, Any], *, runtime: str, threads: int, batch_size: int) -> None:
    """``slimtune eval``'s table: the candidate's metrics beside the baseline's."""
    base = report["baseline"]
    click.echo(f"task {report['task']}  runtime {runtime}  threads {threads}  batch {batch_size}  "
               f"({report['total_seconds']:.1f} s for the candidate)")
    click.echo(f"params: {compact_params(report['params'])}")
    click.echo(f"{'':<14}{'candidate':>14}{'baseline':>14}")
    val_label, test_label = metric_labels(report.get("metric", "accuracy"))
    rows = ((val_label, val_accuracy(report), val_accuracy(base), "{:.4f}"),
            (test_label, test_accuracy(report), test_accuracy(base), "{:.4f}"),
            ("latency_ms", report["latency_ms"], base["latency_ms"], "{:.4f}"),
            ("packed_KiB", report["size_bytes"] / 1024, base["size_bytes"] / 1024, "{:.1f}"),
            ("artifact_KiB", (report.get("artifact_bytes") or 0) / 1024 or None,
             (base.get("artifact_bytes") or 0) / 1024 or None, "{:.1f}"),
            ("MACs", report["macs"], base["macs"], "{:,}"),
            ("precision", (report.get("target") or {}).get("precision"), (base.get("target") or {}).get("precision"),
             "{}"))  # as the runtime chose it (e.g. OpenVINO's bf16)
    for key, ours, theirs, fmt in rows:
        if ours is None and theirs is None:
            continue
        click.echo(f"{key:<14}{'-' if ours is None else fmt.format(ours):>14}"
                   f"{'-' if theirs is None else fmt.format(theirs):>14}")
    ratio = speedup(report)
    if ratio is not None:
        click.echo(f"speedup       {ratio:.2f}x (the baseline timed in the same run / the candidate)")
    if report.get("exit_rates"):
        click.echo("exit rates    " + ", ".join(f"{r:.2f}" for r in report["exit_rates"]))
    for flag in report.get("flags", []):
        click.echo(f"note: {flag}")


def echo_study_list(rows: list[dict[str, Any]]) -> None:
    """``slimtune studies``' table, one study a line."""
    c = STUDY_COLUMNS
    click.echo(f"{c['name']:<24} {c['task']:<16} {c['objectives']:<22} {c['trials']:>6} {c['complete']:>8} "
               f"{c['pruned']:>7} {c['failed']:>6}  {c['created_at']}")
    for r in rows:
        click.echo(f"{r['name']:<24} {r['task']:<16} {','.join(r['objectives']):<22} {r['trials']:>6} {r['complete']:>8} "
                   f"{r['pruned']:>7} {r['failed']:>6}  {created_text(r['created_at'])}")


def echo_selected(row: dict[str, Any], study: Any, *, split: str, storage: str) -> None:
    """``slimtune select``'s answer: the chosen trial, its parameters, how to export it."""
    test = test_accuracy(row)
    ratio = speedup(row)
    metric = getattr(study, "metric_name", "accuracy")
    val_label, test_label = metric_labels(metric)
    click.echo(f"trial {row['trial']} (ranked by {'validation' if split == 'val' else 'test'} {metric}): "
               f"{val_label} {val_accuracy(row):.4f}" + (f", {test_label} {test:.4f}" if test is not None else "")
               + f", latency {row['latency_ms']:.4f} ms"
               + (f" ({ratio:.2f}x the baseline timed in the same run)" if ratio else "")
               + f", packed {row['size_bytes'] / 1024:.1f} KiB{artifact_kib(row)}, {row['macs']:,} MACs")
    click.echo(f"params: {compact_params(row['params'], param_names(study))}")
    click.echo(f"fidelity: {fidelity_label(row)}" + (" (not trained: calibrated only)" if is_training_free(row) else "")
               + "; select chooses among full-fidelity and training-free results")
    target = getattr(study, "target", None)  # a study read on one of its other targets
    line = export_line(study.name, row["trial"], target=target.key if target is not None else None)
    click.echo(f"export: {line}")
    note = storage_note(line.split())
    if note:
        click.echo(f"  {note}")
