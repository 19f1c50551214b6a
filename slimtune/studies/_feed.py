"""What a live view of a study reads: every trial's figures at once, a few trials in
full, and which trials changed since the last look.

:class:`TrialFeed` is the dashboard's one way into a study's database.  ``points()``
reads every trial in one bulk read of its figures (no parameters: what a plot and the
select rule need, the fields of :data:`POINT_FIELDS`, equal to those of
``Study.trials()``); ``rows(numbers)`` reads some trials in full (``Study.trials()``
rows, ``pareto`` left unmarked); ``changed()`` finds the trials that are new or
changed since the last ``points()`` or ``changed()``, in two statements over id
ranges whose cost follows the changes, not the study.

Example:
    >>> feed = TrialFeed(study)
    >>> points = feed.points()           # every trial, figures only
    >>> rows = feed.rows([3, 7])         # two trials in full
    >>> feed.changed()                   # later: numbers of trials new or changed since
    [12]
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from slimtune.search._measurement import same_run_speedup
from slimtune.studies._rows import MEASUREMENT_KEYS, METRICS, make_row, merged_state

#: The fields of a point, each one as ``Study.trials()`` gives it (but ``pre``, the
#: costs measured before training, is given only for trials that are not complete: a
#: plot draws the others at their final costs); ``feasible`` too when the study has
#: constraints.
POINT_FIELDS = ("trial", "state", *METRICS, "val_accuracy", "reference_latency_ms", "speedup", "pre",
                "fingerprint_id", "stopped_reason", "fidelity")
#: States of an Optuna trial that may still change.
OPEN_STATES = ("RUNNING", "WAITING")


class TrialFeed:
    """Reads one study for a live view (the study's own storage; see the module)."""

    #: ``changed()`` looks again at the last ``LAG`` ids of each table: a row committed
    #: after one with a higher id (several workers on PostgreSQL) is still seen.
    LAG = 64
    #: ``rows()`` of more trials than this reads them all.
    FEW = 500

    def __init__(self, study: Any) -> None:
        self.study = study
        self.objectives = tuple(study.objectives)
        self._storage = getattr(study, "_storage", None)  # the study's reader (None: not a slimtune Study)
        self._ids: tuple[int, int] | None = None  # (slimtune's study id, Optuna's)
        self._trial_ids: dict[int, int] = {}  # trial number -> Optuna's trial id
        self._states: dict[int, str] = {}  # Optuna's trial id -> state
        self._open: set[int] = set()  # Optuna's ids of trials that may still change
        self._records: set[int] = set()  # record ids seen
        self._last_trial = self._last_record = 0
        self._fallback = self._storage is None  # read through ``study.trials()`` only

    @property
    def bulk(self) -> bool:
        """Whether the feed reads in bulk (else through ``study.trials()``: Optuna's
        tables are not as expected, or ``study`` is not a slimtune study)."""
        return not self._fallback

    # -- reading -------------------------------------------------------------------------
    def points(self) -> list[dict[str, Any]]:
        """Every trial's figures (:data:`POINT_FIELDS`), by trial number, in one bulk read."""
        if not self._fallback:
            ids = self._study_ids()
            figures = None if ids is None else self._storage.trial_figures(
                ids[1], ids[0], self.objectives, constraints=self.study.constraints.active)
            if figures is not None:
                self._remember(figures.trials, [(r[0], n) for n, r in figures.records.items()])
                points = _points(figures, self.objectives)
                fidelities = self._storage.fidelities(ids[0])
                for p in points:
                    p["fidelity"] = fidelities.get(p["trial"])
                    if "feasible" in p:  # the fields in POINT_FIELDS' order, then feasible
                        p["feasible"] = p.pop("feasible")
                return points
            self._fallback = True  # Optuna's tables are not as expected: its own API answers
        rows = self.study.trials()
        self._states = {r["trial"]: r["state"] for r in rows}
        return [{k: r.get(k) for k in (*POINT_FIELDS, "feasible")} for r in rows]

    def rows(self, numbers: Iterable[int] | None = None) -> list[dict[str, Any]]:
        """Trials ``numbers`` (default: all) as ``Study.trials()`` rows, unmarked
        ``pareto``; six statements whatever their number."""
        wanted = None if numbers is None else set(numbers)
        if self._fallback:
            return [r for r in self.study.trials() if wanted is None or r["trial"] in wanted]
        study_id, optuna_id = self._study_ids()
        few = wanted is not None and len(wanted) <= self.FEW  # else all are read (a statement has few parameters)
        ids = [self._trial_ids[n] for n in wanted if n in self._trial_ids] if few else None
        views = {t.number: t for t in self._storage.optuna_trials(
            optuna_id, study_id, trial_ids=ids, fallback=lambda: self.study.optuna_study.get_trials(deepcopy=False))}
        records = self._storage.candidates(study_id, sorted(wanted) if few else None, measurement_keys=MEASUREMENT_KEYS)
        fixed = self.study.fixed
        return [make_row(records.get(n), views.get(n), objectives=self.objectives, fixed=fixed)
                for n in sorted(set(records) | set(views)) if wanted is None or n in wanted]

    def changed(self) -> list[int]:
        """Numbers of the trials new or changed since the last ``points()`` or
        ``changed()`` (two statements; ``points()`` first)."""
        if self._fallback:
            before, self._states = self._states, {r["trial"]: r["state"] for r in self.study.trials()}
            return sorted(n for n, state in self._states.items() if before.get(n) != state)
        study_id, optuna_id = self._study_ids()
        trials, records = self._storage.trial_changes(
            optuna_id, study_id, trials_after=self._last_trial - self.LAG, trial_ids=sorted(self._open),
            records_after=self._last_record - self.LAG)
        numbers = {n for tid, n, state in trials if self._states.get(tid) != state}
        numbers |= {n for rid, n in records if rid not in self._records}
        self._remember(trials, records)
        return sorted(numbers)

    # -- bookkeeping ---------------------------------------------------------------------
    def _study_ids(self) -> tuple[int, int] | None:
        """``(slimtune's study id, Optuna's)``, or None when either cannot be read."""
        if self._ids is None:
            record = self._storage.find_study(self.study.name)
            optuna_id = self._storage.optuna_study_id(self.study.name)
            if record is None or optuna_id is None:
                return None
            self._ids = (record.id, optuna_id)
        return self._ids

    def _remember(self, trials: Sequence[tuple[int, int, str]], records: Sequence[tuple[int, int]]) -> None:
        if trials:
            tids, numbers, states = zip(*trials)
            self._trial_ids.update(zip(numbers, tids))
            self._states.update(zip(tids, states))
            self._open.difference_update(tids)
            self._open.update(tid for tid, state in zip(tids, states) if state in OPEN_STATES)
            self._last_trial = max(self._last_trial, max(tids))
        if records:
            rids = [rid for rid, _ in records]
            self._records.update(rids)
            self._last_record = max(self._last_record, max(rids))


def _points(figures: Any, objectives: Sequence[str]) -> list[dict[str, Any]]:
    """Each trial's figures, merged from Optuna's side and slimtune's record as
    :func:`~slimtune.studies._rows.make_row` merges them."""
    optuna_side = {number: (tid, state) for tid, number, state in figures.trials}
    records, values, attrs = figures.records, figures.values, figures.user_attrs
    usual = figures.constraints is None
    out = []
    for number in sorted(optuna_side.keys() | records.keys()):
        tid, state = optuna_side.get(number, (None, None))
        record = records.get(number)
        if record is None or not usual or tid in values or tid in attrs:
            out.append(_point(number, tid, state, record, figures, objectives))
            continue
        # the usual trial: a record, and nothing it lacks on Optuna's side
        _, record_state, val, accuracy, test_accuracy, latency, size, artifact, macs, fingerprint, reason, reference, \
            pre = record
        if tid is None or state == "RUNNING" or record_state == "COMPLETE":
            state = merged_state(state, record_state)
        state = state or "UNKNOWN"
        if state == "COMPLETE" and accuracy is not None:
            val = accuracy
        out.append({"trial": number, "state": state, "accuracy": accuracy, "test_accuracy": test_accuracy,
                    "latency_ms": latency, "size_bytes": size, "artifact_bytes": artifact, "macs": macs,
                    "val_accuracy": val, "reference_latency_ms": reference,
                    "speedup": same_run_speedup(reference, latency), "pre": pre, "fingerprint_id": fingerprint,
                    "stopped_reason": reason})
    return out


def _point(number: int, tid: int | None, state: str | None, record: tuple | None, figures: Any,
           objectives: Sequence[str]) -> dict[str, Any]:
    """One trial's figures, any case (see :func:`_points`)."""
    constraints = figures.constraints
    metrics: dict[str, Any] = dict.fromkeys(METRICS)
    val = reference = pre = fingerprint = reason = None
    feasible = None
    if tid is not None:
        values, attrs = figures.values.get(tid, {}), figures.user_attrs.get(tid, {})
        for name in METRICS:  # slimtune's own units first (Optuna may be told latency as a ratio)
            if attrs.get(name) is not None:
                metrics[name] = attrs[name]
        for k, name in enumerate(objectives):
            if k in values and metrics[name] is None:
                metrics[name] = values[k]
        val, reference = attrs.get("val_accuracy"), attrs.get("reference_latency_ms")
        fingerprint, reason = attrs.get("fingerprint_id"), attrs.get("stopped_reason")
        if constraints is not None:
            feasible = all(v <= 0 for v in constraints.get(tid, {}).values())
    if record is not None:
        _, record_state, val, accuracy, test_accuracy, latency, size, artifact, macs, fingerprint, reason, reference, \
            pre = record
        if tid is None or state == "RUNNING" or record_state == "COMPLETE":
            state = merged_state(state, record_state)
            if feasible is None and constraints is not None:
                feasible = True
        for name, value in zip(METRICS, (accuracy, test_accuracy, latency, size, artifact, macs)):
            if value is not None:
                metrics[name] = value
    state = state or "UNKNOWN"
    if state == "COMPLETE" and metrics["accuracy"] is not None:
        val = metrics["accuracy"]
    point = {"trial": number, "state": state, **metrics, "val_accuracy": val, "reference_latency_ms": reference,
             "speedup": same_run_speedup(reference, metrics["latency_ms"]), "pre": pre, "fingerprint_id": fingerprint,
             "stopped_reason": reason}
    if constraints is not None:
        point["feasible"] = feasible
    return point
