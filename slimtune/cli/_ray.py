"""``slimtune run --executor ray``: its options checked before any work, and the trials
run as Ray tasks (:class:`~slimtune.studies._ray_executor.RayExecutor`) with one line
per finished trial, as local workers print them.
"""

from __future__ import annotations

from typing import Any

import click

from slimtune.cli._reports import trial_line
from slimtune.cli._user_errors import UserError


def check_ray_options(*, device: str | None, timeout: float | None, backend: str, address: str | None,
                      gpus_per_trial: float | None, cpus_per_trial: float | None) -> None:
    """What ``--executor ray`` cannot do, one line each, before a study is touched (the
    device is checked on the node Ray places each trial on, not here)."""
    from slimtune.search._settings import DeviceError, check_device_spec

    try:
        import ray  # noqa: F401
    except ImportError:
        raise UserError("--executor ray needs Ray: pip install 'slimtune[ray]'.") from None
    from slimtune.studies._ray_executor import RayUnavailable, check_reachable, cluster_address

    try:  # Ray alone retries an unreachable head for minutes
        check_reachable(cluster_address(address))
    except RayUnavailable as exc:
        raise UserError(str(exc)) from None
    if backend != "optuna":
        raise UserError("--executor ray runs the Optuna backend (NNI's tuners run in one process): "
                        "drop --backend nni.")
    if device is not None:
        try:
            check_device_spec(device)
        except DeviceError as exc:
            raise UserError(str(exc).replace("`device` ", "`--device` ", 1)) from None
        if device.startswith("cuda:"):
            raise UserError(f"`--device` {device}: Ray chooses each trial's GPU; use --device cuda with "
                            "--gpus-per-trial.")
        if device == "cuda" and not gpus_per_trial:
            raise UserError("--device cuda with --executor ray needs --gpus-per-trial (Ray hides the GPUs from "
                            "a task that reserves none).")


def run_on_ray(study: Any, *, n_trials: int | None, timeout: float | None = None, workers: int, seed: int | None,
               as_json: bool, backend: str, warm_start: bool, device: str | None, amp: str | None,
               address: str | None, gpus_per_trial: float | None, cpus_per_trial: float | None,
               **options: Any) -> list[dict]:
    """Run the trials as Ray tasks, ``workers`` at a time; print a line per trial (on
    stderr with ``--json``) and one per lost task (its trial failed, another task run in
    its place).  Returns the rows of the trials the tasks ran (a lost task's trial is
    not among them: another task ran in its place)."""
    from slimtune.studies._ray_executor import RayExecutor

    if device is None and gpus_per_trial:
        device = "cuda"  # the GPU Ray reserved for the trial
    executor = RayExecutor(study, workers=workers, address=address, cpus_per_trial=cpus_per_trial or 1.0,
                           gpus_per_trial=gpus_per_trial or 0.0, device=device, amp=amp, backend=backend, seed=seed,
                           warm_start=warm_start, options=options)

    def on_row(row: dict, where: str) -> None:
        click.echo(f"[ray {where}] {trial_line(row)}", err=as_json)

    def on_lost(trials: list[int], why: str) -> None:
        failed = f"trial {', '.join(map(str, trials))} failed: " if trials else ""
        click.echo(f"[ray] a task was lost: {failed}{why}; another task runs in its place.", err=True)

    try:
        return executor.run(n_trials, timeout=timeout, on_row=on_row, on_lost=on_lost)
    finally:
        executor.close()
