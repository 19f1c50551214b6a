"""Synthetic trials of a real study, written the normal way or with bulk inserts.

A synthetic trial trains nothing: its figures are drawn (accuracy falls as latency
falls; ~8% stopped early, ~2% failed) and its parameters are the space's own.  Written
**the normal way** (:func:`run_normally`), ``Study.optimize`` runs it: the real
backend, runner, heartbeat, constraints, user attributes, recorder and ``tell``, with
only the evaluator replaced by :class:`SyntheticEvaluator`.  Written **in bulk**
(:func:`write_in_bulk`), the same rows go into Optuna's and slimtune's tables with a
few multi-row ``INSERT`` statements (SQLAlchemy core, the columns read from the
database), about a thousand times faster.  ``tests/test_widgets.py`` checks that both
give the same study (rows, frontier, what ``optuna.load_study`` reads); the one thing
the bulk writer leaves out is the weights table (model bytes that no listing reads, so
a bulk-written trial cannot be exported).

    study = synthetic_study("sqlite:///bench.db", "bench-50000", 50_000)  # ~1 min
"""

from __future__ import annotations

import json
import random
import socket
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Sequence

#: The study's settings (``latency_repeats``: the samples each measurement stores).
SETTINGS = {"epochs": 1, "latency_repeats": 20}
FAILURE = "RuntimeError: synthetic failure"
STOPPED = "cannot reach the frontier"


@dataclass
class Synthetic:
    """One synthetic trial: its state, drawn figures and (once drawn) parameters."""

    number: int
    state: str  # COMPLETE, PRUNED or FAIL
    figures: dict[str, float]
    params: dict[str, Any] = field(default_factory=dict)  # the searched values


def draw(number: int, base: dict[str, Any], *, seed: int = 0) -> Synthetic:
    """Trial ``number``'s state and figures (a function of ``seed`` and ``number``)."""
    rng = random.Random(seed * 1_000_003 + number)
    squeeze = rng.betavariate(2, 2)  # 0 = like the baseline, 1 = heavily compressed
    reference = base["latency_ms"] * rng.uniform(0.9, 1.1)  # the baseline timed in the trial's run
    latency = reference * (1.15 - 0.8 * squeeze) * rng.uniform(0.9, 1.1)
    accuracy = max(0.1, base["accuracy"] - 0.25 * squeeze ** 3 - abs(rng.gauss(0, 0.01)))
    figures = {"accuracy": accuracy, "test_accuracy": accuracy - abs(rng.gauss(0, 0.01)), "latency_ms": latency,
               "reference_latency_ms": reference, "latency_p95_ms": latency * 1.2,
               "size_bytes": int(base["size_bytes"] * (1.05 - 0.9 * squeeze)),
               "artifact_bytes": int(base["artifact_bytes"] * (1.05 - 0.9 * squeeze)),
               "macs": int(base["macs"] * (1.1 - 0.8 * squeeze)), "params_count": int(base["params_count"] * (1 - squeeze / 2))}
    roll = rng.random()
    return Synthetic(number, "PRUNED" if roll < 0.08 else "FAIL" if roll < 0.10 else "COMPLETE", figures)


def distributions(space: Any) -> dict[str, Any]:
    """The Optuna distribution of each searched parameter, by name."""
    from slimtune.search._backends._interface import distribution_of

    return {p.name: distribution_of(p) for p in space.searched}


def draw_params(dists: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """Searched values drawn from their distributions (as a random sampler)."""
    import optuna

    out = {}
    for name, dist in dists.items():
        if isinstance(dist, optuna.distributions.CategoricalDistribution):
            out[name] = rng.choice(list(dist.choices))
        elif isinstance(dist, optuna.distributions.IntDistribution):
            out[name] = rng.randint(dist.low, dist.high)
        else:
            out[name] = rng.uniform(dist.low, dist.high)
    return out


# -- what a worker computes for a trial --------------------------------------------------
def measurement(s: Synthetic, base: dict[str, Any]) -> Any:
    from slimtune.search._measurement import Measurement

    samples = [s.figures["latency_ms"] * (1 + 0.01 * (i % 5 - 2)) for i in range(SETTINGS["latency_repeats"])]
    fields = {k: v for k, v in s.figures.items() if k != "test_accuracy"}
    return Measurement.from_dict({**base, **fields, "test_accuracy": s.figures["test_accuracy"],
                                  "latency_samples_ms": samples})


def pre_measurement(s: Synthetic) -> Any:
    from slimtune.search._pre_measure import PreMeasurement

    f = s.figures
    return PreMeasurement(latency_ms=f["latency_ms"] * 0.9, macs=f["macs"], size_bytes=f["size_bytes"],
                          reference_latency_ms=f["reference_latency_ms"])


def candidate_result(s: Synthetic, base: dict[str, Any], fixed: dict[str, Any], *, weights: bool) -> Any:
    """What the evaluator returns for ``s`` (``weights``: a state dict and an artifact
    of the measured length, as the normal way stores them)."""
    from slimtune.search._pipeline import CandidateResult

    stopped = s.state == "PRUNED"
    m = None if stopped else measurement(s, base)
    val = s.figures["accuracy"] - (0.05 if stopped else 0.0)
    return CandidateResult(
        params={**fixed, **s.params}, measurement=m, val_accuracy=val,
        artifact=bytes(s.figures["artifact_bytes"]) if weights and m else None, artifact_format="onnx" if m else None,
        recipe={"synthetic": True}, state_dict={} if weights and m else None, train_seconds=1.5, total_seconds=2.0,
        pre=pre_measurement(s), stopped=STOPPED if stopped else None, info={"val_accuracy_per_epoch": [val]})


class SyntheticEvaluator:
    """Stands in for ``slimtune.search._pipeline.Evaluator``: returns trial ``n``'s drawn
    outcome (``draw(n)``) for the values the backend proposed; fails the FAIL ones."""

    seed = 0

    def __init__(self, task: Any, space: Any, settings: Any, baseline: Any, **options: Any) -> None:
        self.task, self.space = task, space  # options: what the real one takes too (e.g. place)
        self.base: dict[str, Any] = {}  # the study's baseline measurement, set by run_normally

    def evaluate(self, values: dict[str, Any], *, should_stop: Any = None, metadata: Any = None) -> Any:
        s = draw(int(metadata["trial"]), self.base, seed=self.seed)
        if s.state == "FAIL":
            raise RuntimeError("synthetic failure")
        s.params = dict(values)
        return candidate_result(s, self.base, dict(self.space.fixed), weights=True)


def run_normally(study: Any, n: int, *, seed: int = 0) -> None:
    """``n`` more trials through ``study.optimize`` (random sampler, no warm starts),
    evaluated by :class:`SyntheticEvaluator`."""
    import slimtune.search._pipeline as pipeline

    base = study.baseline.to_dict()
    real = pipeline.Evaluator

    class Evaluator(SyntheticEvaluator):
        def __init__(self, *args: Any, **options: Any) -> None:
            super().__init__(*args, **options)
            self.base, self.seed = base, seed

    pipeline.Evaluator = Evaluator
    try:
        study.optimize(n_trials=n, progress=False, sampler="random", warm_start=False)
    finally:
        pipeline.Evaluator = real


# -- the same rows, in bulk ------------------------------------------------------------------
def write_in_bulk(study: Any, trials: Sequence[Synthetic], *, started: datetime | None = None) -> None:
    """Append ``trials`` (numbers following the study's last) to ``study``'s database
    with multi-row INSERTs: Optuna's trial, parameters, values, user and system
    attributes and heartbeat, and slimtune's candidate record, as
    :func:`run_normally` writes them (but the weights)."""
    from optuna.distributions import distribution_to_json
    from sqlalchemy import MetaData, create_engine, event, func, insert, select

    from slimtune.search._backends._interface import Proposal
    from slimtune.search._constraints import COLLAPSE_CONSTRAINT, collapse_margin
    from slimtune.search._heartbeat import BEATING_ATTR, worker_identity
    from slimtune._dominance import optuna_latency_unit
    from slimtune.search._outcome import TrialOutcome, objective_values, user_attrs
    from slimtune.studies._schema import CandidateRecord

    base, fixed = study.baseline.to_dict(), study.fixed
    unit = optuna_latency_unit(study.optuna_study.metric_names)  # what Optuna is told for latency
    dists = distributions(study.space)
    dist_json = {name: distribution_to_json(d) for name, d in dists.items()}
    optuna_id = study.optuna_study._study_id  # noqa: SLF001 - the Optuna study's key in its tables
    heartbeats = study.optuna_study._storage.get_heartbeat_interval()  # noqa: SLF001
    beating = worker_identity()  # who beats, as a real worker writes it
    engine = create_engine(study._storage.db.url)  # noqa: SLF001 - the unmasked URL
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", lambda conn, _: conn.execute("PRAGMA synchronous=OFF"))
    meta = MetaData()
    names = ("trials", "trial_params", "trial_values", "trial_user_attributes", "trial_system_attributes",
             "trial_heartbeats")
    meta.reflect(engine, only=names)
    rows: dict[str, list[tuple]] = {name: [] for name in names}
    records = []
    started = started or datetime.now() - timedelta(days=1)
    worker, dumps = socket.gethostname(), json.dumps
    with engine.begin() as conn:
        trial_id = int(conn.execute(select(func.coalesce(func.max(meta.tables["trials"].c.trial_id), 0))).scalar())
        for s in trials:
            trial_id += 1
            start = started + timedelta(seconds=3 * s.number)
            end = start + timedelta(seconds=2)
            rows["trials"].append((trial_id, s.number, optuna_id, s.state, start, end))
            rows["trial_params"].extend((trial_id, name, dists[name].to_internal_repr(value), dist_json[name])
                                        for name, value in s.params.items())
            result = None if s.state == "FAIL" else candidate_result(s, base, fixed, weights=False)
            m = result.measurement if result is not None else None
            outcome = TrialOutcome(Proposal(None, s.params, tuner="RandomSampler"), s.state,  # type: ignore[arg-type]
                                   objective_values(m, study.objectives, unit) if m else None, result,
                                   error=FAILURE if s.state == "FAIL" else None, backend="optuna", worker=worker)
            system: dict[str, Any] = {BEATING_ATTR: beating} if heartbeats else {}
            if m is not None:
                system[f"constraints:{COLLAPSE_CONSTRAINT}"] = collapse_margin(m.accuracy, base["accuracy"])
            rows["trial_system_attributes"].extend((trial_id, k, dumps(v)) for k, v in system.items())
            rows["trial_user_attributes"].extend((trial_id, k, dumps(v))
                                                 for k, v in user_attrs(outcome, fixed).items())
            rows["trial_values"].extend((trial_id, k, v, "FINITE") for k, v in enumerate(outcome.values or ()))
            if heartbeats:
                rows["trial_heartbeats"].append((trial_id, end.replace(microsecond=0)))
            records.append(_record(study, s, result, outcome, end))
        columns = {"trials": ("trial_id", "number", "study_id", "state", "datetime_start", "datetime_complete"),
                   "trial_params": ("trial_id", "param_name", "param_value", "distribution_json"),
                   "trial_values": ("trial_id", "objective", "value", "value_type"),
                   "trial_user_attributes": ("trial_id", "key", "value_json"),
                   "trial_system_attributes": ("trial_id", "key", "value_json"),
                   "trial_heartbeats": ("trial_id", "heartbeat")}
        for name in names:
            if rows[name]:
                _insert_many(conn, meta.tables[name], columns[name], rows[name])
        conn.execute(insert(CandidateRecord), records)
    engine.dispose()


def _insert_many(conn: Any, table: Any, columns: Sequence[str], rows: list[tuple]) -> None:
    """``INSERT`` of many rows of plain values: the driver's ``executemany`` on SQLite
    (datetimes written as SQLAlchemy writes them), SQLAlchemy core elsewhere."""
    from sqlalchemy import insert

    if conn.dialect.name != "sqlite":
        conn.execute(insert(table), [dict(zip(columns, r)) for r in rows])
        return
    stamp = "%Y-%m-%d %H:%M:%S.%f"
    rows = [tuple(v.strftime(stamp) if isinstance(v, datetime) else v for v in r) for r in rows]
    sql = f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
    conn.exec_driver_sql(sql, rows)


def _measurement_dict(m: Any) -> dict[str, Any]:
    """``Measurement.to_dict()`` without ``dataclasses.asdict``'s deep copies (the same JSON)."""
    data = {name: getattr(m, name) for name in m.__dataclass_fields__}
    data["latency_samples_ms"] = list(m.latency_samples_ms)
    data["flags"] = list(m.flags)
    if m.exit_rates is not None:
        data["exit_rates"] = list(m.exit_rates)
    return data


def _record(study: Any, s: Synthetic, result: Any, outcome: Any, created: datetime) -> dict[str, Any]:
    """The candidate record's columns, as ``Recording.record`` fills them."""
    m = result.measurement if result is not None else None
    pre = result.pre if result is not None else None
    info = {**(result.info if result is not None else {}), "constraints": {}, "early_stopping": False}
    return dict(
        study_id=study._record.id, study_name=study.name, trial_number=s.number, state=s.state,  # noqa: SLF001
        params=dict(result.params) if result is not None else {**study.fixed, **s.params},
        accuracy=m.accuracy if m else None, val_accuracy=result.val_accuracy if result is not None else None,
        test_accuracy=m.test_accuracy if m else None, latency_ms=m.latency_ms if m else None,
        size_bytes=int(m.size_bytes) if m else None, artifact_bytes=s.figures["artifact_bytes"] if m else None,
        macs=int(m.macs) if m else None, measurement=_measurement_dict(m) if m else None,
        pre={"latency_ms": pre.latency_ms, "size_bytes": int(pre.size_bytes), "macs": int(pre.macs),
             "reference_latency_ms": pre.reference_latency_ms} if pre is not None else None,
        fingerprint_id=m.fingerprint_id if m else None,
        exit_rates=list(m.exit_rates) if m and m.exit_rates is not None else None,
        flags=list(m.flags) if m else [], recipe=result.recipe if m else None, info=info, backend="optuna",
        tuner="RandomSampler", stopped_reason=result.stopped if result is not None else None, error=outcome.error,
        train_seconds=result.train_seconds if result is not None else None,
        total_seconds=result.total_seconds if result is not None else None, worker=outcome.worker, created_at=created)


def synthetic_study(storage: str, name: str, n: int, *, seed: int = 0) -> Any:
    """Study ``name`` of the ``digits`` task with at least ``n`` synthetic trials (the
    missing ones written in bulk; the baseline is measured once, then cached)."""
    from slimtune import Study

    study = Study.create_or_load(name, storage=storage, task="digits", settings=SETTINGS, seed=seed,
                                 early_stopping=False)
    have = len(study.trials())
    if have < n:
        base, rng, dists = study.baseline.to_dict(), random.Random(seed * 7919 + have), distributions(study.space)
        trials = [draw(i, base, seed=seed) for i in range(have, n)]
        for s in trials:
            s.params = draw_params(dists, rng)
        for i in range(0, len(trials), 10_000):  # a transaction per 10,000 trials: bounded memory
            write_in_bulk(study, trials[i:i + 10_000])
    return study


def n_trials(study: Any) -> int:
    """How many trials Optuna's table holds for ``study`` (one ``COUNT``): the next number."""
    from sqlalchemy import create_engine, text

    engine = create_engine(study._storage.db.url)  # noqa: SLF001 - the unmasked URL
    try:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM trials WHERE study_id = :s"),
                                    {"s": study.optuna_study._study_id}).scalar())  # noqa: SLF001
    finally:
        engine.dispose()
