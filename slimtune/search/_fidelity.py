"""The fidelity of a trial: how much training its result got, and the search's rungs.

A trial's fidelity is the training it got, stored with it (``slimtune_fidelities``, the
Optuna user attribute ``fidelity``, the row's ``fidelity``): ``epochs`` of distillation
out of the study's ``full_epochs``.  The rungs of the search are the fidelities it runs:

* **rung 0, training-free** (``epochs == 0``): candidates that need no training at all,
  as the knobs declare them (:meth:`~slimtune.spaces.base.Knob.training_free_values`:
  int8 post-training quantization of the unchanged model, calibrated on training
  samples).  A new study runs them first, in seconds, through the same measurement path
  as every trial; they do not use up ``n_trials`` (which counts trials that train);
* **cheap** (``0 < epochs < full_epochs``, a third of them): a candidate the sampler
  proposes trains this first; the best third of the rung is promoted to full training
  (MO-ASHA's rule, :mod:`~slimtune.search._promotion`), as a new trial that names it;
* **full** (``epochs == full_epochs``): the warm starts and the promoted candidates
  (and every trial with ``fidelity="full"``, today's search).

A trial stored before fidelities existed has none and reads as full.  Training-free
results are final (the candidate *is* the untrained model: exported as measured), so the
front and ``select`` use full and training-free results (:func:`is_final`); a result of
an intermediate rung (``0 < epochs < full_epochs``) is shown with its fidelity but
never put on the front.

The rungs are planned as warm starts (:mod:`~slimtune.search._warm_claims`): each is a
row of the study's plan carrying :data:`EPOCHS_KEY`, claimed exactly once across
workers and proposed once more when its trial did not complete, so a study resumed
mid-rung loses nothing and repeats nothing.

Example:
    >>> Fidelity(epochs=0, full_epochs=3).label
    'training-free'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:  # pragma: no cover
    from slimtune.spaces._space import Space

#: The key a planned warm start carries when its trial trains for this many epochs (not
#: a parameter: taken out before the values are proposed).
EPOCHS_KEY = "@epochs"
#: The key a planned promotion carries: the cheap trial it promotes.
PROMOTED_KEY = "@promoted_from"
#: What ``fidelity=`` (``--fidelity``) may say: ``multi`` (rung 0, then full) or ``full``.
FIDELITIES = ("multi", "full")


@dataclass(frozen=True)
class Fidelity:
    """The training a trial got: ``epochs`` of distillation out of ``full_epochs``
    (the study's), and the trial it was promoted from (``None``: none)."""

    epochs: int
    full_epochs: int
    promoted_from: int | None = None

    @property
    def training_free(self) -> bool:
        return self.epochs == 0

    @property
    def full(self) -> bool:
        return self.epochs >= self.full_epochs

    @property
    def final(self) -> bool:
        """Whether the result may stand on the front: full, or training-free."""
        return self.full or self.training_free

    @property
    def label(self) -> str:
        """How tables say it: ``training-free``, ``1/3 epochs``, ``full``."""
        if self.full:
            return "full"
        return "training-free" if self.training_free else f"{self.epochs}/{self.full_epochs} epochs"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"epochs": int(self.epochs), "full_epochs": int(self.full_epochs), "label": self.label}
        if self.promoted_from is not None:
            out["promoted_from"] = int(self.promoted_from)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "Fidelity | None":
        if not data or data.get("epochs") is None or data.get("full_epochs") is None:
            return None
        promoted = data.get("promoted_from")
        return cls(int(data["epochs"]), int(data["full_epochs"]), None if promoted is None else int(promoted))


def is_final(row: Mapping[str, Any]) -> bool:
    """Whether a row's result may stand on the front and be selected: no fidelity
    stored (a trial from before fidelities: full), full, or training-free."""
    fidelity = Fidelity.from_dict(row.get("fidelity"))
    return fidelity is None or fidelity.final


def is_training_free(row: Mapping[str, Any]) -> bool:
    """Whether a row is a training-free (rung 0) trial."""
    fidelity = Fidelity.from_dict(row.get("fidelity"))
    return fidelity is not None and fidelity.training_free


def fidelity_label(row: Mapping[str, Any]) -> str:
    """``training-free``, ``1/3 epochs`` or ``full`` (also for a row stored without one)."""
    fidelity = Fidelity.from_dict(row.get("fidelity"))
    return "full" if fidelity is None else fidelity.label


def fidelity_note(row: Mapping[str, Any]) -> str | None:
    """What a table says under a trial that is not full fidelity (``None`` for full)."""
    fidelity = Fidelity.from_dict(row.get("fidelity"))
    if fidelity is None or (fidelity.full and fidelity.promoted_from is None):
        return None
    if fidelity.full:
        return f"fidelity: full, promoted from trial {fidelity.promoted_from} (its cheap rung)"
    if fidelity.training_free:
        return ("fidelity: training-free (rung 0: not trained, calibrated only; measured like every trial; "
                "not counted in --trials)")
    return f"fidelity: {fidelity.label} (a cheap rung: shown, never on the front nor selected)"


def counts_toward_budget(row: Mapping[str, Any], *, count_rejected: bool = False) -> bool:
    """Whether a finished trial uses up ``n_trials``: it trained (a training-free trial
    does not, nor, unless ``count_rejected``, one rejected before training)."""
    from slimtune.search._early_stopping import rejected_before_training

    return not is_training_free(row) and (count_rejected or not rejected_before_training(row))


def training_free_trials(space: "Space") -> list[dict[str, Any]]:
    """Rung 0 of a new study: the knobs' training-free settings
    (:meth:`~slimtune.spaces.base.Knob.training_free_values`) that fit ``space``, each
    completed to every searched parameter, every other at its default (the baseline)."""
    from slimtune.search._warm_start import warm_start_trials

    declared = [values for knob in space.knobs for values in knob.training_free_values(space.knob_params(knob))]
    fixed = space.fixed  # a parameter fixed to the value asked for is no reason to skip it
    declared = [{k: v for k, v in values.items() if not (k in fixed and fixed[k] == v)} for values in declared]
    return warm_start_trials(space, warm_starts=[values for values in declared if values])


def planned_rungs(space: "Space", trained: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A new study's plan: rung 0 (training-free, each marked with :data:`EPOCHS_KEY`
    0) before the ``trained`` warm starts."""
    return [{**values, EPOCHS_KEY: 0} for values in training_free_trials(space)] + list(trained)


def split_planned(values: Mapping[str, Any]) -> tuple[dict[str, Any], int | None, int | None]:
    """A planned row's parameter values, its epochs (``None``: the study's) and the
    trial it promotes (``None``: none)."""
    out = dict(values)
    epochs, promoted = out.pop(EPOCHS_KEY, None), out.pop(PROMOTED_KEY, None)
    return out, None if epochs is None else int(epochs), None if promoted is None else int(promoted)


def promotion(values: Mapping[str, Any], trial: int, full_epochs: int) -> dict[str, Any]:
    """The planned row that trains trial ``trial``'s ``values`` in full."""
    return {**values, EPOCHS_KEY: int(full_epochs), PROMOTED_KEY: int(trial)}
