"""The joint space of a task's model: every registered knob (or the families given),
each with the options the task declares for it (e.g. ``exits_after``).

Example:
    >>> space = build_space(get_task("digits"), fixed={"quant.bits": 8})
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from slimtune.spaces._registry import get_knob, knob_families
from slimtune.spaces._space import Space
from slimtune.tasks._task import Task


def build_space(task: Task, *, fixed: Mapping[str, Any] | None = None, families: list[str] | None = None,
                runtime: str = "onnxruntime", batch_size: int = 1, targets: Sequence[Any] = ()) -> Space:
    """The joint space of ``task``'s baseline model (checks the model outputs logits),
    without the families that fail when tried on the model (structure only, on a few
    training samples, compiled for ``runtime`` at ``batch_size``:
    :mod:`slimtune.search._space_trial`), each with its one-line reason in
    ``space.omitted`` (e.g. early exits, which run at batch 1 only).  With ``targets``
    (:class:`~slimtune.search._targets.Target`), the families that run on every one."""
    from slimtune.search._space_trial import tried_space

    task.check_model()
    names = families if families is not None else knob_families()
    options = {name: opts for name in names if (opts := get_knob(name).task_options(task.extra))}  # e.g. exits_after
    space = Space.for_model(task.build_model(), families=families, fixed=fixed, options=options)
    for runtime, batch_size in [(t.runtime, t.batch_size) for t in targets] or [(runtime, batch_size)]:
        space = tried_space(space, task.build_model, task.example_input(8), num_classes=task.num_classes,
                            key=task.fingerprint(), runtime=runtime, batch_size=batch_size)
    return space
