"""Built-in baseline models.

slimtune's exit and DS-conv knobs find their places in a *block classifier*: a model
with ``blocks`` (an ``nn.Sequential`` of stages) and ``head`` (pooling + classifier),
whose forward is ``head(blocks(x))``.  Any ``nn.Module`` classifier works for pruning,
quantization, distillation and DS-conv; early exits need this structure.
"""

from __future__ import annotations

import torch
from torch import nn


class BlockClassifier(nn.Module):
    """``head(blocks(x))``: the structure early exits attach to."""

    def __init__(self, blocks: nn.Sequential, head: nn.Module) -> None:
        super().__init__()
        self.blocks = blocks
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x))


def conv_bn_relu(cin: int, cout: int, k: int = 3, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def classifier_head(channels: int, num_classes: int) -> nn.Sequential:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))


def small_cnn(num_classes: int = 10, in_channels: int = 1, width: int = 32) -> BlockClassifier:
    """Three conv blocks (about 57k parameters at width 32), for 8x8 digits."""
    blocks = nn.Sequential(
        nn.Sequential(*conv_bn_relu(in_channels, width)),
        nn.Sequential(*conv_bn_relu(width, 2 * width), nn.MaxPool2d(2)),
        nn.Sequential(*conv_bn_relu(2 * width, 2 * width), nn.MaxPool2d(2)),
    )
    return BlockClassifier(blocks, classifier_head(2 * width, num_classes))


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convs and a (projected) identity shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


def resnet8(num_classes: int = 10, in_channels: int = 1, width: int = 16) -> BlockClassifier:
    """ResNet-8 (stem + three basic blocks, about 78k parameters at width 16)."""
    blocks = nn.Sequential(
        nn.Sequential(*conv_bn_relu(in_channels, width), BasicBlock(width, width)),
        BasicBlock(width, 2 * width, stride=2),
        BasicBlock(2 * width, 4 * width, stride=2),
    )
    return BlockClassifier(blocks, classifier_head(4 * width, num_classes))
