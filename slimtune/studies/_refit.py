"""Multi-fidelity: refit a cheap search's front with full training.

A search at low fidelity (few distillation and recovery epochs per candidate) ranks
candidates cheaply but underestimates what each can reach after enough training:
pruned and quantized candidates recover most of their accuracy in the epochs a short
search does not give them.  :func:`refit_front` takes the study's front, keeps the
candidates close enough to the baseline to be worth it, and evaluates exactly those
values again with more epochs in a *second* study (``<name>-refit`` in the same
storage), so that every study still holds trials trained and measured one way only.

The refit study is an ordinary study: ``slimtune show NAME-refit`` shows it, its
trials can be exported, and each trial's user attribute ``refit_of`` names the
trial of the cheap study it retrains.

Example:
    >>> cheap = Study.create_or_load("f", task="fashion-mnist", settings={"epochs": 1})
    >>> cheap.optimize(n_trials=24)
    >>> refit = refit_front(cheap, storage="sqlite:///slimtune.db", epochs=4, finetune_epochs=3)
    >>> refit.frontier()
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from slimtune.studies._study import Study

#: User attribute of a refit trial: the trial number of the cheap study it retrains.
REFIT_OF = "refit_of"


def front_to_refit(rows: Sequence[Mapping[str, Any]], baseline_accuracy: float, *, max_drop: float = 0.05,
                   limit: int = 6, skip_within: float | None = None) -> list[Mapping[str, Any]]:
    """The front rows worth retraining: validation accuracy at least the baseline's
    minus ``max_drop`` (a cheap pass underestimates accuracy, so this is looser than the
    loss the user accepts), at most ``limit`` of them spread evenly along the front
    (the cheapest and the most accurate always among them: the cheap end is where a
    short search leaves the most accuracy behind), returned cheapest first (the order
    of ``rows``).

    Args:
        rows: the cheap study's front (``Study.frontier()``), cheapest first.
        baseline_accuracy: the baseline's validation accuracy.
        max_drop: how far below the baseline a candidate may be and still be refit.
        limit: at most this many.
        skip_within: leave out the rows already within this much of the baseline (they
            need no rescue; e.g. ``0.01`` refits only those that missed one point).
    """
    if not (0 <= max_drop <= 1):
        raise ValueError(f"`max_drop` must be in [0, 1], but got {max_drop!r}.")
    if limit < 1:
        raise ValueError(f"`limit` must be at least 1, but got {limit!r}.")
    if skip_within is not None and not (0 <= skip_within <= max_drop):
        raise ValueError(f"`skip_within` must be in [0, max_drop={max_drop}], but got {skip_within!r}.")
    close = [r for r in rows if float(r["accuracy"]) >= baseline_accuracy - max_drop
             and (skip_within is None or float(r["accuracy"]) < baseline_accuracy - skip_within)]
    if len(close) <= limit:
        return close
    if limit == 1:
        return [max(close, key=lambda r: float(r["accuracy"]))]
    step = (len(close) - 1) / (limit - 1)
    return [close[round(i * step)] for i in range(limit)]


def refit_front(study: "Study", *, storage: str, epochs: int, finetune_epochs: int | None = None,
                name: str | None = None, max_drop: float = 0.05, limit: int = 6, skip_within: float | None = None,
                progress: bool = False, rows: Sequence[Mapping[str, Any]] | None = None,
                device: str | None = None, amp: str | None = None) -> "Study":
    """Retrain and remeasure ``study``'s front with more epochs, in a new study.

    Args:
        study: the cheap (low-fidelity) study.
        storage: its storage URL (the refit study is created beside it).
        epochs: distillation epochs of the refit.
        finetune_epochs: recovery epochs (pruning fine-tuning, QAT) of the refit
            (``None``: the task's).
        name: the refit study's name (default ``<study>-refit``); if it exists its
            trials are kept and only the candidates not refit yet are run.
        max_drop, limit, skip_within: which front rows are refit (:func:`front_to_refit`).
        progress: show a progress bar.
        rows: the front rows to refit when the caller has chosen them already
            (:func:`front_to_refit`); ``None``: chosen here from the arguments above.
        device, amp: where the refit trains, and its mixed precision (default: as
            ``study`` was opened with); latency is timed on the study's runtime.

    Returns:
        The refit study (open; close it when done).
    """
    if rows is None:
        rows = front_to_refit(study.frontier(), float(study.baseline.accuracy), max_drop=max_drop, limit=limit,
                              skip_within=skip_within)
    settings = {**study.settings.to_dict(), "epochs": int(epochs), "finetune_epochs": finetune_epochs,
                **{k: v for k, v in (("device", device), ("amp", amp)) if v is not None}}
    refit = type(study).create_or_load(name or f"{study.name}-refit", storage=storage, task=study.task,
                                       fixed=study.fixed, objectives=study.objectives,
                                       constraints=study.constraints if study.constraints.active else None,
                                       settings=settings, early_stopping=False, sampler="random")
    searched = [p.name for p in refit.space.searched]
    optuna_study = refit.optuna_study
    done = {t.user_attrs.get(REFIT_OF) for t in optuna_study.get_trials(deepcopy=False) if t.state.is_finished()}
    todo = [r for r in rows if r["trial"] not in done]
    for row in todo:
        optuna_study.enqueue_trial({k: row["params"][k] for k in searched},
                                   user_attrs={REFIT_OF: int(row["trial"])})
    if todo:
        refit.optimize(n_trials=len(todo), progress=progress, fidelity="full")  # each one in full, nothing else
    return refit
