"""A small MobileNetV3-like classifier for tests: depthwise-heavy inverted residual
blocks with squeeze-excitation and hard-swish (written here, not a built-in model)."""

from __future__ import annotations

import torch
from torch import nn


class SqueezeExcite(nn.Module):
    """Channel gates from the pooled features: ``x * hardsigmoid(fc2(relu(fc1(mean(x)))))``."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, max(8, channels // reduction), 1)
        self.relu = nn.ReLU()
        self.fc2 = nn.Conv2d(max(8, channels // reduction), channels, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.fc2(self.relu(self.fc1(self.pool(x)))))


class InvertedResidual(nn.Module):
    """1x1 expansion, 3x3 depthwise (groups = channels), optional SE, 1x1 projection;
    an identity shortcut when the shape allows."""

    def __init__(self, cin: int, cout: int, *, expand: int, stride: int, se: bool, act: type[nn.Module]) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), act()]
        layers += [nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False),
                   nn.BatchNorm2d(hidden), act()]
        if se:
            layers.append(SqueezeExcite(hidden))
        layers += [nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return x + out if self.residual else out


def mobilenet_like(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """A MobileNetV3-small-shaped network for 16x16 inputs (about 30k parameters)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.Hardswish(),
        InvertedResidual(16, 16, expand=1, stride=2, se=True, act=nn.ReLU),
        InvertedResidual(16, 24, expand=4, stride=1, se=False, act=nn.ReLU),
        InvertedResidual(24, 24, expand=3, stride=1, se=False, act=nn.ReLU),
        InvertedResidual(24, 40, expand=4, stride=2, se=True, act=nn.Hardswish),
        InvertedResidual(40, 40, expand=3, stride=1, se=True, act=nn.Hardswish),
        nn.Conv2d(40, 96, 1, bias=False), nn.BatchNorm2d(96), nn.Hardswish(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(96, num_classes),
    )
