"""Listing the studies of a database, with trial counts by state as ``show`` has them.

Example:
    >>> [s["name"] for s in list_studies("sqlite:///slimtune.db")]
"""

from __future__ import annotations

from typing import Any, Sequence

from slimtune.studies._database import Database, resolve_storage
from slimtune.studies._optuna import optuna_storage
from slimtune.studies._rows import merged_state
from slimtune.studies._storage import StudyStorage


def summaries(db: Database) -> list[dict[str, Any]]:
    """The studies with trial counts from slimtune's records alone (see
    :func:`list_studies` for counts that include Optuna's view)."""
    return [{"name": r.study_name, "task": r.task_name, "objectives": list(r.objectives),
             **counts(list(states.values())), "created_at": r.created_at.isoformat(timespec="seconds"),
             "slimtune_version": r.slimtune_version, "_records": states} for r, states in StudyStorage(db).summaries()]


def counts(states: Sequence[str]) -> dict[str, int]:
    return {"complete": states.count("COMPLETE"), "pruned": states.count("PRUNED"), "failed": states.count("FAIL"),
            "running": states.count("RUNNING")}


def list_studies(storage: str | None = None) -> list[dict[str, Any]]:
    """The slimtune studies in ``storage`` (default ``$SLIMTUNE_STORAGE``, else
    ``sqlite:///slimtune.db``): name, task, objectives, trial counts by state as ``show``
    has them (``trials`` includes running ones), creation time."""
    import optuna

    storage = resolve_storage(storage)
    db = Database.open(storage, create=False)
    try:
        rows = summaries(db)
        if not rows:  # slimtune's tables without a study yet (Optuna's may be missing)
            return rows
        rdb = optuna_storage(storage, create=False)
        try:
            names = set(optuna.get_all_study_names(rdb))
            for row in rows:
                records: dict[int, str] = row.pop("_records")
                trials: dict[int, str] = {}
                if row["name"] in names:
                    study_id = rdb.get_study_id_from_name(row["name"])
                    trials = StudyStorage(db).optuna_states(study_id, fallback=lambda: {
                        t.number: t.state.name for t in rdb.get_all_trials(study_id, deepcopy=False)})
                # the same state per trial as `show` (rows.merged_state): Optuna's once finished,
                # so trials that Optuna failed for a dead worker are counted as failed
                states = {n: merged_state(state, records.get(n)) for n, state in trials.items()}
                states.update({n: st for n, st in records.items() if n not in states})
                row.update(counts(list(states.values())), trials=len(states))
        finally:
            rdb.engine.dispose()
        return rows
    finally:
        db.dispose()
