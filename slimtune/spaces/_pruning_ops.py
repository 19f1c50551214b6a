"""The pruning knob's operations on models (torch and Torch-Pruning): channel pruning
through the dependency graph, rebuilding pruned widths, and the layers never pruned.
:mod:`slimtune.spaces.pruning` (the knob, which imports without torch) calls them."""

from __future__ import annotations

import copy
from typing import Any, Callable, Iterable, Mapping

import torch
import torch_pruning as tp
from torch import nn

from slimtune.spaces.base import KnobContext
from slimtune.spaces._attention import head_pruning, residual_inputs, sync_head_counts

_PRUNABLE = (nn.Conv2d, nn.Linear)

#: Channel pruning keeps a multiple of this many channels in every layer of at least
#: four times as many: CPU kernels work on blocks of 8/16 channels, and a width between two
#: blocks can run slower than the unpruned layer (measured: docs/knobs.md).  Narrower
#: layers keep ``int(C * (1 - ratio))``.
CHANNEL_MULTIPLE = 8


class _RoundedPruner(tp.pruner.BasePruner):
    """Torch-Pruning's pruner keeping the multiple of ``round_to`` nearest to the
    width the ratio asks for (at least ``round_to``), in layers of ``4 * round_to``
    channels or more (its own rule rounds down, to zero in narrow layers)."""

    def _round_to(self, n_pruned: int, current_channels: int, round_to: int) -> int:
        return current_channels - rounded_keep(current_channels - n_pruned, current_channels, round_to)


def rounded_keep(keep: int, channels: int, multiple: int = CHANNEL_MULTIPLE) -> int:
    """How many of ``channels`` a layer keeps when the ratio asks for ``keep``: the
    nearest multiple of ``multiple`` (at least ``multiple``, at most ``channels``) in a
    layer of ``4 * multiple`` channels or more, else ``keep``."""
    if channels < 4 * multiple or keep >= channels:
        return keep
    return min(channels, max(multiple, int(keep / multiple + 0.5) * multiple))


# -- helpers shared by both granularities ------------------------------------------
def _prunable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, _PRUNABLE)]


def _out_width(module: nn.Module) -> int:
    return int(module.out_channels if isinstance(module, nn.Conv2d) else module.out_features)  # type: ignore[union-attr]


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _finetune(model: nn.Module, ctx: KnobContext) -> None:
    if ctx.finetune_epochs > 0:
        ctx.finetune(model, epochs=ctx.finetune_epochs)


def _flag(ctx: KnobContext, message: str) -> None:
    flags = ctx.info.setdefault("flags", [])
    if message not in flags:
        flags.append(message)


def _forward_fn(model: nn.Module) -> Callable[[nn.Module, torch.Tensor], Any] | None:
    """Trace early-exit models through every head, not the dynamic forward."""
    if callable(getattr(model, "forward_all", None)):
        return lambda m, x: m.forward_all(x)
    return None


def unwrapped_parameters(model: nn.Module) -> list[tuple[nn.Parameter, int]]:
    """``(parameter, pruning dim)`` for every parameter held by a module Torch-Pruning
    has no pruner for (e.g. ConvNeXt's per-channel ``layer_scale_parameter``), pruned
    along its last dimension longer than 1 (its channel axis in the cases seen).

    Torch-Pruning detects these itself but warns on every graph it builds; naming them
    makes the choice explicit and the warning goes away."""
    from torch_pruning import ops

    wrapped: set[int] = set()
    for module in model.modules():
        if ops.module2type(module) != ops.OPTYPE.ELEMENTWISE:
            wrapped.update(id(p) for p in module.parameters())
    out = []
    for param in model.parameters():
        if id(param) in wrapped:
            continue
        dims = [i for i, size in enumerate(param.shape) if size > 1]
        if dims:
            out.append((param, dims[-1]))
    return out


def build_dependency_graph(model: nn.Module, example_input: torch.Tensor) -> tp.DependencyGraph:
    """Torch-Pruning's dependency graph of ``model`` (early-exit models traced through
    ``forward_all`` so the exit heads are part of it).  Leaves ``model`` in its mode."""
    was_training = model.training
    try:
        return tp.DependencyGraph().build_dependency(model, example_inputs=example_input,
                                                    forward_fn=_forward_fn(model), verbose=False,
                                                    unwrapped_parameters=unwrapped_parameters(model))
    finally:
        model.train(was_training)


def channel_widths(model: nn.Module) -> dict[str, int]:
    """``{module name: out_channels / out_features}`` for every Conv2d and Linear."""
    return {name: _out_width(m) for name, m in _prunable_layers(model)}


def logit_layers(model: nn.Module, example_input: torch.Tensor | None = None,
                 num_classes: int | None = None) -> list[nn.Module]:
    """The layers whose outputs are class logits (never channel-pruned).

    A block classifier's are the last Conv2d/Linear of ``model.head`` and of each
    ``model.exits`` head.  For other models: every Linear with ``out_features ==
    num_classes`` (inferred from a forward of ``example_input`` if not given), else
    the last Conv2d/Linear of the model.
    """
    layers: list[nn.Module] = []
    heads: list[nn.Module] = []
    if isinstance(getattr(model, "head", None), nn.Module):
        heads.append(model.head)  # type: ignore[arg-type]
    if isinstance(getattr(model, "exits", None), nn.Module):
        heads.extend(model.exits.children())  # type: ignore[union-attr]
    for head in heads:
        inner = [m for m in head.modules() if isinstance(m, _PRUNABLE)]
        if inner:
            layers.append(inner[-1])
    head = getattr(model, "head", None)
    classifier_in_head = isinstance(head, nn.Module) and any(isinstance(m, _PRUNABLE) for m in head.modules())
    if layers and classifier_in_head:
        return layers
    # the final classifier lies elsewhere (e.g. early exits on a traced model's pieces)
    if num_classes is None and example_input is not None:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            num_classes = int(model(example_input).shape[-1])
        model.train(was_training)
    found = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == num_classes]
    if not found:
        found = [m for _, m in _prunable_layers(model)][-1:]
    return list({id(m): m for m in [*layers, *found]}.values())


def _ignored_layers(model: nn.Module, ctx: KnobContext) -> list[nn.Module]:
    """Logit layers plus whatever ``ctx.info["ignored_layers"]`` names (or holds)."""
    ignored = logit_layers(model, ctx.example_input, ctx.info.get("num_classes"))
    for item in ctx.info.get("ignored_layers") or []:
        if isinstance(item, nn.Module):
            ignored.append(item)
            continue
        try:
            ignored.append(model.get_submodule(str(item)))
        except AttributeError:
            raise ValueError(f"ctx.info['ignored_layers'] names {item!r}, which is not a module of the model.") from None
    return list({id(m): m for m in ignored}.values())


# -- channel (structured) pruning -----------------------------------------------------
def _replay(dg: tp.DependencyGraph, history: Iterable[Any]) -> None:
    """Redo a recorded pruning (``DG.pruning_history()``) on another copy of the model."""
    for module_name, is_out, idxs in history:
        module = dg.model.get_submodule(module_name)
        pruner = dg.get_pruner_of_module(module)
        fn = pruner.prune_out_channels if is_out else pruner.prune_in_channels
        plain = [int(getattr(i, "idx", i)) for i in idxs]
        dg.get_pruning_group(module, fn, plain).prune(record_history=False)


def prune_channels(model: nn.Module, ratio: float, ctx: KnobContext, *,
                   importance: Callable[..., torch.Tensor] | None = None, rewind: bool = False) -> nn.Module:
    """Remove ``ratio`` of the channels of every prunable group, in place.

    Each dependency group (layers whose channels must go together, e.g. the convs
    joined by a residual addition) keeps ``int(C * (1 - ratio))`` of its ``C``
    channels, rounded to the nearest multiple of :data:`CHANNEL_MULTIPLE` where ``C``
    is at least four times that (:func:`rounded_keep`), ranked by ``importance``
    (default: group L1 magnitude).  Logit layers (:func:`logit_layers` plus
    ``ctx.info["ignored_layers"]``) keep their outputs.

    Attention (:mod:`slimtune.spaces._attention`) loses whole heads: each attention
    module keeps ``max(1, int(H * (1 - ratio)))`` of its ``H`` heads (a head's query,
    key and value rows and the output projection's columns together, ranked by their
    mean importance) and its head count is updated.  The residual width of a model with
    attention (what its embeddings, LayerNorms and attention inputs share) is kept:
    its MLP channels and heads are what is pruned.

    Writes ``ctx.info["channel_widths"]`` (see :func:`channel_widths`) and
    ``ctx.info["prune"]`` (``params_before``, ``params_after``, ``ignored_layers``,
    ``rewound_to``, ``heads``: each attention module's head count).
    """
    was_training = model.training
    names = {m: n for n, m in model.named_modules()}
    ignored = _ignored_layers(model, ctx)
    state = ctx.info.get("rewind_state") if rewind else None
    early = None
    if state is not None:
        early = copy.deepcopy(model)
        early.load_state_dict(state)
    params_before = _n_params(model)
    heads = head_pruning(model, float(ratio))
    pruner = _RoundedPruner(
        model, example_inputs=ctx.example_input, round_to=CHANNEL_MULTIPLE,
        importance=importance if importance is not None else tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=float(ratio), ignored_layers=ignored, forward_fn=_forward_fn(model),
        unwrapped_parameters=unwrapped_parameters(model),
        num_heads={layer: h for layer, (h, _) in heads.items()}, prune_num_heads=bool(heads), prune_head_dims=False,
        head_pruning_ratio_dict={layer: r for layer, (_, r) in heads.items()} or None,
    )  # builds the dependency graph once for this candidate
    residual = residual_inputs(model)
    for group in pruner.step(interactive=True):
        if not _touches(group, residual, pruner.DG):  # a transformer's residual width stays
            group.prune()
    counts = sync_head_counts(model)
    rewound_to = None
    if rewind and early is not None:
        _replay(build_dependency_graph(early, ctx.example_input), pruner.DG.pruning_history())
        model.load_state_dict(early.state_dict())
        rewound_to = "rewind_state"
    elif rewind:
        rewound_to = "pruning_time"
        _flag(ctx, "prune.rewind: no early weights (ctx.info['rewind_state']); "
                   "kept the weights at pruning time (plain fine-tuning)")
    model.train(was_training)
    _finetune(model, ctx)
    ctx.info["channel_widths"] = channel_widths(model)
    ctx.info["prune"] = {"granularity": "channel", "ratio": float(ratio), "rewind": rewind, "rewound_to": rewound_to,
                         "params_before": params_before, "params_after": _n_params(model),
                         "ignored_layers": [names.get(m, "?") for m in ignored], **({"heads": counts} if counts else {})}
    return model


def _touches(group: Any, residual: set[int], dg: tp.DependencyGraph) -> bool:
    """Whether a Torch-Pruning group narrows the input of a module of ``residual`` (or
    prunes an ``nn.MultiheadAttention`` at all: its pruner narrows its embedding width)."""
    for dep, _ in group:
        module = dep.target.module
        if id(module) not in residual:
            continue
        if isinstance(module, nn.MultiheadAttention) or dg.is_in_channel_pruning_fn(dep.handler):
            return True
    return False


def rebuild_channel_widths(model: nn.Module, widths: Mapping[str, int], example_input: torch.Tensor) -> nn.Module:
    """Prune a freshly built model (same architecture) to exactly ``widths``, in place.

    Trailing channels are removed through the dependency graph, so that a
    ``state_dict`` saved from the pruned model (whose surviving channels are stored
    compacted) loads into the result and computes the same function.

    Args:
        model: the unpruned architecture (e.g. rebuilt from the candidate's knobs).
        widths: ``ctx.info["channel_widths"]`` of the pruned model.
        example_input: an input batch for tracing.

    Raises:
        ValueError: a name that is not a Conv2d/Linear of ``model``, a width larger
            than the layer's, or widths the dependency graph cannot reach together.
    """
    modules = dict(model.named_modules())
    for name, width in widths.items():
        if not isinstance(modules.get(name), _PRUNABLE):
            raise ValueError(f"`widths` names {name!r}, which is not a Conv2d/Linear of the model.")
        if not 0 < int(width) <= _out_width(modules[name]):
            raise ValueError(f"`widths[{name!r}]` must be in [1, {_out_width(modules[name])}], but got {width!r}.")
    dg = build_dependency_graph(model, example_input)
    for name, module in modules.items():
        if name not in widths:
            continue
        current, target = _out_width(module), int(widths[name])
        if target >= current:
            continue
        fn = tp.prune_conv_out_channels if isinstance(module, nn.Conv2d) else tp.prune_linear_out_channels
        dg.get_pruning_group(module, fn, list(range(target, current))).prune()
    sync_head_counts(model)
    wrong = {name: (_out_width(modules[name]), int(w)) for name, w in widths.items() if _out_width(modules[name]) != int(w)}
    if wrong:
        raise ValueError(f"Could not rebuild the channel widths; (got, wanted) per layer: {wrong}.")
    return model
