"""One trial as a Ray task (``slimtune run --executor ray``): the study opened in the Ray
worker process, one trial run on it, its rows returned to the driver.

The opened study and its search session (task, baseline on the training device,
evaluator) are kept by the worker process for its next trials (Ray reuses CPU workers;
a GPU task gets a fresh process, Ray's default, so that GPU ids never change under it).
Each trial is written with its owner token (``token@ip:pid``), so the driver that loses
this process fails exactly its trial.
"""

from __future__ import annotations

import atexit
import os
import socket
from typing import Any, Mapping

#: The open sessions of this worker process, by what they were opened with.
_SESSIONS: dict[str, Any] = {}


def trial_task(spec: Mapping[str, Any], owner: str, slot: int = 0) -> dict[str, Any]:
    """Run one trial of the study ``spec`` names (``name``, ``storage``, ``task``,
    ``settings``: the session's device and amp, ``backend`` and its ``options``,
    ``seed``, ``warm_start``, ``threads``) and return ``{"rows", "where"}``.  The
    trial's runner claims the study's next warm start, if one is left, from the study
    database (:mod:`~slimtune.search._warm_claims`), as a local worker's does.
    ``slot`` (the task's number in the run) offsets the sampler seed of a session this
    task opens, as ``--workers`` gives worker ``i`` seed + ``i``: sessions opened at once
    on a seeded study would otherwise propose the same candidates."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    session = _session(spec, slot)
    where = f"{_ip()}:{os.getpid()}"
    session.runner.owner = f"{owner}@{where}"
    session.runner.worker = f"ray:{socket.gethostname()}:{os.getpid()}"
    try:
        rows = session.run(1, progress=False, catch=(Exception,))
    finally:
        session.runner.owner = None
    return {"rows": [_plain(row) for row in rows], "where": where}


def _session(spec: Mapping[str, Any], slot: int = 0):
    """This process's open session for ``spec`` (opened on first use, its sampler seed
    the study's plus ``slot``)."""
    import json

    key = json.dumps(spec, sort_keys=True, default=str)
    if key not in _SESSIONS:
        import torch

        from slimtune.search._optimize import SearchSession
        from slimtune.studies._study import Study

        threads = int(spec.get("threads") or 1)
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        study = Study.create_or_load(spec["name"], storage=spec["storage"], task=spec.get("task"),
                                     settings=dict(spec.get("settings") or {}), seed=spec.get("seed"))
        if study.seed is not None:  # the seed given, else the one the study was created with
            study.seed = int(study.seed) + int(slot)
        try:
            session = SearchSession(study, backend=spec.get("backend", "optuna"), progress=False,
                                    warm_start=bool(spec.get("warm_start", True)), **dict(spec.get("options") or {}))
        except BaseException:
            study.close()
            raise
        _SESSIONS[key] = session
        atexit.register(_close, session, study)
    return _SESSIONS[key]


def _close(session, study) -> None:
    session.close()
    study.close()


def _ip() -> str:
    try:
        import ray

        return ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001 - outside Ray (tests call the task directly)
        return socket.gethostname()


def _plain(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row with JSON-safe values only (sent back to the driver)."""
    import json

    return json.loads(json.dumps(dict(row), default=str))
