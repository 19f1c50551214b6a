"""The ``slimtune`` command group: its options, and Optuna's logs kept quiet unless
``--verbose``.  The commands register themselves on :func:`main` from
:mod:`~slimtune.cli._search_commands` and :mod:`~slimtune.cli._study_commands`.
"""

from __future__ import annotations

import click

from slimtune.cli._user_errors import Group


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


def quiet_optuna() -> None:
    """Optuna's info logs ("A new study created ...") only with ``slimtune --verbose``."""
    import optuna

    ctx = click.get_current_context(silent=True)
    verbose = bool(ctx and ctx.find_root().obj and ctx.find_root().obj.get("verbose"))
    optuna.logging.set_verbosity(optuna.logging.INFO if verbose else optuna.logging.WARNING)
