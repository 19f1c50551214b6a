"""Weight clustering: ``cluster.k`` shared values per layer (k-means weight sharing,
as in Han et al., "Deep Compression", 2016).

The knob acts on the lowered model (BatchNorm folded, pruning permanent), after
quantization: each Conv/Linear weight is replaced by the nearest of ``k`` centroids
found by 1-D k-means over the layer's non-zero weights (pruned zeros stay zero), then
the centroids are fine-tuned for the task's recovery epochs (each centroid's gradient
is the sum over the weights that share it).  It declares a codebook encoding, so the
packed file stores each layer's weights as ``ceil(log2 k)``-bit indices plus the
values.  No CPU kernel reads a codebook: the runtime runs them as ordinary weights at
the quantization's bits (per-channel int8 scales then give each output channel its
own k values).  Like every knob module it imports torch only inside its functions:
``slimtune show`` reads the registry without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

from slimtune.spaces._registry import register_knob
from slimtune.spaces.base import Knob, KnobContext, Param, WeightEncoding

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

CLUSTERS = (0, 4, 16, 64)
KMEANS_ITERATIONS = 30


def kmeans_1d(values: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Centroids (sorted, at most ``k``) and each value's centroid index, by Lloyd's
    algorithm from a linear initialisation between the extremes (the best start for
    weights in Deep Compression's comparison)."""
    import torch

    values = values.detach()
    lo, hi = float(values.min()), float(values.max())
    centroids = torch.linspace(lo, hi, k, dtype=values.dtype, device=values.device).unique()
    codes = torch.zeros_like(values, dtype=torch.long)
    for _ in range(KMEANS_ITERATIONS):
        codes = torch.bucketize(values, (centroids[1:] + centroids[:-1]) / 2)
        sums = torch.zeros_like(centroids).index_add_(0, codes, values)
        counts = torch.zeros_like(centroids).index_add_(0, codes, torch.ones_like(values))
        moved = torch.where(counts > 0, sums / counts.clamp_min(1), centroids)
        if torch.equal(moved, centroids):
            break
        centroids = moved
    return centroids, codes


def shared_weights(centroids: torch.Tensor, codes: torch.Tensor) -> nn.Module:
    """A weight parametrization: every weight is its cluster's centroid (``codes``; -1
    keeps a pruned zero), so training moves the centroids, not the weights."""
    import torch
    from torch import nn

    class SharedWeights(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.centroids = nn.Parameter(centroids.clone())
            self.register_buffer("codes", codes, persistent=False)

        def forward(self, weight: torch.Tensor) -> torch.Tensor:
            shared = self.centroids[self.codes.clamp_min(0)]
            return torch.where(self.codes >= 0, shared, torch.zeros_like(shared)).to(weight.dtype)

    return SharedWeights()


def cluster_weights(model: nn.Module, k: int) -> int:
    """Put :func:`shared_weights` on every Conv/Linear weight of ``model`` (k-means over
    its non-zero values); returns the number of layers."""
    import torch
    from torch.nn.utils import parametrize

    from slimtune.spaces._lowering import quantizable_layers

    count = 0
    for _, layer in quantizable_layers(model):
        weight = layer.weight.detach()
        nonzero = weight != 0
        if not bool(nonzero.any()):
            continue
        centroids, found = kmeans_1d(weight[nonzero].float(), k)
        codes = torch.full(weight.shape, -1, dtype=torch.long, device=weight.device)
        codes[nonzero] = found
        parametrize.register_parametrization(layer, "weight", shared_weights(centroids.to(weight.dtype), codes))
        count += 1
    return count


@register_knob
class WeightClustering(Knob):
    """``cluster.k``: the weights of each layer share ``k`` values (0 = off)."""

    family = "cluster"
    title = "Weight clustering"
    stage = "encoding"
    compact_legend = "c<k> weight clustering (k shared values per layer)"

    @staticmethod
    def compact(values: Mapping[str, Any], names: Sequence[str]) -> str:
        k = int(values.get("cluster.k", 0) or 0)
        return f"c{k}" if k else ""

    def params(self, model: nn.Module) -> list[Param]:
        return [Param("cluster.k", "categorical", 0, choices=CLUSTERS,
                      doc="shared weight values per layer (k-means; 0 = off); stored as log2(k)-bit indices")]

    def unavailable(self, model: nn.Module) -> str | None:
        from slimtune.spaces._lowering import quantizable_layers

        return None if any(True for _ in quantizable_layers(model)) else "no Conv or Linear layer"

    def weight_encoding(self, values: Mapping[str, Any]) -> WeightEncoding | None:
        k = int(values.get("cluster.k", 0) or 0)
        return WeightEncoding("codebook", k) if k else None

    def recovery_passes(self, values: Mapping[str, Any]) -> int:
        """The centroids are fine-tuned once."""
        return int(bool(int(values.get("cluster.k", 0) or 0)))

    def summary(self, values: Mapping[str, Any]) -> str:
        k = int(values.get("cluster.k", 0) or 0)
        return f"{k} shared weights per layer" if k else ""

    def apply(self, model: nn.Module, values: dict[str, Any], ctx: KnobContext) -> nn.Module:
        k = int(values.get("cluster.k", 0) or 0)
        if k not in CLUSTERS:
            raise ValueError(f"`cluster.k` must be one of {', '.join(map(str, CLUSTERS))}, but got {k!r}.")
        if not k:
            return model
        from torch.nn.utils import parametrize

        from slimtune.spaces._lowering import quantizable_layers

        layers = cluster_weights(model, k)
        try:
            if ctx.finetune_epochs > 0:
                ctx.finetune(model, epochs=ctx.finetune_epochs)
        finally:
            for layer in [m for _, m in quantizable_layers(model) if parametrize.is_parametrized(m, "weight")]:
                parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)
        ctx.info["cluster"] = {"k": k, "layers": layers, "finetune_epochs": ctx.finetune_epochs}
        return model.eval()
