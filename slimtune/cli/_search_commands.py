"""The ``slimtune`` commands that train: ``space`` (the joint space of a task), ``eval``
(one candidate, nothing stored), ``run`` (a search into a study, with worker processes)
and ``refit`` (a study's front retrained with more epochs).

Heavy modules (torch, the spaces, the search) are imported inside the commands.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from slimtune.cli._main import main, quiet_optuna
from slimtune.cli._options import (
    FRACTION,
    MAX_BATCH,
    MAX_CALIBRATION,
    MAX_EPOCHS,
    MAX_REPEATS,
    MAX_THREADS,
    MAX_TIMEOUT_S,
    MAX_TRIALS,
    POSITIVE,
    SEED,
    AssignmentCommand,
    FiniteFloat,
    amp_option,
    check_device_options,
    check_int8_format,
    check_runtime,
    check_targets,
    device_option,
    parse_assignments,
    storage_option,
    task_option,
    wide_option,
)
from slimtune.cli._reports import echo_evaluation, echo_json, echo_report, echo_trial_line
from slimtune.cli._user_errors import UserError, _user_error_types, user_errors
from slimtune.cli._workers import EXIT_CODES, die_with_parent, is_worker, run_workers, stop_signals
from slimtune.search._interrupts import Interrupted  # light: no torch
from slimtune.search._measurement import RUNTIMES  # light: no torch


@main.command(cls=AssignmentCommand)
@click.option("--task", "task_spec", required=True, help="Built-in task (digits, fashion-mnist) or package.module:callable.")
@click.option("--fix", multiple=True, metavar="NAME=VALUE", help="Hold a parameter at a value (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@user_errors
def space(task_spec: str, fix: tuple[str, ...], as_json: bool) -> None:
    """The parameters of the joint space of a task's model, with their domains."""
    from slimtune.search._task_space import build_space
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
@device_option
@amp_option
@user_errors
def eval_(task_spec: str, sets: tuple[str, ...], epochs: int | None, runtime: str, threads: int, batch_size: int,
          seed: int, as_json: bool, no_cache: bool, device: str | None, amp: str | None) -> None:
    """Build, train and measure one candidate; print its metrics beside the baseline's.

    Nothing is stored in a study (no --storage); the trained baseline is cached.
    """
    from slimtune.search._eval_one import evaluate_one

    check_int8_format()
    check_runtime(runtime)
    check_device_options(device, amp)
    try:
        report = evaluate_one(task_spec, parse_assignments(sets), epochs=epochs, runtime=runtime, threads=threads,
                              batch_size=batch_size, seed=seed, progress=not as_json, use_cache=not no_cache,
                              device=device or "auto", amp=amp or "off")
    except Exception as exc:
        if isinstance(exc, _user_error_types()):
            raise
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        click.echo(f"Error: the candidate failed: {type(exc).__name__}: {first}", err=True)  # one line, no traceback
        sys.exit(1)
    if as_json:
        echo_json(report)
        return
    echo_evaluation(report, runtime=runtime, threads=threads, batch_size=batch_size)


@main.command(cls=AssignmentCommand)
@click.option("--study", "study_name", required=True, help="Study name (created, or resumed if it exists).")
@click.option("--task", "task_spec", default=None, help="Built-in task or package.module:callable (needed to create, and to resume a study of a user "
                   "task unless $SLIMTUNE_TRUST_STORED_TASKS=1; checked on resume).")
@click.option("--trials", "n_trials", type=click.IntRange(1, MAX_TRIALS), default=None, help="Trials to run now.")
@click.option("--timeout", type=FiniteFloat(min=0, max=MAX_TIMEOUT_S, min_open=True), default=None, help="No new trial after this many seconds.")
@click.option("--objectives", default=None, help="accuracy plus latency_ms, size_bytes and/or macs, comma-separated [default: accuracy,latency_ms].")
@click.option("--sampler", type=click.Choice(["gp", "tpe", "nsga2", "random"]), default=None, help="Optuna sampler [default: tpe].")
@click.option("--moved-families", type=click.IntRange(1, 16), default=None, metavar="K",
              help="Sparse proposals: each moves 1 to K knob families from the baseline, the rest stay at the "
                   "baseline's values (Optuna backend) [default: every family at once].")
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
@click.option("--fidelity", type=click.Choice(["multi", "full"]), default="multi", show_default=True,
              help="multi: a new study first measures its training-free candidates (int8 post-training "
                   "quantization, rung 0: seconds, not counted in --trials), then trains; full: every trial trains.")
@click.option("--epochs", type=click.IntRange(0, MAX_EPOCHS), default=None, help="Distillation epochs per candidate (default: the task's).")
@click.option("--runtime", type=click.Choice(list(RUNTIMES)), default=None,
              help="Runtime that is timed [default: onnxruntime]; openvino needs pip install 'slimtune[openvino]'.")
@click.option("--threads", type=click.IntRange(1, MAX_THREADS), default=None, help="Inference threads [default: 1].")
@click.option("--batch-size", type=click.IntRange(1, MAX_BATCH), default=None,
              help="Batch size latency is timed at, baseline and candidates alike [default: 1]; early exits run "
                   "one sample at a time, so a larger batch leaves them out of a new study's space.")
@click.option("--targets", default=None, metavar="RUNTIME[:BATCH][@THREADS],...",
              help="Time every trial on several targets, e.g. ort:1,openvino:64 (ort = onnxruntime; batch 1 and "
                   "--threads where left out), each beside the baseline timed there in the same run; the first "
                   "drives the search, show/select/export --target read the others. Instead of --runtime/--batch-size.")
@click.option("--latency-repeats", type=click.IntRange(1, MAX_REPEATS), default=None, help="Timed samples per candidate [default: 400].")
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
@device_option
@amp_option
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: --workers processes on this machine; ray: --workers trials at a time as Ray tasks, "
                   "placed by Ray on the cluster's resources (pip install 'slimtune[ray]').")
@click.option("--address", default=None, metavar="ADDR",
              help="With --executor ray: the cluster to join (host:port, ray://host:10001, auto) "
                   "[default: $RAY_ADDRESS, else a Ray instance started on this machine].")
@click.option("--gpus-per-trial", type=FiniteFloat(min=0, max=64), default=None,
              help="With --executor ray: GPUs Ray reserves for each trial (fractions share a GPU) [default: 0].")
@click.option("--cpus-per-trial", type=FiniteFloat(min=0, max=1024, min_open=True), default=None,
              help="With --executor ray: CPUs Ray reserves for each trial (its torch threads) [default: 1].")
@storage_option
@user_errors
def run(**options: Any) -> None:
    """Create or resume a study, run trials (progress bar with ETA), print the frontier
    and the commands to run next.

    Every worker that runs this with the same --study and --storage joins the same study
    (on one or many machines; PostgreSQL for many).  Ctrl-C, SIGTERM or SIGHUP: the running
    trial is recorded as failed, the study stays resumable (exit codes 130, 143, 129).
    """
    worker = is_worker()
    if worker:
        die_with_parent()  # a worker of --workers: it ends with its parent
    with stop_signals():
        try:
            _run(**options)  # the options by name (see _run)
        except Interrupted as exc:
            if not worker:  # the parent says it once for all its workers
                trials = "trials are" if options["workers"] > 1 else "trial is"
                echo_stderr(f"\nInterrupted by {exc.signal_name}: the running {trials} recorded as failed; the "
                            "study keeps its other trials (run the same command to resume).")
            sys.exit(EXIT_CODES.get(exc.signal_name, 130))


def echo_stderr(text: str) -> None:
    """A line on stderr, or nothing when it is gone (a closed terminal)."""
    try:
        click.echo(text, err=True)
    except OSError:
        pass


def _run(study_name: str, task_spec: str | None, n_trials: int | None, timeout: float | None, objectives: str | None,
         sampler: str | None, backend: str, tuner: str | None, scalarize: str | None, seed: int | None,
         max_latency_ms: float | None, max_size_kb: float | None,
         max_accuracy_drop: float | None, early_stopping: bool | None, epochs: int | None, runtime: str | None,
         threads: int | None, batch_size: int | None, latency_repeats: int | None, calibration_size: int | None,
         targets: str | None, fix: tuple[str, ...], as_json: bool, wide: bool, workers: int, worker_id: int | None, no_cache: bool,
         storage: str, warm_start: bool, device: str | None, amp: str | None, executor: str, address: str | None,
         gpus_per_trial: float | None, cpus_per_trial: float | None, fidelity: str = "multi",
         moved_families: int | None = None) -> None:
    if n_trials is None and timeout is None:
        raise UserError("Give --trials N and/or --timeout SECONDS.")
    ray_options = {"address": address, "gpus_per_trial": gpus_per_trial, "cpus_per_trial": cpus_per_trial}
    if executor != "ray" and any(v is not None for v in ray_options.values()):
        given = [f"--{k.replace('_', '-')}" for k, v in ray_options.items() if v is not None]
        raise UserError(f"{', '.join(given)} place trials on a Ray cluster: add --executor ray.")
    check_int8_format()
    check_runtime(runtime)
    check_targets(targets, runtime, batch_size, threads)
    if worker_id is not None and device == "cuda":  # a child of --workers: the GPUs taken in turn
        import torch

        if torch.cuda.device_count() > 1:
            device = f"cuda:{worker_id % torch.cuda.device_count()}"
    if executor == "ray":
        from slimtune.cli._ray import check_ray_options

        check_ray_options(device=device, timeout=timeout, backend=backend, **ray_options)
    else:
        check_device_options(device, amp)
    nni_options = {k: v for k, v in (("tuner", tuner), ("scalarization", scalarize)) if v is not None}
    if nni_options and backend != "nni":
        raise UserError("--tuner and --scalarize set up the NNI backend: add --backend nni.")
    if moved_families is not None and backend != "optuna":
        raise UserError("--moved-families shapes the Optuna backend's proposals: leave out --backend nni.")
    backend_options = {**nni_options, **({"moved_families": moved_families} if moved_families else {})}
    from slimtune.studies import Study

    if backend == "nni":
        from slimtune.search._backends import get_backend

        get_backend("nni").check_options(**nni_options)  # before a study is created
    quiet_optuna()
    settings = {k: v for k, v in {"epochs": epochs, "runtime": runtime, "threads": threads, "batch_size": batch_size,
                                  "latency_repeats": latency_repeats, "calibration_size": calibration_size,
                                  "targets": targets,
                                  "device": device if executor == "local" else None, "amp": amp}.items()
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
                                  callbacks=[echo_trial_line], warm_start=warm_start, fidelity=fidelity,
                                  **backend_options)
            if any(r.get("state") == "FAIL" for r in rows):
                sys.exit(1)  # its lines said which; the parent counts this worker as failed
            return
        before = len(study.trials())
        failed_trials: list[dict] = []
        if not as_json:
            click.echo(f"Study {study.name!r} ({study.storage}): {before} earlier trials; running "
                       + (f"{n_trials} trials" if n_trials else "")
                       + (" (after the training-free candidates of rung 0, which --trials does not count)"
                          if n_trials and before == 0 and fidelity == "multi" and warm_start and backend == "optuna"
                          else "") + (" " if n_trials and timeout else "")
                       + (f"for at most {timeout:g} s" if timeout else "")
                       + (f" in {workers} worker processes" if workers > 1 and executor == "local" else "")
                       + (f", {workers} at a time as Ray tasks" if executor == "ray" else "") + ".")
        if workers > 1 or executor == "ray":
            study.task  # noqa: B018 - a task that cannot be built (or is not trusted) is one line, before any worker
        if executor == "ray":
            from slimtune.cli._ray import run_on_ray

            failed = []
            rows = run_on_ray(study, n_trials=n_trials, timeout=timeout, workers=workers, seed=seed, as_json=as_json,
                              backend=backend, warm_start=warm_start, device=device, amp=amp, **ray_options,
                              fidelity=fidelity, **backend_options)
            failed_trials = [r for r in rows if r.get("state") == "FAIL"]
        elif workers > 1:
            failed = run_workers(click.get_current_context(), workers, n_trials, seed, as_json)
        else:
            failed = []
            rows = study.optimize(n_trials=n_trials, timeout=timeout, backend=backend, progress=not as_json,
                                  warm_start=warm_start, fidelity=fidelity, **backend_options)
            failed_trials = [r for r in rows if r.get("state") == "FAIL"]
        if as_json:
            echo_json(study.frontier())
        else:
            echo_report(study, wide=wide)
    finally:
        study.close()
    if failed:
        message = f"{len(failed)} of {workers} workers failed: " + "; ".join(failed)
        if any(f.endswith("code 2") for f in failed):  # bad input or a storage fault: each said which
            raise UserError(message + " (see their Error lines above).")
        raise click.ClickException(message)
    if failed_trials:  # each printed one line as it failed; the exit code says so too
        first = failed_trials[0]
        raise click.ClickException(f"{len(failed_trials)} of {len(rows)} trials failed (trial {first.get('trial')}: "
                                   f"{(str(first.get('error') or '').splitlines() or [''])[-1][:200]}).")


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
@task_option
@device_option
@amp_option
@storage_option
@user_errors
def refit(study_name: str, epochs: int, finetune_epochs: int | None, max_drop: float, limit: int,
          refit_name: str | None, as_json: bool, wide: bool, task_spec: str | None, storage: str,
          device: str | None, amp: str | None) -> None:
    """Multi-fidelity: retrain a study's front with more epochs, in a study of its own.

    A search with few epochs per candidate ranks candidates cheaply but leaves the
    compressed ones short of what they reach with enough training; this retrains and
    remeasures exactly the front's values (close enough to the baseline: --max-drop)
    in STUDY-refit, beside STUDY in the same storage.  Run again to resume.
    """
    import warnings

    from slimtune.studies._refit import REFIT_OF, front_to_refit, refit_front
    from slimtune.studies import Study

    check_device_options(device, amp)
    quiet_optuna()
    study = Study.load(study_name, storage=storage, task=task_spec)
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
                                     name=refit_name, progress=not as_json, rows=picked, device=device, amp=amp)
            except Interrupted as exc:
                echo_stderr(f"\nInterrupted by {exc.signal_name}: run the same command to resume.")
                sys.exit(EXIT_CODES.get(exc.signal_name, 130))
        try:
            if as_json:
                echo_json(result.frontier())
                return
            sources = {t.number: t.user_attrs.get(REFIT_OF) for t in result.optuna_study.get_trials(deepcopy=False)}
            click.echo("Refit trial <- search trial: " + ", ".join(f"{n} <- {s}" for n, s in sorted(sources.items())))
            echo_report(result, wide=wide)
        finally:
            result.close()
    finally:
        study.close()
