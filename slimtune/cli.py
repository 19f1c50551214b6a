"""The ``slimtune`` command: a thin layer over the Python API.

Heavy modules (torch, the spaces, the search) are imported inside the commands that
need them, so ``slimtune --help``, ``studies`` and ``show`` start in well under a
second (``benchmarks/startup.py`` measures it).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import shlex
import sys
from typing import Any, Callable, Iterator

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
from slimtune.search._measurement import RUNTIMES  # light: no torch
from slimtune.search._early_stopping import rejected_before_training  # light: no torch
from slimtune.search._runner import Interrupted  # light: the runner imports torch only in its functions
from slimtune._vocabulary import STATE_WORDS, STUDY_COLUMNS, created_text


class UserError(Exception):
    """Bad input: printed as one line, exit code 2."""


USER_ERRORS: tuple[type[BaseException], ...] = (UserError,)

#: Bad-input errors of the other subpackages, as (module, class).  They are looked up
#: only in modules already imported: an error can only come from a module that ran, and
#: importing them up front would import torch for `slimtune --help`.
LAZY_USER_ERRORS = (("slimtune.spaces.base", "SpaceError"), ("slimtune.tasks._task", "TaskError"),
                    ("slimtune.studies._errors", "StudyError"), ("slimtune.search._backends._interface", "BackendError"))


def _user_error_types() -> tuple[type[BaseException], ...]:
    loaded = [getattr(sys.modules[m], name) for m, name in LAZY_USER_ERRORS if m in sys.modules]
    return (*USER_ERRORS, *loaded)


def user_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn bad-input exceptions into one clear line and exit code 2 (no traceback)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except Exception as exc:
            if not isinstance(exc, _user_error_types()):
                raise
            click.echo(f"Error: {exc}", err=True)
            sys.exit(2)

    return wrapper


class OneLineUsageError(click.ClickException):
    """A bad option value or a missing argument, printed as one line (exit code 2)."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        click.echo(f"Error: {self.format_message()}", err=True)


class Group(click.Group):
    """The ``slimtune`` group: click's usage errors become one line (``Error: ...``,
    with where to find help) instead of a usage block."""

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except click.UsageError as exc:
            raise _one_line(exc) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            raise _one_line(exc) from None


def _one_line(exc: click.UsageError) -> OneLineUsageError:
    where = f" (see '{exc.ctx.command_path} -h')" if exc.ctx is not None else ""
    return OneLineUsageError(" ".join(exc.format_message().split()) + where)


class FiniteFloat(click.FloatRange):
    """A float in a range that is never NaN or infinite (``--timeout nan`` is refused)."""

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return super().convert(number, param, ctx)


#: Bounds of the numeric options: beyond them a typo runs for days or fails late.
MAX_TRIALS = 100_000
MAX_EPOCHS = 1000
MAX_THREADS = 1024
MAX_BATCH = 65536
MAX_REPEATS = 1_000_000
MAX_CALIBRATION = 1_000_000
MAX_TIMEOUT_S = 30 * 24 * 3600.0
SEED = click.IntRange(0, 2**32 - 1)
POSITIVE = FiniteFloat(min=0, min_open=True)
FRACTION = FiniteFloat(0, 1)
ASSIGNMENT_OPTIONS = ("--set", "--fix")


class AssignmentCommand(click.Command):
    """A command whose ``--set``/``--fix`` take one NAME=VALUE word: ``--set prune.ratio 0.5``
    (no ``=``) is answered with that, not with click's "unexpected extra argument"."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        for i, word in enumerate(args[:-2]):
            value, extra = args[i + 1], args[i + 2]
            if word in ASSIGNMENT_OPTIONS and "=" not in value and not extra.startswith("-"):
                click.echo(f"Error: `{word}` takes one NAME=VALUE word, but got {value!r} {extra!r}: "
                           f"write {word} {value}={extra}.", err=True)
                ctx.exit(2)
        return super().parse_args(ctx, args)


def _check_int8_format() -> None:
    """A bad ``$SLIMTUNE_INT8_FORMAT`` is one line before any work, not a failed trial."""
    from slimtune.search._runtimes import requested_int8_format

    try:
        requested_int8_format()
    except ValueError as exc:
        raise UserError(str(exc)) from None


def parse_assignments(items: tuple[str, ...], option: str = "--set") -> dict[str, str]:
    """``("a=1", "b=x")`` -> ``{"a": "1", "b": "x"}``; a word without ``=`` is bad input."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise UserError(f"`{option}` takes NAME=VALUE, but got {item!r}.")
        out[name.strip()] = value.strip()
    return out


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="slimtune")
@click.option("--verbose", is_flag=True, help="Show Optuna's info logs (silenced by default).")
@click.pass_context
def main(ctx: click.Context, verbose: bool) -> None:
    """Search a joint compression space (pruning, quantization, distillation, DS-conv,
    early exits) and show the accuracy-latency frontier.

    Studies live in --storage (default sqlite:///slimtune.db in the working directory);
    trained baselines are cached in ~/.cache/slimtune/baselines ($SLIMTUNE_CACHE_DIR;
    see `slimtune cache list`).
    """
    ctx.obj = {"verbose": verbose}


def _quiet_optuna() -> None:
    """Optuna's info logs ("A new study created ...") only with ``slimtune --verbose``."""
    import optuna

    ctx = click.get_current_context(silent=True)
    verbose = bool(ctx and ctx.find_root().obj and ctx.find_root().obj.get("verbose"))
    optuna.logging.set_verbosity(optuna.logging.INFO if verbose else optuna.logging.WARNING)


@main.command(cls=AssignmentCommand)
@click.option("--task", "task_spec", required=True, help="Built-in task (digits, fashion-mnist) or package.module:callable.")
@click.option("--fix", multiple=True, metavar="NAME=VALUE", help="Hold a parameter at a value (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@user_errors
def space(task_spec: str, fix: tuple[str, ...], as_json: bool) -> None:
    """The parameters of the joint space of a task's model, with their domains."""
    from slimtune._api import build_space
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


@main.command("eval", cls=AssignmentCommand)
@click.option("--task", "task_spec", required=True, help="Built-in task or package.module:callable.")
@click.option("--set", "sets", multiple=True, metavar="NAME=VALUE", help="A parameter value (repeatable); others take defaults.")
@click.option("--epochs", type=click.IntRange(0, MAX_EPOCHS), default=None, help="Distillation epochs (default: the task's).")
@click.option("--runtime", type=click.Choice(list(RUNTIMES)), default="onnxruntime", show_default=True)
@click.option("--threads", type=click.IntRange(1, MAX_THREADS), default=1, show_default=True)
@click.option("--batch-size", type=click.IntRange(1, MAX_BATCH), default=1, show_default=True)
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (no progress lines).")
@click.option("--no-cache", is_flag=True, help="Retrain the baseline instead of reading the cache (the cache is refreshed).")
@user_errors
def eval_(task_spec: str, sets: tuple[str, ...], epochs: int | None, runtime: str, threads: int, batch_size: int,
          seed: int, as_json: bool, no_cache: bool) -> None:
    """Build, train and measure one candidate; print its metrics beside the baseline's.

    Nothing is stored in a study (no --storage); the trained baseline is cached.
    """
    from slimtune._api import evaluate_one

    _check_int8_format()
    try:
        report = evaluate_one(task_spec, parse_assignments(sets), epochs=epochs, runtime=runtime, threads=threads,
                              batch_size=batch_size, seed=seed, progress=not as_json, use_cache=not no_cache)
    except Exception as exc:
        if isinstance(exc, _user_error_types()):
            raise
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        click.echo(f"Error: the candidate failed: {type(exc).__name__}: {first}", err=True)  # one line, no traceback
        sys.exit(1)
    if as_json:
        echo_json(report)
        return
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
            ("MACs", report["macs"], base["macs"], "{:,}"))
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


# -- studies: run / studies / show / select / export ------------------------------------
storage_option = click.option(
    "--storage", default=DEFAULT_STORAGE, show_default=True, metavar="URL", envvar=STORAGE_ENV, show_envvar=True,
    help=f"Study database: any SQLAlchemy URL Optuna accepts (sqlite:///file.db, postgresql://...); "
         f"${STORAGE_ENV} keeps a password off the command line.",
)
wide_option = click.option("--wide", is_flag=True, help=f"Do not wrap the table to {WIDTH} columns.")


def _param_names(study: Any) -> list[str]:
    return [p["name"] for p in study.space_dict.get("params", [])]


def _echo_table(rows: list[dict[str, Any]], study: Any, *, mark_pareto: bool = True, wide: bool = False) -> None:
    for line in table_lines(rows, _param_names(study), mark_pareto=mark_pareto, wide=wide,
                            metric=getattr(study, "metric_name", "accuracy")):
        click.echo(line)


def _artifact_kib(row: dict[str, Any]) -> str:
    """``, artifact 12.3 KiB`` when the timed artifact's length is known."""
    return f", artifact {row['artifact_bytes'] / 1024:.1f} KiB" if row.get("artifact_bytes") else ""


def _echo_wrapped(text: str, *, wide: bool = False) -> None:
    """One logical line, wrapped to the table width unless ``wide``."""
    import textwrap

    for line in [text] if wide else textwrap.wrap(text, WIDTH, subsequent_indent="  ", break_on_hyphens=False):
        click.echo(line)


def _echo_summary(study: Any, *, wide: bool = False) -> None:
    echo = functools.partial(_echo_wrapped, wide=wide)
    rows = study.trials()
    counts = {s: sum(1 for r in rows if r["state"] == s) for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")}
    rejected = sum(1 for r in rows if rejected_before_training(r))  # not counted in --trials
    base = study.baseline
    echo(f"Study {study.name!r} in {study.storage}: task {study.task_name}, objectives "
               f"{', '.join(study.objectives)}; {len(rows) - rejected} trials trained ({counts['COMPLETE']} complete, "
               f"{counts['PRUNED'] - rejected} {STATE_WORDS['PRUNED']} early, {counts['FAIL']} failed"
               + (f", {counts['RUNNING']} running" if counts["RUNNING"] else "") + f"), {rejected} rejected before "
               "training by early stopping")
    base_row = base.to_dict()
    test = test_accuracy(base_row)
    metric = getattr(study, "metric_name", "accuracy")
    names = metric_labels(metric)
    echo(f"Baseline: {names[0]} {val_accuracy(base_row):.4f}" + (f", {names[1]} {test:.4f}" if test is not None else "")
         + f", latency {base.latency_ms:.4f} ms ({base.runtime}, {base.threads} thread(s), batch "
         f"{base.batch_size}), packed {base.size_bytes / 1024:.1f} KiB{_artifact_kib(base_row)}, {base.macs:,} MACs")
    if study.constraints.active:
        echo(f"Constraints: {study.constraints.to_dict()}")
    fingerprints = study.fingerprints()
    if len(fingerprints) > 1:
        echo(f"note: latencies come from {len(fingerprints)} machine fingerprints ({', '.join(fingerprints)}); "
                   "they are not comparable across machines.")


def _echo_frontier(study: Any, *, wide: bool = False) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the mixed-fingerprint note is printed by _echo_summary
        front = study.frontier()
    complete = len(study.trials(states=("COMPLETE",)))
    click.echo(f"Frontier: {len(front)} of {complete} complete trials")
    if front:
        _echo_table(front, study, wide=wide)


def _echo_report(study: Any, *, wide: bool = False) -> None:
    """What ``run`` and ``refit`` print at the end: the summary, the frontier and the
    commands to run next."""
    _echo_summary(study, wide=wide)
    _echo_frontier(study, wide=wide)
    click.echo("Next:")
    for line in next_steps(study):
        click.echo(f"  {line}")


def _quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


def next_steps(study: Any) -> list[str]:
    """The commands a user runs next, filled in with this study's name, storage and trials."""
    import warnings

    name = _quote(study.name)
    storage = "" if study.storage == DEFAULT_STORAGE else f" --storage {_quote(study.storage)}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        front = study.frontier()
    lines = [f"slimtune show {name} --pareto{storage}"]
    if front:
        base = study.baseline
        fast = min(front, key=lambda r: r["latency_ms"])
        budget = max(fast["latency_ms"], min(base.latency_ms, max(r["latency_ms"] for r in front)))
        # 4 significant digits, rounded up (x1.001 outweighs the rounding) so the trial it names fits
        lines.append(f"slimtune select {name} --max-latency-ms {budget * 1.001:.4g}{storage}")
        best = max(front, key=lambda r: (val_accuracy(r) or 0.0, -r["latency_ms"]))
        lines.append(f"slimtune export {name} --trial {best['trial']} --out {_file_name(study.name)}.onnx{storage}")
    return lines


def _file_name(name: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in name).strip("-")
    return safe or "model"


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
    from slimtune.tasks import worker_environment

    # not on the command line: `ps` shows it; the task module resolves to the parent's file
    env = worker_environment({**os.environ, "SLIMTUNE_STORAGE": ctx.params["storage"]})
    # the workers share the cores: unless the user chose, each gets its part of them (torch reads this at start)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
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


@main.command(cls=AssignmentCommand)
@click.option("--study", "study_name", required=True, help="Study name (created, or resumed if it exists).")
@click.option("--task", "task_spec", default=None, help="Built-in task or package.module:callable (needed to create; checked on resume).")
@click.option("--trials", "n_trials", type=click.IntRange(1, MAX_TRIALS), default=None, help="Trials to run now.")
@click.option("--timeout", type=FiniteFloat(min=0, max=MAX_TIMEOUT_S, min_open=True), default=None, help="No new trial after this many seconds.")
@click.option("--objectives", default=None, help="accuracy plus latency_ms, size_bytes and/or macs, comma-separated [default: accuracy,latency_ms].")
@click.option("--sampler", type=click.Choice(["gp", "tpe", "nsga2", "random"]), default=None, help="Optuna sampler [default: tpe].")
@click.option("--backend", type=click.Choice(["optuna", "nni"]), default="optuna", show_default=True)
@click.option("--tuner", default=None, help="NNI tuner, with --backend nni: TPE, Random, Evolution or GridSearch [default: TPE].")
@click.option("--scalarize", default=None, metavar="TERMS",
              help="What the NNI tuner maximizes, with --backend nni: comma-separated COST*WEIGHT, COST<=BUDGET, "
                   "penalty=P, e.g. 'latency_ms*0.05' or 'latency_ms<=2,penalty=2' "
                   "[default: accuracy - 0.05*log2(first cost objective)].")
@click.option("--seed", type=SEED, default=None, help="Sampler seed (reproducible proposals).")
@click.option("--max-latency-ms", type=POSITIVE, default=None, help="Constraint: latency at most this.")
@click.option("--max-size-kb", type=POSITIVE, default=None,
              help="Constraint: packed model file (size_bytes, what export --format packed writes) at most this many KiB (1024 B).")
@click.option("--max-accuracy-drop", type=FRACTION, default=None, help="Constraint: validation accuracy at least the baseline's minus this (e.g. 0.01).")
@click.option("--early-stopping/--no-early-stopping", default=None, help="Stop candidates a no-costlier trial clearly beats [default: on].")
@click.option("--warm-start/--no-warm-start", default=True, show_default=True,
              help="Start a new study near the baseline (the task's warm starts, else one knob family moved at a time).")
@click.option("--epochs", type=click.IntRange(0, MAX_EPOCHS), default=None, help="Distillation epochs per candidate (default: the task's).")
@click.option("--runtime", type=click.Choice(list(RUNTIMES)), default=None, help="Runtime that is timed [default: onnxruntime].")
@click.option("--threads", type=click.IntRange(1, MAX_THREADS), default=None, help="Inference threads [default: 1].")
@click.option("--batch-size", type=click.IntRange(1, MAX_BATCH), default=None, help="Timed batch size [default: 1].")
@click.option("--latency-repeats", type=click.IntRange(1, MAX_REPEATS), default=None, help="Timed repeats per candidate [default: 100].")
@click.option("--calibration-size", type=click.IntRange(1, MAX_CALIBRATION), default=None,
              help="PTQ calibration samples, the first of the training split (a streaming loader reads only the "
                   "batches they fill) [default: 256].")
@click.option("--fix", multiple=True, metavar="NAME=VALUE", help="Hold a parameter at a value (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the frontier as JSON (no progress bar).")
@wide_option
@click.option("--workers", type=click.IntRange(min=1, max=64), default=1, show_default=True,
              help="Worker processes on this machine, each joining the study (seeds SEED, SEED+1, ...); "
                   "--trials is their total.")
@click.option("--worker-id", type=click.IntRange(min=0), default=None, hidden=True)  # a child of --workers
@click.option("--no-cache", is_flag=True, help="Retrain the baseline instead of reading the cache (the cache is refreshed).")
@storage_option
@user_errors
def run(**options: Any) -> None:
    """Create or resume a study, run trials (progress bar with ETA), print the frontier
    and the commands to run next.

    Every worker that runs this with the same --study and --storage joins the same study
    (on one or many machines; PostgreSQL for many).  Ctrl-C or SIGTERM: the running
    trial is recorded as failed, the study stays resumable (exit codes 130 and 143).
    """
    with stop_signals():
        try:
            _run(**options)  # the options by name (see _run)
        except Interrupted as exc:
            click.echo(f"\nInterrupted by {exc.signal_name}: the running trial is recorded as failed; the study keeps "
                       "its other trials (run the same command to resume).", err=True)
            sys.exit(EXIT_CODES.get(exc.signal_name, 130))


def _run(study_name: str, task_spec: str | None, n_trials: int | None, timeout: float | None, objectives: str | None,
         sampler: str | None, backend: str, tuner: str | None, scalarize: str | None, seed: int | None,
         max_latency_ms: float | None, max_size_kb: float | None,
         max_accuracy_drop: float | None, early_stopping: bool | None, epochs: int | None, runtime: str | None,
         threads: int | None, batch_size: int | None, latency_repeats: int | None, calibration_size: int | None,
         fix: tuple[str, ...], as_json: bool, wide: bool, workers: int, worker_id: int | None, no_cache: bool,
         storage: str, warm_start: bool) -> None:
    if n_trials is None and timeout is None:
        raise UserError("Give --trials N and/or --timeout SECONDS.")
    _check_int8_format()
    nni_options = {k: v for k, v in (("tuner", tuner), ("scalarization", scalarize)) if v is not None}
    if nni_options and backend != "nni":
        raise UserError("--tuner and --scalarize set up the NNI backend: add --backend nni.")
    from slimtune.studies import Study

    if backend == "nni":
        from slimtune.search._backends import get_backend

        get_backend("nni").check_options(**nni_options)  # before a study is created
    _quiet_optuna()
    settings = {k: v for k, v in {"epochs": epochs, "runtime": runtime, "threads": threads, "batch_size": batch_size,
                                  "latency_repeats": latency_repeats, "calibration_size": calibration_size}.items()
                if v is not None}
    study = Study.create_or_load(
        study_name, storage=storage, task=task_spec, fixed=parse_assignments(fix, "--fix") or None, objectives=objectives,
        max_latency_ms=max_latency_ms, max_size_kb=max_size_kb, max_accuracy_drop=max_accuracy_drop,
        settings=settings or None, seed=seed, sampler=sampler, early_stopping=early_stopping, progress=not as_json,
        use_cache=not no_cache,
    )
    try:
        if worker_id is not None:  # a child of --workers: one line per trial, no summary
            rows = study.optimize(n_trials=n_trials, timeout=timeout, backend=backend, progress=False,
                                  callbacks=[_echo_trial_line], warm_start=warm_start, **nni_options)
            if any(r.get("state") == "FAIL" for r in rows):
                sys.exit(1)  # its lines said which; the parent counts this worker as failed
            return
        before = len(study.trials())
        failed_trials: list[dict] = []
        if not as_json:
            click.echo(f"Study {study.name!r} ({study.storage}): {before} earlier trials; running "
                       + (f"{n_trials} trials" if n_trials else "") + (" " if n_trials and timeout else "")
                       + (f"for at most {timeout:g} s" if timeout else "")
                       + (f" in {workers} worker processes" if workers > 1 else "") + ".")
        if workers > 1:
            failed = _run_workers(click.get_current_context(), workers, n_trials, seed, as_json)
        else:
            failed = []
            rows = study.optimize(n_trials=n_trials, timeout=timeout, backend=backend, progress=not as_json,
                                  warm_start=warm_start, **nni_options)
            failed_trials = [r for r in rows if r.get("state") == "FAIL"]
        if as_json:
            echo_json(study.frontier())
        else:
            _echo_report(study, wide=wide)
    finally:
        study.close()
    if failed:
        raise click.ClickException(f"{len(failed)} of {workers} workers failed: " + "; ".join(failed))
    if failed_trials:  # each printed one line as it failed; the exit code says so too
        first = failed_trials[0]
        raise click.ClickException(f"{len(failed_trials)} of {len(rows)} trials failed (trial {first.get('trial')}: "
                                   f"{(str(first.get('error') or '').splitlines() or [''])[-1][:200]}).")


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
    c = STUDY_COLUMNS
    click.echo(f"{c['name']:<24} {c['task']:<16} {c['objectives']:<22} {c['trials']:>6} {c['complete']:>8} "
               f"{c['pruned']:>7} {c['failed']:>6}  {c['created_at']}")
    for r in rows:
        click.echo(f"{r['name']:<24} {r['task']:<16} {','.join(r['objectives']):<22} {r['trials']:>6} {r['complete']:>8} "
                   f"{r['pruned']:>7} {r['failed']:>6}  {created_text(r['created_at'])}")


@main.command()
@click.argument("study_name", metavar="STUDY")
@click.option("--pareto", is_flag=True, help="Only the frontier.")
@click.option("--json", "as_json", is_flag=True, help="Print the trial rows as JSON.")
@wide_option
@storage_option
@user_errors
def show(study_name: str, pareto: bool, as_json: bool, wide: bool, storage: str) -> None:
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
        _echo_summary(study, wide=wide)
        if pareto:
            _echo_frontier(study, wide=wide)
        else:
            _echo_table(rows, study, wide=wide)
    finally:
        study.close()


@main.command()
@click.argument("study_name", metavar="STUDY")
@click.option("--epochs", type=click.IntRange(1, MAX_EPOCHS), required=True,
              help="Distillation epochs of the refit (more than the search gave each candidate).")
@click.option("--finetune-epochs", type=click.IntRange(0, MAX_EPOCHS), default=None,
              help="Recovery epochs of the refit (pruning fine-tuning, QAT) [default: the task's].")
@click.option("--max-drop", type=FRACTION, default=0.05, show_default=True,
              help="Refit the front's trials whose validation accuracy is at least the baseline's minus this.")
@click.option("--limit", type=click.IntRange(1, 1000), default=6, show_default=True,
              help="At most this many trials, spread along the front (its cheapest and most accurate ends kept).")
@click.option("--name", "refit_name", default=None, help="The refit study's name [default: STUDY-refit].")
@click.option("--json", "as_json", is_flag=True, help="Print the refit study's frontier as JSON (no progress bar).")
@wide_option
@storage_option
@user_errors
def refit(study_name: str, epochs: int, finetune_epochs: int | None, max_drop: float, limit: int,
          refit_name: str | None, as_json: bool, wide: bool, storage: str) -> None:
    """Multi-fidelity: retrain a study's front with more epochs, in a study of its own.

    A search with few epochs per candidate ranks candidates cheaply but leaves the
    compressed ones short of what they reach with enough training; this retrains and
    remeasures exactly the front's values (close enough to the baseline: --max-drop)
    in STUDY-refit, beside STUDY in the same storage.  Run again to resume.
    """
    import warnings

    from slimtune.search._refit import REFIT_OF, front_to_refit, refit_front
    from slimtune.studies import Study

    _quiet_optuna()
    study = Study.load(study_name, storage=storage)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            picked = front_to_refit(study.frontier(), float(study.baseline.accuracy), max_drop=max_drop, limit=limit)
        if not picked:
            raise UserError(f"No trial on the front of {study.name!r} is within --max-drop {max_drop:g} of the "
                            f"baseline's validation accuracy {study.baseline.accuracy:.4f}: nothing to refit.")
        if not as_json:
            click.echo(f"Refitting {len(picked)} front trial(s) of {study.name!r} ("
                       + ", ".join(str(r["trial"]) for r in picked) + f") with {epochs} distillation epochs"
                       + ("" if finetune_epochs is None else f" and {finetune_epochs} recovery epochs") + ".")
        with stop_signals():
            try:
                result = refit_front(study, storage=storage, epochs=epochs, finetune_epochs=finetune_epochs,
                                     name=refit_name, progress=not as_json, rows=picked)
            except Interrupted as exc:
                click.echo(f"\nInterrupted by {exc.signal_name}: run the same command to resume.", err=True)
                sys.exit(EXIT_CODES.get(exc.signal_name, 130))
        try:
            if as_json:
                echo_json(result.frontier())
                return
            sources = {t.number: t.user_attrs.get(REFIT_OF) for t in result.optuna_study.get_trials(deepcopy=False)}
            click.echo("Refit trial <- search trial: " + ", ".join(f"{n} <- {s}" for n, s in sorted(sources.items())))
            _echo_report(result, wide=wide)
        finally:
            result.close()
    finally:
        study.close()


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
@storage_option
@user_errors
def select_(study_name: str, max_latency_ms: float | None, min_accuracy: float | None, split: str,
            max_size_kb: float | None, max_artifact_kb: float | None, as_json: bool, storage: str) -> None:
    """The most accurate complete trial within the limits (ties: lower latency),
    ranked by validation accuracy unless --split test; never one the baseline beats.

    Exit code 1 when no trial fits (the message names the closest ones).
    """
    from slimtune.studies import NoCandidateError, Study

    if max_latency_ms is None and min_accuracy is None and max_size_kb is None and max_artifact_kb is None:
        raise UserError("Give at least one of --max-latency-ms, --min-accuracy, --max-size-kb, --max-artifact-kb.")
    _quiet_optuna()
    study = Study.load(study_name, storage=storage)
    try:
        try:
            cand = study.select(max_latency_ms=max_latency_ms, min_accuracy=min_accuracy, max_size_kb=max_size_kb,
                                max_artifact_kb=max_artifact_kb, split=split)
        except NoCandidateError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(1)
        if as_json:
            echo_json({**cand.to_dict(), "ranked_by": f"{split}_accuracy", "metadata": cand.metadata()})
            return
        r = cand.row
        test = test_accuracy(r)
        ratio = speedup(r)
        val_label, test_label = metric_labels(getattr(study, "metric_name", "accuracy"))
        click.echo(f"trial {r['trial']} (ranked by {'validation' if split == 'val' else 'test'} "
                   f"{getattr(study, 'metric_name', 'accuracy')}): "
                   f"{val_label} {val_accuracy(r):.4f}" + (f", {test_label} {test:.4f}" if test is not None else "")
                   + f", latency {r['latency_ms']:.4f} ms"
                   + (f" ({ratio:.2f}x the baseline timed in the same run)" if ratio else "")
                   + f", packed {r['size_bytes'] / 1024:.1f} KiB{_artifact_kib(r)}, {r['macs']:,} MACs")
        click.echo(f"params: {compact_params(r['params'], _param_names(study))}")
        click.echo(f"export: {export_line(study.name, r['trial'], storage)}")
    finally:
        study.close()


def export_line(study_name: str, trial: int, storage: str) -> str:
    """A copy-paste ``slimtune export`` command with every word shell-quoted (a study
    name never turns it into another command); the storage is left out when it comes
    from ``$SLIMTUNE_STORAGE``, and its password is never printed."""
    import os

    from slimtune.studies import mask_url

    words = ["slimtune", "export", study_name, "--trial", str(trial), "--out", "model.onnx"]
    if storage != os.environ.get(STORAGE_ENV, "").strip():
        words += ["--storage", mask_url(storage)]
    return " ".join(shlex.quote(w) for w in words)


@main.command()
@click.argument("study_name", metavar="STUDY")
@click.option("--trial", "trial", type=int, required=True, help="Trial number (a complete trial).")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False),
              help="File to write; its extension sets the format (.onnx; .pt, .ts, .torchscript; .slim).")
@click.option("--format", "fmt", type=click.Choice(["onnx", "torchscript", "packed"]), default=None,
              help="Default: the one --out's extension means, else the format the trial was timed in (what was "
                   "measured). 'packed': that same artifact as a packed model file (.slim), size_bytes long; read it "
                   "with slimtune.search.packed.load_packed.")
@storage_option
@user_errors
def export(study_name: str, trial: int, out: str, fmt: str | None, storage: str) -> None:
    """Write a trial's model: by default exactly the artifact that was timed; ONNX files
    carry how to feed them in their metadata (input, preprocessing, classes, params)."""
    import warnings

    from slimtune.studies import Study
    from slimtune.studies._candidate import format_for_path

    fmt = format_for_path(out, fmt)  # a mismatched extension is refused before anything is read
    _quiet_optuna()
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
        shown = fmt or ("packed" if path.suffix == ".slim" else cand.artifact()[1])
        click.echo(f"Wrote {path} ({shown}, {size:,} bytes): trial {trial}, "
                   f"{metric_labels(getattr(study, 'metric_name', 'accuracy'))[0]} "
                   f"{val_accuracy(cand.row):.4f}, latency {cand.latency_ms:.4f} ms")
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
    from slimtune.search._baseline_cache import baselines_dir, clear_baselines

    removed = clear_baselines(task)
    click.echo(f"Removed {len(removed)} cached baseline{'s' if len(removed) != 1 else ''} from {baselines_dir()}.")


if __name__ == "__main__":  # pragma: no cover
    main()
