"""Low-rank factorization: the sixth knob family, added as one file plus its
registration line."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from slimtune.search._macs import count_macs
from slimtune.spaces import Space
from slimtune.spaces.base import KnobContext
from slimtune.spaces.lowrank import LowRank, LowRankConv, LowRankLinear, full_rank, lowrank_groups, saves
from slimtune.tasks._models import resnet8, small_cnn


def _ctx() -> KnobContext:
    x = torch.randn(2, 1, 28, 28)
    return KnobContext(example_input=x, calibration=x, finetune=lambda *a, **k: None)


def test_full_rank_factorization_is_exact():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=True)
    lin = nn.Linear(24, 10)
    x, v = torch.randn(3, 8, 9, 9), torch.randn(3, 24)
    assert torch.allclose(LowRankConv.from_conv(conv, full_rank(conv))(x), conv(x), atol=1e-5)
    assert torch.allclose(LowRankLinear.from_linear(lin, full_rank(lin))(v), lin(v), atol=1e-5)
    # below full rank: the truncated SVD, the best approximation of that rank
    low = LowRankConv.from_conv(conv, 4)
    approx = low[1].weight.flatten(1) @ low[0].weight.flatten(1)
    s = torch.linalg.svdvals(conv.weight.detach().flatten(1))
    assert float((approx - conv.weight.flatten(1)).norm().detach()) == pytest.approx(float(s[4:].norm()), rel=1e-4)


def test_groups_are_stages_and_space_offers_one_ratio_each():
    assert lowrank_groups(small_cnn()) == {"blocks.0": ["blocks.0.0"], "blocks.1": ["blocks.1.0"],
                                           "blocks.2": ["blocks.2.0"], "head.2": ["head.2"]}
    space = Space.for_model(resnet8())
    names = [p.name for p in space.params if p.family == "lowrank"]
    assert names == ["lowrank.blocks.0", "lowrank.blocks.1", "lowrank.blocks.2", "lowrank.head.2"]
    assert all(space[n].default == 1.0 and space[n].low == 0.05 for n in names)
    assert space.complete({})["lowrank.blocks.1"] == 1.0  # off by default


def test_apply_cuts_macs_and_keeps_the_function_close():
    torch.manual_seed(0)
    model = resnet8().eval()
    x = torch.randn(4, 1, 28, 28)
    before = count_macs(model, x[:1])
    ctx = _ctx()
    out = LowRank().apply(model, {"lowrank.blocks.1": 0.25, "lowrank.blocks.2": 0.25, "lowrank.blocks.0": 1.0}, ctx)
    after = count_macs(out, x[:1])
    info = ctx.info["lowrank"]
    assert set(info["ranks"]) == {"blocks.1.conv1", "blocks.1.conv2", "blocks.2.conv1", "blocks.2.conv2",
                                  "blocks.2.shortcut.0", "blocks.1.shortcut.0"} - set(info["kept"])
    assert isinstance(out.blocks[1].conv1, LowRankConv) and not isinstance(out.blocks[0][0], LowRankConv)
    assert after < 0.6 * before, (after, before)
    assert out(x).shape == (4, 10)
    # full-rank ratios reproduce the model
    same = LowRank().apply(resnet8().eval(), {"lowrank.blocks.1": 1.0}, _ctx())
    assert not any(isinstance(m, LowRankConv) for m in same.modules())


def test_a_rank_that_saves_nothing_leaves_the_layer():
    conv = nn.Conv2d(64, 64, 1)
    assert saves(conv, 8) and not saves(conv, 40)


def test_end_to_end_candidate_is_faster_and_accurate(digits_task, digits_baseline):
    """A real candidate: factorized, distilled, compiled, timed beside the baseline."""
    from slimtune.search._task_space import build_space
    from slimtune.search._pipeline import EvalSettings, Evaluator

    space = build_space(digits_task)
    ev = Evaluator(digits_task, space, EvalSettings(epochs=2, latency_repeats=40, latency_warmup=5), digits_baseline)
    values = {"lowrank.blocks.1": 0.25, "lowrank.blocks.2": 0.25}  # measured: 0.30x MACs, 1.72x faster, 0.989
    result = ev.evaluate(values)
    m, base = result.measurement, ev.baseline_measurement()
    assert result.info["lowrank"]["ranks"]  # it factorized
    assert result.info["lowrank"]["ranks"] == {"blocks.1.0": [16, 64], "blocks.2.0": [16, 64]}
    assert m.macs < 0.35 * base.macs
    assert m.accuracy > 0.85 and m.test_accuracy > 0.85
    model = ev.rebuild(result.recipe, result.state_dict)  # the stored recipe rebuilds it
    assert any(isinstance(mod, LowRankConv) for mod in model.modules())


def test_the_knob_describes_itself_to_the_dashboard():
    """Display comes from the knob (Knob.summary, Knob.title): nothing in widgets names it."""
    from slimtune.widgets._axes import group_params, params_summary

    values = {"lowrank.blocks.1": 0.25, "lowrank.blocks.2": 1.0, "quant.bits": 8, "quant.mode": "ptq"}
    assert params_summary(values) == "low-rank 1 group(s) (min 0.25), 8-bit ptq"
    assert params_summary({"lowrank.blocks.1": 1.0}) == "no compression"
    assert [title for title, _ in group_params(values)] == ["Low-rank", "Quantization"]
