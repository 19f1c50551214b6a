"""Pruning: channel pruning really shrinks the network (residuals included), weight
pruning keeps its zeros through fine-tuning, rewinding restores early weights, and a
pruned state_dict loads into a rebuilt architecture."""

from __future__ import annotations

import copy
from typing import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from slimtune.search._macs import count_macs, count_params, layer_macs
from slimtune.spaces.base import KnobContext, SpaceError
from slimtune.spaces.dsconv import DepthwiseSeparable
from slimtune.spaces.exits import EarlyExits
from slimtune.spaces.pruning import Pruning, channel_widths, rebuild_channel_widths
from slimtune.tasks._models import resnet8, small_cnn

CHANNEL = {"prune.granularity": "channel", "prune.rewind": False}
WEIGHT = {"prune.granularity": "weight", "prune.rewind": False}


def sgd_finetune(x: torch.Tensor, steps: int = 2) -> Callable[..., None]:
    """A stand-in for the trainer: a few SGD steps on random labels."""

    def finetune(model: nn.Module, epochs: int | None = None, lr: float | None = None) -> None:
        gen = torch.Generator().manual_seed(0)
        y = torch.randint(0, 10, (len(x),), generator=gen)
        params = [p for p in model.parameters() if p.requires_grad]
        model.train()
        for _ in range(steps):  # plain SGD (torch.optim would import torch._dynamo: seconds)
            outputs = model.forward_all(x) if hasattr(model, "forward_all") else [model(x)]
            loss = sum(F.cross_entropy(o, y) for o in outputs)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            with torch.no_grad():
                for p, g in zip(params, grads):
                    if g is not None:
                        p -= 0.1 * g
        finetune.calls += 1  # type: ignore[attr-defined]

    finetune.calls = 0  # type: ignore[attr-defined]
    return finetune


def make_ctx(x: torch.Tensor, finetune: Callable[..., None] | None = None, **info: object) -> KnobContext:
    return KnobContext(example_input=x, calibration=x, finetune=finetune or (lambda *a, **k: None),
                       info={"flags": [], **info})


MODELS = {
    "small_cnn": (lambda width=32: small_cnn(width=width), 32, (4, 1, 8, 8)),
    "resnet8": (lambda width=16: resnet8(width=width), 16, (4, 1, 16, 16)),
}


def test_params() -> None:
    params = {p.name: p for p in Pruning().params(small_cnn())}
    assert (params["prune.ratio"].low, params["prune.ratio"].high, params["prune.ratio"].default) == (0.0, 0.9, 0.0)
    assert params["prune.granularity"].choices == ("weight", "channel")
    assert params["prune.granularity"].default == "channel" and params["prune.rewind"].default is False


def test_ratio_zero_changes_nothing() -> None:
    model = small_cnn()
    before = copy.deepcopy(model.state_dict())
    ctx = make_ctx(torch.randn(2, 1, 8, 8))
    assert Pruning().apply(model, {"prune.ratio": 0.0, **CHANNEL}, ctx) is model
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("name", MODELS)
def test_channel_pruning_halves_widths_and_quarters_inner_macs(name: str) -> None:
    build, width, shape = MODELS[name]
    torch.manual_seed(0)
    model = build()
    x = torch.randn(*shape)
    original = copy.deepcopy(model)
    finetune = sgd_finetune(x)
    ctx = make_ctx(x, finetune)
    pruned = Pruning().apply(model, {"prune.ratio": 0.5, **CHANNEL}, ctx)

    # Expected MACs from the architecture: a layer whose input and output channels are
    # both halved costs (1 - 0.5)^2; the first conv (fixed image channels) and the
    # classifier (fixed classes) cost 0.5.
    per_layer = layer_macs(original, x)
    first, last = next(iter(per_layer)), "head.2"
    expected = sum(m * (0.5 if n in (first, last) else 0.25) for n, m in per_layer.items())
    assert count_macs(pruned, x) == expected
    assert count_macs(pruned, x) < 0.3 * count_macs(original, x)
    # ... which is exactly the same architecture built at half the width
    half = build(width // 2)
    assert count_macs(pruned, x) == count_macs(half, x)
    assert count_params(pruned) == count_params(half)
    assert count_params(pruned) < 0.3 * count_params(original)
    assert ctx.info["channel_widths"] == channel_widths(half)

    # fewer channels, the logits untouched, and it still runs (residual adds included)
    assert all(w <= o for w, o in zip(channel_widths(pruned).values(), channel_widths(original).values()))
    assert pruned.head[2].out_features == 10
    assert pruned.eval()(torch.randn(3, *shape[1:])).shape == (3, 10)
    assert finetune.calls == 1
    assert ctx.info["prune"]["ignored_layers"] == ["head.2"]


def test_resnet_residual_groups_stay_consistent() -> None:
    model = resnet8(width=16)
    x = torch.randn(2, 1, 16, 16)
    pruned = Pruning().apply(model, {"prune.ratio": 0.75, **CHANNEL}, make_ctx(x))
    stem, block = pruned.blocks[0][0], pruned.blocks[0][3]  # identity shortcut: coupled widths
    assert stem.out_channels == block.conv2.out_channels == block.conv1.in_channels == 4
    b1 = pruned.blocks[1]
    assert b1.conv2.out_channels == b1.shortcut[0].out_channels == b1.bn2.num_features == 8
    assert pruned.eval()(x).shape == (2, 10)


def test_channel_pruning_of_exit_and_dsconv_model_and_rebuild() -> None:
    x = torch.randn(2, 1, 16, 16)

    def architecture() -> nn.Module:
        torch.manual_seed(0)
        ctx = make_ctx(x)
        model = DepthwiseSeparable().apply(resnet8(width=8), {"dsconv.blocks.1.conv1": True}, ctx)
        return EarlyExits().apply(model, {"exits.0.enabled": True, "exits.1.enabled": True}, ctx)

    ctx = make_ctx(x, sgd_finetune(x))
    pruned = Pruning().apply(architecture(), {"prune.ratio": 0.5, **CHANNEL}, ctx)
    assert ctx.info["prune"]["ignored_layers"] == ["head.2", "exits.0.2", "exits.1.2"]
    assert [pruned.exits[k].classifier.out_features for k in ("0", "1")] == [10, 10]
    assert pruned.blocks[1].conv1.depthwise.out_channels == 4  # depthwise follows its input
    rebuilt = rebuild_channel_widths(architecture(), ctx.info["channel_widths"], x)
    rebuilt.load_state_dict(pruned.state_dict())
    for a, b in zip(rebuilt.eval().forward_all(x), pruned.eval().forward_all(x)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", MODELS)
def test_rebuild_loads_pruned_state_dict(name: str) -> None:
    build, _, shape = MODELS[name]
    x = torch.randn(*shape)
    torch.manual_seed(0)
    ctx = make_ctx(x, sgd_finetune(x))
    pruned = Pruning().apply(build(), {"prune.ratio": 0.6, **CHANNEL}, ctx).eval()
    rebuilt = rebuild_channel_widths(build(), ctx.info["channel_widths"], x)
    rebuilt.load_state_dict(pruned.state_dict())
    assert torch.equal(rebuilt.eval()(x), pruned(x))


def test_rebuild_refuses_bad_widths() -> None:
    x = torch.randn(1, 1, 8, 8)
    with pytest.raises(ValueError, match="blocks.9"):
        rebuild_channel_widths(small_cnn(), {"blocks.9": 3}, x)
    with pytest.raises(ValueError, match="blocks.0.0"):
        rebuild_channel_widths(small_cnn(), {"blocks.0.0": 64}, x)


def test_ignored_layers_from_ctx() -> None:
    x = torch.randn(2, 1, 8, 8)
    ctx = make_ctx(x, ignored_layers=["blocks.1.0"])
    pruned = Pruning().apply(small_cnn(), {"prune.ratio": 0.5, **CHANNEL}, ctx)
    assert pruned.blocks[1][0].out_channels == 64 and pruned.blocks[0][0].out_channels == 16
    with pytest.raises(ValueError, match="nope"):
        Pruning().apply(small_cnn(), {"prune.ratio": 0.5, **CHANNEL}, make_ctx(x, ignored_layers=["nope"]))


def test_generic_model_keeps_its_classifier() -> None:
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 16), nn.ReLU(),
                          nn.Linear(16, 10))
    x = torch.randn(2, 1, 8, 8)
    pruned = Pruning().apply(model, {"prune.ratio": 0.5, **CHANNEL}, make_ctx(x))
    assert pruned[0].out_channels == 4 and pruned[3].out_features == 8 and pruned[5].out_features == 10


@pytest.mark.parametrize("ratio", [0.3, 0.8])
def test_weight_pruning_sparsity_survives_finetuning(ratio: float) -> None:
    torch.manual_seed(0)
    model = resnet8(width=8)
    x = torch.randn(4, 1, 16, 16)
    before = copy.deepcopy(model)
    finetune = sgd_finetune(x)
    ctx = make_ctx(x, finetune)
    pruned = Pruning().apply(model, {"prune.ratio": ratio, **WEIGHT}, ctx)
    layers = [(n, m) for n, m in pruned.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    zeros = sum(int((m.weight == 0).sum()) for _, m in layers)
    total = sum(m.weight.numel() for _, m in layers)
    assert abs(zeros / total - ratio) <= 1 / total + 1e-6
    assert ctx.info["prune"]["sparsity"] == pytest.approx(zeros / total)
    assert finetune.calls == 1
    # no masks or hooks left: the zeros are plain weights now
    assert not any(name.endswith(("_orig", "_mask")) for name in pruned.state_dict())
    assert all(not m._forward_pre_hooks for _, m in layers)
    # fine-tuning changed the surviving weights, not the pruned ones
    old = dict(before.named_modules())
    changed = 0
    for name, m in layers:
        survivors = m.weight != 0
        changed += int((m.weight[survivors] != old[name].weight[survivors]).sum())
    assert changed > 0
    # the global mask removed the smallest trained weights
    magnitudes = torch.cat([old[n].weight.abs().flatten() for n, _ in layers])
    kept = torch.cat([(m.weight != 0).flatten() for _, m in layers])
    assert magnitudes[~kept].max() <= magnitudes[kept].min()


def test_weight_rewind_restores_early_values_of_survivors() -> None:
    torch.manual_seed(0)
    model = small_cnn(width=8)
    early = {k: torch.randn_like(v) if v.is_floating_point() else v.clone() for k, v in model.state_dict().items()}
    trained = copy.deepcopy(model)
    ctx = make_ctx(torch.randn(2, 1, 8, 8), rewind_state=early)
    pruned = Pruning().apply(model, {"prune.ratio": 0.5, "prune.granularity": "weight", "prune.rewind": True}, ctx)
    assert ctx.info["prune"]["rewound_to"] == "rewind_state"
    for name, m in pruned.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            kept = m.weight != 0
            assert torch.equal(m.weight[kept], early[name + ".weight"][kept])
    # the mask was chosen from the trained weights, not the early ones
    trained_mags = torch.cat([m.weight.abs().flatten() for m in trained.modules() if isinstance(m, (nn.Conv2d, nn.Linear))])
    kept = torch.cat([(m.weight != 0).flatten() for m in pruned.modules() if isinstance(m, (nn.Conv2d, nn.Linear))])
    assert trained_mags[~kept].max() <= trained_mags[kept].min()


def test_rewind_without_early_weights_is_flagged() -> None:
    x = torch.randn(2, 1, 8, 8)
    for granularity in ("weight", "channel"):
        ctx = make_ctx(x)
        Pruning().apply(small_cnn(width=8), {"prune.ratio": 0.5, "prune.granularity": granularity,
                                             "prune.rewind": True}, ctx)
        assert ctx.info["prune"]["rewound_to"] == "pruning_time"
        assert any("prune.rewind" in flag for flag in ctx.info["flags"])


def test_channel_rewind_restores_early_values_of_surviving_channels() -> None:
    torch.manual_seed(0)
    model = resnet8(width=8)
    x = torch.randn(2, 1, 16, 16)
    # early weights = 2 x trained: rewinding must give exactly 2 x the non-rewound result
    early = {k: 2 * v if v.is_floating_point() else v.clone() for k, v in model.state_dict().items()}
    plain = Pruning().apply(copy.deepcopy(model), {"prune.ratio": 0.5, **CHANNEL}, make_ctx(x))
    ctx = make_ctx(x, rewind_state=early)
    rewound = Pruning().apply(model, {"prune.ratio": 0.5, "prune.granularity": "channel", "prune.rewind": True}, ctx)
    assert ctx.info["prune"]["rewound_to"] == "rewind_state"
    for key, value in plain.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(rewound.state_dict()[key], 2 * value)


def test_bad_values_are_refused() -> None:
    x = torch.randn(1, 1, 8, 8)
    with pytest.raises(SpaceError, match="prune.ratio"):
        Pruning().apply(small_cnn(), {"prune.ratio": 1.5, **CHANNEL}, make_ctx(x))
    with pytest.raises(SpaceError, match="prune.granularity"):
        Pruning().apply(small_cnn(), {"prune.ratio": 0.5, "prune.granularity": "block"}, make_ctx(x))


def test_channel_pruning_keeps_multiples_of_8_in_wide_layers() -> None:
    """Layers of 32 channels or more keep the nearest multiple of 8 (a width between two
    CPU channel blocks can run slower than the unpruned layer); narrower ones keep
    ``int(C * (1 - ratio))``."""
    from slimtune.spaces._pruning_ops import rounded_keep

    assert [rounded_keep(k, 64) for k in (43, 44, 45, 3, 64)] == [40, 48, 48, 8, 64]
    assert rounded_keep(12, 16) == 12 and rounded_keep(21, 31) == 21
    model = small_cnn(width=64)
    x = torch.randn(4, 1, 8, 8)
    before = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    pruned = Pruning().apply(model, {"prune.ratio": 0.33, **CHANNEL}, make_ctx(x))
    after = {n: m.out_channels for n, m in pruned.named_modules() if isinstance(m, nn.Conv2d)}
    for name, width in after.items():
        if before[name] >= 32:
            assert width % 8 == 0 and width < before[name], (name, before[name], width)
        else:
            assert width == int(before[name] * (1 - 0.33)), (name, before[name], width)
    assert pruned(x).shape == (4, 10)
