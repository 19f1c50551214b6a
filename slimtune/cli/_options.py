"""The ``slimtune`` command's options and arguments: bounded numbers, ``NAME=VALUE``
assignments, and the options several commands share.
"""

from __future__ import annotations

import math
from typing import Any

import click

from slimtune._cli_tables import WIDTH
from slimtune._defaults import DEFAULT_STORAGE, STORAGE_ENV
from slimtune.cli._user_errors import UserError


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


def check_int8_format() -> None:
    """A bad ``$SLIMTUNE_INT8_FORMAT`` is one line before any work, not a failed trial."""
    from slimtune.search._runtimes import requested_int8_format

    try:
        requested_int8_format()
    except ValueError as exc:
        raise UserError(str(exc)) from None


#: Python packages a runtime needs beyond slimtune's own dependencies, and the extra that brings them.
RUNTIME_PACKAGES = {"openvino": (("openvino", "nncf"), "slimtune[openvino]")}


def check_runtime(runtime: str | None) -> None:
    """A runtime whose packages are not installed is one line before any work (which
    extra to install), not a failed baseline or trial."""
    import importlib.util

    packages, extra = RUNTIME_PACKAGES.get(runtime or "", ((), ""))
    missing = [p for p in packages if importlib.util.find_spec(p) is None]
    if missing:
        raise UserError(f"--runtime {runtime} needs {', '.join(missing)}: pip install '{extra}'.")


def check_targets(targets: str | None, runtime: str | None, batch_size: int | None, threads: int | None) -> None:
    """``--targets`` that parse, each runtime installed, and not beside ``--runtime`` or
    ``--batch-size`` (the first target is those): else one ``Error:`` line before any work."""
    if targets is None:
        return
    from slimtune.search._targets import TargetError, parse_targets

    if runtime is not None or batch_size is not None:
        raise UserError("Give --targets or --runtime/--batch-size, not both: the first of --targets is the runtime "
                        "and batch size that drive the search.")
    try:
        parsed = parse_targets(targets, threads=threads or 1)
    except TargetError as exc:
        raise UserError(f"--targets: {exc}") from None
    for target in parsed:
        check_runtime(target.runtime)


target_option = click.option(
    "--target", "target", default=None, metavar="RUNTIME[:BATCH][@THREADS]",
    help="A study timed on several targets: read it on this one (e.g. openvino:64; ort = onnxruntime) "
         "[default: the first, which drove the search].")


def parse_assignments(items: tuple[str, ...], option: str = "--set") -> dict[str, str]:
    """``("a=1", "b=x")`` -> ``{"a": "1", "b": "x"}``; a word without ``=`` is bad input."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise UserError(f"`{option}` takes NAME=VALUE, but got {item!r}.")
        out[name.strip()] = value.strip()
    return out


storage_option = click.option(
    "--storage", default=DEFAULT_STORAGE, show_default=True, metavar="URL", envvar=STORAGE_ENV, show_envvar=True,
    help=f"Study database: any SQLAlchemy URL Optuna accepts (sqlite:///file.db, postgresql://...); "
         f"${STORAGE_ENV} keeps a password off the command line.",
)
wide_option = click.option("--wide", is_flag=True, help=f"Do not wrap the table to {WIDTH} columns.")
task_option = click.option(
    "--task", "task_spec", default=None, metavar="MODULE:CALLABLE",
    help="The study's task when it is a user's module:callable: a task the study database names is imported only "
         "when given here or with $SLIMTUNE_TRUST_STORED_TASKS=1 (built-in tasks need nothing).",
)

#: ``--device`` and ``--amp`` (run, eval, refit): where candidates train; never where they are timed.
device_option = click.option(
    "--device", default=None, metavar="auto|cpu|cuda|cuda:N|mps",
    help="Where candidates (and the baseline) train: auto = CUDA if present, else the CPU [default: auto]. "
         "Latency is still timed on --runtime on this machine's CPU.")
amp_option = click.option(
    "--amp", type=click.Choice(["off", "auto", "fp16", "bf16"]), default=None, is_flag=False, flag_value="auto",
    help="Mixed precision while training on CUDA (--amp alone: bf16 where the GPU has it, else fp16 with a "
         "gradient scaler); never on the CPU [default: off].")


def check_device_options(device: str | None, amp: str | None) -> None:
    """``--device`` and ``--amp`` this machine can honour, else one ``Error:`` line before any work."""
    if device is None and amp is None:
        return
    from slimtune.search._device import DeviceError, TrainingDevice

    try:
        TrainingDevice.resolve(device or "auto", amp or "off")
    except DeviceError as exc:
        raise UserError(str(exc).replace("`device` ", "`--device` ", 1).replace("`amp` ", "`--amp` ", 1)) from None

