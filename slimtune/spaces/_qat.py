"""Quantization-aware training: fine-tuning with weights fake-quantized to the b-bit
grid (straight-through estimator), for the quantization knob."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from slimtune.spaces._lowering import fake_quantize, quantizable_layers
from slimtune.spaces.base import KnobContext


class FakeQuantize(nn.Module):
    """Weight parametrization: the b-bit snapped weight in the forward pass, the
    identity in the backward pass (straight-through estimator).  ``mask`` keeps
    pruned weights at zero."""

    def __init__(self, bits: int, mask: torch.Tensor | None = None) -> None:
        super().__init__()
        self.bits = bits
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.mask is not None:
            weight = weight * self.mask
        return weight + (fake_quantize(weight.detach(), self.bits) - weight).detach()


def quantization_aware_finetune(model: nn.Module, bits: int, ctx: KnobContext, *, epochs: int, lr: float) -> None:
    """Fine-tune ``model`` in place with fake-quantized weights, then leave the
    snapped weights as plain parameters."""
    layers = [layer for _, layer in quantizable_layers(model)]
    for layer in layers:
        w = layer.weight
        mask = (w != 0).to(w.dtype) if bool((w == 0).any()) else None
        parametrize.register_parametrization(layer, "weight", FakeQuantize(bits, mask))
    try:
        ctx.finetune(model, epochs=epochs, lr=lr)
    finally:
        for layer in layers:
            parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)
    model.eval()
