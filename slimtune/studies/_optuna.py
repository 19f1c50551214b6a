"""Optuna's side of a study: its ``RDBStorage`` on the study database's URL, with
heartbeats on so that the trials of dead workers are failed, and the Optuna study made
or loaded beside slimtune's record.

Example:
    >>> storage = optuna_storage("sqlite:///slimtune.db", create=False)
    >>> names = optuna.get_all_study_names(storage)
"""

from __future__ import annotations

import os
import warnings
from typing import TYPE_CHECKING, Callable

from slimtune._dominance import LATENCY_RATIO, directions, optuna_metric_names
from slimtune._urls import connect_url, mask_url, scrub
from slimtune.studies._connections import reconnecting
from slimtune.studies._database import commit_without_fsync_in_wal, creating_concurrently, engine_options
from slimtune.studies._errors import StudyError

if TYPE_CHECKING:  # pragma: no cover
    import optuna

    from slimtune.studies._schema import StudyRecord

#: Optuna heartbeats: a RUNNING trial whose worker has not beaten for ``GRACE`` seconds
#: is failed by the next worker that starts a trial.  The environment variables
#: ``SLIMTUNE_HEARTBEAT_INTERVAL`` / ``SLIMTUNE_HEARTBEAT_GRACE`` (whole seconds)
#: override them, e.g. so that a test sees a killed worker's trial failed in seconds.
HEARTBEAT_INTERVAL = 60
HEARTBEAT_GRACE = 180


def heartbeat_settings() -> tuple[int, int]:
    """``(interval, grace)`` in seconds: the constants above or their environment
    overrides."""
    chosen = []
    for env, default in (("SLIMTUNE_HEARTBEAT_INTERVAL", HEARTBEAT_INTERVAL), ("SLIMTUNE_HEARTBEAT_GRACE", HEARTBEAT_GRACE)):
        raw = os.environ.get(env, "").strip()
        if not raw:
            chosen.append(default)
            continue
        value = int(raw) if raw.isdigit() else 0
        if value < 1:
            raise StudyError(f"`{env}` must be a whole number of seconds >= 1, but got {raw!r}.")
        chosen.append(value)
    interval, grace = chosen
    if grace <= interval:
        raise StudyError(f"The heartbeat grace period ({grace} s) must be longer than its interval ({interval} s).")
    return interval, grace


def optuna_storage(url: str, *, create: bool = True) -> "optuna.storages.RDBStorage":
    """Optuna's RDBStorage on the same URL (heartbeats on, so dead workers' trials fail)."""
    import optuna

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat_interval
            interval, grace = heartbeat_settings()
            storage = creating_concurrently(lambda: optuna.storages.RDBStorage(
                connect_url(url), heartbeat_interval=interval, grace_period=grace, skip_table_creation=not create,
                engine_kwargs=engine_options(url)))
            commit_without_fsync_in_wal(storage.engine)
            reconnecting(storage.engine, url, connected=True)
            return storage
    except StudyError:
        raise
    except Exception as exc:  # noqa: BLE001 - e.g. an Optuna schema needing `optuna storage upgrade`
        first = scrub(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__, url)
        raise StudyError(f"Optuna cannot open {mask_url(url)!r}: {first}") from None


def ensure_optuna_study(storage: "optuna.storages.RDBStorage", record: "StudyRecord", *,
                        has_candidates: Callable[[], bool], shown_url: str) -> "optuna.Study":
    """The Optuna study of slimtune study ``record``: loaded, or created with the
    directions, metric names (latency told as its same-run ratio,
    :func:`~slimtune._dominance.optuna_metric_names`) and a ``slimtune`` user attribute
    of its objectives (another worker may create it at the same time).  ``has_candidates()`` says whether slimtune
    holds records of its trials (then a missing Optuna study was deleted, not new);
    ``shown_url`` is the storage in messages."""
    import optuna

    name, objectives = record.study_name, list(record.objectives)
    wanted = list(directions(objectives))
    names = optuna.get_all_study_names(storage)
    if name not in names:
        if has_candidates():
            raise StudyError(f"The Optuna study {name!r} was deleted from {shown_url!r}, but slimtune's "
                             "records of its trials remain; use another study name.")
    created = False
    if name in names:
        study = optuna.load_study(study_name=name, storage=storage)
    else:
        try:
            study = optuna.create_study(study_name=name, storage=storage, directions=wanted)
            created = True
        except optuna.exceptions.DuplicatedStudyError:  # another worker was quicker
            study = optuna.load_study(study_name=name, storage=storage)
    if [d.name.lower() for d in study.directions] != wanted:
        raise StudyError(f"The Optuna study {name!r} has directions {[d.name.lower() for d in study.directions]}, "
                         f"not those of its objectives {objectives}.")
    if created:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            study.set_metric_names(optuna_metric_names(objectives))
        told = {"latency_ms": f"{LATENCY_RATIO}: latency_ms / the baseline's latency timed in the same run"}
        study.set_user_attr("slimtune", {"task": record.task_name, "objectives": objectives,
                                         "version": record.slimtune_version,
                                         **({"values": told} if "latency_ms" in objectives else {})})
    return study
