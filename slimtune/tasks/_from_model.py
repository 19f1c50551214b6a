"""What a ``Task.from_model`` task gets by default: candidate epochs scaled to its
training split (its warm starts, the built-in tasks' recipes adapted to its model, are
:func:`slimtune.tasks._builtin.model_warm_starts`)."""

from __future__ import annotations

__all__ = ["scaled_epochs"]


#: Optimizer steps a from-model candidate gets by default: distillation (after the
#: architecture knobs) and each recovery fine-tune (after pruning, for QAT); epochs are
#: these over the training split's steps per epoch, within the bounds below.  Measured on
#: digits-sized data (1,078 samples, 17 steps of 64), channel pruning at 0.5 after 1 / 4 /
#: 8 / 12 recovery epochs: MobileNetV3-like -0.86 / -0.18 / -0.07 / -0.03 validation, a
#: small ViT -0.21 / -0.06 / -0.03 / -0.02; 4 distillation epochs instead of 2 changed
#: nothing (benchmarks/from_model_epochs.py, docs/results).
DISTILLATION_STEPS, RECOVERY_STEPS = 40, 200
DISTILLATION_EPOCHS, RECOVERY_EPOCHS = (1, 4), (1, 12)


def scaled_epochs(steps_per_epoch: int) -> tuple[int, int]:
    """``(distillation epochs, recovery epochs)`` for a training split of
    ``steps_per_epoch`` batches: :data:`DISTILLATION_STEPS` and :data:`RECOVERY_STEPS`
    optimizer steps, rounded up to whole epochs within :data:`DISTILLATION_EPOCHS` and
    :data:`RECOVERY_EPOCHS` (digits-sized data: 3 and 12; 60,000 samples: 1 and 1)."""
    steps = max(1, int(steps_per_epoch))

    def epochs(target: int, bounds: tuple[int, int]) -> int:
        return min(bounds[1], max(bounds[0], -(-target // steps)))

    return epochs(DISTILLATION_STEPS, DISTILLATION_EPOCHS), epochs(RECOVERY_STEPS, RECOVERY_EPOCHS)
