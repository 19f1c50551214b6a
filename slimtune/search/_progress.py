"""The progress bar of a search: tqdm with the study-wide state (the size of the front,
the best validation accuracy, the fastest trial within 1 point of the baseline) and this
session's counts of rejected, stopped and failed trials.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from slimtune.search._early_stopping import rejected_before_training

if TYPE_CHECKING:  # pragma: no cover
    from slimtune.search._early_stopping import FrontierPoint


def progress_summary(points: Sequence["FrontierPoint"], costs: Sequence[str], baseline_accuracy: float) -> dict[str, str]:
    """The study-wide state for the progress bar, over the complete trials ``points``
    (earlier sessions and other workers too; their costs include ``latency_ms``): the
    size of the front under (accuracy, ``costs``), the best validation accuracy, and the
    fastest trial within 1 point of the baseline's accuracy (its same-run speed-up)."""
    from slimtune._dominance import non_dominated_mask, relative_latency

    if not points:
        return {}
    rows = [{"accuracy": p.val_accuracy, **p.costs, "reference_latency_ms": p.reference_latency_ms} for p in points]
    out = {"front": str(sum(non_dominated_mask(rows, ("accuracy", *costs)))),
           "best_val": f"{max(p.val_accuracy for p in points):.4f}"}
    close = [(p, row) for p, row in zip(points, rows) if p.val_accuracy >= baseline_accuracy - 0.01]
    if close:
        fast, row = min(close, key=lambda pr: relative_latency(pr[1]))
        shown = (f"{1 / relative_latency(row):.2f}x" if fast.reference_latency_ms
                 else f"{fast.costs['latency_ms']:.3g}ms")
        out["fastest_within_1pt"] = f"{shown}(#{fast.trial})"
    return out


def progress_bar(n_trials: int | None, timeout: float | None):
    from tqdm.auto import tqdm

    return tqdm(total=n_trials, unit="trial", desc="slimtune", dynamic_ncols=True,
                bar_format=None if n_trials else "{desc}: {n_fmt} trials [{elapsed}, {rate_fmt}]{postfix}")


def update_bar(bar, row: dict, rows: list[dict], summary: dict[str, str], *, advance: bool = True) -> None:
    """Advance the bar (not for a rejection before training: it does not use up the
    budget); its postfix shows the study-wide ``summary`` (not only this session's
    trials, so a resumed study keeps its best), then this session's counts of trials
    rejected before training, stopped during training and failed, and the last trial."""
    postfix: dict[str, str] = dict(summary)
    rejected = sum(1 for r in rows if rejected_before_training(r))
    pruned = sum(1 for r in rows if r.get("state") == "PRUNED") - rejected
    failed = sum(1 for r in rows if r.get("state") == "FAIL")
    if rejected:
        postfix["rejected"] = str(rejected)
    if pruned:
        postfix["stopped"] = str(pruned)
    if failed:
        postfix["failed"] = str(failed)
    if row.get("state") == "COMPLETE":
        postfix["last"] = f"{row.get('val_accuracy', row.get('accuracy')) or float('nan'):.3f}@{row['latency_ms']:.3g}ms"
    bar.set_postfix(postfix, refresh=not advance)
    if advance:
        bar.update(1)
