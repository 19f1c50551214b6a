"""The quantization knob and the core lowering it runs after: BatchNorm folding, b-bit
weight grids, PTQ and QAT."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from slimtune.spaces.base import KnobContext
from slimtune.spaces.exits import EarlyExitNet, ExitHead
from slimtune.spaces.quantization import (
    FakeQuantize,
    Quantization,
    channel_scales,
    conv_bn_pairs,
    fake_quantize,
    fold_batchnorm,
    has_unfolded_batchnorm,
    quantize_weight,
    snap_weights,
)
from slimtune.spaces._lowering import lower
from slimtune.spaces._registry import get_knob
from slimtune.tasks._models import resnet8, small_cnn


def _randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) * 2 - 1)
            m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) - 0.5)
    return model.eval()


def _ctx(finetune=None, epochs: int = 1) -> KnobContext:
    calls: list[dict] = []

    def record(model, epochs=None, lr=None):
        calls.append({"epochs": epochs, "lr": lr})
        if finetune is not None:
            finetune(model, epochs, lr)

    ctx = KnobContext(example_input=torch.zeros(1, 1, 8, 8), calibration=torch.zeros(4, 1, 8, 8),
                      finetune=record, finetune_epochs=epochs, info={"flags": []})
    ctx.info["calls"] = calls
    return ctx


def test_registered_with_params():
    knob = get_knob("quant")()
    params = {p.name: p for p in knob.params(small_cnn())}
    assert params["quant.bits"].choices == (32, 16, 8, 6, 4, 2) and params["quant.bits"].default == 32
    assert params["quant.mode"].choices == ("ptq", "qat") and params["quant.mode"].default == "ptq"
    assert knob.stage == "quantization"


@pytest.mark.parametrize("build", [resnet8, small_cnn])
def test_fold_batchnorm_keeps_outputs(build):
    torch.manual_seed(0)
    model = _randomize_bn(build())
    x = torch.randn(3, 1, 16, 16)
    expected = model(x)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert len(conv_bn_pairs(model)) == n_bn  # resnet8: stem, conv1/bn1, conv2/bn2 and shortcuts
    fold_batchnorm(model)
    assert not has_unfolded_batchnorm(model)
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)
    # the folded model loads its own state dict into a freshly folded copy (rebuild path)
    fresh = fold_batchnorm(build().eval())
    fresh.load_state_dict(model.state_dict())


def test_fold_batchnorm_inside_early_exit_net():
    torch.manual_seed(0)
    base = _randomize_bn(small_cnn(width=8))
    net = EarlyExitNet(base.blocks, base.head, {0: ExitHead(8, 10)}, {0: 0.5}).eval()
    x = torch.randn(4, 1, 8, 8)
    expected = net.forward_all(x)
    fold_batchnorm(net)  # its forward is data-dependent: the children are traced instead
    assert not has_unfolded_batchnorm(net)
    for a, b in zip(net.forward_all(x), expected):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_batchnorm_not_after_conv_is_left_alone():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.BatchNorm2d(4)).eval()
    assert conv_bn_pairs(model) == []
    fold_batchnorm(model)
    assert isinstance(model[2], nn.BatchNorm2d)


@pytest.mark.parametrize("bits", [8, 6, 4, 2])
def test_snapped_weights_lie_on_the_grid(bits):
    torch.manual_seed(0)
    w = torch.randn(6, 3, 3, 3)
    q, scale = quantize_weight(w, bits)
    limit = 2 ** (bits - 1) - 1
    assert q.dtype == torch.int8 and int(q.abs().max()) == limit
    assert torch.equal(scale, scale.half().float())  # fp16 scales, as stored
    snapped = fake_quantize(w, bits)
    for c in range(6):
        assert len(torch.unique(snapped[c])) <= 2 ** bits - 1
    torch.testing.assert_close(snapped, q.float() * scale.view(-1, 1, 1, 1))
    assert torch.equal(fake_quantize(snapped, bits), snapped)  # idempotent
    assert (snapped - w).abs().max() <= scale.max() / 2 + 1e-6


def test_fp16_and_zero_channels():
    w = torch.randn(4, 5)
    w[1] = 0
    assert torch.equal(fake_quantize(w, 16), w.half().float())
    assert torch.equal(fake_quantize(w, 32), w)
    assert channel_scales(w, 4)[1] == 1.0 and torch.all(fake_quantize(w, 4)[1] == 0)


def test_ptq_apply_records_and_flags():
    torch.manual_seed(0)
    model = _randomize_bn(resnet8(width=8))
    x = torch.randn(2, 1, 8, 8)
    expected = model(x)
    ctx = _ctx()
    lowered = lower(model, x)
    assert lowered["bn_folded"] is True and lowered["folded_batchnorms"] > 0 and not has_unfolded_batchnorm(model)
    out = Quantization().apply(model, {"quant.bits": 4, "quant.mode": "ptq"}, ctx)
    assert ctx.info["quant"]["bits"] == 4
    assert ctx.info["quant"]["quantized_layers"] == sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in out.modules())
    assert any("int8 kernels" in f and "4-bit" in f for f in ctx.info["flags"])
    assert ctx.info["calls"] == []  # PTQ never trains
    for m in out.modules():
        if isinstance(m, nn.Conv2d):
            assert all(len(torch.unique(m.weight[c])) <= 15 for c in range(m.out_channels))
    assert not torch.allclose(out(x), expected)  # 4-bit weights change the outputs ...
    assert (out(x) - expected).abs().max() < expected.abs().max()  # ... but not beyond recognition


def test_lowering_then_32_bits_keeps_the_outputs():
    torch.manual_seed(0)
    model = _randomize_bn(small_cnn(width=8))
    x = torch.randn(2, 1, 8, 8)
    expected = model(x)
    ctx = _ctx()
    lower(model, x)
    out = Quantization().apply(model, {"quant.bits": 32, "quant.mode": "qat"}, ctx)
    torch.testing.assert_close(out(x), expected, atol=1e-5, rtol=1e-5)
    assert ctx.info["calls"] == [] and ctx.info["flags"] == []


def test_pruned_zeros_survive_quantization():
    torch.manual_seed(0)
    model = small_cnn(width=8).eval()
    conv = model.blocks[1][0]
    with torch.no_grad():
        conv.weight[conv.weight.abs() < conv.weight.abs().median()] = 0
    zeros = conv.weight == 0
    ctx = _ctx(finetune=lambda m, e, lr: _sgd_steps(m, lr=0.05))
    Quantization().apply(model, {"quant.bits": 4, "quant.mode": "qat"}, ctx)
    assert torch.all(model.blocks[1][0].weight[zeros] == 0)


def _sgd_steps(model: nn.Module, lr: float, steps: int = 5) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        x = torch.randn(8, 1, 8, 8, generator=g)
        y = torch.randint(0, 10, (8,), generator=g)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_qat_trains_fake_quantized_then_snaps():
    torch.manual_seed(0)
    model = small_cnn(width=8).eval()
    before = copy.deepcopy(model)
    seen: list[bool] = []

    def finetune(m, epochs, lr):
        # during QAT the forward pass uses grid weights
        conv = m.blocks[0][0]
        seen.append(all(len(torch.unique(conv.weight[c])) <= 3 for c in range(conv.out_channels)))
        _sgd_steps(m, lr=0.05)

    ctx = _ctx(finetune=finetune, epochs=2)
    Quantization().apply(model, {"quant.bits": 2, "quant.mode": "qat"}, ctx)
    assert ctx.info["calls"] == [{"epochs": 2, "lr": 1e-4}]  # FACTS.md: QAT needs lr 1e-4
    assert seen == [True]
    assert ctx.info["quant"]["qat_epochs"] == 2
    keys = set(model.state_dict())
    assert not any("parametrizations" in k for k in keys) and "blocks.0.0.weight" in keys
    conv = model.blocks[0][0]
    assert all(len(torch.unique(conv.weight[c])) <= 3 for c in range(conv.out_channels))
    assert not torch.equal(conv.weight, fake_quantize(fold_batchnorm(before).blocks[0][0].weight, 2))  # it trained


def test_qat_lr_from_context():
    ctx = _ctx()
    ctx.info["qat_lr"] = 3e-4
    Quantization().apply(small_cnn(width=8).eval(), {"quant.bits": 4, "quant.mode": "qat"}, ctx)
    assert ctx.info["calls"][0]["lr"] == 3e-4


def test_fake_quantize_is_straight_through():
    w = torch.randn(4, 3, requires_grad=True)
    out = FakeQuantize(2)(w)
    assert torch.equal(out.detach(), fake_quantize(w.detach(), 2))
    out.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))


def test_snap_weights_counts_layers():
    model = resnet8(width=8)
    assert snap_weights(model, 8) == sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())


def test_rejects_unknown_bits():
    with pytest.raises(ValueError, match="quant.bits"):
        Quantization().apply(small_cnn(width=8), {"quant.bits": 3}, _ctx())
