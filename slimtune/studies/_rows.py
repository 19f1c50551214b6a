"""Trial rows: one JSON-friendly ``dict`` per trial, merged from Optuna's trial and
slimtune's candidate record.

Keys (DESIGN.md's JSON contract first): ``trial``, ``params``, ``accuracy``
(= ``val_accuracy``: the timed artifact on the validation split, the objective),
``test_accuracy`` (the same artifact on the test split, reported apart),
``latency_ms``, ``reference_latency_ms`` (the baseline timed in the same run),
``speedup`` (their ratio), ``size_bytes`` (the packed model file),
``artifact_bytes`` (the timed artifact), ``macs``, ``pareto``, then ``state``,
``feasible``, ``constraints``, ``latency_p95_ms``, ``latency_kind``, ``kernel_bits``, ``runtime``,
``target`` (what the latency was timed on: runtime, precision, batch_size, threads), ``exit_rates``, ``flags``,
``fingerprint_id``, ``stopped_reason``, ``error``, ``backend``, ``tuner``, ``pre``,
``val_accuracy_per_epoch``, ``train_seconds``, ``total_seconds``, ``worker``,
``trained_on`` (device, its name, mixed precision), ``timed_on`` (runtime, host, CPU),
``fidelity`` (the training it got: ``epochs``, ``full_epochs``, ``label``; ``None``: full,
stored before fidelities, :mod:`slimtune.search._fidelity`),
``datetime_start``, ``datetime_complete``; ``optuna_state`` only where Optuna's
finished state differs from the row's (see :func:`merged_state`).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from slimtune.search._measurement import measurement_target, same_run_speedup
from slimtune.search._backends._interface import MOVED_PARAM
from slimtune.search._fidelity import is_final
from slimtune._dominance import baseline_on_front, beaten_by_baseline, non_dominated_mask

if TYPE_CHECKING:  # pragma: no cover
    from optuna.trial import FrozenTrial

    from slimtune.studies._schema import CandidateRecord

METRICS = ("accuracy", "test_accuracy", "latency_ms", "size_bytes", "artifact_bytes", "macs")
#: The keys of a record's ``measurement`` that :func:`make_row` reads.
MEASUREMENT_KEYS = ("latency_p95_ms", "latency_kind", "reference_latency_ms", "kernel_bits", "runtime", "params_count",
                    "precision", "batch_size", "threads")


def _iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value is not None else None


def make_row(record: "CandidateRecord | None", trial: "FrozenTrial | None", *, objectives: Sequence[str],
             fixed: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The row of one trial (either side may be missing: a RUNNING trial has no record
    yet; a record written just before ``tell`` has no finished Optuna trial yet)."""
    row: dict[str, Any] = {"trial": None, "params": {}, **{k: None for k in METRICS}, "val_accuracy": None,
                           "reference_latency_ms": None, "speedup": None, "pareto": False,
                           "fidelity": None}
    if trial is not None:
        row["trial"] = trial.number
        row["state"] = trial.state.name
        row["params"] = {**dict(fixed or {}), **{k: v for k, v in trial.params.items() if k != MOVED_PARAM}}
        attrs = trial.user_attrs
        for name in METRICS:  # what slimtune wrote, in its own units (Optuna may be told latency as a ratio)
            if attrs.get(name) is not None:
                row[name] = attrs[name]
        if trial.values is not None:
            for name, value in zip(objectives, trial.values):
                if row[name] is None:
                    row[name] = value
        constraints = dict(trial.constraints)
        row.update(
            constraints=constraints, feasible=all(v <= 0 for v in constraints.values()),
            val_accuracy=attrs.get("val_accuracy"), reference_latency_ms=attrs.get("reference_latency_ms"),
            stopped_reason=attrs.get("stopped_reason"),
            error=attrs.get("error"), backend=attrs.get("backend"), tuner=attrs.get("tuner"),
            flags=attrs.get("flags") or [], exit_rates=attrs.get("exit_rates"), fingerprint_id=attrs.get("fingerprint_id"),
            datetime_start=_iso(trial.datetime_start), datetime_complete=_iso(trial.datetime_complete),
            fidelity=attrs.get("fidelity"),
        )
    if record is not None:
        m = record.measurement or {}
        row["trial"] = record.trial_number
        row["params"] = dict(record.params)
        if trial is not None and trial.state.is_finished() and trial.state.name != record.state:
            row["optuna_state"] = trial.state.name  # e.g. failed as stale after slimtune recorded it
        if trial is None or trial.state.name == "RUNNING" or record.state == "COMPLETE":
            row["state"] = merged_state(trial.state.name if trial is not None else None, record.state)
            row.setdefault("datetime_complete", _iso(record.created_at))
            row.setdefault("constraints", {})
            row.setdefault("feasible", True)
        for name in METRICS:
            value = getattr(record, name)
            if value is not None:
                row[name] = value
        row.update(
            val_accuracy=record.val_accuracy,
            latency_p95_ms=m.get("latency_p95_ms"), latency_kind=m.get("latency_kind"),
            reference_latency_ms=m.get("reference_latency_ms"), kernel_bits=m.get("kernel_bits"), runtime=m.get("runtime"),
            target=measurement_target(m), params_count=m.get("params_count"), exit_rates=record.exit_rates, flags=list(record.flags or []),
            fingerprint_id=record.fingerprint_id, stopped_reason=record.stopped_reason, error=record.error,
            backend=record.backend, tuner=record.tuner, pre=record.pre, train_seconds=record.train_seconds,
            total_seconds=record.total_seconds, worker=record.worker, has_artifact=record.state == "COMPLETE",
            val_accuracy_per_epoch=(record.info or {}).get("val_accuracy_per_epoch"),
            trained_on=(record.info or {}).get("trained_on"), timed_on=(record.info or {}).get("timed_on"),
        )
        if (record.info or {}).get("fidelity") is not None:
            row["fidelity"] = record.info["fidelity"]
    if row.get("state") == "COMPLETE" and row.get("accuracy") is not None:
        row["val_accuracy"] = row["accuracy"]  # one figure: the artifact's validation accuracy
    row["speedup"] = speedup(row)
    row.setdefault("state", "UNKNOWN")
    if row["state"] == "FAIL" and record is None and not row.get("error"):
        row["error"] = NO_RECORD_ERROR
    return row


def speedup(row: Mapping[str, Any]) -> float | None:
    """``reference_latency_ms / latency_ms`` of the same trial (the baseline timed in the
    same run; ``None`` when either is missing)."""
    return same_run_speedup(row.get("reference_latency_ms"), row.get("latency_ms"))


#: Why a FAIL trial without slimtune's record failed (Optuna's stale-trial detection).
NO_RECORD_ERROR = "its worker stopped (no heartbeat for the grace period) before the trial was recorded"


def merged_state(optuna_state: str | None, record_state: str | None) -> str:
    """A trial's state in every view (``show``, ``studies``, ``select``, ``export``).

    A COMPLETE record (written, with the weights, only by a worker that finished the
    trial, just before ``tell``) is COMPLETE whatever Optuna says: Optuna may have
    failed the trial as stale when its worker died, or slept past the grace period,
    between the two writes.  Otherwise Optuna's state once it is finished, else the
    record's, else Optuna's (RUNNING, WAITING).
    """
    if record_state == "COMPLETE":
        return "COMPLETE"
    if optuna_state is not None and optuna_state not in ("RUNNING", "WAITING"):
        return optuna_state
    if record_state is not None:
        return record_state
    return optuna_state or "UNKNOWN"


def mark_pareto(rows: list[dict[str, Any]], objectives: Sequence[str], *, feasible_only: bool,
                baseline: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Set ``row["pareto"]``: complete (and, with constraints, feasible) rows of a final
    fidelity (full or training-free: :func:`~slimtune.search._fidelity.is_final`) that
    no other such row dominates, nor the ``baseline`` (a point of the frontier), latency
    compared as same-run ratios (:func:`~slimtune._dominance.relative_latency`)."""
    eligible = [r for r in rows if r.get("state") == "COMPLETE" and (not feasible_only or r.get("feasible", True))
                and is_final(r)]
    mask = non_dominated_mask(eligible, objectives, baseline_latency_ms=(baseline or {}).get("latency_ms"))
    on = {id(r) for r, keep in zip(eligible, mask) if keep and not beaten_by_baseline(r, baseline, objectives)}
    for r in rows:
        r["pareto"] = id(r) in on
    return rows


def in_states(rows: list[dict[str, Any]], states: Sequence[str] | None) -> list[dict[str, Any]]:
    """The rows whose ``state`` is one of ``states`` (any case); all of them for ``None``."""
    if states is None:
        return rows
    wanted = {s.upper() for s in states}
    return [r for r in rows if r["state"] in wanted]


def baseline_row(measurement: Mapping[str, Any], rows: Sequence[Mapping[str, Any]] | None,
                 objectives: Sequence[str]) -> dict[str, Any]:
    """The baseline (its stored ``measurement``) in the same fields as a trial row
    (``trial`` is ``"baseline"``): validation accuracy of its timed artifact (the
    objective), test accuracy, its latency when the study was created, packed and
    artifact sizes, MACs.  On the frontier it stands beside each trial with the latency
    it had in that trial's own run (``reference_latency_ms``).  With ``rows`` (trial
    rows), ``pareto`` says whether no complete trial beats it (in that trial's own run)."""
    m = measurement
    row = {"trial": "baseline", "state": "COMPLETE", "params": {}, "pareto": None,
           "accuracy": m.get("accuracy"), "val_accuracy": m.get("accuracy"), "test_accuracy": m.get("test_accuracy"),
           "latency_ms": m.get("latency_ms"), "reference_latency_ms": m.get("latency_ms"), "speedup": 1.0,
           "size_bytes": m.get("size_bytes"), "artifact_bytes": m.get("artifact_bytes"), "macs": m.get("macs"),
           "latency_kind": m.get("latency_kind"), "kernel_bits": m.get("kernel_bits"), "runtime": m.get("runtime"),
           "target": measurement_target(m), "fingerprint_id": m.get("fingerprint_id"), "flags": list(m.get("flags") or [])}
    if rows is not None:
        row["pareto"] = baseline_on_front(row, [r for r in rows if r.get("state") == "COMPLETE"], objectives)
    return row
