"""What a ``Task.from_model`` task gets by default: candidate epochs scaled to its
training split, and the built-in tasks' well-known compressions adapted to its model
as a new study's warm starts."""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["FEW_INPUT_CHANNELS", "model_warm_starts", "scaled_epochs"]


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


#: Convs with at most this many input channels (a stem reading pixels, a ViT's patch
#: embedding) are left out of the DS-conv warm start: their depthwise-separable form is a
#: rank-1 factorisation that saves little and costs most of the accuracy.
FEW_INPUT_CHANNELS = 4


def model_warm_starts(model: nn.Module) -> list[dict[str, Any]]:
    """The built-in tasks' well-known compressions, adapted to ``model`` (the task's
    built model, output adapter included): int8 post-training quantization; int8 with a
    third of the channels pruned; a third of the channels pruned alone (on small models
    ONNX Runtime's int8 ran 0.4-0.7x the fp32 speed at batch 1, pruning alone 1.1-1.3x);
    DS-conv on every conv a ``dsconv`` switch can take except those with few input
    channels (:data:`FEW_INPUT_CHANNELS`; left out when no conv is left); 4-bit weights
    trained with quantization (QAT) and half of them pruned.
    A warm start whose parameters the study's space does not search is skipped
    (:mod:`slimtune.search._warm_start`)."""
    wide = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups == 1
            and max(m.kernel_size) > 1 and m.in_channels > FEW_INPUT_CHANNELS]
    out: list[dict[str, Any]] = [
        {"quant.bits": 8, "quant.mode": "ptq"},
        {"quant.bits": 8, "quant.mode": "ptq", "prune.granularity": "channel", "prune.ratio": 0.33},
        {"prune.granularity": "channel", "prune.ratio": 0.33},  # small models: int8 is slower at batch 1
    ]
    if wide:
        out.append({f"dsconv.{name}": True for name in wide})
    out.append({"quant.bits": 4, "quant.mode": "qat", "prune.granularity": "weight", "prune.ratio": 0.5})
    return out
