"""The ``slimtune`` command: a thin layer over the Python API."""

from __future__ import annotations

import contextlib
import functools
import json
import sys
from typing import Any, Callable, Iterator

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


@main.command("eval")
@click.option("--task", "task_spec", required=True, help="Built-in task or package.module:callable.")
@click.option("--set", "sets", multiple=True, metavar="NAME=VALUE", help="A parameter value (repeatable); others take defaults.")
@click.option("--epochs", type=click.IntRange(min=0), default=None, help="Distillation epochs (default: the task's).")
@click.option("--runtime", type=click.Choice(["onnxruntime", "torch"]), default="onnxruntime", show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@user_errors
def eval_(task_spec: str, sets: tuple[str, ...], epochs: int | None, runtime: str, threads: int, batch_size: int,
          seed: int, as_json: bool) -> None:
    """Build, train and measure one candidate; print its metrics beside the baseline's."""
    from slimtune.api import evaluate_one

    report = evaluate_one(task_spec, parse_assignments(sets), epochs=epochs, runtime=runtime, threads=threads,
                          batch_size=batch_size, seed=seed, progress=not as_json)
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
from slimtune.search.runner import Interrupted  # noqa: E402
from slimtune.studies.errors import NoCandidateError, StudyError  # noqa: E402

USER_ERRORS = (*USER_ERRORS, StudyError, BackendError)

storage_option = click.option(
    "--storage", default=DEFAULT_STORAGE, show_default=True, metavar="URL", envvar="SLIMTUNE_STORAGE",
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
    click.echo(f"Baseline: accuracy {base.accuracy:.4f}, latency {base.latency_ms:.4f} ms ({base.runtime}, "
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


#: Exit codes after a stop signal (128 + the signal's number).
EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}


@contextlib.contextmanager
def stop_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Interrupted` once (the runner records the
    running trial as failed with that reason); later ones are ignored while it does."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Interrupted(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _echo_trial_line(row: dict[str, Any]) -> None:
    """One line per finished trial (the workers of ``run --workers``)."""
    if row["state"] == "COMPLETE":
        detail = f"accuracy {row['accuracy']:.4f}, latency {row['latency_ms']:.4g} ms"
    else:
        detail = (row.get("stopped_reason") or row.get("error") or "").splitlines()[-1:] or [""]
        detail = detail[0][:120]
    click.echo(f"trial {row['trial']} {row['state']}: {detail}", nl=True)


def _worker_argv(ctx: click.Context, skip: set[str]) -> list[str]:
    """The command line of ``ctx``'s command, without the options in ``skip``."""
    argv: list[str] = []
    for param in ctx.command.params:
        if not isinstance(param, click.Option) or param.name in skip:
            continue
        value = ctx.params.get(param.name)
        if value is None or (param.multiple and not value):
            continue
        if param.is_flag:
            if param.secondary_opts:
                argv.append(param.opts[0] if value else param.secondary_opts[0])
            elif value:
                argv.append(param.opts[0])
            continue
        for item in (value if param.multiple else (value,)):
            argv += [param.opts[0], str(item)]
    return argv


def _run_workers(ctx: click.Context, workers: int, n_trials: int | None, seed: int | None, as_json: bool) -> list[str]:
    """Run ``workers`` child processes of this ``run`` against the study (created by
    now); relay their lines; on SIGINT/SIGTERM stop each child once and wait for it.
    Returns what went wrong, one string per failed worker."""
    import os
    import signal
    import subprocess
    import threading

    if n_trials is not None:
        shares = [n_trials // workers + (i < n_trials % workers) for i in range(workers)]
    else:
        shares = [None] * workers
    base = _worker_argv(ctx, {"workers", "worker_id", "n_trials", "seed", "as_json", "storage"})
    env = {**os.environ, "SLIMTUNE_STORAGE": ctx.params["storage"]}  # not on the command line: `ps` shows it
    children: list[tuple[int, subprocess.Popen]] = []
    for i, share in enumerate(shares):
        if share == 0:
            continue
        argv = [sys.executable, "-m", "slimtune.cli", "run", *base, "--worker-id", str(i)]
        argv += ["--trials", str(share)] if share is not None else []
        argv += ["--seed", str(seed + i)] if seed is not None else []
        # own session: a terminal's Ctrl-C reaches the parent only, which stops each child once
        children.append((i, subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, text=True, bufsize=1,
                                             start_new_session=True)))

    def relay(i: int, child: subprocess.Popen) -> None:
        for line in child.stdout:
            click.echo(f"[worker {i}] {line.rstrip()}", err=as_json)

    threads = [threading.Thread(target=relay, args=pair, daemon=True) for pair in children]
    for t in threads:
        t.start()
    try:
        for _, child in children:
            child.wait()
    except Interrupted as exc:
        sig = signal.SIGTERM if exc.signal_name == "SIGTERM" else signal.SIGINT
        for _, child in children:
            if child.poll() is None:
                child.send_signal(sig)
        for _, child in children:
            child.wait()
        raise
    finally:
        for t in threads:
            t.join(timeout=5)
    return [f"worker {i} exited with code {child.returncode}" for i, child in children if child.returncode != 0]


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
@click.option("--workers", type=click.IntRange(min=1, max=64), default=1, show_default=True,
              help="Worker processes on this machine, each joining the study (seeds SEED, SEED+1, ...); "
                   "--trials is their total.")
@click.option("--worker-id", type=click.IntRange(min=0), default=None, hidden=True)  # a child of --workers
@storage_option
@user_errors
def run(study_name: str, task_spec: str | None, n_trials: int | None, timeout: float | None, objectives: str | None,
        sampler: str | None, backend: str, tuner: str | None, scalarize: str | None, seed: int | None,
        max_latency_ms: float | None, max_size_kb: float | None,
        max_accuracy_drop: float | None, early_stopping: bool | None, epochs: int | None, runtime: str | None,
        threads: int | None, batch_size: int | None, latency_repeats: int | None, fix: tuple[str, ...], as_json: bool,
        workers: int, worker_id: int | None, storage: str) -> None:
    """Create or resume a study, run trials (progress bar with ETA), print the frontier.

    Every worker that runs this with the same --study and --storage joins the same study
    (on one or many machines; PostgreSQL for many).  Ctrl-C or SIGTERM: the running
    trial is recorded as failed, the study stays resumable (exit codes 130 and 143).
    """
    with stop_signals():
        try:
            _run(study_name, task_spec, n_trials, timeout, objectives, sampler, backend, tuner, scalarize, seed,
                 max_latency_ms, max_size_kb, max_accuracy_drop, early_stopping, epochs, runtime, threads, batch_size,
                 latency_repeats, fix, as_json, workers, worker_id, storage)
        except Interrupted as exc:
            click.echo(f"\nInterrupted by {exc.signal_name}: the running trial is recorded as failed; the study keeps "
                       "its other trials (run the same command to resume).", err=True)
            sys.exit(EXIT_CODES.get(exc.signal_name, 130))


def _run(study_name: str, task_spec: str | None, n_trials: int | None, timeout: float | None, objectives: str | None,
         sampler: str | None, backend: str, tuner: str | None, scalarize: str | None, seed: int | None,
         max_latency_ms: float | None, max_size_kb: float | None,
         max_accuracy_drop: float | None, early_stopping: bool | None, epochs: int | None, runtime: str | None,
         threads: int | None, batch_size: int | None, latency_repeats: int | None, fix: tuple[str, ...], as_json: bool,
         workers: int, worker_id: int | None, storage: str) -> None:
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
    )
    try:
        if worker_id is not None:  # a child of --workers: one line per trial, no summary
            study.optimize(n_trials=n_trials, timeout=timeout, backend=backend, progress=False,
                           callbacks=[_echo_trial_line], **nni_options)
            return
        before = len(study.trials())
        if not as_json:
            click.echo(f"Study {study.name!r} ({study.storage}): {before} earlier trials; running "
                       + (f"{n_trials} trials" if n_trials else "") + (" " if n_trials and timeout else "")
                       + (f"for at most {timeout:g} s" if timeout else "")
                       + (f" in {workers} worker processes" if workers > 1 else "") + ".")
        if workers > 1:
            failed = _run_workers(click.get_current_context(), workers, n_trials, seed, as_json)
        else:
            failed = []
            study.optimize(n_trials=n_trials, timeout=timeout, backend=backend, progress=not as_json, **nni_options)
        if as_json:
            echo_json(study.frontier())
        else:
            _echo_summary(study)
            _echo_frontier(study)
    finally:
        study.close()
    if failed:
        raise click.ClickException(f"{len(failed)} of {workers} workers failed: " + "; ".join(failed))


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
            echo_json(rows)
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
@click.option("--min-accuracy", type=float, default=None, help="Accuracy at least this.")
@click.option("--max-size-kb", type=float, default=None, help="Size at most this many KiB.")
@click.option("--json", "as_json", is_flag=True, help="Print the chosen trial's row as JSON.")
@storage_option
@user_errors
def select_(study_name: str, max_latency_ms: float | None, min_accuracy: float | None, max_size_kb: float | None,
            as_json: bool, storage: str) -> None:
    """The most accurate complete trial within the limits (ties: lower latency).

    Exit code 1 when no trial fits (the message names the closest ones).
    """
    from slimtune.studies import Study

    if max_latency_ms is None and min_accuracy is None and max_size_kb is None:
        raise UserError("Give at least one of --max-latency-ms, --min-accuracy, --max-size-kb.")
    _quiet_optuna()
    study = Study.load(study_name, storage=storage)
    try:
        try:
            cand = study.select(max_latency_ms=max_latency_ms, min_accuracy=min_accuracy, max_size_kb=max_size_kb)
        except NoCandidateError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(1)
        if as_json:
            echo_json(cand.to_dict())
            return
        r = cand.row
        click.echo(f"trial {r['trial']}: accuracy {r['accuracy']:.4f}, latency {r['latency_ms']:.4f} ms, "
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


if __name__ == "__main__":  # pragma: no cover
    main()
