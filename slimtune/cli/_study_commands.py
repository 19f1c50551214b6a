"""The ``slimtune`` commands that read studies: ``studies`` (the list), ``show`` (a
study's trials), ``select`` (the best trial within limits), ``export`` (a trial's model)
and ``cache`` (the trained baselines).  They start without torch.
"""

from __future__ import annotations

import sys

import click

from slimtune._cli_tables import metric_labels, val_accuracy
from slimtune._names import quoted
from slimtune.cli._main import main, quiet_optuna
from slimtune.cli._options import FRACTION, POSITIVE, storage_option, target_option, task_option, wide_option
from slimtune.cli._reports import (echo_frontier, echo_json, echo_selected, echo_study_list, echo_summary, echo_table,
                                   target_views)
from slimtune.cli._user_errors import UserError, user_errors


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@storage_option
@user_errors
def studies(as_json: bool, storage: str) -> None:
    """List the studies in a database."""
    from slimtune.studies import list_studies, mask_url

    quiet_optuna()
    rows = list_studies(storage)
    if as_json:
        echo_json(rows)
        return
    if not rows:
        click.echo(f"No studies in {mask_url(storage)}.")
        return
    echo_study_list(rows)


@main.command()
@click.argument("study_name", metavar="STUDY")
@click.option("--pareto", is_flag=True, help="Only the frontier.")
@click.option("--json", "as_json", is_flag=True, help="Print the trial rows as JSON.")
@target_option
@wide_option
@storage_option
@user_errors
def show(study_name: str, pareto: bool, as_json: bool, target: str | None, wide: bool, storage: str) -> None:
    """A study's trials (* marks the frontier); a study timed on several targets: one
    table (front) per target, or the one --target names."""
    import warnings

    from slimtune.studies import Study
    from slimtune.studies._overview import Overview

    quiet_optuna()
    study = Study.load(study_name, storage=storage)
    try:
        views = target_views(study, target)
        if as_json:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # mixed fingerprints: noted in the summary
                shown = [_json_of(view, pareto) for view in views]
            several = len(study.targets) > 1
            echo_json({"study": study.name, "objectives": list(study.objectives), **shown[0],
                       **({"targets": shown} if several and target is None else {})})
            return
        for k, view in enumerate(views):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # mixed fingerprints: noted in the summary
                # --pareto: every trial's figures, the front's rows in full; else every row in full, read once
                overview = view.overview() if pareto else Overview.of_rows(view, view.trials())
            echo_summary(view, overview, wide=wide, study_line=k == 0)
            if pareto:
                echo_frontier(view, overview, overview.front(), wide=wide)
            else:
                echo_table(overview.points, view, wide=wide)
    finally:
        study.close()


def _json_of(view, pareto: bool) -> dict:
    """``show --json``'s fields of the study read on one target."""
    rows = view.frontier() if pareto else view.trials()
    target = getattr(view, "target", None) or view.targets[0]
    return {"target": target.key, "baseline": view.baseline_row(rows), "trials": rows}


@main.command("select")
@click.argument("study_name", metavar="STUDY")
@click.option("--max-latency-ms", type=POSITIVE, default=None, help="Latency at most this.")
@click.option("--min-accuracy", type=FRACTION, default=None, help="Validation accuracy (or --split test) at least this.")
@click.option("--split", type=click.Choice(["val", "test"]), default="val", show_default=True,
              help="Which accuracy ranks and --min-accuracy apply to: validation (what the search optimized) or test.")
@click.option("--max-size-kb", type=POSITIVE, default=None,
              help="Packed model file (size_bytes, export --format packed) at most this many KiB (1024 B).")
@click.option("--max-artifact-kb", type=POSITIVE, default=None,
              help="Timed artifact (artifact_bytes: the .onnx/TorchScript file the runtime loads) at most this many KiB.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the chosen trial's row as JSON, with `metadata`: how to feed its exported model.")
@target_option
@task_option
@storage_option
@user_errors
def select_(study_name: str, max_latency_ms: float | None, min_accuracy: float | None, split: str,
            max_size_kb: float | None, max_artifact_kb: float | None, as_json: bool, target: str | None,
            task_spec: str | None, storage: str) -> None:
    """The most accurate complete trial within the limits (ties: lower latency),
    ranked by validation accuracy unless --split test; never one the baseline beats.
    A study timed on several targets: on the first target's figures, or --target's
    (its artifact's accuracy, its latency beside the baseline timed there).

    Exit code 1 when no trial fits (the message names the closest ones).
    """
    from slimtune.studies import NoCandidateError, Study

    if max_latency_ms is None and min_accuracy is None and max_size_kb is None and max_artifact_kb is None:
        raise UserError("Give at least one of --max-latency-ms, --min-accuracy, --max-size-kb, --max-artifact-kb.")
    quiet_optuna()
    study = Study.load(study_name, storage=storage, task=task_spec)  # --json's TorchScript input: the task
    try:
        try:
            cand = study.select(max_latency_ms=max_latency_ms, min_accuracy=min_accuracy, max_size_kb=max_size_kb,
                                max_artifact_kb=max_artifact_kb, split=split, target=target)
        except NoCandidateError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(1)
        if as_json:
            echo_json({**cand.to_dict(), "ranked_by": f"{split}_accuracy", "metadata": cand.metadata()})
            return
        echo_selected(cand.row, cand.study, split=split, storage=storage)
    finally:
        study.close()


@main.command()
@click.argument("study_name", metavar="STUDY")
@click.option("--trial", "trial", type=int, required=True, help="Trial number (a complete trial).")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False),
              help="File to write; its extension sets the format (.onnx; .pt, .ts, .torchscript; .slim).")
@click.option("--format", "fmt", type=click.Choice(["onnx", "torchscript", "packed"]), default=None,
              help="Default: the one --out's extension means, else the format the trial was timed in (what was "
                   "measured). 'packed': that same artifact as a packed model file (.slim), size_bytes long; read it "
                   "with slimtune.search.packed.load_packed.")
@target_option
@task_option
@storage_option
@user_errors
def export(study_name: str, trial: int, out: str, fmt: str | None, target: str | None, task_spec: str | None,
           storage: str) -> None:
    """Write a trial's model: by default exactly the artifact that was timed (on --target's
    runtime for a study timed on several targets); ONNX files carry how to feed them in
    their metadata (input, preprocessing, classes, params)."""
    import warnings

    from slimtune.studies import Study
    from slimtune.search._export import format_for_path

    fmt = format_for_path(out, fmt)  # a mismatched extension is refused before anything is read
    quiet_optuna()
    study = Study.load(study_name, storage=storage, task=task_spec)
    try:
        cand = study.candidate(trial, target=target)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            path = cand.export(out, format=fmt)
        for w in caught:
            if issubclass(w.category, UserWarning):
                click.echo(f"note: {w.message}", err=True)
        size = path.stat().st_size
        shown = fmt or ("packed" if path.suffix == ".slim" else cand.artifact()[1])
        click.echo(f"Wrote {path} ({shown}, {size:,} bytes): trial {trial}, "
                   f"{metric_labels(getattr(study, 'metric_name', 'accuracy'))[0]} "
                   f"{val_accuracy(cand.row):.4f}, latency {cand.latency_ms:.4f} ms"
                   + (f" on {cand.study.target.key}" if getattr(cand.study, "target", None) else ""))
    finally:
        study.close()


@main.group()
def cache() -> None:
    """The trained baselines kept in $SLIMTUNE_CACHE_DIR/baselines (default
    ~/.cache/slimtune/baselines): one file per task and seed, reused by run and eval."""


@cache.command("list")
@click.option("--task", default=None, help="Only this task's baselines.")
def cache_list(task: str | None) -> None:
    """The cached baselines, with their size and date."""
    from slimtune.search._baseline_cache import baselines_dir, cached_baselines

    items = cached_baselines(task)
    click.echo(f"Baseline cache: {baselines_dir()} ({len(items)} file{'s' if len(items) != 1 else ''}, "
               f"{sum(i.size_bytes for i in items) / 1024:.1f} KiB)")
    for i in items:
        click.echo(f"  {i.task:<16} seed {i.seed:<4} {i.size_bytes / 1024:>9.1f} KiB  "
                   f"{i.modified:%Y-%m-%d %H:%M} UTC  {i.name}")


@cache.command("clear")
@click.option("--task", default=None, help="Only this task's baselines.")
def cache_clear(task: str | None) -> None:
    """Delete the cached baselines; the next run or eval retrains them."""
    from slimtune.search._baseline_cache import baselines_dir, cached_baselines, clear_baselines

    removed = clear_baselines(task)
    if removed or task is None:
        why = "" if removed else " (the cache is empty)"
        click.echo(f"Removed {len(removed)} cached baseline{'s' if len(removed) != 1 else ''} from "
                   f"{baselines_dir()}{why}.")
        return
    cached = sorted({i.task for i in cached_baselines()})
    held = f"it holds baselines of {', '.join(map(repr, cached))}" if cached else "it is empty"
    click.echo(f"Removed nothing from {baselines_dir()}: no cached baseline of task {quoted(task)} ({held}); "
               "--task takes one task name as `slimtune cache list` shows it, not a pattern.")
