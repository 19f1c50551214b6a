"""Knowledge distillation: the student learns from the baseline teacher's logits."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from slimtune.spaces.base import Knob, Param, TrainingHooks
from slimtune.spaces._registry import register_knob

if TYPE_CHECKING:  # pragma: no cover - knob modules import without torch (`slimtune show` reads them)
    import torch
    from torch import nn


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    labels: torch.Tensor,
    *,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """``alpha * T^2 * KL(p_t || p_s) + (1 - alpha) * CE(student, labels)``.

    ``p_t = softmax(z_t / T)`` and ``p_s = softmax(z_s / T)`` (Hinton et al., 2015); the
    ``T^2`` factor keeps the soft-target gradients on the scale of the hard ones.
    Without teacher logits (or ``alpha == 0``) it is plain cross-entropy.
    """
    import torch.nn.functional as F

    ce = F.cross_entropy(student_logits, labels)
    if teacher_logits is None or alpha == 0.0:
        return ce
    t = float(temperature)
    kl = F.kl_div(
        F.log_softmax(student_logits / t, dim=-1),
        F.log_softmax(teacher_logits / t, dim=-1),
        reduction="batchmean",
        log_target=True,
    )
    return alpha * t * t * kl + (1.0 - alpha) * ce


@register_knob
class Distillation(Knob):
    """``distill.temperature`` (1-20, log) and ``distill.alpha`` (0-1): how every
    candidate is trained from the baseline teacher."""

    family = "distill"
    title = "Distillation"
    stage = "training"
    compact_legend = "T<temperature> a<alpha> distillation"

    @staticmethod
    def compact(values: Mapping[str, Any], names: Sequence[str]) -> str:
        parts = []
        if values.get("distill.temperature") is not None:
            parts.append(f"T{float(values['distill.temperature']):.1f}")
        if values.get("distill.alpha") is not None:
            parts.append(f"a{float(values['distill.alpha']):.2f}")
        return " ".join(parts)

    def training(self, values: Mapping[str, Any]) -> TrainingHooks | None:
        """Every output learns from the teacher with :func:`distillation_loss` (plain
        cross-entropy where there is no teacher); at ``alpha = 0`` the loss is the
        trainer's own cross-entropy, so this knob sets none."""
        settings = self.loss_settings(values)
        if settings["alpha"] == 0.0:
            return None
        return TrainingHooks(loss=functools.partial(distillation_loss, **settings))

    def summary(self, values: Mapping[str, Any]) -> str:
        if "distill.temperature" not in values:
            return ""
        return f"T={float(values['distill.temperature']):.4g} α={float(values.get('distill.alpha', 0.0)):.4g}"

    def params(self, model: nn.Module) -> list[Param]:
        return [
            Param("distill.temperature", "float", 4.0, low=1.0, high=20.0, log=True,
                  doc="softmax temperature of the teacher and student"),
            Param("distill.alpha", "float", 0.5, low=0.0, high=1.0,
                  doc="weight of the distillation term (1 - alpha on the labels)"),
        ]

    @staticmethod
    def loss_settings(values: Mapping[str, Any]) -> dict[str, float]:
        """``temperature`` and ``alpha`` of :func:`distillation_loss` (without the
        parameters: T = 4, alpha = 0, i.e. cross-entropy)."""
        return {"temperature": float(values.get("distill.temperature", 4.0)),
                "alpha": float(values.get("distill.alpha", 0.0))}
