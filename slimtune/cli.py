"""The ``slimtune`` command: a thin layer over the Python API."""

from __future__ import annotations

import functools
import json
import sys
from typing import Any, Callable

import click

from slimtune.spaces.base import SpaceError
from slimtune.tasks.base import TaskError

DEFAULT_STORAGE = "sqlite:///slimtune.db"


class UserError(Exception):
    """Bad input: printed as one line, exit code 2."""


USER_ERRORS: tuple[type[BaseException], ...] = (SpaceError, TaskError, UserError)


def user_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn bad-input exceptions into one clear line and exit code 2 (no traceback)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except USER_ERRORS as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(2)

    return wrapper


def parse_assignments(items: tuple[str, ...], option: str = "--set") -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise UserError(f"`{option}` takes NAME=VALUE, but got {item!r}.")
        out[name.strip()] = value.strip()
    return out


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="slimtune")
def main() -> None:
    """Search a joint compression space (pruning, quantization, distillation, DS-conv,
    early exits) and show the accuracy-latency frontier."""


@main.command()
@click.option("--task", "task_spec", required=True, help="Built-in task (digits, fashion-mnist) or package.module:callable.")
@click.option("--fix", multiple=True, metavar="NAME=VALUE", help="Hold a parameter at a value (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@user_errors
def space(task_spec: str, fix: tuple[str, ...], as_json: bool) -> None:
    """The parameters of the joint space of a task's model, with their domains."""
    from slimtune.api import build_space
    from slimtune.tasks import get_task

    task = get_task(task_spec)
    sp = build_space(task, fixed=parse_assignments(fix, "--fix"))
    data = sp.to_dict()
    if as_json:
        echo_json({"task": task.name, **data})
        return
    click.echo(f"Joint space of task {task.name!r} ({len(sp.searched)} searched, {len(sp.fixed)} fixed):")
    for p in data["params"]:
        dom = f"[{p['low']}, {p['high']}]{' log' if p.get('log') else ''}" if "low" in p else "{" + ", ".join(map(str, p["choices"])) + "}"
        state = f"= {p['value']} (fixed)" if p["fixed"] else f"default {p['default']}"
        click.echo(f"  {p['name']:<28} {p['kind']:<12} {dom:<32} {state}")
    for family, reason in data.get("omitted", {}).items():
        click.echo(f"  no {family} knob: {reason}")


@main.command("eval")
@click.option("--task", "task_spec", required=True, help="Built-in task or package.module:callable.")
@click.option("--set", "sets", multiple=True, metavar="NAME=VALUE", help="A parameter value (repeatable); others take defaults.")
@click.option("--epochs", type=click.IntRange(min=0), default=None, help="Distillation epochs (default: the task's).")
@click.option("--runtime", type=click.Choice(["onnxruntime", "torch"]), default="onnxruntime", show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--no-cache", is_flag=True, help="Retrain the baseline instead of reading the cache (the cache is refreshed).")
@user_errors
def eval_(task_spec: str, sets: tuple[str, ...], epochs: int | None, runtime: str, threads: int, batch_size: int,
          seed: int, as_json: bool, no_cache: bool) -> None:
    """Build, train and measure one candidate; print its metrics beside the baseline's."""
    from slimtune.api import evaluate_one

    report = evaluate_one(task_spec, parse_assignments(sets), epochs=epochs, runtime=runtime, threads=threads,
                          batch_size=batch_size, seed=seed, progress=not as_json, use_cache=not no_cache)
    if as_json:
        echo_json(report)
        return
    base = report["baseline"]
    click.echo(f"task {report['task']}  runtime {runtime}  threads {threads}  batch {batch_size}")
    click.echo(f"{'':<14}{'candidate':>14}{'baseline':>14}")
    for key, fmt in (("accuracy", "{:.4f}"), ("latency_ms", "{:.4f}"), ("size_bytes", "{:,}"), ("macs", "{:,}")):
        click.echo(f"{key:<14}{fmt.format(report[key]):>14}{fmt.format(base[key]):>14}")
    if report.get("exit_rates"):
        click.echo("exit rates    " + ", ".join(f"{r:.2f}" for r in report["exit_rates"]))
    for flag in report.get("flags", []):
        click.echo(f"note: {flag}")



# -- studies: run / studies / show / select / export ------------------------------------
# (appended after the space/eval commands; the same `user_errors` turns bad input into
# one line and exit code 2)
from slimtune.search.backends.base import BackendError  # noqa: E402
from slimtune.studies.errors import NoCandidateError, StudyError  # noqa: E402

USER_ERRORS = (*USER_ERRORS, StudyError, BackendError)

storage_option = click.option(
    "--storage", default=DEFAULT_STORAGE, show_default=True, metavar="URL",
    help="Study database: any SQLAlchemy URL Optuna accepts (sqlite:///file.db, postgresql://...).",
)


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def _short_params(params: dict[str, Any], defaults: dict[str, Any]) -> str:
    """The parameters that differ from their defaults, compactly."""
    from slimtune.spaces.space import inactive_params

    parts = []
    inactive = inactive_params(params)
    for name, value in params.items():
        if name in inactive or defaults.get(name, object()) == value:
            continue
        shown = f"{value:.3g}" if isinstance(value, float) else str(value)
        parts.append(f"{name}={shown}")
    return " ".join(parts) or "(defaults)"


def _echo_table(rows: list[dict[str, Any]], study: Any, *, mark_pareto: bool = True) -> None:
    defaults = {p["name"]: p["default"] for p in study.space_dict.get("params", [])}
    click.echo(f"{'trial':>5} {'state':<9}{'accuracy':>9} {'latency_ms':>11} {'size_KiB':>9} {'MACs':>11}  params")
    for r in rows:
        star = "*" if (mark_pareto and r.get("pareto")) else " "
        if r["state"] == "COMPLETE":
            metrics = (f"{r['accuracy']:>9.4f} {r['latency_ms']:>11.4f} {r['size_bytes'] / 1024:>9.1f} "
                       f"{r['macs']:>11,}")
        else:
            metrics = f"{'':>9} {'':>11} {'':>9} {'':>11}"
        click.echo(f"{r['trial']:>4}{star} {r['state']:<9}{metrics}  {_short_params(r['params'], defaults)}")
        if r["state"] == "PRUNED" and r.get("stopped_reason"):
            click.echo(f"{'':>16}{r['stopped_reason']}")
        elif r["state"] == "FAIL" and r.get("error"):
            click.echo(f"{'':>16}{r['error'].splitlines()[-1][:160]}")


def _echo_summary(study: Any) -> None:
    rows = study.trials()
    counts = {s: sum(1 for r in rows if r["state"] == s) for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")}
    base = study.baseline
    click.echo(f"Study {study.name!r} in {study.storage}: task {study.task_name}, objectives "
               f"{', '.join(study.objectives)}; {len(rows)} trials ({counts['COMPLETE']} complete, "
               f"{counts['PRUNED']} stopped early, {counts['FAIL']} failed"
               + (f", {counts['RUNNING']} running" if counts["RUNNING"] else "") + ")")
    click.echo(f"Baseline: {getattr(study, 'metric_name', 'accuracy')} {base.accuracy:.4f}, latency {base.latency_ms:.4f} ms ({base.runtime}, "
               f"{base.threads} thread(s), batch {base.batch_size}), {base.size_bytes / 1024:.1f} KiB, {base.macs:,} MACs")
    if study.constraints.active:
        click.echo(f"Constraints: {study.constraints.to_dict()}")
    fingerprints = study.fingerprints()
    if len(fingerprints) > 1:
        click.echo(f"note: latencies come from {len(fingerprints)} machine fingerprints ({', '.join(fingerprints)}); "
                   "they are not comparable across machines.")


def _echo_frontier(study: Any) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the mixed-fingerprint note is printed by _echo_summary
        front = study.frontier()
    complete = len(study.trials(states=("COMPLETE",)))
    click.echo(f"Frontier: {len(front)} of {complete} complete trials (* = on the frontier)")
    if front:
        _echo_table(front, study)


@main.command()
@click.option("--study", "study_name", required=True, help="Study name (created, or resumed if it exists).")
@click.option("--task", "task_spec", default=None, help="Built-in task or package.module:callable (needed to create; checked on resume).")
@click.option("--trials", "n_trials", type=click.IntRange(min=1), default=None, help="Trials to run now.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None, help="No new trial after this many seconds.")
@click.option("--objectives", default=None, help="accuracy plus latency_ms, size_bytes and/or macs, comma-separated [default: accuracy,latency_ms].")
@click.option("--sampler", type=click.Choice(["gp", "tpe", "nsga2", "random"]), default=None, help="Optuna sampler [default: gp].")
@click.option("--backend", type=click.Choice(["optuna", "nni"]), default="optuna", show_default=True)
@click.option("--tuner", default=None, help="NNI tuner, with --backend nni: TPE, Random, Evolution or GridSearch [default: TPE].")
@click.option("--scalarize", default=None, metavar="TERMS",
              help="What the NNI tuner maximizes, with --backend nni: comma-separated COST*WEIGHT, COST<=BUDGET, "
                   "penalty=P, e.g. 'latency_ms*0.05' or 'latency_ms<=2,penalty=2' "
                   "[default: accuracy - 0.05*log2(first cost objective)].")
@click.option("--seed", type=int, default=None, help="Sampler seed (reproducible proposals).")
@click.option("--max-latency-ms", type=float, default=None, help="Constraint: latency at most this.")
@click.option("--max-size-kb", type=float, default=None, help="Constraint: size at most this many KiB.")
@click.option("--max-accuracy-drop", type=float, default=None, help="Constraint: accuracy at least the baseline's minus this (e.g. 0.01).")
@click.option("--early-stopping/--no-early-stopping", default=None, help="Stop candidates a no-costlier trial clearly beats [default: on].")
@click.option("--epochs", type=click.IntRange(min=0), default=None, help="Distillation epochs per candidate (default: the task's).")
@click.option("--runtime", type=click.Choice(["onnxruntime", "torch"]), default=None, help="Runtime that is timed [default: onnxruntime].")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Inference threads [default: 1].")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Timed batch size [default: 1].")
@click.option("--latency-repeats", type=click.IntRange(min=1), default=None, help="Timed repeats per candidate [default: 100].")
@click.option("--fix", multiple=True, metavar="NAME=VALUE", help="Hold a parameter at a value (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the frontier as JSON (no progress bar).")
@click.option("--no-cache", is_flag=True, help="Retrain the baseline instead of reading the cache (the cache is refreshed).")
@storage_option
@user_errors
def run(study_name: str, task_spec: str | None, n_trials: int | None, timeout: float | None, objectives: str | None,
        sampler: str | None, backend: str, tuner: str | None, scalarize: str | None, seed: int | None,
        max_latency_ms: float | None, max_size_kb: float | None,
        max_accuracy_drop: float | None, early_stopping: bool | None, epochs: int | None, runtime: str | None,
        threads: int | None, batch_size: int | None, latency_repeats: int | None, fix: tuple[str, ...], as_json: bool,
        no_cache: bool, storage: str) -> None:
    """Create or resume a study, run trials (progress bar with ETA), print the frontier.

    Every worker that runs this with the same --study and --storage joins the same study.
    """
    from slimtune.studies import Study

    if n_trials is None and timeout is None:
        raise UserError("Give --trials N and/or --timeout SECONDS.")
    nni_options = {k: v for k, v in (("tuner", tuner), ("scalarization", scalarize)) if v is not None}
    if nni_options and backend != "nni":
        raise UserError("--tuner and --scalarize set up the NNI backend: add --backend nni.")
    if backend == "nni":
        from slimtune.search.backends import get_backend

        get_backend("nni").check_options(**nni_options)  # before a study is created
    _quiet_optuna()
    settings = {k: v for k, v in {"epochs": epochs, "runtime": runtime, "threads": threads, "batch_size": batch_size,
                                  "latency_repeats": latency_repeats}.items() if v is not None}
    study = Study.create_or_load(
        study_name, storage=storage, task=task_spec, fixed=parse_assignments(fix, "--fix") or None, objectives=objectives,
        max_latency_ms=max_latency_ms, max_size_kb=max_size_kb, max_accuracy_drop=max_accuracy_drop,
        settings=settings or None, seed=seed, sampler=sampler, early_stopping=early_stopping, progress=not as_json,
        use_cache=not no_cache,
    )
    try:
        before = len(study.trials())
        if not as_json:
            click.echo(f"Study {study.name!r} ({study.storage}): {before} earlier trials; running "
                       + (f"{n_trials} trials" if n_trials else "") + (" " if n_trials and timeout else "")
                       + (f"for at most {timeout:g} s" if timeout else "") + ".")
        try:
            study.optimize(n_trials=n_trials, timeout=timeout, backend=backend, progress=not as_json, **nni_options)
        except KeyboardInterrupt:
            click.echo(f"\nInterrupted: the running trial is recorded as failed; the study keeps its other trials.", err=True)
            sys.exit(130)
        if as_json:
            echo_json(study.frontier())
            return
        _echo_summary(study)
        _echo_frontier(study)
    finally:
        study.close()


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@storage_option
@user_errors
def studies(as_json: bool, storage: str) -> None:
    """List the studies in a database."""
    from slimtune.studies import list_studies, mask_url

    _quiet_optuna()
    rows = list_studies(storage)
    if as_json:
        echo_json(rows)
        return
    if not rows:
        click.echo(f"No studies in {mask_url(storage)}.")
        return
    click.echo(f"{'study':<24} {'task':<16} {'objectives':<22} {'trials':>6} {'complete':>8} {'stopped':>7} {'failed':>6}  created")
    for r in rows:
        click.echo(f"{r['name']:<24} {r['task']:<16} {','.join(r['objectives']):<22} {r['trials']:>6} {r['complete']:>8} "
                   f"{r['pruned']:>7} {r['failed']:>6}  {r['created_at']}")


@main.command()
@click.argument("study_name", metavar="STUDY")
@click.option("--pareto", is_flag=True, help="Only the frontier.")
@click.option("--json", "as_json", is_flag=True, help="Print the trial rows as JSON.")
@storage_option
@user_errors
def show(study_name: str, pareto: bool, as_json: bool, storage: str) -> None:
    """A study's trials (* marks the frontier)."""
    import warnings

    from slimtune.studies import Study

    _quiet_optuna()
    study = Study.load(study_name, storage=storage)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # mixed fingerprints: noted in the summary
            rows = study.frontier() if pareto else study.trials()
        if as_json:
            echo_json({"study": study.name, "objectives": list(study.objectives), "baseline": study.baseline_row(rows),
                       "trials": rows})
            return
        _echo_summary(study)
        if pareto:
            _echo_frontier(study)
        else:
            _echo_table(rows, study)
    finally:
        study.close()


@main.command("select")
@click.argument("study_name", metavar="STUDY")
@click.option("--max-latency-ms", type=float, default=None, help="Latency at most this.")
@click.option("--min-accuracy", type=float, default=None, help="Validation accuracy (or --split test) at least this.")
@click.option("--split", type=click.Choice(["val", "test"]), default="val", show_default=True,
              help="Which accuracy ranks and --min-accuracy apply to: validation (what the search optimized) or test.")
@click.option("--max-size-kb", type=float, default=None, help="Size at most this many KiB.")
@click.option("--json", "as_json", is_flag=True, help="Print the chosen trial's row as JSON.")
@storage_option
@user_errors
def select_(study_name: str, max_latency_ms: float | None, min_accuracy: float | None, split: str,
            max_size_kb: float | None, as_json: bool, storage: str) -> None:
    """The most accurate complete trial within the limits (ties: lower latency),
    ranked by validation accuracy unless --split test; never one the baseline beats.

    Exit code 1 when no trial fits (the message names the closest ones).
    """
    from slimtune.studies import Study

    if max_latency_ms is None and min_accuracy is None and max_size_kb is None:
        raise UserError("Give at least one of --max-latency-ms, --min-accuracy, --max-size-kb.")
    _quiet_optuna()
    study = Study.load(study_name, storage=storage)
    try:
        try:
            cand = study.select(max_latency_ms=max_latency_ms, min_accuracy=min_accuracy, max_size_kb=max_size_kb,
                                split=split)
        except NoCandidateError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(1)
        if as_json:
            echo_json({**cand.to_dict(), "ranked_by": f"{split}_accuracy"})
            return
        r = cand.row
        test = f"{r['test_accuracy']:.4f}" if r.get("test_accuracy") is not None else "n/a"
        speedup = f", {r['speedup']:.2f}x the baseline timed in the same run" if r.get("speedup") else ""
        click.echo(f"trial {r['trial']} (ranked by {'validation' if split == 'val' else 'test'} accuracy): "
                   f"val accuracy {r['accuracy']:.4f}, test accuracy {test}, latency {r['latency_ms']:.4f} ms{speedup}, "
                   f"{r['size_bytes'] / 1024:.1f} KiB, {r['macs']:,} MACs")
        defaults = {p["name"]: p["default"] for p in study.space_dict.get("params", [])}
        click.echo(f"params: {_short_params(r['params'], defaults)}")
        click.echo(f"export: slimtune export {study.name} --trial {r['trial']} --out model.onnx --storage '{study.storage}'")
    finally:
        study.close()


@main.command()
@click.argument("study_name", metavar="STUDY")
@click.option("--trial", "trial", type=int, required=True, help="Trial number (a complete trial).")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), help="File to write.")
@click.option("--format", "fmt", type=click.Choice(["onnx", "torchscript"]), default=None,
              help="Default: the format the trial was timed in (what was measured).")
@storage_option
@user_errors
def export(study_name: str, trial: int, out: str, fmt: str | None, storage: str) -> None:
    """Write a trial's model: by default exactly the artifact that was timed."""
    from slimtune.studies import Study

    _quiet_optuna()
    import warnings

    study = Study.load(study_name, storage=storage)
    try:
        cand = study.candidate(trial)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            path = cand.export(out, format=fmt)
        for w in caught:
            if issubclass(w.category, UserWarning):
                click.echo(f"note: {w.message}", err=True)
        size = path.stat().st_size
        click.echo(f"Wrote {path} ({fmt or cand.artifact()[1]}, {size:,} bytes): trial {trial}, accuracy "
                   f"{cand.accuracy:.4f}, latency {cand.latency_ms:.4f} ms")
    finally:
        study.close()


@main.group()
def cache() -> None:
    """The cache of trained baselines (SLIMTUNE_CACHE_DIR, default ~/.cache/slimtune)."""


@cache.command("clear")
@user_errors
def cache_clear() -> None:
    """Delete every cached baseline (the next run retrains)."""
    from slimtune.search.baseline import cache_dir, clear_cache

    removed = clear_cache()
    click.echo(f"Removed {removed} cached baseline(s) from {cache_dir()}.")


if __name__ == "__main__":  # pragma: no cover
    main()
