"""Workers racing for a study's warm starts, in real processes (no training): each
claims warm starts until none is left, asks Optuna for a trial holding the claimed
values, binds and tells it.  ``python -m tests._claims_race URL STUDY_ID START_AT``.

:func:`prepare` makes the study (slimtune's row without a baseline, Optuna's study)
and :func:`race` runs the processes and returns the Optuna trials' values.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLAN = [{"a": i, "b": 10 * i} for i in range(8)]
NAME = "race"


def _distributions():
    from optuna.distributions import IntDistribution

    return {"a": IntDistribution(0, 100), "b": IntDistribution(0, 1000)}


def prepare(url: str) -> int:
    """A slimtune study row and an Optuna study called ``race`` in ``url``; its id."""
    import optuna

    from slimtune.studies import Database
    from slimtune.studies._schema import StudyRecord
    from slimtune.studies._storage import StudyStorage

    db = Database.open(url)
    db.ensure_tables()
    record = StudyRecord(study_name=NAME, task_name="none", task_spec="none", task_fingerprint="", space={},
                         space_fingerprint="", fixed={}, objectives=["accuracy", "latency_ms"], constraints={},
                         settings={}, early_stopping=None, sampler="random", seed=0, baseline={},
                         slimtune_version="test")
    StudyStorage(db).add_study(record)
    optuna.create_study(study_name=NAME, storage=url, directions=["maximize", "minimize"])
    db.dispose()
    return record.id


def _main(url: str, study_id: int, start_at: float) -> None:
    import optuna

    from slimtune.search._backends._interface import given_values, suggest
    from slimtune.search._warm_claims import claim_next
    from slimtune.studies import Database
    from slimtune.studies._warm_starts import StudyWarmStarts

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    db = Database.open(url, create=False)
    study = optuna.load_study(study_name=NAME, storage=url)

    def states():
        return {t.number: t.state.name for t in study.get_trials(deepcopy=False)}

    store = StudyWarmStarts(db, study_id, has_trials=lambda: bool(states()),
                            optuna_states=lambda numbers: {n: s for n, s in states().items() if n in numbers})
    time.sleep(max(0.0, start_at - time.time()))  # every process starts claiming at the same moment
    while True:
        claim = claim_next(store, planned=lambda: PLAN, worker=str(os.getpid()))
        if claim is None:
            break
        base = study.sampler
        study.sampler = given_values(claim.values, base)
        try:
            trial = study.ask()
            for name, distribution in _distributions().items():
                suggest(trial, name, distribution)
        finally:
            study.sampler = base
        store.bind(claim.position, trial.number)
        study.tell(trial, [0.5, 1.0])
        print(claim.position, trial.number, flush=True)
    db.dispose()


def race(url: str, study_id: int, processes: int = 6) -> list[dict]:
    """Run ``processes`` claiming workers at once; the values of every Optuna trial."""
    import optuna

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start_at = time.time() + 8.0  # past every process's imports
    procs = [subprocess.Popen([sys.executable, "-m", "tests._claims_race", url, str(study_id), str(start_at)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(processes)]
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    study = optuna.load_study(study_name=NAME, storage=url)
    return [dict(t.params) for t in study.get_trials(deepcopy=False)]


if __name__ == "__main__":
    _main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]))
