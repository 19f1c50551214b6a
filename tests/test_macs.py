"""count_macs / count_params: formulas, batch normalisation, exit weighting."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from slimtune.search._macs import count_macs, count_params, layer_macs
from slimtune.spaces.exits import EarlyExitNet, ExitHead
from slimtune.tasks._models import resnet8, small_cnn


def test_conv_and_linear_formulas() -> None:
    conv = nn.Conv2d(3, 8, 3, padding=1)
    assert count_macs(conv, torch.zeros(4, 3, 5, 5)) == 5 * 5 * 8 * 3 * 3 * 3
    grouped = nn.Conv2d(4, 8, 3, stride=2, groups=2)  # 7x7 -> 3x3, 2 input channels per group
    assert count_macs(grouped, torch.zeros(1, 4, 7, 7)) == 3 * 3 * 8 * 2 * 3 * 3
    assert count_macs(nn.Linear(20, 7), torch.zeros(3, 20)) == 20 * 7


def test_batch_size_is_normalised() -> None:
    model = small_cnn()
    assert count_macs(model, torch.zeros(1, 1, 8, 8)) == count_macs(model, torch.zeros(5, 1, 8, 8))


def test_small_cnn_by_hand() -> None:
    w = 32  # 8x8 -> conv 1->w, conv w->2w (8x8) + pool, conv 2w->2w (4x4) + pool, linear 2w->10
    expected = 8 * 8 * w * 1 * 9 + 8 * 8 * 2 * w * w * 9 + 4 * 4 * 2 * w * 2 * w * 9 + 2 * w * 10
    assert count_macs(small_cnn(width=w), torch.zeros(2, 1, 8, 8)) == expected


def test_mode_is_restored() -> None:
    model = small_cnn().train()
    count_macs(model, torch.zeros(2, 1, 8, 8))
    assert model.training


def test_count_params_and_nonzero() -> None:
    lin = nn.Linear(10, 4)
    assert count_params(lin) == 44
    with torch.no_grad():
        lin.weight[:2] = 0
    assert count_params(lin, nonzero=True) == 44 - 20
    torch_prune.l1_unstructured(lin, "weight", amount=30)  # masks still attached
    assert count_params(lin) == 44
    assert count_params(lin, nonzero=True) == 40 - 30 + 4


def _exit_net(thresholds: tuple[float, float] = (0.9, 0.9)) -> EarlyExitNet:
    torch.manual_seed(0)
    base = resnet8(width=8)
    heads = {0: ExitHead(8, 10), 1: ExitHead(16, 10)}
    return EarlyExitNet(base.blocks, base.head, heads, dict(zip((0, 1), thresholds))).eval()


def test_exit_macs_are_weighted_per_exit() -> None:
    net = _exit_net()
    x = torch.zeros(2, 1, 16, 16)
    per_layer = layer_macs(net, x)
    trunk = [sum(v for k, v in per_layer.items() if k.startswith(f"blocks.{i}.")) for i in range(3)]
    final_head = per_layer["head.2"]
    exit_head = [per_layer["exits.0.2"], per_layer["exits.1.2"]]
    assert exit_head == [8 * 4 * 10, 16 * 4 * 10]  # 2x2 pooling grid feeds the exit Linear
    # the path to each exit: trunk so far + every exit head evaluated on the way
    path = [
        trunk[0] + exit_head[0],
        trunk[0] + exit_head[0] + trunk[1] + exit_head[1],
        sum(trunk) + sum(exit_head) + final_head,
    ]
    assert count_macs(net, x) == path[2]  # nobody exits: the full path
    assert count_macs(net, x, [1.0, 0.0, 0.0]) == path[0]
    assert count_macs(net, x, [0.0, 1.0, 0.0]) == path[1]
    rates = [0.2, 0.3, 0.5]
    assert count_macs(net, x, rates) == round(sum(r * p for r, p in zip(rates, path)))
    # without exits the model costs the trunk and final head only
    assert count_macs(nn.Sequential(net.blocks, net.head), x) == sum(trunk) + final_head


def test_bad_exit_rates() -> None:
    net = _exit_net()
    x = torch.zeros(1, 1, 16, 16)
    with pytest.raises(ValueError, match="exit_rates"):
        count_macs(net, x, [0.5, 0.5])
    with pytest.raises(ValueError, match="exit_rates"):
        count_macs(net, x, [0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match="exit_rates"):
        count_macs(small_cnn(), torch.zeros(1, 1, 8, 8), [0.5, 0.5])
    assert count_macs(small_cnn(), torch.zeros(1, 1, 8, 8), [1.0]) == count_macs(small_cnn(), torch.zeros(1, 1, 8, 8))
