"""Attention layers, recognised by how they hold their projections and head counts.

Knobs that change layer widths need to know where a model's attention is: channel
pruning removes whole heads (a head's query, key and value rows and the output
projection's columns together) and then updates the module's head count; it never
narrows the residual width that attention reads (embeddings, LayerNorms, every
block's output).  ``nn.MultiheadAttention`` holds its input projection as one
parameter and its output projection as a layer whose weight it reads directly, so
its heads cannot be removed and its projections cannot be factorized: knobs leave it
whole.

Recognised (a table, like Torch-Pruning's per-layer pruners; add an
:class:`AttentionSpec` to :data:`SPECS` for another library's naming):

- ``query``/``key``/``value`` with ``num_attention_heads`` and ``attention_head_size``
  (``transformers``' BERT, ViT, and the many models copied from them);
- ``q_lin``/``k_lin``/``v_lin`` with ``n_heads`` and ``attention_head_size``
  (``transformers``' DistilBERT);
- ``q_proj``/``k_proj``/``v_proj`` with ``num_heads`` and ``head_dim``;
- one fused ``qkv`` layer with ``num_heads`` and ``head_dim`` (timm's ViT).

Example:
    >>> [name for name, _, _ in find_attention(vit)]
    ['vit.encoder.layer.0.attention.attention', ...]
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

__all__ = ["AttentionSpec", "SPECS", "attention_blocks", "find_attention", "head_pruning", "mha_projections",
           "residual_inputs", "sync_head_counts"]


@dataclass(frozen=True)
class AttentionSpec:
    """How one kind of attention module holds its projections and head count.

    Attributes:
        projections: the ``nn.Linear`` children producing queries, keys and values
            (one name: a fused layer producing all three).
        heads: the attribute holding the number of heads.
        head_size: the attribute holding each head's width (pruning keeps it).
        totals: attributes holding ``heads * head_size`` (updated with the heads).
    """

    projections: tuple[str, ...]
    heads: str
    head_size: str
    totals: tuple[str, ...] = ()

    def matches(self, module: nn.Module) -> bool:
        return (all(_linear_like(getattr(module, p, None)) for p in self.projections)
                and isinstance(getattr(module, self.heads, None), int)
                and isinstance(getattr(module, self.head_size, None), int))

    def layers(self, module: nn.Module) -> list[nn.Linear]:
        """The ``nn.Linear`` layers whose outputs are the heads (of a factorized
        projection, its second factor)."""
        return [_last_linear(getattr(module, p)) for p in self.projections]

    def input_layers(self, module: nn.Module) -> list[nn.Linear]:
        """The ``nn.Linear`` layers that read the attention's input (the residual width)."""
        return [_first_linear(getattr(module, p)) for p in self.projections]

    def per_head(self, module: nn.Module) -> int:
        """Output features of the first projection per head (``3 * head_size`` fused)."""
        return int(getattr(module, self.head_size)) * (3 if len(self.projections) == 1 else 1)


def _linear_like(module: object) -> bool:
    """An ``nn.Linear``, or a chain of them (a low-rank factorized projection)."""
    if isinstance(module, nn.Linear):
        return True
    return (isinstance(module, nn.Sequential) and len(module) > 0
            and all(isinstance(m, nn.Linear) for m in module))


def _first_linear(module: nn.Module) -> nn.Linear:
    return module if isinstance(module, nn.Linear) else module[0]  # type: ignore[index,return-value]


def _last_linear(module: nn.Module) -> nn.Linear:
    return module if isinstance(module, nn.Linear) else module[-1]  # type: ignore[index,return-value]


SPECS: list[AttentionSpec] = [
    AttentionSpec(("query", "key", "value"), "num_attention_heads", "attention_head_size", ("all_head_size",)),
    AttentionSpec(("q_lin", "k_lin", "v_lin"), "n_heads", "attention_head_size", ("dim",)),
    AttentionSpec(("q_proj", "k_proj", "v_proj"), "num_heads", "head_dim"),
    AttentionSpec(("qkv",), "num_heads", "head_dim"),
]


def find_attention(model: nn.Module) -> list[tuple[str, nn.Module, AttentionSpec]]:
    """``(name, module, spec)`` for every attention module of :data:`SPECS` in ``model``."""
    out = []
    for name, module in model.named_modules():
        spec = next((s for s in SPECS if s.matches(module)), None)
        if spec is not None:
            out.append((name, module, spec))
    return out


def mha_projections(model: nn.Module) -> dict[str, str]:
    """``{layer name: reason}`` for the layers that ``nn.MultiheadAttention`` modules read
    as weights (their ``out_proj``): replacing them breaks the attention."""
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.MultiheadAttention):
            out[f"{name}.out_proj" if name else "out_proj"] = (
                "nn.MultiheadAttention reads its out_proj weight directly")
    return out


def sync_head_counts(model: nn.Module) -> dict[str, int]:
    """After the projections of attention modules lost whole heads: set each module's
    head count (and ``heads * head_size`` totals) from its projections' widths.
    Returns ``{module name: heads}``."""
    counts = {}
    for name, module, spec in find_attention(model):
        heads = spec.layers(module)[0].out_features // spec.per_head(module)
        setattr(module, spec.heads, heads)
        for total in spec.totals:
            setattr(module, total, heads * int(getattr(module, spec.head_size)))
        counts[name] = heads
    return counts


def head_pruning(model: nn.Module, ratio: float) -> dict[nn.Module, tuple[int, float]]:
    """``{projection layer: (heads, head pruning ratio)}`` for Torch-Pruning: each
    attention module keeps ``max(1, int(H * (1 - ratio)))`` heads (Torch-Pruning removes
    ``ceil(r * H)``, so ``r`` is set just below the share to remove)."""
    out: dict[nn.Module, tuple[int, float]] = {}
    for _, module, spec in find_attention(model):
        total = int(getattr(module, spec.heads))
        removed = total - max(1, int(total * (1.0 - ratio)))
        share = max(0.0, (removed - 0.5) / total)
        for layer in spec.layers(module):
            out[layer] = (total, share)
    return out


def residual_inputs(model: nn.Module) -> set[int]:
    """Ids of the modules whose *inputs* are a transformer's residual width: every
    attention projection (:mod:`slimtune.spaces._attention`) and ``nn.MultiheadAttention``."""
    out = {id(m) for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
    for _, module, spec in find_attention(model):
        out.update(id(layer) for layer in spec.input_layers(module))
    return out


def attention_blocks(model: nn.Module) -> tuple[type, ...]:
    """The classes to keep whole around attention (:mod:`slimtune.spaces._attention`):
    the block holding it (the numbered child of a layer list, e.g. ``encoder.layer.0``),
    else the attention module itself.  Kept whole, a block reads its attention's head
    count when it runs (channel pruning after exits changes it); traced through, the
    count would be a constant of the graph."""
    modules = dict(model.named_modules())
    found: set[type] = set()
    for name, module, _ in find_attention(model):
        parts = name.split(".")
        block = next((".".join(parts[:i + 1]) for i in range(len(parts) - 1, -1, -1)
                      if parts[i].isdigit() and isinstance(modules.get(".".join(parts[:i])), (nn.Sequential, nn.ModuleList, nn.ModuleDict))), None)
        found.add(type(modules[block]) if block is not None else type(module))
    return tuple(found)
