"""Multiply-accumulates and parameter counts.

MACs are counted per sample with forward hooks on ``nn.Conv2d`` and ``nn.Linear``
(their subclasses included, e.g. QAT modules), plus the matrix products a forward
calls outside those layers (attention: ``nn.MultiheadAttention``'s projections, the
query-key and attention-value products, ``matmul``/``bmm``/``linear`` calls, seen
through a ``TorchFunctionMode``); other layers (BatchNorm, pooling, activations) are
not counted.  Early-exit models (anything with a ``segments()``
method, see :class:`slimtune.spaces.exits.EarlyExitNet`) are counted piece by piece
so the MACs can be weighted by the share of samples leaving at each exit.

Example:
    >>> from slimtune.tasks._models import small_cnn
    >>> count_macs(small_cnn(), torch.zeros(1, 1, 8, 8))
    1788544
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

__all__ = ["count_macs", "count_params", "layer_macs"]


def _module_macs(module: nn.Module, output: torch.Tensor) -> int:
    """MACs of one Conv2d/Linear call for the whole batch in ``output``."""
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return output.numel() * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    return 0


def _batch_size(x: torch.Tensor) -> int:
    if x.dim() == 0 or x.shape[0] == 0:
        raise ValueError(f"`example_input` needs a non-empty batch dimension, but got shape {tuple(x.shape)}.")
    return int(x.shape[0])


class _MatmulCounter(TorchFunctionMode):
    """Counts the MACs of matrix products called outside Conv2d/Linear layers (whose
    own calls their hooks count): ``depth`` is how many such layers are running."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0
        self.depth = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.depth == 0:
            self.total += _function_macs(func, args, kwargs, out)
        return out


def _function_macs(func, args: tuple, kwargs: dict, out: object) -> int:
    """MACs of one call of a matrix product (0 for anything else)."""
    if func is F.multi_head_attention_forward:  # one call for nn.MultiheadAttention's projections and products
        query, key, value = args[:3]  # (L, N, E), (S, N, Ek), (S, N, Ev)
        length, batch, embed = query.shape[0], query.shape[1] if query.dim() == 3 else 1, query.shape[-1]
        source = key.shape[0]
        projections = length * embed * embed * 2 + source * (key.shape[-1] + value.shape[-1]) * embed
        return int(batch * (projections + 2 * length * source * embed))
    if not isinstance(out, torch.Tensor):
        return 0
    if func in (F.linear, torch._C._nn.linear):
        weight = args[1] if len(args) > 1 else kwargs.get("weight")
        return out.numel() * int(weight.shape[-1]) if isinstance(weight, torch.Tensor) else 0
    if func in _PRODUCTS:
        a = args[0]
        return out.numel() * int(a.shape[-1]) if isinstance(a, torch.Tensor) and a.dim() >= 1 else 0
    if func in _ADD_PRODUCTS:  # baddbmm / addmm(input, a, b)
        a = args[1] if len(args) > 1 else None
        return out.numel() * int(a.shape[-1]) if isinstance(a, torch.Tensor) and a.dim() >= 1 else 0
    if func is F.scaled_dot_product_attention:
        query, key = args[0], args[1]
        # scores (L x S, over E) and the weighted sum of values (L x Ev, over S)
        return int(query.numel() // query.shape[-1] * key.shape[-2] * query.shape[-1]) + int(out.numel() * key.shape[-2])
    return 0


_PRODUCTS = (torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.bmm, torch.Tensor.bmm, torch.mm,
             torch.Tensor.mm)
_ADD_PRODUCTS = (torch.baddbmm, torch.Tensor.baddbmm, torch.addmm, torch.Tensor.addmm)


def _run_counted(module: nn.Module, x: torch.Tensor) -> tuple[int, torch.Tensor]:
    """Run ``module(x)`` and return (MACs for the whole batch, output)."""
    total = 0
    counter = _MatmulCounter()

    def enter(mod: nn.Module, _inputs: object) -> None:
        counter.depth += 1

    def hook(mod: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        nonlocal total
        counter.depth -= 1
        if isinstance(output, torch.Tensor):
            total += _module_macs(mod, output)

    layers = [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    handles = [m.register_forward_pre_hook(enter) for m in layers] + [m.register_forward_hook(hook) for m in layers]
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # attention as its products, not one fused op
    try:
        with counter:
            output = module(x)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        for handle in handles:
            handle.remove()
    return total + counter.total, output


def layer_macs(model: nn.Module, example_input: torch.Tensor) -> dict[str, int]:
    """MACs per sample of every Conv2d/Linear, by module name (one plain forward).

    Early-exit models are run through ``forward_all`` so every head is counted.
    """
    batch = _batch_size(example_input)
    names = {m: n for n, m in model.named_modules()}
    counts: dict[str, int] = {}

    def hook(mod: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        counts[names[mod]] = counts.get(names[mod], 0) + _module_macs(mod, output) // batch

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            forward_all = getattr(model, "forward_all", None)
            forward_all(example_input) if callable(forward_all) else model(example_input)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return counts


def count_macs(model: nn.Module, example_input: torch.Tensor, exit_rates: Sequence[float] | None = None) -> int:
    """Multiply-accumulates per sample.

    Conv2d counts ``out_h * out_w * out_c * (in_c / groups) * kh * kw`` and Linear
    ``in * out`` (biases are not counted); the total is divided by the batch size of
    ``example_input``.

    For an early-exit model (one with ``segments()``), the pieces are counted
    separately.  With ``exit_rates`` (one share per segment: each enabled exit in
    order, then the final head; non-negative, summing to 1) the result is the
    expected MACs ``sum_k rate_k * (trunk up to exit k + every exit head evaluated on
    the way, k's included)``.  With ``exit_rates=None`` it is the full path: every
    trunk piece, every exit head and the final head (nobody leaves early).

    Args:
        model: the model to count (its train/eval mode is restored afterwards).
        example_input: a batch shaped like the model's input.
        exit_rates: shares of samples leaving at each exit (early-exit models only;
            a model without exits accepts ``None`` or ``[1.0]``).

    Returns:
        The MACs per sample, rounded to an integer.

    Raises:
        ValueError: ``exit_rates`` of the wrong length, negative or not summing to 1.
    """
    batch = _batch_size(example_input)
    segments = getattr(model, "segments", None)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if not callable(segments):
                _check_rates(exit_rates, 1)
                total, _ = _run_counted(model, example_input)
                return total // batch
            pieces = segments()
            _check_rates(exit_rates, len(pieces))
            x = example_input
            path = 0  # MACs of everything evaluated so far (trunk pieces and exit heads)
            per_exit: list[int] = []
            for trunk, head, _threshold in pieces:
                trunk_macs, x = _run_counted(trunk, x)
                path += trunk_macs
                if head is not None:
                    head_macs, _ = _run_counted(head, x)
                    path += head_macs
                per_exit.append(path)
    finally:
        model.train(was_training)
    if exit_rates is None:
        return per_exit[-1] // batch
    expected = sum(float(rate) * macs for rate, macs in zip(exit_rates, per_exit)) / batch
    return int(round(expected))


def _check_rates(exit_rates: Sequence[float] | None, n_segments: int) -> None:
    if exit_rates is None:
        return
    rates = [float(r) for r in exit_rates]
    if len(rates) != n_segments:
        raise ValueError(
            f"`exit_rates` needs one share per exit plus the final head ({n_segments} values), "
            f"but got {len(rates)}: {list(exit_rates)!r}."
        )
    if any(r < 0 or math.isnan(r) for r in rates) or abs(sum(rates) - 1.0) > 1e-6:
        raise ValueError(f"`exit_rates` must be non-negative shares summing to 1, but got {list(exit_rates)!r}.")


def count_params(model: nn.Module, nonzero: bool = False) -> int:
    """Number of parameters (``nonzero=True``: only the non-zero ones).

    Parameters masked by ``torch.nn.utils.prune`` (``<name>_orig`` with a
    ``<name>_mask`` buffer) are counted through their masked value, so a model still
    carrying masks gives the same answer as one whose pruning was made permanent.
    """
    total = 0
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            value = param
            if name.endswith("_orig") and hasattr(module, name[: -len("_orig")] + "_mask"):
                value = param * getattr(module, name[: -len("_orig")] + "_mask")
            total += int(torch.count_nonzero(value).item()) if nonzero else value.numel()
    return total
