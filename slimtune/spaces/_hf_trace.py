"""``transformers``' own fx tracer, for the models it supports (BERT, DistilBERT, ...),
as :func:`slimtune.spaces._graph_cuts.trace` uses it: attention blocks kept whole, the
padding mask of a single-tensor input traced as absent, torch left as it was."""

from __future__ import annotations

from typing import Any

import torch
import torch.fx
from torch import nn

from slimtune.spaces._attention import attention_blocks

__all__ = ["hf_trace"]


def hf_trace(model: nn.Module) -> torch.fx.GraphModule | None:
    """``transformers``' own fx tracer for a ``LogitsOutput`` around a supported
    ``PreTrainedModel`` (its main input, e.g. ``input_ids`` or ``pixel_values``), its
    output rewired to the logits; None when it does not apply.

    Attention modules (:mod:`slimtune.spaces._attention`) stay whole, so that they read
    their head counts when they run (channel pruning after exits changes them).  The
    4-d attention mask that ``transformers`` builds from an all-ones mask is traced as
    ``None``, which is what it is when the model runs on one input tensor (no padding
    mask): the layers then read only the hidden states."""
    from slimtune.tasks._outputs import LogitsOutput

    if not isinstance(model, LogitsOutput) or model.spec != "logits":
        return None
    try:
        from transformers import PreTrainedModel
        from transformers.utils import fx as hf_fx
        from transformers.utils.fx import HFTracer
        from transformers.utils.fx import symbolic_trace as hf_symbolic_trace
    except ImportError:
        return None
    inner = model.model
    if not isinstance(inner, PreTrainedModel):
        return None
    import sys
    import warnings

    leaves = attention_blocks(inner)

    class Tracer(HFTracer):
        def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
            return isinstance(m, leaves) or super().is_leaf_module(m, module_qualified_name)

    saved = dict(vars(torch))
    patched = []
    for cls in {type(m) for m in inner.modules()}:  # the modules that build masks, e.g. modeling_bert
        module = sys.modules.get(cls.__module__)
        if module is not None and hasattr(module, _SDPA_MASK):
            patched.append((module, getattr(module, _SDPA_MASK)))
            setattr(module, _SDPA_MASK, _no_padding_mask)
    use_cache = getattr(inner.config, "use_cache", None)
    overrides = getattr(hf_fx, "_MANUAL_META_OVERRIDES", {})
    added = [cls for cls in leaves if cls not in overrides]
    for cls in added:  # the tracer learns a whole block's output shapes by running it on meta tensors
        overrides[cls] = _run_on_meta
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph_module = hf_symbolic_trace(inner, input_names=[inner.main_input_name], tracer_cls=Tracer)
    finally:
        # transformers' tracer replaces torch.arange, torch.tensor, ... while tracing and
        # leaves them replaced when it fails part-way (seen with ConvNeXt): put them back
        for name, value in saved.items():
            if vars(torch).get(name) is not value:
                setattr(torch, name, value)
        for module, original in patched:
            setattr(module, _SDPA_MASK, original)
        for cls in added:
            overrides.pop(cls, None)
        if use_cache is not None:
            inner.config.use_cache = use_cache
    graph = graph_module.graph
    output = next(n for n in graph.nodes if n.op == "output")
    result = output.args[0]
    logits = result.get("logits") if isinstance(result, dict) else None
    if not isinstance(logits, torch.fx.Node):
        return None
    output.args = (logits,)
    graph.eliminate_dead_code()
    graph_module.recompile()
    graph_module.traced_inner = True  # module names are those of model.model
    return graph_module


#: What ``transformers`` calls to expand a 2-d padding mask for SDPA attention; it
#: returns None for a mask of ones, except while tracing.
_SDPA_MASK = "_prepare_4d_attention_mask_for_sdpa"


def _run_on_meta(module: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """``module``'s output on meta tensors (shapes only), run by a meta-device copy."""
    import copy

    return copy.deepcopy(module).to("meta")(*args, **kwargs)


def _no_padding_mask(mask: Any, dtype: Any, tgt_len: Any = None) -> None:
    """The mask for SDPA attention when no padding mask is given: none."""
    return None
