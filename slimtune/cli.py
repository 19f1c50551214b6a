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


if __name__ == "__main__":  # pragma: no cover
    main()
