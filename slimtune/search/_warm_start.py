"""Warm starts a task gives: a new study's first trials, named by parameter.

A joint space of twenty-odd parameters sampled at random (the model-based samplers'
startup trials) lands mostly on heavy corners: DS-conv and low-rank on many layers at
once, 2-bit weights, strong pruning.  Those candidates lose many points, and a
sampler that learns from them keeps proposing their neighbours.  So a new study starts
near the baseline: by default with the baseline's neighbourhood, one knob family moved
at a time, drawn from the parameters as data
(:func:`slimtune.search._backends.optuna_backend.neighbourhood`, measured by
``benchmarks/frontier_ceiling.py``); a task that knows better gives its own list with
``Task(extra={"warm_starts": [...]})`` (the built-in tasks do, digits and
Fashion-MNIST the same list: int8 alone, DS-conv on every conv but the stem, int8 with
half the channels, 4-bit weights with half of them pruned; ``Task.from_model`` gives
every model those recipes adapted to it, :func:`slimtune.tasks._builtin.model_warm_starts`:
int8 alone, int8 with a third of the channels, a third of the channels alone, DS-conv on
the convs with more than a few input channels, 4-bit QAT with half the weights), and this module turns that list into
trials.  On digits, real 20-trial searches (seeds 0-3) found a candidate
within 1 validation point of the baseline 2.11-2.46x faster with that list, 1.02-1.67x
with the neighbourhood (``slimtune.tasks._builtin.DIGITS_WARM_STARTS``).  The core names no knob: the
names come from the task.

Each warm start names a few parameters (a name with ``*`` stands for every searched
parameter it matches, e.g. ``dsconv.*``: the per-layer switches of this model); every
other parameter keeps its default (the baseline's value), so the trial is fully given
and the sampler draws nothing for it.  A warm start is kept only when every parameter
it names is searched in the study's space and its values are in their domains, so a
space without a family (or with a parameter fixed) simply skips the warm starts that
need it.

On Fashion-MNIST (18 trials, ``benchmarks/compression.py``) the 4-bit warm start was
8.7x smaller at +0.9 test points, and the GP sampler went on from the warm starts to
8-bit weight-pruned candidates 10-11x smaller within a point; the previous search,
without them, found nothing within a point in 28 trials.

The runner proposes them as a new study's first trials, each claimed exactly once across
workers and proposed once more when its trial did not complete
(:mod:`~slimtune.search._warm_claims`); the backend's neighbourhood is then not added.

Example:
    >>> warm_start_trials(space, task)[0]["quant.bits"]     # doctest: +SKIP
    8
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any, Mapping, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from slimtune.spaces._space import Space
    from slimtune.tasks._task import Task

#: Key of a task's own warm starts in ``Task.extra``.
TASK_KEY = "warm_starts"


def task_warm_starts(task: "Task | None") -> Sequence[Mapping[str, Any]]:
    """The task's own warm starts (``task.extra["warm_starts"]``); none when it gives none
    (the backend then starts from the baseline's neighbourhood, one knob family at a
    time: :func:`slimtune.search._backends.optuna_backend.neighbourhood`)."""
    extra = getattr(task, "extra", None) or {}
    if TASK_KEY in extra:
        given = extra[TASK_KEY]
        if given is None:
            return ()
        if not isinstance(given, (list, tuple)) or not all(isinstance(w, Mapping) for w in given):
            raise ValueError(f"`extra['{TASK_KEY}']` of task {getattr(task, 'name', '?')!r} must be a list of "
                             f"{{parameter: value}} dicts, but got {given!r}.")
        return tuple(given)
    return ()


def warm_start_trials(space: "Space", task: "Task | None" = None,
                      warm_starts: Sequence[Mapping[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The warm starts that fit ``space``, each completed to every searched parameter.

    Args:
        space: the study's space.
        task: whose ``extra["warm_starts"]`` to use (``None``: none).
        warm_starts: use these instead of the task's.

    Returns:
        One ``{searched parameter: value}`` dict per usable warm start, duplicates removed,
        in the given order.
    """
    from slimtune.spaces.base import SpaceError

    chosen = task_warm_starts(task) if warm_starts is None else warm_starts
    searched = [p.name for p in space.searched]
    out: list[dict[str, Any]] = []
    for given in chosen:
        partial = _expand(given, searched)
        if partial is None:
            continue  # the space lacks a parameter (or holds it fixed): not this space's neighbour
        try:
            full = space.complete(partial)
        except SpaceError:
            continue  # a value out of this space's domain
        values = {name: full[name] for name in searched}
        if values not in out:
            out.append(values)
    return out


def _expand(given: Mapping[str, Any], searched: Sequence[str]) -> dict[str, Any] | None:
    """``given`` with each ``*`` pattern replaced by the searched names it matches;
    ``None`` when a name (or a pattern) matches no searched parameter."""
    out: dict[str, Any] = {}
    for name, value in given.items():
        names = [n for n in searched if fnmatchcase(n, name)] if "*" in name else [name] if name in searched else []
        if not names:
            return None
        out.update(dict.fromkeys(names, value))
    return out or None
