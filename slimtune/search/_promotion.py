"""Promotion between the rungs: MO-ASHA's rule, read from the study database.

In a multi-fidelity search (``fidelity="multi"``) a candidate the sampler proposes first
trains a third of the study's epochs (:func:`cheap_epochs`, reduction factor
:data:`ETA` = 3); once it is measured, it is promoted to full training when it ranks in
the best third of its rung (:func:`promoted`):

1. every complete result of the rung (the same epochs) is given its non-dominated
   sorting rank (front 0, the front of the rest 1, ...), on the study's objectives
   with latency as the same-run ratio (:func:`slimtune._dominance.loss_matrix`);
2. the new result's quantile is the share of the rung's results whose rank is lower
   than its own; it is promoted when that is at most ``1 / ETA``; the first result of a
   rung always is.

This is the rule of Syne Tune's ``MOASHA`` (``syne_tune/optimizer/schedulers/
multiobjective/moasha.py``, ``_Bracket.on_result`` with ``NonDominatedPriority``;
Schmucker et al. 2021, Salinas et al. 2021), applied to the study's stored results:
Syne Tune's scheduler keeps its rungs in the memory of one tuner process and drives
trials through its own backend, while a slimtune study is shared by workers and
resumed from its database, so the rule reads the rung from there each time instead
(the ~10 lines of it, no scheduler of our own around it).

A promoted candidate is retrained from the baseline for the full epochs (its cheap
trial's stored weights are lowered and quantized: no state to go on training from) as
a new trial, claimed through the study's plan like a warm start
(:mod:`~slimtune.search._warm_claims`), its fidelity naming the cheap trial.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from slimtune._storage_faults import retry_disconnects
from slimtune.search._fidelity import Fidelity, promotion

#: Reduction factor: a third of the epochs in the cheap rung, a third of it promoted.
ETA = 3


def cheap_epochs(full_epochs: int, eta: int = ETA) -> int | None:
    """Epochs of the cheap rung for a study of ``full_epochs`` (``None``: too few
    epochs for a cheaper rung, every candidate trains in full)."""
    if full_epochs < 2:
        return None
    return max(1, full_epochs // eta)


def nondominated_ranks(losses: np.ndarray) -> np.ndarray:
    """Each row's non-dominated sorting rank (0: not dominated; rows with a NaN last)."""
    from slimtune._dominance import non_dominated_losses

    losses = np.asarray(losses, dtype=float)
    ranks = np.full(len(losses), len(losses), dtype=int)
    left = np.flatnonzero(~np.isnan(losses).any(axis=1)) if losses.size else np.array([], dtype=int)
    rank = 0
    while left.size:
        front = non_dominated_losses(losses[left])
        ranks[left[front]] = rank
        left = left[~front]
        rank += 1
    return ranks


def promoted(new: Mapping[str, Any], rung: Sequence[Mapping[str, Any]], objectives: Sequence[str],
             eta: int = ETA) -> bool:
    """MO-ASHA's rule: whether the complete result ``new`` ranks in the best ``1 / eta``
    of its rung (``rung``: the rung's other complete results, rows of the study)."""
    from slimtune._dominance import loss_matrix

    others = [r for r in rung if r.get("trial") != new.get("trial")]
    if not others:
        return True
    ranks = nondominated_ranks(loss_matrix([*others, new], objectives))
    quantile = np.searchsorted(np.sort(ranks), ranks[-1]) / len(ranks)
    return bool(quantile <= 1.0 / eta)


def promote(outcome: Any, row: Mapping[str, Any], recorder: Any, claims: Any, objectives: Sequence[str]) -> bool:
    """Append the full training of ``outcome`` (a trial's
    :class:`~slimtune.search._outcome.TrialOutcome`, ``row`` its stored row) to the
    study's plan (``claims``) when it is a complete, feasible cheap-rung result that
    :func:`promoted` ranks in the best third of its rung, read through
    ``recorder.trials``; whether it did."""
    fidelity = Fidelity.from_dict(outcome.fidelity)
    trials = getattr(recorder, "trials", None)
    if (fidelity is None or fidelity.training_free or fidelity.full or outcome.state != "COMPLETE"
            or not outcome.feasible or trials is None):
        return False
    rung = [r for r in retry_disconnects(lambda: trials(states=("COMPLETE",)))
            if (r.get("fidelity") or {}).get("epochs") == fidelity.epochs]
    if not promoted(row, rung, objectives):
        return False
    planned = promotion(outcome.proposal.values, outcome.number, fidelity.full_epochs)
    retry_disconnects(lambda: claims.append(planned))
    return True


def enqueued(proposal: Any) -> bool:
    """Whether Optuna handed out a trial someone enqueued (its values given, not
    sampled): it trains in full, as asked."""
    try:
        return "fixed_params" in proposal.trial.system_attrs
    except Exception:  # noqa: BLE001 - a backend's own trial object: sampled
        return False
