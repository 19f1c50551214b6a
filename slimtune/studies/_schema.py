"""slimtune's own tables, beside Optuna's in the same database.

They use their own :class:`~sqlalchemy.orm.DeclarativeBase`, every table is prefixed
``slimtune_``, and they refer to Optuna only by study name and trial number (no
foreign key into Optuna's tables, no import of Optuna's private models), so Optuna's
migrations and ours never touch each other.

Tables (schema version :data:`SCHEMA_VERSION`; version 2 added
``slimtune_candidates.test_accuracy`` and ``artifact_bytes``, see
``database.MIGRATIONS``):

``slimtune_schema_version``
    one row: the schema version the database was written with.
``slimtune_studies``
    one row per study: task spec and fingerprint, space JSON and fingerprint, fixed
    values, objectives, constraints, evaluation settings, early-stopping rule, sampler,
    seed, the baseline's measurement, the slimtune version that created it.
``slimtune_candidates``
    one row per Optuna trial that slimtune ran: full parameters, every metric
    (``accuracy`` = ``val_accuracy``: the timed artifact on the validation split, the
    objective; ``test_accuracy``: the same artifact on the test split), latency
    samples, machine fingerprint, exit rates, recipe, flags, the backend and tuner
    that proposed it, why it stopped early (if it did), timings.
``slimtune_weights``
    one row per complete candidate: the ``torch.save`` bytes of its state dict (read
    back with ``weights_only=True``) and the artifact that was timed (ONNX or
    TorchScript bytes).  Kept apart so listing candidates never reads blobs.
``slimtune_warm_starts``
    one row per planned warm start of a study: its values, how many times it was
    claimed (each claim is one compare-and-set ``UPDATE``, so two workers never take
    the same one) and the trial of the last claim
    (:mod:`slimtune.search._warm_claims`).  Added without a schema version step: it is
    created where missing when a study is opened for trials, and older slimtune
    versions ignore it.
``slimtune_target_measurements``
    one row per complete trial and each target of its study but the first (a study
    timed on several targets, :mod:`slimtune.search._targets`; the first target's
    measurement is the candidate's own): that target's figures and whole measurement,
    and the artifact timed there (or the error that kept it from being measured).
    Added like the warm starts, without a schema version step.

``slimtune_fidelities``
    one row per trial run since fidelities exist: the distillation epochs it got out of
    the study's (0: a training-free candidate) and the trial it was promoted from
    (:mod:`slimtune.search._fidelity`); a trial without a row is full fidelity.  Added
    without a schema version step, like ``slimtune_warm_starts``.

Types are portable (``JSON``, ``LargeBinary``, ``BigInteger``; LONGBLOB on MySQL), so any
database Optuna's RDBStorage accepts holds them.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Float, ForeignKey, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

#: Bump when the tables change, and add a migration step in ``database.MIGRATIONS``.
SCHEMA_VERSION = 2

Blob = LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    """slimtune's declarative base (never Optuna's)."""

    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class SchemaVersion(Base):
    __tablename__ = "slimtune_schema_version"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    slimtune_version: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class StudyRecord(Base):
    __tablename__ = "slimtune_studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_name: Mapped[str] = mapped_column(String(512), unique=True, index=True)
    task_name: Mapped[str] = mapped_column(String(256))
    task_spec: Mapped[str] = mapped_column(String(1024))
    task_fingerprint: Mapped[str] = mapped_column(String(64))
    task_notes: Mapped[str] = mapped_column(Text, default="")
    space: Mapped[dict[str, Any]] = mapped_column(JSON)
    space_fingerprint: Mapped[str] = mapped_column(String(64))
    fixed: Mapped[dict[str, Any]] = mapped_column(JSON)
    objectives: Mapped[list[Any]] = mapped_column(JSON)
    constraints: Mapped[dict[str, Any]] = mapped_column(JSON)
    settings: Mapped[dict[str, Any]] = mapped_column(JSON)
    early_stopping: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    sampler: Mapped[str] = mapped_column(String(64))
    seed: Mapped[int | None] = mapped_column(Integer, nullable=True)
    baseline: Mapped[dict[str, Any]] = mapped_column(JSON)
    slimtune_version: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    candidates: Mapped[list["CandidateRecord"]] = relationship(back_populates="study", cascade="all, delete-orphan")


class CandidateRecord(Base):
    __tablename__ = "slimtune_candidates"
    __table_args__ = (UniqueConstraint("study_id", "trial_number", name="uq_slimtune_candidates_trial"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("slimtune_studies.id", ondelete="CASCADE"), index=True)
    study_name: Mapped[str] = mapped_column(String(512), index=True)  # the link to Optuna
    trial_number: Mapped[int] = mapped_column(Integer)  # the link to Optuna
    state: Mapped[str] = mapped_column(String(16))  # COMPLETE, PRUNED, FAIL
    params: Mapped[dict[str, Any]] = mapped_column(JSON)  # every value, fixed ones included
    accuracy: Mapped[float | None] = mapped_column(Float, nullable=True)  # the objective: validation accuracy
    val_accuracy: Mapped[float | None] = mapped_column(Float, nullable=True)  # the same (early stopping reads it)
    test_accuracy: Mapped[float | None] = mapped_column(Float, nullable=True)  # reported apart (schema 2)
    latency_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # length of the packed model file
    artifact_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # length of the timed artifact (schema 2)
    macs: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    measurement: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # Measurement.to_dict()
    pre: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # PreMeasurement
    fingerprint_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    exit_rates: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    flags: Mapped[list[Any]] = mapped_column(JSON, default=list)
    recipe: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    info: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    backend: Mapped[str] = mapped_column(String(64))
    tuner: Mapped[str] = mapped_column(String(128))
    stopped_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    train_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    total_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    worker: Mapped[str] = mapped_column(String(256), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    study: Mapped[StudyRecord] = relationship(back_populates="candidates")
    weights: Mapped["WeightsRecord | None"] = relationship(back_populates="candidate", cascade="all, delete-orphan",
                                                          uselist=False)


class WeightsRecord(Base):
    __tablename__ = "slimtune_weights"

    candidate_id: Mapped[int] = mapped_column(ForeignKey("slimtune_candidates.id", ondelete="CASCADE"), primary_key=True)
    state_dict: Mapped[bytes] = mapped_column(Blob)  # torch.save(state_dict)
    artifact: Mapped[bytes | None] = mapped_column(Blob, nullable=True)  # the timed ONNX / TorchScript
    artifact_format: Mapped[str | None] = mapped_column(String(32), nullable=True)
    artifact_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)

    candidate: Mapped[CandidateRecord] = relationship(back_populates="weights")


class WarmStartRecord(Base):
    __tablename__ = "slimtune_warm_starts"
    __table_args__ = (UniqueConstraint("study_id", "position", name="uq_slimtune_warm_starts_position"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("slimtune_studies.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)  # every searched value
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    trial_number: Mapped[int | None] = mapped_column(Integer, nullable=True)  # the last claim's trial
    claimed_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    worker: Mapped[str] = mapped_column(String(256), default="")


class TargetMeasurementRecord(Base):
    __tablename__ = "slimtune_target_measurements"
    __table_args__ = (UniqueConstraint("study_id", "trial_number", "target", name="uq_slimtune_target_measurements"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("slimtune_studies.id", ondelete="CASCADE"), index=True)
    trial_number: Mapped[int] = mapped_column(Integer)
    target: Mapped[str] = mapped_column(String(128))  # Target.key, e.g. openvino:64@1
    accuracy: Mapped[float | None] = mapped_column(Float, nullable=True)  # that artifact's validation accuracy
    test_accuracy: Mapped[float | None] = mapped_column(Float, nullable=True)
    latency_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    reference_latency_ms: Mapped[float | None] = mapped_column(Float, nullable=True)  # the baseline, same run
    size_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    artifact_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    measurement: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # Measurement.to_dict()
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    artifact: Mapped[bytes | None] = mapped_column(Blob, nullable=True)  # the bytes timed on that target
    artifact_format: Mapped[str | None] = mapped_column(String(32), nullable=True)
    artifact_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class FidelityRecord(Base):
    __tablename__ = "slimtune_fidelities"
    __table_args__ = (UniqueConstraint("study_id", "trial_number", name="uq_slimtune_fidelities_trial"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("slimtune_studies.id", ondelete="CASCADE"), index=True)
    trial_number: Mapped[int] = mapped_column(Integer)
    epochs: Mapped[int] = mapped_column(Integer)  # distillation epochs the trial got (0: training-free)
    full_epochs: Mapped[int] = mapped_column(Integer)  # the study's (full fidelity)
    promoted_from: Mapped[int | None] = mapped_column(Integer, nullable=True)  # the cheaper trial it continues


TABLES = [m.__table__ for m in (SchemaVersion, StudyRecord, CandidateRecord, WeightsRecord, WarmStartRecord,
                                TargetMeasurementRecord, FidelityRecord)]
