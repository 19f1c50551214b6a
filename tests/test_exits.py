"""Early exits: params, structure, thresholds, dynamic forward, segments."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from slimtune.spaces.base import KnobContext, SpaceError
from slimtune.spaces.exits import EarlyExitNet, EarlyExits, ExitHead, exit_points
from slimtune.tasks._models import resnet8, small_cnn

X_SHAPE = (2, 1, 16, 16)


def _ctx() -> KnobContext:
    x = torch.randn(*X_SHAPE)
    return KnobContext(example_input=x, calibration=x, finetune=lambda *a, **k: None)


def _net(thresholds: tuple[float, float] = (0.9, 0.9)) -> tuple[nn.Module, EarlyExitNet]:
    torch.manual_seed(0)
    base = resnet8(width=8).eval()
    values = {"exits.0.enabled": True, "exits.0.threshold": thresholds[0],
              "exits.1.enabled": True, "exits.1.threshold": thresholds[1]}
    reference = resnet8(width=8).eval()
    reference.load_state_dict(base.state_dict())
    net = EarlyExits().apply(base, values, _ctx())
    assert isinstance(net, EarlyExitNet)
    return reference, net.eval()


def test_params_per_exit_point() -> None:
    names = [p.name for p in EarlyExits().params(small_cnn())]
    assert names == ["exits.0.enabled", "exits.0.threshold", "exits.1.enabled", "exits.1.threshold"]
    threshold = EarlyExits().params(small_cnn())[1]
    assert (threshold.low, threshold.high, threshold.default) == (0.5, 1.0, 0.9)
    assert EarlyExits().params(nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten())) == []
    assert exit_points(resnet8()) == [0, 1]


def test_no_exit_enabled_leaves_model_alone() -> None:
    model = small_cnn()
    ctx = _ctx()
    assert EarlyExits().apply(model, {"exits.0.enabled": False}, ctx) is model
    assert ctx.info["exits"]["points"] == []


def test_structure_and_state_dict() -> None:
    reference, net = _net()
    assert net.exit_points == [0, 1]
    assert isinstance(net.exits["0"], ExitHead)
    assert net.exits["0"].classifier.in_features == 8 * 4 and net.exits["1"].classifier.in_features == 16 * 4  # 2x2 pooling grid
    assert net.exits["1"].classifier.out_features == 10
    missing, unexpected = net.load_state_dict(reference.state_dict(), strict=False)
    assert unexpected == [] and all(k.startswith("exits.") for k in missing)


def test_bad_exit_point_is_refused() -> None:
    with pytest.raises(SpaceError, match="exits.2"):
        EarlyExits().apply(small_cnn(), {"exits.2.enabled": True}, _ctx())


def test_forward_all_final_output_is_the_original_model() -> None:
    reference, net = _net()
    x = torch.randn(4, 1, 16, 16)
    outputs = net.forward_all(x)
    assert len(outputs) == 3 and all(o.shape == (4, 10) for o in outputs)
    torch.testing.assert_close(outputs[-1], reference(x))


def test_threshold_zero_everyone_leaves_at_first_exit() -> None:
    _, net = _net((0.0, 0.0))
    x = torch.randn(6, 1, 16, 16)
    logits, where = net.predict_with_exits(x)
    assert where.tolist() == [0] * 6
    torch.testing.assert_close(logits, net.forward_all(x)[0])


def test_threshold_above_one_nobody_leaves() -> None:
    reference, net = _net((1.01, 1.01))
    x = torch.randn(6, 1, 16, 16)
    logits, where = net.predict_with_exits(x)
    assert where.tolist() == [2] * 6
    torch.testing.assert_close(logits, reference(x))


def _midpoint(confidences: torch.Tensor) -> float:
    """A threshold halfway between two middle confidences (no sample sits on it)."""
    ordered = confidences.sort().values
    mid = len(ordered) // 2
    return float(ordered[mid - 1] + ordered[mid]) / 2


def test_batch_forward_equals_per_sample_forward() -> None:
    _, net = _net()
    torch.manual_seed(1)
    x = torch.randn(16, 1, 16, 16)
    with torch.no_grad():
        exit0, exit1, _ = net.forward_all(x)
        conf0 = F.softmax(exit0, -1).max(-1).values
        conf1 = F.softmax(exit1, -1).max(-1).values
        t0 = _midpoint(conf0)  # about half leave at exit 0
        t1 = _midpoint(conf1[conf0 < t0])  # about half of the rest at exit 1
        net.set_thresholds([t0, t1])
        logits, where = net.predict_with_exits(x)
        assert set(where.tolist()) == {0, 1, 2}
        for j in range(len(x)):
            one, at = net.predict_with_exits(x[j:j + 1])
            assert at.item() == where[j].item()
            torch.testing.assert_close(one[0], logits[j])
        torch.testing.assert_close(net(x), logits)


def test_batch_one_stops_computing() -> None:
    _, net = _net((0.0, 0.0))
    calls: list[str] = []
    for name in ("blocks.1", "blocks.2", "head", "exits.1"):
        net.get_submodule(name).register_forward_hook(lambda m, i, o, name=name: calls.append(name))
    out = net(torch.randn(1, 1, 16, 16))
    assert out.shape == (1, 10) and calls == []
    net.set_thresholds({0: 1.01, 1: 0.0})
    net(torch.randn(1, 1, 16, 16))
    assert calls == ["blocks.1", "exits.1"]


def test_segments_reproduce_the_model() -> None:
    _, net = _net((0.7, 0.8))
    pieces = net.segments()
    assert [t for _, _, t in pieces] == [0.7, 0.8, None]
    assert pieces[0][1] is net.exits["0"] and pieces[1][1] is net.exits["1"] and pieces[2][1] is None
    x = torch.randn(3, 1, 16, 16)
    outputs, h = [], x
    for trunk, head, _ in pieces:
        h = trunk(h)
        outputs.append(head(h) if head is not None else h)
    for a, b in zip(outputs, net.forward_all(x)):
        torch.testing.assert_close(a, b)


def test_threshold_validation() -> None:
    _, net = _net()
    with pytest.raises(ValueError, match="threshold"):
        net.set_thresholds([float("nan"), 0.5])
    with pytest.raises(ValueError, match="thresholds"):
        net.set_thresholds([0.5])
    with pytest.raises(ValueError, match="Exit points"):
        EarlyExitNet(net.blocks, net.head, {2: ExitHead(32, 10)}, {2: 0.9})
