"""Runtime against torch: whether the compiled artifact predicts what torch's
fake-quantized copy of the model predicts (a check on every measurement, not an
objective), read on a few thousand validation samples and flagged below
:data:`MIN_RUNTIME_AGREEMENT`."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from slimtune.spaces._lowering import snap_weights
from slimtune.tasks._inputs import model_input

#: Runtime agreement (a check, not an objective) is read on the first this many
#: validation samples: one extra torch pass over 5,000 Fashion-MNIST samples was 4% of a
#: trial's wall time; on 2,048 one disagreeing sample moves it by 0.05%.
AGREEMENT_SAMPLES = 2048
#: ... read in steps of this many, stopping after a step once the runtime is shown to
#: differ from torch on under ``1 - MIN_RUNTIME_AGREEMENT`` of the samples
#: (:func:`agreement_settled`): fp32 artifacts agree on all of the first 512 (a torch pass
#: over 2,048 Fashion-MNIST samples cost 0.5-0.9 s, 1-2% of a trial), int8 ones
#: typically differ on a few per thousand and settle after 1,024.
AGREEMENT_STEP = 512
#: The one-sided confidence of :func:`agreement_settled`.
AGREEMENT_CONFIDENCE = 0.99
#: Below this share of equal predictions (runtime vs torch fake-quant) a measurement is flagged.
MIN_RUNTIME_AGREEMENT = 0.99


def fake_quant_reference(model: nn.Module, bits: int) -> nn.Module:
    """A copy of ``model`` as torch computes it at ``bits``: the copy the runtimes compile
    (:func:`~slimtune.search._runtimes.prepare_model`: BatchNorm folded, 16-bit weights
    rounded) with its weights on the b-bit grid (idempotent when the quantization knob
    already snapped them), float activations.  The runtime's int8 artifact should
    predict what this model predicts."""
    from slimtune.search._runtimes import prepare_model

    reference = prepare_model(model, bits)
    if bits <= 8:
        snap_weights(reference, bits)
    return reference


@torch.no_grad()
def torch_exit_logits(model: nn.Module, x: torch.Tensor, batch: int = 256) -> list[np.ndarray]:
    """Logits of every exit of ``model`` (then the final classifier) for every sample,
    through the same ``segments()`` the runtime compiles; one array for a static model."""
    from slimtune.search._runtimes import exit_segments

    segments = exit_segments(model)
    outputs: list[list[np.ndarray]] = [[] for _ in range(len(segments) if segments else 1)]
    for i in range(0, len(x), batch):
        features = x[i:i + batch]
        if segments is None:
            outputs[0].append(model(features).numpy())
            continue
        for k, (trunk, head, _) in enumerate(segments):
            features = trunk(features)
            outputs[k].append((head(features) if head is not None else features).numpy())
    return [np.concatenate(o) for o in outputs]


def runtime_agreement(model: nn.Module, bits: int, x: torch.Tensor, logits: np.ndarray,
                      exits: np.ndarray | None = None) -> float:
    """Share of samples whose predicted class from the runtime (``logits``) equals the
    torch fake-quantized model's (:func:`fake_quant_reference`).

    Early-exit models: each sample is compared at the exit the runtime took
    (``exits``), i.e. the torch logits of that same exit head; the exit decision
    itself is not compared, because a confidence within rounding of a threshold may
    legitimately go either way."""
    x = model_input(x)
    return agreeing_count(fake_quant_reference(model, bits), x, logits, exits) / len(x)


def agreeing_count(reference: nn.Module, x: torch.Tensor, logits: np.ndarray, exits: np.ndarray | None) -> int:
    """How many samples of ``x`` the runtime's ``logits`` (at ``exits``) classify as
    the torch ``reference`` (:func:`fake_quant_reference`) does."""
    per_exit = torch_exit_logits(reference, x, batch=64)  # 64: the fastest batch on a 2-core CPU
    if exits is None or len(per_exit) == 1:
        expected = per_exit[-1]
    else:
        expected = np.stack(per_exit)[np.asarray(exits), np.arange(len(x))]
    return int((expected.argmax(-1) == np.asarray(logits).argmax(-1)).sum())


def agreement_settled(checked: int, agreeing: int) -> bool:
    """Whether ``agreeing`` of ``checked`` samples show, with :data:`AGREEMENT_CONFIDENCE`,
    that the runtime differs from torch on under ``1 - MIN_RUNTIME_AGREEMENT`` of all
    samples: a runtime differing on exactly that share would show at most this many
    differences with probability below ``1 - AGREEMENT_CONFIDENCE`` (binomial).  0 of
    512 or 3 of 1,024 settle it; 1 of 512 does not."""
    p, differ = 1.0 - MIN_RUNTIME_AGREEMENT, checked - agreeing
    if differ >= checked * p:  # at or above the expected count: P(at most differ) is over a half
        return False
    term = (1.0 - p) ** checked  # P(exactly 0), then P(exactly i) by the binomial recurrence (no huge integers)
    at_most = term
    for i in range(differ):
        term *= (checked - i) / (i + 1) * p / (1.0 - p)
        at_most += term
    return at_most < 1.0 - AGREEMENT_CONFIDENCE


def agreement_flag(agreement: float, n: int, int8_format: str | None) -> str | None:
    """The note for a runtime that disagrees with torch's fake-quantized model on more
    than ``1 - MIN_RUNTIME_AGREEMENT`` of the samples (``None`` otherwise)."""
    if agreement >= MIN_RUNTIME_AGREEMENT:
        return None
    fmt = f", int8 format {int8_format}" if int8_format else ""
    return (f"runtime predictions differ from the torch fake-quantized model on {1 - agreement:.1%} of {n} samples "
            f"(more than {1 - MIN_RUNTIME_AGREEMENT:.0%}{fmt}): the accuracy lost here may be the runtime's, "
            "not the model's")
