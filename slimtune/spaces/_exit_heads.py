"""Exit heads: the small classifiers an early exit attaches after a block, by the shape
of the features there (feature maps, token features, feature vectors)."""

from __future__ import annotations

import torch
from torch import nn

from slimtune.spaces.base import SpaceError

__all__ = ["ExitHead", "TokenExitHead", "exit_head", "grid_pool"]


class ExitHead(nn.Sequential):
    """``pool to a grid -> Flatten -> Linear(in_channels * grid², num_classes)``.

    A 2×2 pooling grid keeps coarse spatial layout, which early (low-level) features
    need to classify at all: on digits, the exit after the first block reached about
    25% validation accuracy with global pooling and clearly more with 2×2.

    With the feature map's ``size`` known, the grid is ``min(pool, H, W)`` and the
    pooling has fixed windows (:func:`grid_pool`), so the head exports to ONNX even
    where the exporter cannot see the spatial size (e.g. after ``transformers``'
    TF-style padding, whose pad amounts are computed from the input's shape); without
    ``size`` it is ``AdaptiveAvgPool2d(pool)``.
    """

    def __init__(self, in_channels: int, num_classes: int, pool: int = 2,
                 size: tuple[int, int] | None = None) -> None:
        grid = pool if size is None else max(1, min(pool, *size))
        pooling = nn.AdaptiveAvgPool2d(pool) if size is None else grid_pool(size, grid)
        super().__init__(pooling, nn.Flatten(), nn.Linear(in_channels * grid * grid, num_classes))

    @property
    def classifier(self) -> nn.Linear:
        """The Linear layer producing the exit's logits."""
        return self[2]  # type: ignore[return-value]


class TokenExitHead(nn.Module):
    """An exit head on a sequence of token features ``(N, T, D)`` (a transformer's
    blocks): ``LayerNorm(D)``, the mean over the tokens, ``Linear(D, num_classes)``."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.classifier = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.norm(x).mean(dim=1))


def grid_pool(size: tuple[int, int], grid: int) -> nn.Module:
    """``AdaptiveAvgPool2d(grid)`` for inputs of one known ``size`` ``(H, W)`` as an
    ``AvgPool2d`` with the same windows where there is one (``grid`` divides the size,
    or ``grid`` is 1 or 2: windows ``[0, ceil(H/2))`` and ``[floor(H/2), H)``); else
    the adaptive pooling itself."""
    def window(length: int) -> tuple[int, int] | None:
        if length % grid == 0:
            return length // grid, length // grid
        if grid == 2:
            return -(-length // 2), length // 2
        return None

    rows, cols = window(int(size[0])), window(int(size[1]))
    if rows is None or cols is None:
        return nn.AdaptiveAvgPool2d(grid)
    return nn.AvgPool2d((rows[0], cols[0]), stride=(rows[1], cols[1]))


def exit_head(shape: tuple[int, ...], num_classes: int, param: str) -> nn.Module:
    """An exit head for features of ``shape`` (without the batch): :class:`ExitHead`
    on ``(C, H, W)`` feature maps, :class:`TokenExitHead` on ``(T, D)`` token features,
    a Linear on ``(F,)`` feature vectors."""
    if len(shape) == 3:
        return ExitHead(shape[0], num_classes, size=(shape[1], shape[2]))
    if len(shape) == 2:
        return TokenExitHead(shape[1], num_classes)
    if len(shape) == 1:
        return nn.Sequential(nn.Linear(shape[0], num_classes))
    raise SpaceError(f"`{param}`: an exit head needs (N, C, H, W) feature maps, (N, T, D) token features or (N, F) "
                     f"features there, but got shape (N, {', '.join(map(str, shape))}).")
