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


def trial_task(spec: Mapping[str, Any], owner: str, warm_start: Mapping[str, Any] | None = None,
               slot: int = 0) -> dict[str, Any]:
    """Run one trial of the study ``spec`` names (``name``, ``storage``, ``settings``:
    the session's device and amp, ``backend`` and its ``options``, ``seed``, ``threads``)
    and return ``{"rows", "where"}``.  ``warm_start`` (values of every searched
    parameter) is enqueued right before the trial asks, so the trial takes it.
    ``slot`` (the task's number in the run) offsets the sampler seed of a session this
    task opens, as ``--workers`` gives worker ``i`` seed + ``i``: sessions opened at once
    on a seeded study would otherwise propose the same candidates."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    session = _session(spec, slot)
    where = f"{_ip()}:{os.getpid()}"
    if warm_start:
        _enqueue_once(session.runner.study, dict(warm_start))
    session.runner.owner = f"{owner}@{where}"
    session.runner.worker = f"ray:{socket.gethostname()}:{os.getpid()}"
    try:
        rows = session.run(1, progress=False, catch=(Exception,))
    finally:
        session.runner.owner = None
    return {"rows": [_plain(row) for row in rows], "where": where}


def _enqueue_once(study, values: dict[str, Any]) -> None:
    """Enqueue ``values`` unless a trial with them waits, runs or has finished other than
    failed (a warm start whose trial was lost with its worker is trained again)."""
    from optuna.trial import TrialState

    live = (TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED)
    trials = study.get_trials(deepcopy=False, states=live)
    if not any((t.params or t.system_attrs.get("fixed_params")) == values for t in trials):
        study.enqueue_trial(values, skip_if_exists=False)


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
        study = Study.create_or_load(spec["name"], storage=spec["storage"], settings=dict(spec.get("settings") or {}),
                                     seed=spec.get("seed"))
        if study.seed is not None:  # the seed given, else the one the study was created with
            study.seed = int(study.seed) + int(slot)
        try:
            session = SearchSession(study, backend=spec.get("backend", "optuna"), progress=False, warm_start=False,
                                    **dict(spec.get("options") or {}))
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
