"""Depthwise-separable convs: eligibility, replacement, exact MAC ratio, SVD init."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
from torch import nn

from slimtune.search._macs import count_macs
from slimtune.spaces.base import KnobContext, SpaceError
from slimtune.spaces.dsconv import DepthwiseSeparable, DepthwiseSeparableConv, eligible_convs
from slimtune.tasks._models import resnet8, small_cnn


def _ctx(shape: tuple[int, ...] = (2, 1, 8, 8)) -> KnobContext:
    x = torch.randn(*shape)
    return KnobContext(example_input=x, calibration=x, finetune=lambda *a, **k: None)


def test_eligible_convs() -> None:
    assert eligible_convs(small_cnn()) == ["blocks.0.0", "blocks.1.0", "blocks.2.0"]
    names = eligible_convs(resnet8())
    assert "blocks.1.shortcut.0" not in names  # 1x1
    assert names == ["blocks.0.0", "blocks.0.3.conv1", "blocks.0.3.conv2", "blocks.1.conv1", "blocks.1.conv2",
                     "blocks.2.conv1", "blocks.2.conv2"]

    class WithExits(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(4, 4, 3), nn.Conv2d(4, 4, 3, groups=2), nn.Conv2d(4, 4, 1))
            self.exits = nn.ModuleDict({"0": nn.Conv2d(4, 4, 3)})

    assert eligible_convs(WithExits()) == ["body.0"]


def test_params_one_switch_per_eligible_conv() -> None:
    params = DepthwiseSeparable().params(small_cnn())
    assert [p.name for p in params] == ["dsconv.blocks.0.0", "dsconv.blocks.1.0", "dsconv.blocks.2.0"]
    assert all(p.kind == "bool" and p.default is False for p in params)


def test_apply_replaces_only_chosen_convs() -> None:
    model = small_cnn()
    ctx = _ctx()
    out = DepthwiseSeparable().apply(model, {"dsconv.blocks.1.0": True, "dsconv.blocks.2.0": False}, ctx)
    ds = out.blocks[1][0]
    assert isinstance(ds, DepthwiseSeparableConv)
    assert isinstance(out.blocks[2][0], nn.Conv2d) and not isinstance(out.blocks[2][0], DepthwiseSeparableConv)
    assert ds.depthwise.groups == ds.depthwise.in_channels == 32 and ds.depthwise.kernel_size == (3, 3)
    assert ds.pointwise.kernel_size == (1, 1) and (ds.pointwise.in_channels, ds.pointwise.out_channels) == (32, 64)
    assert ds.depthwise.bias is None and ds.pointwise.bias is None  # the original had no bias
    assert out(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    assert ctx.info["dsconv"]["replaced"] == ["blocks.1.0"]
    assert "blocks.1.0" not in eligible_convs(out)  # nothing inside a DS conv is eligible again


@pytest.mark.parametrize("cin,cout,k,stride,size", [(8, 16, 3, 1, 9), (5, 12, 5, 2, 11), (1, 7, 3, 1, 6)])
def test_mac_ratio_is_exactly_1_over_n_plus_1_over_k2(cin: int, cout: int, k: int, stride: int, size: int) -> None:
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=True)
    ds = DepthwiseSeparableConv.from_conv(conv)
    x = torch.randn(2, cin, size, size)
    assert ds(x).shape == conv(x).shape
    ratio = Fraction(count_macs(ds, x), count_macs(conv, x))
    assert ratio == Fraction(1, cout) + Fraction(1, k * k)


def test_mac_ratio_inside_a_model() -> None:
    x = torch.randn(1, 1, 16, 16)
    model = resnet8(width=8)
    before = count_macs(model, x)
    layer = model.blocks[1].conv2  # 16 -> 16, 3x3, at 8x8
    layer_macs = 8 * 8 * 16 * 16 * 9
    after = count_macs(DepthwiseSeparable().apply(model, {"dsconv.blocks.1.conv2": True}, _ctx(x.shape)), x)
    assert layer.out_channels == 16
    assert before - after == layer_macs - layer_macs * (Fraction(1, 16) + Fraction(1, 9))


def test_svd_init_is_exact_for_separable_kernels() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 10, 3, padding=1, bias=True)
    depthwise = torch.randn(6, 1, 3, 3)
    pointwise = torch.randn(10, 6, 1, 1)
    with torch.no_grad():
        conv.weight.copy_(pointwise * depthwise[:, 0][None])  # rank 1 per input channel
    ds = DepthwiseSeparableConv.from_conv(conv)
    x = torch.randn(2, 6, 7, 7)
    torch.testing.assert_close(ds(x), conv(x), atol=1e-5, rtol=1e-4)


def test_svd_init_beats_random_init() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, 3, padding=1)
    svd = DepthwiseSeparableConv.from_conv(conv, init="svd")
    rnd = DepthwiseSeparableConv.from_conv(conv, init="random")
    with torch.no_grad():
        err_svd = (svd.composite_kernel() - conv.weight).norm()
        err_rnd = (rnd.composite_kernel() - conv.weight).norm()
    assert err_svd < err_rnd and err_svd < conv.weight.norm()


def test_unknown_conv_name_is_refused() -> None:
    with pytest.raises(SpaceError, match="blocks.1.9"):
        DepthwiseSeparable().apply(small_cnn(), {"dsconv.blocks.1.9": True}, _ctx())
