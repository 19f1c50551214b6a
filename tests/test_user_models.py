"""The user's own trained model as the baseline (issue 10): ``Task.from_model``, the
fingerprint, output adapters, the user's metric, and every knob on models from a
library nobody here wrote (Hugging Face ``transformers``) and on a tabular MLP."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from slimtune import Task, TaskError
from slimtune.search._baseline import get_baseline
from slimtune.tasks._metrics import get_metric
from slimtune.tasks._outputs import LogitsOutput
from tests import user_model_task as umt


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _loader(x: torch.Tensor, y: torch.Tensor, shuffle: bool, seed: int = 0) -> DataLoader:
    return DataLoader(TensorDataset(x, y), batch_size=16, shuffle=shuffle, generator=torch.Generator().manual_seed(seed))


def _task(model: nn.Module, **kwargs) -> Task:
    x, y = umt.data()
    return Task.from_model(model, train=(x, y), val=(x[:48], y[:48]), test=(x[48:], y[48:]), output="logits", **kwargs)


# -- 1. a trained model is the baseline --------------------------------------------------
def test_a_changed_weight_changes_the_fingerprint():
    model = umt.trained_model()
    first = _task(model).fingerprint()
    assert _task(model).fingerprint() == first  # stable
    with torch.no_grad():
        model.fc.bias[0] += 1e-3
    assert _task(model).fingerprint() != first


def test_a_factory_loading_other_weights_changes_the_fingerprint(tmp_path):
    """The baseline cache key sees the weights a factory loads (the old key hashed
    only the architecture's repr, so replaced weights reused the old baseline)."""
    x, y = umt.data()
    path = tmp_path / "w.pt"
    torch.save(umt.DictOutput().state_dict(), path)

    def factory() -> nn.Module:
        m = umt.DictOutput()
        m.load_state_dict(torch.load(path, weights_only=True))
        return m

    def make() -> Task:
        return Task(name="f", build_model=factory, data=umt_data(), num_classes=3, output="logits")

    before = make().fingerprint()
    assert make().fingerprint() == before
    other = umt.DictOutput()
    with torch.no_grad():
        other.fc.weight.mul_(2)
    torch.save(other.state_dict(), path)
    assert make().fingerprint() != before


def umt_data():
    from slimtune.tasks import TaskData

    x, y = umt.data()
    return TaskData(x, y, x[:48], y[:48], x[48:], y[48:])


def test_a_shuffling_loader_gives_the_same_fingerprint_and_order():
    x, y = umt.data()
    build = umt.DictOutput
    a = Task.from_loaders("s", build, _loader(x, y, True, 1), _loader(x, y, False), _loader(x, y, False), output="logits")
    b = Task.from_loaders("s", build, _loader(x, y, True, 2), _loader(x, y, False), _loader(x, y, False), output="logits")
    assert not torch.equal(next(iter(_loader(x, y, True, 1)))[0], next(iter(_loader(x, y, True, 2)))[0])
    assert a.fingerprint() == b.fingerprint()
    assert torch.equal(a.data.x_train, b.data.x_train) and torch.equal(a.data.y_train, b.data.y_train)


def test_the_fingerprint_sees_every_sample():
    """The old fingerprint hashed only the first 4096 values of each split."""
    model = umt.trained_model()
    x, y = umt.data(400)
    base = Task.from_model(model, train=(x, y), val=(x[:48], y[:48]), test=(x[48:], y[48:]), output="logits")
    x2 = x.clone()
    x2[-1, 0, 0, 0] += 1.0
    changed = Task.from_model(model, train=(x2, y), val=(x[:48], y[:48]), test=(x[48:], y[48:]), output="logits")
    assert base.fingerprint() != changed.fingerprint()


def test_the_baseline_of_a_trained_model_is_not_retrained_and_is_measured():
    model = umt.trained_model()
    given = {k: v.clone() for k, v in model.state_dict().items()}
    task = _task(model, metric="accuracy")
    baseline = get_baseline(task)
    assert not baseline.trained and not baseline.cached
    state = baseline.model.state_dict()
    assert set(state) == {"model." + k for k in given}
    assert all(torch.equal(state["model." + k], v) for k, v in given.items())
    with torch.no_grad():
        val_logits = model(task.data.x_val)["logits"]
        test_logits = model(task.data.x_test)["logits"]
        train_logits = model(task.data.x_train)["logits"]
    assert baseline.val_accuracy == pytest.approx(float((val_logits.argmax(1) == task.data.y_val).float().mean()))
    assert baseline.test_accuracy == pytest.approx(float((test_logits.argmax(1) == task.data.y_test).float().mean()))
    assert 0.5 < baseline.val_accuracy < 1.0  # trained, and not a degenerate split
    assert torch.allclose(baseline.teacher_logits, train_logits, atol=1e-5)
    # later changes to the user's model do not leak into the task
    with torch.no_grad():
        model.fc.weight.zero_()
    assert torch.equal(get_baseline(task).model.state_dict()["model.fc.weight"], given["fc.weight"])


def test_a_state_dict_and_factory_make_the_same_task():
    model = umt.trained_model()
    x, y = umt.data()
    a = _task(model)
    b = Task.from_model(model.state_dict(), factory=umt.DictOutput, train=(x, y), val=(x[:48], y[:48]),
                        test=(x[48:], y[48:]), output="logits")
    assert a.fingerprint() == b.fingerprint()
    with pytest.raises(TaskError, match="factory="):
        Task.from_model(model.state_dict(), train=(x, y), val=(x, y), test=(x, y))


def test_no_cache_retrains_a_cached_baseline(tmp_path, monkeypatch):
    from slimtune.search._baseline import cache_dir, clear_cache
    from slimtune.tasks import get_task

    monkeypatch.setenv("SLIMTUNE_CACHE_DIR", str(tmp_path))
    task = get_task("tests.user_task:make_task")
    first = get_baseline(task)
    assert not first.cached and first.trained and len(list(cache_dir().glob("*.pt"))) == 1
    assert get_baseline(task).cached
    again = get_baseline(task, use_cache=False)
    assert not again.cached and again.trained
    assert get_baseline(task).cached  # the cache was refreshed
    assert clear_cache() == 1 and not get_baseline(task).cached


def test_resuming_a_study_with_other_weights_is_refused(tmp_path):
    from slimtune.studies import Study, StudyError

    storage = f"sqlite:///{tmp_path / 's.db'}"
    settings = {"latency_repeats": 3, "epochs": 0}
    model = umt.trained_model()
    study = Study.create_or_load("mine", storage=storage, task=_task(model), settings=settings)
    assert study.metric_name == "accuracy"
    study.close()
    with torch.no_grad():
        model.fc.bias.add_(0.5)
    with pytest.raises(StudyError, match="fingerprint"):
        Study.create_or_load("mine", storage=storage, task=_task(model), settings=settings)


# -- bad input ------------------------------------------------------------------------------
def test_a_model_not_returning_logits_is_one_clear_line():
    with pytest.raises(TaskError, match=r"output='logits'"):
        umt.no_adapter_task()
    x, y = umt.data()
    with pytest.raises(TaskError, match=r"class logits of shape \(batch, classes\), but got \(2, 8, 8, 8\)"):
        Task.from_model(nn.Conv2d(1, 8, 3, padding=1), train=(x, y), val=(x, y), test=(x, y))


def test_an_output_that_does_not_fit_the_model():
    with pytest.raises(TaskError, match=r"`output='logitz'` does not fit the model: .*keys \['features', 'logits'\]"):
        _task(umt.trained_model()).__class__.from_model(umt.trained_model(), train=umt.data(), val=umt.data(),
                                                        test=umt.data(), output="logitz")


def test_labels_outside_the_class_range():
    x, y = umt.data()
    with pytest.raises(TaskError, match=r"The val labels must lie in \[0, 2\].*\[0, 7\]"):
        Task.from_model(umt.trained_model(), train=(x, y), val=(x, y * 7 // 2), test=(x, y), output="logits")


def test_an_unknown_metric_name_suggests_close_matches():
    with pytest.raises(TaskError, match=r"but got 'f1_macr'. Did you mean 'f1_macro'\?"):
        umt.bad_metric_task()


def test_a_loader_yielding_nothing():
    x, y = umt.data()
    with pytest.raises(TaskError, match="The train loader yields no batches"):
        Task.from_model(umt.trained_model(), train=DataLoader(TensorDataset(x[:0], y[:0])), val=(x, y), test=(x, y),
                        output="logits")


def test_cli_bad_input_exits_2_with_one_line():
    from slimtune.cli import main

    result = CliRunner().invoke(main, ["space", "--task", "tests.user_model_task:bad_metric_task"])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0 and "Did you mean 'f1_macro'" in result.output


# -- 2. output adapters -------------------------------------------------------------------
class TupleOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return x.sum(), self.fc(x)


class ObjectOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        from types import SimpleNamespace

        return SimpleNamespace(loss=None, logits=self.fc(x))


@pytest.mark.parametrize(("model", "spec"), [(TupleOut(), 1), (ObjectOut(), "logits"), (ObjectOut(), lambda o: o.logits)])
def test_output_adapters_give_a_tensor_of_logits_and_export_to_onnx(model, spec):
    from slimtune.search._runtimes import compile_model

    wrapped = LogitsOutput(model, spec).eval()
    x = torch.randn(5, 4)
    out = wrapped(x)
    assert isinstance(out, torch.Tensor) and torch.equal(out, model.fc(x))
    compiled = compile_model(wrapped, runtime="onnxruntime", bits=32, calibration=x)
    assert compiled.predict(x) == pytest.approx(out.detach().numpy(), abs=1e-5)


# -- 3. the user's metric -----------------------------------------------------------------
def test_builtin_metrics_on_known_values():
    logits = torch.tensor([[3.0, 2, 1, 0, -1, -2], [0, 3, 2, 1, -1, -2], [0, 1, 3, 2, -1, -2], [3, 0, 1, 2, -1, -2]])
    labels = torch.tensor([0, 1, 1, 5])  # predictions 0, 1, 2, 0
    assert get_metric("accuracy")(logits, labels) == pytest.approx(0.5)
    assert get_metric("top5")(logits, labels) == pytest.approx(0.75)  # class 5 is last for sample 3
    # recalls: class 0 1/1, class 1 1/2, class 5 0/1 -> mean 0.5
    assert get_metric("balanced_accuracy")(logits, labels) == pytest.approx(0.5)
    # F1: class 0 2*1/(1+2)=0.667, class 1 2*1/(2+1)=0.667, class 2 0, class 5 0 -> 1.333/4
    assert get_metric("f1_macro")(logits, labels) == pytest.approx((2 / 3 + 2 / 3) / 4)


def test_the_task_metric_is_what_measurements_hold():
    """A callable metric replaces top-1 accuracy in the baseline and the candidates'
    Measurement (computed on the timed artifact's logits)."""
    from slimtune.search._task_space import build_space
    from slimtune.search._pipeline import EvalSettings, Evaluator

    def neg_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> float:
        return -float(F.cross_entropy(logits, labels))

    model = umt.trained_model()
    task = _task(model, metric=neg_cross_entropy)
    assert task.metric.name == "neg_cross_entropy"
    baseline = get_baseline(task)
    with torch.no_grad():
        expected = -float(F.cross_entropy(model(task.data.x_val)["logits"], task.data.y_val))
    assert baseline.val_accuracy == pytest.approx(expected, rel=1e-5)
    evaluator = Evaluator(task, build_space(task), EvalSettings(latency_repeats=3, latency_warmup=1, epochs=0), baseline)
    m = evaluator.baseline_measurement()
    assert m.accuracy == pytest.approx(expected, rel=1e-4)  # ONNX Runtime's logits, same metric
    assert m.accuracy < 0


# -- 4. every knob on models nobody here wrote ---------------------------------------------
transformers = pytest.importorskip("transformers")
from tests import _hf_models as hf  # noqa: E402


def _with_statistics(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics (an untrained BatchNorm is the identity)."""
    model.train()
    with torch.no_grad():
        for seed in range(3):
            model(torch.randn(16, 1, 32, 32, generator=torch.Generator().manual_seed(seed)))
    return model.eval()


@pytest.mark.parametrize("arch", hf.ARCHITECTURES)
def test_structure_knobs_on_transformers_models(arch):
    """BatchNorm folding is exact and complete, channel pruning keeps grouped /
    depthwise convs, squeeze-excitation and residuals consistent (and warns nothing),
    DS-conv runs inside the library's own layers (MobileNetV2's TF padding reads the
    conv's stride), the lowering folds every BatchNorm and quantization adds no flag."""
    import warnings

    from slimtune.search._macs import count_macs
    from slimtune.spaces.dsconv import DepthwiseSeparable
    from slimtune.spaces.quantization import Quantization
    from slimtune.spaces.base import KnobContext
    from slimtune.spaces.pruning import prune_channels
    from slimtune.spaces._lowering import fold_batchnorm, has_unfolded_batchnorm, lower

    model = _with_statistics(LogitsOutput(hf.build_hf(arch), "logits"))
    x = torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(9))
    ref = model(x)
    ctx = KnobContext(example_input=x[:1], calibration=x, finetune=lambda *a, **k: None, finetune_epochs=0,
                      info={"num_classes": 10})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        folded = fold_batchnorm(copy.deepcopy(model), x[:1])
        assert not has_unfolded_batchnorm(folded)
        assert torch.allclose(folded(x), ref, atol=1e-4 * float(ref.abs().max()))
        lowered = copy.deepcopy(model)
        assert lower(lowered, x[:1])["folded_batchnorms"] == sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        quantized = Quantization().apply(lowered, {"quant.bits": 8, "quant.mode": "ptq"}, ctx)
        assert ctx.info["flags"] == []
        assert (quantized(x).argmax(1) == ref.argmax(1)).float().mean() >= 0.75

        pruned = prune_channels(copy.deepcopy(model), 0.5, ctx)
        out = pruned(x)
        assert out.shape == (4, 10)
        assert count_macs(pruned, x[:1]) < 0.5 * count_macs(model, x[:1])
        grouped = [m for m in pruned.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
        assert all(m.groups == m.in_channels == m.out_channels for m in grouped)
        assert (len(grouped) > 0) == (arch != "resnet")  # MobileNetV2 and ConvNeXt are depthwise

        space_knob = DepthwiseSeparable()
        names = [p.name for p in space_knob.params(model)]
        assert names, "every one of these models has a k×k conv with groups = 1"
        ds = space_knob.apply(copy.deepcopy(model), {n: True for n in names}, ctx)
        assert ds(x).shape == (4, 10) and count_macs(ds, x[:1]) < count_macs(model, x[:1])
    assert [str(w.message) for w in caught if "Unwrapped" in str(w.message) or "BatchNorm" in str(w.message)] == []


def test_the_mlp_on_tabular_data_gets_no_conv_knobs_and_every_other_knob_works():
    """``(N, features)`` inputs: the example input comes from the data; pruning,
    quantization and distillation run; DS-conv is left out, with the reason."""
    from slimtune.search._task_space import build_space

    task = hf.mlp_task()
    assert task.input_shape == (64,)
    space = build_space(task)
    assert {p.family for p in space.params} == {"distill", "prune", "quant", "exits", "lowrank", "cluster"}  # linear layers factorize too
    assert list(space.omitted) == ["dsconv"] and "no eligible conv" in space.omitted["dsconv"]
    base, rows = hf.run_knobs(task, repeats=20)
    assert base.accuracy > 0.9 and set(rows) == set(hf.KNOBS) - {"dsconv"}
    # one exit point: after the first hidden layer and its activation (the second leaves only the classifier)
    assert len(rows["exits 0+1 @0.9"]["exit_rates"]) == 2 and rows["exits 0+1 @0.9"]["delta"] > -0.05
    assert rows["prune channel 0.5"]["macs"] < 0.5 and rows["prune channel 0.5"]["delta"] > -0.1
    assert rows["prune weight 0.5"]["size"] < 0.6 and rows["prune weight 0.5"]["macs"] == 1.0
    assert rows["quant 8-bit ptq"]["kernel_bits"] == 8 and rows["quant 8-bit ptq"]["size"] < 0.3
    assert abs(rows["quant 8-bit ptq"]["delta"]) < 0.03
    # 4-bit weights are 1/8 of fp32; the packed file adds scales, biases and the graph (0.17 measured)
    assert rows["quant 4-bit qat"]["size"] < 0.2 and rows["quant 4-bit qat"]["delta"] > -0.05
    assert abs(rows["distill T=4 a=0.7"]["delta"]) < 0.05
    assert all(not r["warnings"] for r in rows.values()), {k: r["warnings"] for k, r in rows.items()}


@pytest.mark.slow
@pytest.mark.parametrize("arch", hf.ARCHITECTURES)
def test_every_knob_family_on_a_trained_transformers_model(arch):
    """A briefly trained ``transformers`` classifier handed over with from_model; each
    knob family through Evaluator.evaluate, measured on ONNX Runtime."""
    task = hf.hf_task(arch)
    base, rows = hf.run_knobs(task)
    assert base.accuracy > 0.8, base.accuracy
    assert set(rows) == set(hf.KNOBS)  # exit points on every one, found automatically
    assert rows["prune channel 0.5"]["macs"] < 0.5 and rows["prune channel 0.5"]["size"] < 0.5
    assert rows["prune weight 0.5"]["size"] < 0.6 and rows["prune weight 0.5"]["delta"] > -0.05
    # sizes are packed files: weights at 1/4 (1/8) of fp32 plus scales, biases and the graph
    assert rows["quant 8-bit ptq"]["kernel_bits"] == 8 and rows["quant 8-bit ptq"]["size"] < 0.33
    assert rows["quant 8-bit ptq"]["delta"] > -0.03
    assert rows["quant 4-bit qat"]["size"] < 0.2
    assert rows["distill T=4 a=0.7"]["delta"] > -0.05
    assert rows["dsconv"]["macs"] < 1.0
    exits = rows["exits 0+1 @0.9"]  # trained, exported as one ONNX model, timed one sample at a time
    assert len(exits["exit_rates"]) == 3 and sum(exits["exit_rates"]) == pytest.approx(1.0)
    assert exits["delta"] > -0.1 and exits["speedup"] > 0 and exits["macs"] <= 1.01
    for label, row in rows.items():
        assert not any("could not be folded" in f for f in row["flags"]), (label, row["flags"])
        assert not [w for w in row["warnings"] if "Unwrapped" in w or "BatchNorm" in w], (label, row["warnings"])


# -- the CLI and the display ----------------------------------------------------------------
def test_cli_eval_of_a_from_model_task_and_no_cache(tmp_path, monkeypatch):
    """``--task module:callable`` returning Task.from_model; ``--no-cache`` retrains a
    cached baseline (the cache file is rewritten)."""
    import json

    from slimtune.cli import main
    from slimtune.search._baseline import cache_dir

    monkeypatch.setenv("SLIMTUNE_CACHE_DIR", str(tmp_path))
    result = CliRunner().invoke(main, ["eval", "--task", "tests.user_model_task:trained_task", "--epochs", "0",
                                       "--set", "quant.bits=8", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["metric"] == "accuracy" and report["baseline"]["val_accuracy"] > 0.8
    assert not list(cache_dir().glob("*.pt"))  # a trained model is not cached: nothing to retrain

    args = ["eval", "--task", "tests.user_task:make_task", "--epochs", "0", "--json"]
    assert CliRunner().invoke(main, args).exit_code == 0
    (cached,) = cache_dir().glob("*.pt")
    before = cached.stat().st_mtime_ns
    assert CliRunner().invoke(main, args).exit_code == 0 and cached.stat().st_mtime_ns == before  # read
    assert CliRunner().invoke(main, [*args, "--no-cache"]).exit_code == 0
    assert cached.stat().st_mtime_ns != before  # retrained and rewritten
    result = CliRunner().invoke(main, ["cache", "clear"])
    assert result.exit_code == 0 and "Removed 1 cached baseline" in result.output and not cached.exists()


def test_show_names_the_metric_and_the_plot_axis_too(tmp_path):
    from slimtune.cli import main
    from slimtune.studies import Study
    from slimtune.widgets._plot import FrontierPlot

    storage = f"sqlite:///{tmp_path / 's.db'}"
    study = Study.create_or_load("f1", storage=storage, task=umt.trained_task(metric="f1_macro"),
                                 settings={"latency_repeats": 3, "epochs": 0})
    assert study.metric_name == "f1_macro"
    study.close()
    result = CliRunner().invoke(main, ["show", "f1", "--storage", storage])
    assert result.exit_code == 0 and "Baseline: val_f1_macro 0." in result.output, result.output
    assert "val_acc" not in result.output
    from slimtune._cli_tables import table_lines

    head = table_lines([], [], metric="f1_macro")[0]  # the trial table names it too
    assert "val_f1_macro" in head and "test_f1_macro" in head and "val_acc" not in head
    assert FrontierPlot(metric="f1_macro").y_axis.label == "Validation f1 macro"
    assert FrontierPlot().y_axis.label == "Validation accuracy"


# -- 5. early exits on any model ----------------------------------------------------------------
def test_exit_points_are_found_in_a_transformers_resnet_and_export_as_one_onnx_model():
    """The stages of a ``transformers`` ResNet are found by tracing (no ``blocks`` /
    ``head``); the exit model computes the same function when nobody leaves, and is
    exported as one ONNX model that agrees with torch."""
    from slimtune.search._runtimes import compile_model
    from slimtune.spaces.base import KnobContext
    from slimtune.spaces.exits import EarlyExitNet, EarlyExits

    model = _with_statistics(LogitsOutput(hf.build_hf("resnet"), "logits"))
    knob = EarlyExits()
    docs = [p.doc for p in knob.params(model) if p.name.endswith(".enabled")]
    assert docs == [f"attach an exit head after model.resnet.encoder.stages.{i}" for i in range(3)]
    x = torch.randn(6, 1, 32, 32, generator=torch.Generator().manual_seed(3))
    ctx = KnobContext(example_input=x[:1], calibration=x, finetune=lambda *a, **k: None)
    net = knob.apply(copy.deepcopy(model), {"exits.0.enabled": True, "exits.0.threshold": 2.0,
                                            "exits.2.enabled": True, "exits.2.threshold": 2.0}, ctx)
    assert isinstance(net, EarlyExitNet) and net.exit_points == [0, 2]
    assert ctx.info["exits"]["after"] == ["model.resnet.encoder.stages.0", "model.resnet.encoder.stages.2"]
    with torch.no_grad():
        assert torch.allclose(net(x), model(x), atol=1e-5)  # thresholds above 1: nobody leaves
        net.set_thresholds([0.0, 0.0])
        first = net.forward_all(x)[0]
        assert torch.equal(net(x), first)  # threshold 0: everybody leaves at the first exit
    compiled = compile_model(net.eval(), runtime="onnxruntime", bits=32, calibration=x)
    logits, where = compiled.predict_with_exits(x)
    assert compiled.num_exits == 2 and (where == 0).all()
    assert logits == pytest.approx(first.numpy(), abs=1e-4)


def test_exits_after_names_modules_and_bad_names_are_one_line():
    from slimtune.spaces.base import SpaceError
    from slimtune.spaces.exits import EarlyExits

    model = LogitsOutput(hf.build_hf("resnet"), "logits").eval()
    named = EarlyExits(exits_after=["resnet.encoder.stages.1"]).params(model)
    assert [p.doc for p in named if p.name.endswith(".enabled")] == [
        "attach an exit head after model.resnet.encoder.stages.1"]
    with pytest.raises(SpaceError, match=r"`exits_after` names 'resnet.encoder.stage.1', which is not a module.*"
                                         r"Did you mean"):
        EarlyExits(exits_after=["resnet.encoder.stage.1"]).params(model)
    with pytest.raises(SpaceError, match="more than one value flows past it"):  # inside a residual block
        EarlyExits(exits_after=["resnet.encoder.stages.1.layers.0.layer.0"]).params(model)


#: Automatic exit points of the small transformers models (32x32): ResNet's and
#: ConvNeXt's stages but the last; MobileNetV2 has no stage containers (16 numbered
#: ``layer``s), so four of them, evenly spread.
AUTO_EXITS = {
    "resnet": [f"model.resnet.encoder.stages.{i}" for i in range(3)],
    "mobilenet_v2": [f"model.mobilenet_v2.layer.{i}" for i in (2, 6, 10, 14)],
    "convnext": [f"model.convnext.encoder.stages.{i}" for i in range(3)],
}


@pytest.mark.parametrize("arch", ["mobilenet_v2", "convnext"])
def test_exits_on_models_torch_fx_cannot_trace_whole(arch):
    """``torch.fx.symbolic_trace`` fails on these (MobileNetV2's TF padding calls
    ``int()`` on a shape, ConvNeXt's embeddings check the channel count); the layers
    that fail stay whole, so the exit points are found with no names given.  The
    pieces reproduce the model exactly; the exit model exports as one ONNX model with
    an ``If`` per exit that agrees with torch when nobody leaves and when everybody
    leaves at the first exit."""
    import onnx

    from slimtune.search._runtimes import compile_model
    from slimtune.spaces._space import Space
    from slimtune.spaces.base import KnobContext
    from slimtune.spaces.exits import EarlyExitNet, EarlyExits

    model = _with_statistics(LogitsOutput(hf.build_hf(arch), "logits"))
    with pytest.raises(Exception):
        torch.fx.symbolic_trace(model)
    before = dict(vars(torch))
    space = Space.for_model(model)  # transformers' tracer is tried first (it fails on these)
    assert [k for k, v in before.items() if vars(torch).get(k) is not v] == []
    assert "exits" not in space.omitted
    docs = [p.doc for p in space.params if p.family == "exits" and p.name.endswith(".enabled")]
    assert docs == [f"attach an exit head after {name}" for name in AUTO_EXITS[arch]]

    x = torch.randn(6, 1, 32, 32, generator=torch.Generator().manual_seed(3))
    ctx = KnobContext(example_input=x[:1], calibration=x, finetune=lambda *a, **k: None)
    net = EarlyExits().apply(copy.deepcopy(model), {"exits.0.enabled": True, "exits.0.threshold": 2.0,
                                                    "exits.1.enabled": True, "exits.1.threshold": 2.0}, ctx)
    assert isinstance(net, EarlyExitNet) and ctx.info["exits"]["after"] == AUTO_EXITS[arch][:2]
    with torch.no_grad():
        assert torch.equal(net(x), model(x))  # thresholds above 1: nobody leaves, and the pieces are exact
        compiled = compile_model(net.eval(), runtime="onnxruntime", bits=32, calibration=x)
        logits, where = compiled.predict_with_exits(x)
        assert compiled.num_exits == 2 and (where == 2).all()
        assert logits == pytest.approx(model(x).numpy(), abs=1e-4)
        assert _ops(onnx.load_from_string(compiled.artifact).graph).count("If") == 2  # one decision per exit, nested

        net.set_thresholds([0.0, 0.0])
        first = net.forward_all(x)[0]
        assert torch.equal(net(x), first)  # everybody leaves at the first exit
        compiled = compile_model(net.eval(), runtime="onnxruntime", bits=32, calibration=x)
        logits, where = compiled.predict_with_exits(x)
        assert (where == 0).all() and logits == pytest.approx(first.numpy(), abs=1e-4)


@pytest.mark.parametrize("arch", hf.ARCHITECTURES)
def test_channel_pruning_after_exits_on_transformers_models(arch):
    """Channel pruning runs on the exit model (the pipeline prunes after attaching
    exits).  At 28x28 ResNet's first stage gives 7x7 maps, which the exit head pools
    with overlapping windows; ConvNeXt's LayerNorm (an ``nn.LayerNorm`` subclass) is
    kept whole when tracing, so it reads its pruned ``normalized_shape``."""
    from slimtune.search._macs import count_macs
    from slimtune.spaces.base import KnobContext
    from slimtune.spaces.exits import EarlyExits
    from slimtune.spaces.pruning import prune_channels

    model = LogitsOutput(hf.build_hf(arch), "logits").eval()
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(5))
    ctx = KnobContext(example_input=x[:1], calibration=x, finetune=lambda *a, **k: None, finetune_epochs=0,
                      info={"num_classes": 10})
    net = EarlyExits().apply(model, {"exits.0.enabled": True, "exits.0.threshold": 0.9,
                                     "exits.2.enabled": True, "exits.2.threshold": 0.9}, ctx)
    before = count_macs(net, x[:1], exit_rates=[0, 0, 1])
    pruned = prune_channels(net, 0.5, ctx)
    with torch.no_grad():
        outputs = pruned.forward_all(x)
    assert [tuple(o.shape) for o in outputs] == [(4, 10)] * 3
    assert count_macs(pruned, x[:1], exit_rates=[0, 0, 1]) < 0.6 * before


def _ops(graph) -> list[str]:
    """Op types of an ONNX graph and of the subgraphs its nodes hold (``If`` branches)."""
    ops = []
    for node in graph.node:
        ops.append(node.op_type)
        for attribute in node.attribute:
            if attribute.HasField("g"):
                ops += _ops(attribute.g)
    return ops


class TopLevelBranch(nn.Module):
    """Data-dependent control flow in the model's own forward: nothing to keep whole."""

    def __init__(self) -> None:
        super().__init__()
        self.stages = nn.ModuleList(nn.Sequential(nn.Conv2d(c, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 1))
                                    for c in (1, 8, 8))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)
        if x.mean() > 100:
            x = x * 0
        return self.head(x)


class Flaky(TopLevelBranch):
    """Traces without error, but each call flips a Python-side sign: the graph
    records one branch, and the next eager call takes the other."""

    calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)
        self.calls += 1
        return self.head(x if self.calls % 2 else -x)


def test_a_model_whose_own_forward_cannot_be_traced_gets_no_exit_knob_and_the_reason():
    from slimtune.spaces._space import Space

    space = Space.for_model(TopLevelBranch())
    assert not any(p.family == "exits" for p in space.params)
    assert "torch.fx cannot trace the model" in space.omitted["exits"] and "control flow" in space.omitted["exits"]
    assert any(p.family == "prune" for p in space.params)  # the other knobs stay


class Steady(TopLevelBranch):
    """The same model without the branch: traces, and its pieces are exact."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)
        return self.head(x)


def test_pieces_that_do_not_reproduce_the_model_are_refused():
    """The exit model is built only when its pieces give exactly the model's output."""
    from slimtune.spaces.base import KnobContext, SpaceError
    from slimtune.spaces.exits import EarlyExitNet, EarlyExits

    knob = EarlyExits()
    assert [p.doc for p in knob.params(Flaky()) if p.name.endswith(".enabled")] == [
        "attach an exit head after stages.0", "attach an exit head after stages.1"]
    x = torch.randn(2, 1, 8, 8)
    ctx = KnobContext(example_input=x[:1], calibration=x, finetune=lambda *a, **k: None)
    with pytest.raises(SpaceError, match=r"cut after stages.0, stages.1 does not reproduce its output"):
        knob.apply(Flaky(), {"exits.0.enabled": True}, ctx)
    assert isinstance(knob.apply(Steady(), {"exits.0.enabled": True}, ctx), EarlyExitNet)


def test_a_failed_transformers_trace_leaves_torch_as_it_was():
    """``transformers``' fx tracer (tried when torch.fx cannot trace a model's own
    forward) patches torch.arange, torch.tensor, ... while tracing and left them
    patched when it failed on ConvNeXt, which broke TorchScript later in the process."""
    from slimtune.spaces._graph_cuts import _hf_trace

    model = LogitsOutput(hf.build_hf("convnext"), "logits").eval()
    before = dict(vars(torch))
    with pytest.raises(Exception):
        _hf_trace(model)
    assert [k for k, v in before.items() if vars(torch).get(k) is not v] == []


class BatchNormAct2d(nn.BatchNorm2d):
    """A BatchNorm fused with its activation (the timm ``BatchNormAct2d`` pattern)."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(super().forward(x))


class Untraceable(nn.Module):
    """Data-dependent control flow (torch.fx cannot trace it); with ``residual`` the
    conv output is also added after the BatchNorm, so folding would be wrong."""

    def __init__(self, residual: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if float(x.detach().sum()) > -1e9:
            y = self.conv(x)
            return self.bn(y) + y if self.residual else self.bn(y)
        return x


@pytest.mark.parametrize("residual", [False, True])
def test_batchnorm_folding_found_by_running_is_exact_or_not_done(residual):
    from slimtune.spaces.quantization import conv_bn_pairs, fold_batchnorm, has_unfolded_batchnorm

    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), BatchNormAct2d(4), Untraceable(residual))
    model.train()
    with torch.no_grad():
        for seed in range(3):
            model(torch.randn(8, 1, 6, 6, generator=torch.Generator().manual_seed(seed)))
    model.eval()
    x = torch.randn(5, 1, 6, 6, generator=torch.Generator().manual_seed(7))
    ref = model(x)
    assert conv_bn_pairs(model) == [("0", "1")]  # Sequential neighbours; the pair inside `Untraceable` is unseen
    pairs = conv_bn_pairs(model, x[:1])
    assert pairs == [("0", "1")] + ([] if residual else [("2.conv", "2.bn")])
    folded = fold_batchnorm(copy.deepcopy(model), x[:1])
    assert torch.allclose(folded(x), ref, atol=1e-5)
    assert has_unfolded_batchnorm(folded) == residual
    assert isinstance(folded[1], BatchNormAct2d) and (folded[1](-torch.ones(1, 4, 2, 2)) == 0).all()  # ReLU kept
