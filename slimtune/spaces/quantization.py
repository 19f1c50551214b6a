"""Parameter quantization: ``quant.bits`` (32, 16, 8, 6, 4, 2) and ``quant.mode``
(``ptq`` / ``qat``).

The knob declares the bits the weights are compiled at (:meth:`Quantization.weight_bits`);
the core lowering stage (:mod:`slimtune.spaces._lowering`) folds BatchNorm before this
knob runs and snaps the weights to the b-bit grid after it.  With ``qat`` the knob
fine-tunes with fake-quantized weights (straight-through estimator) in between.
Activations are quantized by the runtime, which reproduces exactly these b-bit weights
in its int8 kernels.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from slimtune.spaces.base import Knob, KnobContext, Param
from slimtune.spaces._registry import register_knob

if TYPE_CHECKING:  # pragma: no cover - knob modules import without torch (`slimtune show` reads them)
    from torch import nn

BITS = (32, 16, 8, 6, 4, 2)
MODES = ("ptq", "qat")
QAT_LR = 1e-4  # FACTS.md: 1e-3 broke 4-bit QAT


@register_knob
class Quantization(Knob):
    """``quant.bits`` and ``quant.mode``: b-bit per-channel symmetric weights,
    post-training or quantization-aware (the model is already lowered: BatchNorm folded).

    Below 8 bits no CPU kernel exists: the weights are stored packed at b bits and
    execute on int8 kernels with 8-bit activations (reported in ``ctx.info["flags"]``).
    """

    family = "quant"
    title = "Quantization"
    stage = "quantization"
    compact_legend = "q<bits>[ptq|qat] quantization"

    @staticmethod
    def compact(values: Mapping[str, Any], names: Sequence[str]) -> str:
        bits = values.get("quant.bits")
        if bits is None:
            return ""
        return f"q{int(bits)}{values.get('quant.mode', '') if int(bits) < 16 else ''}"

    def weight_bits(self, values: Mapping[str, Any]) -> int:
        return int(values.get("quant.bits", 32))

    def cost_bound_values(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Post-training quantization: the structure is measured before any training."""
        return {**values, "quant.mode": "ptq"}

    def training_free_values(self, params: Sequence[Param]) -> list[dict[str, Any]]:
        """int8 post-training quantization (calibrated, no epochs): what peers give."""
        names = {p.name: p for p in params}
        bits = names.get("quant.bits")
        if bits is None or 8 not in (bits.choices or ()):
            return []
        return [{"quant.bits": 8, "quant.mode": "ptq"} if "quant.mode" in names else {"quant.bits": 8}]

    def recovery_passes(self, values: Mapping[str, Any]) -> int:
        """QAT fine-tunes once, below 16 bits (where it runs)."""
        return int(values.get("quant.mode") == "qat" and int(values.get("quant.bits", 32) or 32) < 16)

    def inactive(self, values: Mapping[str, Any]) -> set[str]:
        """The mode means nothing at 16 and 32 bits (QAT runs at 8 bits and below)."""
        return {"quant.mode"} & set(values) if int(values.get("quant.bits", 32)) >= 16 else set()

    def summary(self, values: Mapping[str, Any]) -> str:
        bits = int(values.get("quant.bits", 32))
        return "" if bits == 32 else f"{bits}-bit {values.get('quant.mode', '') if bits < 16 else ''}".rstrip()

    def params(self, model: nn.Module) -> list[Param]:
        return [
            Param("quant.bits", "categorical", 32, choices=BITS,
                  doc="weight bits (per-channel symmetric; 16 = fp16; <8 runs on int8 kernels)"),
            Param("quant.mode", "categorical", "ptq", choices=MODES,
                  doc="post-training (ptq) or quantization-aware fine-tuning (qat)"),
        ]

    def apply(self, model: nn.Module, values: dict[str, Any], ctx: KnobContext) -> nn.Module:
        bits = int(values.get("quant.bits", 32))
        mode = str(values.get("quant.mode", "ptq"))
        if bits not in BITS:
            raise ValueError(f"`quant.bits` must be one of {', '.join(map(str, BITS))}, but got {bits!r}.")
        if mode not in MODES:
            raise ValueError(f"`quant.mode` must be one of {', '.join(MODES)}, but got {mode!r}.")
        model.eval()
        from slimtune.spaces._lowering import FP16_FLAG, low_bit_flag, snap_weights
        from slimtune.spaces._qat import quantization_aware_finetune

        flags: list[str] = ctx.info.setdefault("flags", [])
        info: dict[str, Any] = {"bits": bits, "mode": mode}
        qat_done = False
        if bits < 32:
            if mode == "qat" and bits < 16 and ctx.finetune_epochs > 0:
                lr = float(ctx.info.get("qat_lr", QAT_LR))
                quantization_aware_finetune(model, bits, ctx, epochs=ctx.finetune_epochs, lr=lr)
                info.update(qat_epochs=ctx.finetune_epochs, qat_lr=lr)
                qat_done = True
            info["quantized_layers"] = snap_weights(model, bits)
            info["weight_format"] = (
                "fp16" if bits == 16 else f"int{bits} per-output-channel symmetric, fp16 scales"
            )
        if mode == "qat" and not qat_done:
            info["note"] = "QAT skipped: nothing to train at 16/32 bits" if bits >= 16 else "QAT skipped: no fine-tune epochs"
        if bits == 16:
            flags.append(FP16_FLAG)
        elif bits < 8:
            flags.append(low_bit_flag(bits))
        ctx.info["quant"] = info
        return model.eval()


#: Names that lived here before lowering was a core stage, still importable from this
#: module (loaded on first use, so that importing the knob does not import torch).
_MOVED = {name: "slimtune.spaces._lowering" for name in (
    "FP16_FLAG", "QUANTIZABLE", "channel_scales", "conv_bn_pairs", "fake_quantize", "fold_batchnorm",
    "has_unfolded_batchnorm", "low_bit_flag", "make_pruning_permanent", "qmax", "quantizable_layers",
    "quantize_weight", "snap_weights")}
_MOVED.update(FakeQuantize="slimtune.spaces._qat", quantization_aware_finetune="slimtune.spaces._qat")


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
