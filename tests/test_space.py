from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from slimtune.spaces import Space, SpaceError
from slimtune.spaces.base import Param
from slimtune.spaces.distillation import distillation_loss
from slimtune.tasks._models import small_cnn


def test_space_has_every_family_for_block_cnn():
    space = Space.for_model(small_cnn())
    families = {p.family for p in space.params}
    assert {"prune", "quant", "distill", "dsconv", "exits"} <= families
    names = [p.name for p in space.params]
    assert names.index("dsconv.blocks.0.0") < names.index("distill.alpha") < names.index("prune.ratio") < names.index("quant.bits")
    assert space["quant.bits"].choices == (32, 16, 8, 6, 4, 2)
    assert space["distill.temperature"].log and space["distill.temperature"].low == 1 and space["distill.temperature"].high == 20


def test_unknown_name_lists_close_matches():
    space = Space.for_model(small_cnn())
    with pytest.raises(SpaceError, match="prune.ratio"):
        space.complete({"prune.ration": 0.3})


def test_value_outside_domain_names_param_and_value():
    space = Space.for_model(small_cnn())
    with pytest.raises(SpaceError, match=r"`prune.ratio` must be a number in \[0.0, 0.9\], but got '1.5'"):
        space.complete({"prune.ratio": "1.5"})
    with pytest.raises(SpaceError, match="one of 32, 16, 8, 6, 4, 2"):
        space.complete({"quant.bits": 3})


def test_strings_are_coerced_and_defaults_filled():
    space = Space.for_model(small_cnn())
    values = space.complete({"quant.bits": "8", "dsconv.blocks.1.0": "true", "prune.granularity": "weight"})
    assert values["quant.bits"] == 8 and values["dsconv.blocks.1.0"] is True
    assert values["prune.ratio"] == 0.0 and len(values) == len(space.params)


def test_fixed_params_are_not_searched_and_enforced():
    space = Space.for_model(small_cnn(), fixed={"prune.granularity": "channel"})
    assert "prune.granularity" not in [p.name for p in space.searched]
    assert space.complete({})["prune.granularity"] == "channel"
    with pytest.raises(SpaceError, match="fixed"):
        space.complete({"prune.granularity": "weight"})
    assert space.fingerprint() != Space.for_model(small_cnn()).fingerprint()


def test_dsconv_on_model_without_eligible_conv():
    mlp = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    space = Space.for_model(mlp)
    with pytest.raises(SpaceError, match="no eligible conv"):
        space.complete({"dsconv.0": True})
    with pytest.raises(SpaceError, match="no exit points"):
        space.complete({"exits.0.enabled": True})


def test_param_validation():
    with pytest.raises(ValueError):
        Param("x", "float", 1.0, low=2.0, high=1.0)
    with pytest.raises(ValueError):
        Param("x", "float", 1.0, low=0.0, high=1.0, log=True)


def test_kd_loss_matches_formula_and_changes_with_temperature():
    g = torch.Generator().manual_seed(0)
    zs, zt = torch.randn(16, 10, generator=g), torch.randn(16, 10, generator=g)
    y = torch.randint(0, 10, (16,), generator=g)
    T, a = 4.0, 0.7
    pt, ps = F.softmax(zt / T, -1), F.softmax(zs / T, -1)
    kl = (pt * (pt.log() - ps.log())).sum(-1).mean()
    expected = a * T * T * kl + (1 - a) * F.cross_entropy(zs, y)
    got = distillation_loss(zs, zt, y, temperature=T, alpha=a)
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, distillation_loss(zs, zt, y, temperature=2.0, alpha=a))
    assert torch.allclose(distillation_loss(zs, zt, y, temperature=T, alpha=0.0), F.cross_entropy(zs, y))
    # a student equal to the teacher has zero KD term
    assert torch.allclose(distillation_loss(zt, zt, y, temperature=T, alpha=1.0), torch.tensor(0.0), atol=1e-6)


def test_inactive_params_are_those_without_effect():
    from slimtune.spaces._space import inactive_params

    space = Space.for_model(small_cnn())
    values = space.complete({"exits.1.enabled": True, "quant.bits": 32})
    assert inactive_params(values) == {"exits.0.threshold", "prune.granularity", "prune.rewind", "quant.mode"}
    values = space.complete({"prune.ratio": 0.3, "quant.bits": 4, "quant.mode": "qat"})
    assert inactive_params(values) == {"exits.0.threshold", "exits.1.threshold"}
