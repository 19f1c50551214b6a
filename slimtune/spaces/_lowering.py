"""Lowering: the core stage between the compression knobs and the quantization knobs.

Lowering turns a trained, compressed model into the plain Conv/Linear graph that
runtimes compile and later knobs refine:

- pruning re-parametrisations are made permanent (zeros stay in the weights),
- every BatchNorm is folded into the convolution before it (eval-mode statistics),
- after the quantization stage, weights are snapped to the b-bit grid the runtime
  compiles at (``weight_bits``), per output channel and symmetric::

    scale_c = fp16(max|w_c| / (2^(b-1) - 1))        w_c <- round(w_c / scale_c) * scale_c

  (16 bits is fp16 rounding; the scale is rounded to fp16 so that the packed model file
  holds it exactly).

It is not a knob: the pipeline runs it for every candidate, and knobs of the stages
after it (``quantization``, ``encoding``) see a lowered model.  Runtimes read the same
grid (:func:`quantize_weight`) so that their int8 kernels reproduce these weights.

Example:
    >>> info = lower(model, example_input)     # pruning permanent, BatchNorm folded
    >>> snap_weights(model, 4)                 # at most 15 values per output channel
"""

from __future__ import annotations

from typing import Any, Iterator

import torch
import torch.fx
from torch import nn
from torch.nn.utils import prune as torch_prune

from slimtune.spaces.base import replace_module

_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
#: Layers whose weights are quantized (output channels on axis 0).
QUANTIZABLE = (*_CONV_TYPES, nn.Linear)


# -- the b-bit grid ---------------------------------------------------------------
def qmax(bits: int) -> int:
    """Largest integer of the symmetric b-bit grid, ``2^(b-1) - 1``."""
    if not 2 <= bits <= 8:
        raise ValueError(f"`bits` must be in [2, 8] for an integer grid, but got {bits!r}.")
    return 2 ** (bits - 1) - 1


def channel_scales(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-output-channel symmetric scales ``fp16(max|w_c| / qmax)`` as float32
    (an all-zero channel gets scale 1)."""
    amax = weight.detach().abs().reshape(weight.shape[0], -1).amax(dim=1).float()
    scale = (amax / qmax(bits)).half().float()
    bad = (scale == 0) | ~torch.isfinite(scale)
    if bad.any():  # fp16 underflow/overflow: keep the float32 scale there
        scale = torch.where(bad, amax / qmax(bits), scale)
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    return scale


def quantize_weight(weight: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The b-bit integers (int8 tensor, in ``[-qmax, qmax]``) and per-channel scales."""
    scale = channel_scales(weight, bits)
    shape = (-1,) + (1,) * (weight.dim() - 1)
    q = torch.round(weight.detach().float() / scale.view(shape)).clamp_(-qmax(bits), qmax(bits))
    return q.to(torch.int8), scale


def fake_quantize(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """``weight`` snapped to its b-bit grid (16 = fp16 rounding, 32 = unchanged)."""
    if bits >= 32:
        return weight
    if bits == 16:
        return weight.half().to(weight.dtype)
    q, scale = quantize_weight(weight, bits)
    return (q.float() * scale.view((-1,) + (1,) * (weight.dim() - 1))).to(weight.dtype)


def low_bit_flag(bits: int) -> str:
    """The note every measurement below 8 bits carries (one wording, so that the
    knob's and the runtime's copies de-duplicate)."""
    return (f"{bits}-bit weights are stored packed at {bits} bits but execute on int8 kernels "
            f"with 8-bit activations (no {bits}-bit CPU kernel)")


FP16_FLAG = "16-bit weights are fp16-rounded but run on fp32 kernels (no fp16 CPU kernel); size counts 16 bits"


def quantizable_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``(name, layer)`` for every Conv/Linear layer (ConvTranspose is not included)."""
    for name, module in model.named_modules():
        if isinstance(module, QUANTIZABLE):
            yield name, module


@torch.no_grad()
def snap_weights(model: nn.Module, bits: int) -> int:
    """Snap every Conv/Linear weight of ``model`` to the b-bit grid in place; returns
    the number of layers."""
    count = 0
    for _, layer in quantizable_layers(model):
        target = layer.weight_orig if hasattr(layer, "weight_orig") else layer.weight
        target.copy_(fake_quantize(target, bits))
        count += 1
    return count


# -- BatchNorm folding ------------------------------------------------------------
def _traced_pairs(module: nn.Module) -> tuple[list[tuple[str, str]], set[str]] | None:
    """Conv -> BN pairs found by FX tracing ``module`` and the names of the modules
    the trace called (None if it cannot be traced)."""
    try:  # a graph module (e.g. a piece of a model cut for early exits) is its graph already
        graph = module.graph if isinstance(module, torch.fx.GraphModule) else torch.fx.symbolic_trace(module).graph
    except Exception:  # noqa: BLE001 - data-dependent control flow, custom ops, ...
        return None
    modules = dict(module.named_modules())
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), _BN_TYPES):
            continue
        src = node.args[0] if node.args else None
        if (
            isinstance(src, torch.fx.Node) and src.op == "call_module"
            and isinstance(modules.get(src.target), _CONV_TYPES) and len(src.users) == 1
        ):
            pairs.append((src.target, node.target))
    called = {str(node.target) for node in graph.nodes if node.op == "call_module"}
    return pairs, called


def conv_bn_pairs(model: nn.Module, example_input: torch.Tensor | None = None) -> list[tuple[str, str]]:
    """Qualified names ``(conv, bn)`` of every BatchNorm that directly follows a
    convolution whose output nothing else reads.

    The model is traced with torch.fx; where a module cannot be traced (e.g. an
    early-exit network's data-dependent forward, or a library's conv layer that
    computes its padding from the input shape) its children are traced instead, and
    in an ``nn.Sequential`` adjacent Conv/BN children count as pairs.  With
    ``example_input``, BatchNorms still unpaired are matched by running the model
    (:func:`_run_pairs`: the BatchNorm reads exactly the tensor a conv wrote), and each
    such pair is kept only if folding it is proven exact on that input.
    """
    found: list[tuple[str, str]] = []

    def visit(module: nn.Module, prefix: str) -> None:
        traced = _traced_pairs(module)
        children = list(module.named_children())
        if traced is not None:
            pairs, called = traced
            found.extend((prefix + c, prefix + b) for c, b in pairs)
            for name, child in children:  # children the traced path never reached
                if not any(t == name or t.startswith(name + ".") for t in called):
                    visit(child, f"{prefix}{name}.")
            return
        if isinstance(module, nn.Sequential):
            for (cn, c), (bn_name, b) in zip(children, children[1:]):
                if isinstance(c, _CONV_TYPES) and isinstance(b, _BN_TYPES):
                    found.append((prefix + cn, prefix + bn_name))
        for name, child in children:
            if not isinstance(child, (*_CONV_TYPES, *_BN_TYPES)):
                visit(child, f"{prefix}{name}.")

    visit(model, "")
    out = _valid_pairs(model, found)
    if example_input is not None:
        paired = {bn for _, bn in out}
        unpaired = [n for n, m in model.named_modules() if isinstance(m, _BN_TYPES) and n not in paired
                    and not getattr(m, FOLDED_ATTR, False)]
        if unpaired:
            out += _valid_pairs(model, _run_pairs(model, example_input, set(unpaired)), exclude=paired)
    return out


def _valid_pairs(model: nn.Module, pairs: list[tuple[str, str]], exclude: set[str] = frozenset()) -> list[tuple[str, str]]:
    modules = dict(model.named_modules())
    out, seen = [], set(exclude)
    for conv, bn in pairs:
        c, b = modules[conv], modules[bn]
        if bn in seen or b.running_mean is None or c.out_channels != b.num_features or getattr(b, FOLDED_ATTR, False):
            continue
        seen.add(bn)
        out.append((conv, bn))
    return out


@torch.no_grad()
def _run_pairs(model: nn.Module, example_input: torch.Tensor, wanted: set[str]) -> list[tuple[str, str]]:
    """Conv -> BN pairs among the BatchNorms named in ``wanted``, found by running
    ``model`` once: the BatchNorm's input is the very tensor a conv returned, each
    called once.  Every pair is then checked: folding it into a copy whose BatchNorm
    statistics are randomised must leave the model's output unchanged (so a conv
    output also read elsewhere, e.g. by a residual addition, is never folded)."""
    names = {m: n for n, m in model.named_modules()}
    conv_out: dict[str, list[torch.Tensor]] = {}
    bn_in: dict[str, list[torch.Tensor]] = {}
    handles = []
    for module, name in names.items():
        if isinstance(module, _CONV_TYPES):
            handles.append(module.register_forward_hook(
                lambda m, i, o, n=name: conv_out.setdefault(n, []).append(o)))
        elif isinstance(module, _BN_TYPES) and name in wanted:
            handles.append(module.register_forward_pre_hook(
                lambda m, i, n=name: bn_in.setdefault(n, []).append(i[0] if i else None)))
    was_training = model.training
    model.eval()
    try:
        _run_every_path(model, example_input)
    except Exception:  # noqa: BLE001 - the user's model; nothing is folded by this route then
        return []
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    by_tensor = {id(outs[0]): conv for conv, outs in conv_out.items() if len(outs) == 1}
    candidates = [(by_tensor[id(ins[0])], bn) for bn, ins in bn_in.items()
                  if len(ins) == 1 and ins[0] is not None and id(ins[0]) in by_tensor]
    candidates = _valid_pairs(model, candidates)
    if not candidates:
        return []
    if _folding_is_exact(model, example_input, candidates):
        return candidates
    return [pair for pair in candidates if _folding_is_exact(model, example_input, [pair])]


def _run_every_path(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model(x)``, or for an early-exit model (``forward_all``) every exit's logits
    and the final head's side by side, so that no layer is skipped by a sample
    leaving early."""
    forward_all = getattr(model, "forward_all", None)
    if callable(forward_all):
        return torch.cat([out.flatten(1) for out in forward_all(x)], dim=1)
    return model(x)


@torch.no_grad()
def _folding_is_exact(model: nn.Module, example_input: torch.Tensor, pairs: list[tuple[str, str]]) -> bool:
    """Whether folding ``pairs`` keeps the output of ``model`` (eval mode), checked on
    a copy whose BatchNorms get random statistics (an untrained BatchNorm is the
    identity, which would hide a wrong pair)."""
    import copy

    probe = copy.deepcopy(model).eval()
    g = torch.Generator().manual_seed(0)
    for _, bn in pairs:
        b = probe.get_submodule(bn)
        n = b.num_features
        b.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
        b.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
        if b.affine:
            b.weight.copy_(torch.rand(n, generator=g) + 0.5)
            b.bias.copy_(torch.randn(n, generator=g) * 0.5)
    try:
        before = _run_every_path(probe, example_input)
        after = _run_every_path(_fold_pairs(copy.deepcopy(probe), pairs), example_input)
    except Exception:  # noqa: BLE001
        return False
    if not isinstance(before, torch.Tensor) or not isinstance(after, torch.Tensor) or before.shape != after.shape:
        return False
    return bool(torch.allclose(before, after, rtol=1e-3, atol=1e-4 * float(before.abs().max().clamp_min(1.0))))


#: Set on a BatchNorm subclass (e.g. a BatchNorm fused with its activation) that was
#: folded: it stays in place, with identity statistics, to run the rest of its forward.
FOLDED_ATTR = "_slimtune_folded"


@torch.no_grad()
def _fold_pairs(model: nn.Module, pairs: list[tuple[str, str]]) -> nn.Module:
    modules = dict(model.named_modules())
    for conv_name, bn_name in pairs:
        conv, bn = modules[conv_name], modules[bn_name]
        std = torch.sqrt(bn.running_var + bn.eps)
        gamma = bn.weight if bn.affine else torch.ones_like(std)
        beta = bn.bias if bn.affine else torch.zeros_like(std)
        factor = gamma / std
        weight = conv.weight_orig if hasattr(conv, "weight_orig") else conv.weight
        weight.mul_(factor.reshape((-1,) + (1,) * (weight.dim() - 1)))
        old_bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        new_bias = (old_bias - bn.running_mean) * factor + beta
        if conv.bias is None:
            conv.bias = nn.Parameter(new_bias.detach().clone())
        else:
            conv.bias.copy_(new_bias)
        if type(bn) in _BN_TYPES:
            replace_module(model, bn_name, nn.Identity())
        else:  # a BatchNorm fused with more (e.g. an activation): keep the rest of its forward
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0 - bn.eps)
            if bn.affine:
                bn.weight.fill_(1.0)
                bn.bias.zero_()
            setattr(bn, FOLDED_ATTR, True)
    return model


@torch.no_grad()
def fold_batchnorm(model: nn.Module, example_input: torch.Tensor | None = None) -> nn.Module:
    """Fold each BatchNorm into the convolution before it (running statistics, i.e.
    eval-mode semantics), in place; the BatchNorm becomes ``nn.Identity`` (a
    BatchNorm subclass that does more, such as a BatchNorm fused with its activation,
    stays with identity statistics so the rest of its forward still runs).

    The conv gains a bias if it had none.  Weights under a ``torch.nn.utils.prune``
    mask are scaled through ``weight_orig`` so the mask stays in force.  With
    ``example_input``, pairs that tracing cannot see are found by running the model
    (see :func:`conv_bn_pairs`).  Returns ``model``.
    """
    return _fold_pairs(model, conv_bn_pairs(model, example_input))


def has_unfolded_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, _BN_TYPES) and not getattr(m, FOLDED_ATTR, False) for m in model.modules())


def make_pruning_permanent(model: nn.Module) -> int:
    """Remove ``torch.nn.utils.prune`` re-parametrisations (zeros stay in the
    weights); returns the number of layers."""
    count = 0
    for module in model.modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, torch_prune.BasePruningMethod):
                torch_prune.remove(module, hook._tensor_name)
                count += 1
    return count


# -- the stage ----------------------------------------------------------------------
@torch.no_grad()
def lower(model: nn.Module, example_input: torch.Tensor | None = None) -> dict[str, Any]:
    """Lower ``model`` in place (eval mode): pruning made permanent, then BatchNorm
    folded; returns what was done (stored with the candidate's info)."""
    model.eval()
    made_permanent = make_pruning_permanent(model)
    pairs = conv_bn_pairs(model, example_input)
    _fold_pairs(model, pairs)
    return {"bn_folded": True, "folded_batchnorms": len(pairs), "pruning_made_permanent": made_permanent,
            "unfolded_batchnorm": has_unfolded_batchnorm(model)}
