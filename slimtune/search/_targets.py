"""Targets: what a study's latencies are timed on, one or several per study.

A target is a runtime (``onnxruntime``, ``openvino``, ``torch``) with the batch size
and thread count it is timed at; the precision is the runtime's own choice, recorded
with each measurement.  A study has one target (``runtime``, ``batch_size``,
``threads`` of its settings) or several (``targets``), written
``runtime[:batch][@threads]``, e.g. ``ort:1,openvino:64`` (``ort`` is
``onnxruntime``).  The first target drives the search (what the sampler, early
stopping and constraints see); every trial is also timed on the others, each beside
the baseline timed on that target in the same run.  Imports nothing heavy.

Example:
    >>> [t.key for t in parse_targets("ort:1,openvino:64")]
    ['onnxruntime:1@1', 'openvino:64@1']
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from slimtune.search._measurement import RUNTIMES

if TYPE_CHECKING:  # pragma: no cover
    from slimtune.search._measurement import Measurement

#: Short names a spec may use for a runtime.
RUNTIME_ALIASES = {"ort": "onnxruntime", "ov": "openvino", "pt": "torch", "pytorch": "torch"}
#: ``runtime[:batch][@threads]``.
SPEC = re.compile(r"\s*([A-Za-z][A-Za-z0-9_-]*)\s*(?::\s*([0-9]+))?\s*(?:@\s*([0-9]+))?\s*")
#: Bounds of a target's batch size and threads (as ``--batch-size`` and ``--threads``).
MAX_BATCH, MAX_THREADS = 65536, 1024
SYNTAX = "runtime[:batch][@threads], e.g. ort:1,openvino:64"


class TargetError(ValueError):
    """A target spec that does not parse, or that a study does not have."""


@dataclass(frozen=True)
class Target:
    """One runtime at one batch size and thread count (the precision is the runtime's choice)."""

    runtime: str = "onnxruntime"
    batch_size: int = 1
    threads: int = 1

    @property
    def key(self) -> str:
        """``openvino:64@1``: how the study stores and names it."""
        return f"{self.runtime}:{self.batch_size}@{self.threads}"

    def label(self) -> str:
        """``openvino, batch 64, 1 thread``."""
        return (f"{self.runtime}, batch {self.batch_size}, {self.threads} "
                f"thread{'s' if self.threads != 1 else ''}")

    def to_dict(self) -> dict[str, Any]:
        return {"runtime": self.runtime, "batch_size": self.batch_size, "threads": self.threads}

    @classmethod
    def of(cls, measurement: "Measurement | dict[str, Any]") -> "Target":
        """The target a measurement was timed on."""
        m = measurement if isinstance(measurement, dict) else measurement.to_dict()
        return cls(m.get("runtime") or "onnxruntime", int(m.get("batch_size") or 1), int(m.get("threads") or 1))


def _runtime(name: str, spec: str) -> str:
    runtime = RUNTIME_ALIASES.get(name.lower(), name.lower())
    if runtime not in RUNTIMES:
        import difflib

        close = difflib.get_close_matches(runtime, [*RUNTIMES, *RUNTIME_ALIASES], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise TargetError(f"Unknown runtime {name!r} in target {spec!r}{hint}; the runtimes are "
                          f"{', '.join(RUNTIMES)} (ort = onnxruntime).")
    return runtime


def _parts(spec: str) -> tuple[str, int | None, int | None]:
    if not isinstance(spec, str):
        raise TargetError(f"A target is a string {SYNTAX}, but got {spec!r}.")
    match = SPEC.fullmatch(spec)
    if match is None:
        raise TargetError(f"A target is written {SYNTAX}, but got {spec!r}.")
    name, batch, threads = match.groups()
    out = (_runtime(name, spec), None if batch is None else int(batch), None if threads is None else int(threads))
    if out[1] is not None and not 1 <= out[1] <= MAX_BATCH:
        raise TargetError(f"The batch size of target {spec!r} must be in [1, {MAX_BATCH}], but got {out[1]}.")
    if out[2] is not None and not 1 <= out[2] <= MAX_THREADS:
        raise TargetError(f"The threads of target {spec!r} must be in [1, {MAX_THREADS}], but got {out[2]}.")
    return out


def parse_target(spec: str, *, threads: int = 1) -> Target:
    """``spec`` (``runtime[:batch][@threads]``) as a :class:`Target`; batch 1 and
    ``threads`` where it leaves them out."""
    runtime, batch, n = _parts(spec)
    return Target(runtime, 1 if batch is None else batch, threads if n is None else n)


def parse_targets(specs: "str | Sequence[str]", *, threads: int = 1) -> list[Target]:
    """A comma-separated string (or a list) of specs as targets, in order; an empty
    list or a target given twice is a :class:`TargetError`."""
    words = specs.split(",") if isinstance(specs, str) else list(specs)
    if not words or any(isinstance(w, str) and not w.strip() for w in words):
        raise TargetError(f"`targets` lists one or more targets, comma-separated, {SYNTAX}, but got {specs!r}.")
    targets = [parse_target(w, threads=threads) for w in words]
    seen: set[str] = set()
    for t in targets:
        if t.key in seen:
            raise TargetError(f"Target {t.key} is given twice in {specs!r}.")
        seen.add(t.key)
    return targets


def settings_targets(settings: Any) -> list[Target]:
    """The targets of a study's settings (an ``EvalSettings`` or its dict), the first
    the one that drives the search: its ``targets``, else its one runtime, batch size
    and threads (every study made before targets)."""
    get = settings.get if isinstance(settings, dict) else (lambda k, d=None: getattr(settings, k, d))
    if get("targets"):
        return parse_targets(get("targets"))
    return [Target(get("runtime") or "onnxruntime", int(get("batch_size") or 1), int(get("threads") or 1))]


def find_target(spec: "str | Target", targets: Sequence[Target], *, study: str = "") -> Target:
    """The one of ``targets`` that ``spec`` names: its runtime, and its batch and threads
    where given (``openvino`` alone names a study's only OpenVINO target)."""
    if isinstance(spec, Target):
        spec = spec.key
    runtime, batch, threads = _parts(spec)
    matches = [t for t in targets if t.runtime == runtime and batch in (None, t.batch_size)
               and threads in (None, t.threads)]
    if len(matches) == 1:
        return matches[0]
    whose = f"Study {study!r}" if study else "The study"
    known = ", ".join(t.key for t in targets)
    if not matches:
        raise TargetError(f"{whose} was not timed on {spec.strip()!r}; its targets are {known}.")
    raise TargetError(f"{spec.strip()!r} names {len(matches)} targets of {whose.lower() if not study else whose}: "
                      f"{', '.join(t.key for t in matches)}; give the batch (and @threads).")


@dataclass
class TargetResult:
    """A candidate measured on one more target of its study: the measurement (``None``
    when compiling or timing it there failed, with the one-line ``error``) and the
    artifact that was timed there (what ``export --target`` writes)."""

    target: str
    measurement: "Measurement | None"
    artifact: bytes | None = None
    artifact_format: str | None = None
    error: str | None = None
