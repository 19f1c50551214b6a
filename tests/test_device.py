"""Training on a device (``--device``, ``EvalSettings.device``): every tensor the trainer
computes with is on the device it was given (the teacher, exit heads and the modules
knobs create included), a device this machine lacks is refused before any work, and
each trial says where it trained and, apart, where it was timed.

This machine has no GPU: the device path runs on ``cpu``, and on ``meta`` (a real
second device without data) where the trainer alone must keep to it.
"""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
from torch import nn

from slimtune.search._device import DeviceError, TrainingDevice, resolve_device
from slimtune.search._pipeline import EvalSettings, Evaluator
from slimtune.search._task_space import build_space
from slimtune.search._trainer import TrainConfig, train
from slimtune.spaces.base import KnobContext
from slimtune.tasks._data import as_split
from tests._device_audit import DeviceAudit

META = torch.device("meta")

#: A candidate with every knob that trains or creates modules: distillation, DS-conv,
#: low-rank, exits, channel pruning, QAT and weight clustering.
EVERY_KNOB = {"distill.alpha": 0.5, "distill.temperature": 4.0, "dsconv.blocks.1.0": True, "lowrank.head.2": 0.5,
              "exits.0.enabled": True, "exits.0.threshold": 0.9, "prune.ratio": 0.25, "prune.granularity": "channel",
              "quant.bits": 4, "quant.mode": "qat", "cluster.k": 16}


def _distillation_hooks(digits_task, values):
    space = build_space(digits_task)
    return space.training_hooks(space.complete(values))


def test_evaluating_every_knob_on_the_cpu_touches_only_the_cpu(digits_task, digits_baseline) -> None:
    settings = EvalSettings(epochs=1, finetune_epochs=1, latency_repeats=3, latency_warmup=1, device="cpu")
    ev = Evaluator(digits_task, build_space(digits_task), settings, digits_baseline)
    with DeviceAudit("cpu") as audit:
        result = ev.evaluate(dict(EVERY_KNOB))
    assert audit.calls > 1000 and audit.strays == []
    assert result.measurement is not None and result.info["lowering"]["folded_batchnorms"] >= 0
    assert result.info["trained_on"]["device"] == "cpu" and result.info["trained_on"]["amp"] is None
    assert result.info["timed_on"]["runtime"] == "onnxruntime"
    assert result.info["timed_on"]["fingerprint_id"] == result.measurement.fingerprint_id


@pytest.mark.parametrize("streaming", [False, True], ids=["in-memory teacher logits", "streaming teacher model"])
def test_the_trainer_touches_only_the_device_it_is_given(digits_task, digits_baseline, streaming: bool) -> None:
    """On ``meta`` (every tensor a CPU leftover would touch is caught): the student with
    exit heads, the batches, the distillation teacher and the optimizer's state."""
    from slimtune.spaces.exits import EarlyExits

    student = EarlyExits().apply(copy.deepcopy(digits_baseline.model), {"exits.0.enabled": True},
                                 KnobContext(digits_task.example_input(1), digits_task.example_input(4),
                                             lambda *a, **k: None))
    student.to(META)
    data = digits_task.data.train
    if streaming:
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data.x[:256], data.y[:256]), batch_size=64)
        data = as_split(loader, "train", streaming=True)
    hooks = _distillation_hooks(digits_task, {"distill.alpha": 0.7, "exits.0.enabled": True})
    config = TrainConfig(epochs=1, lr=1e-3, batch_size=64, hooks=hooks, place=TrainingDevice(META))
    teacher = digits_baseline.on(META).teacher
    with DeviceAudit(META) as audit:
        epochs, _ = train(student, data, config, teacher=teacher)
    assert epochs == 1 and audit.calls > 100
    assert audit.strays == []


def test_the_audit_catches_a_teacher_left_on_the_cpu(digits_task, digits_baseline) -> None:
    """The check above can fail: teacher logits left on the CPU are seen."""
    from slimtune.search._baseline import PlacedBaseline

    student = copy.deepcopy(digits_baseline.model).to(META)
    hooks = _distillation_hooks(digits_task, {"distill.alpha": 0.7})
    config = TrainConfig(epochs=1, lr=1e-3, batch_size=64, hooks=hooks, place=TrainingDevice(META))
    left_behind = PlacedBaseline(digits_baseline.on(META).model, digits_baseline.teacher_logits)  # on the CPU
    with DeviceAudit(META) as audit:
        try:
            train(student, digits_task.data.train, config, teacher=left_behind.teacher)
        except (RuntimeError, NotImplementedError):
            pass  # torch may refuse the mixed op itself, after the audit saw it
    assert any(device == "cpu" for _, device, _ in audit.strays)


def test_the_trainer_refuses_a_module_left_on_another_device(digits_task, digits_baseline) -> None:
    student = copy.deepcopy(digits_baseline.model).to(META)
    student.head[2] = nn.Linear(student.head[2].in_features, 10)  # created on the CPU
    config = TrainConfig(epochs=1, lr=1e-3, place=TrainingDevice(META))
    with pytest.raises(ValueError, match=r"head\.2\.weight \(cpu\)"):
        train(student, digits_task.data.train, config)


def test_knobs_create_their_modules_on_the_models_device(digits_task, digits_baseline) -> None:
    """The modules knobs create (DS-conv and low-rank replacements, exit heads) are made
    where the replaced layer or the model is: every parameter and buffer on ``meta``."""
    from slimtune.spaces.dsconv import DepthwiseSeparableConv
    from slimtune.spaces.exits import EarlyExits
    from slimtune.spaces.lowrank import LowRankConv, LowRankLinear

    model = copy.deepcopy(digits_baseline.model).to(META)
    conv, linear = model.blocks[1][0], model.head[2]
    made = {"dsconv": DepthwiseSeparableConv.from_conv(conv), "lowrank conv": LowRankConv.from_conv(conv, 4),
            "lowrank linear": LowRankLinear.from_linear(linear, 4)}
    ctx = KnobContext(digits_task.example_input(1).to(META), digits_task.example_input(4).to(META),
                      lambda *a, **k: None)
    made["exits"] = EarlyExits().apply(model, {"exits.0.enabled": True, "exits.1.enabled": True}, ctx).exits
    for name, module in made.items():
        tensors = [*module.named_parameters(), *module.named_buffers()]
        assert tensors and {n: str(t.device) for n, t in tensors if t.device != META} == {}, name


def test_clustering_builds_its_codes_on_the_weights_device(digits_baseline) -> None:
    from slimtune.spaces.clustering import cluster_weights

    model = copy.deepcopy(digits_baseline.model)
    assert cluster_weights(model, 4) > 0
    codes = [b for n, b in model.named_buffers() if n.endswith("codes")]
    assert codes and all(c.device == model.head[2].weight.device for c in codes)


def test_mixed_precision_trains_through_autocast_and_the_gradient_scaler(digits_task, digits_baseline) -> None:
    """fp16 (with the gradient scaler) and bf16, run here on the CPU's autocast: the
    same code path CUDA takes."""
    for dtype in (torch.float16, torch.bfloat16):
        student = copy.deepcopy(digits_baseline.model)
        before = student.head[2].weight.detach().clone()
        config = TrainConfig(epochs=1, lr=1e-3, place=TrainingDevice(torch.device("cpu"), dtype),
                             hooks=_distillation_hooks(digits_task, {"distill.alpha": 0.5}))
        assert config.place.grad_scaler().is_enabled() == (dtype == torch.float16)
        train(student, digits_task.data.train, config, teacher=digits_baseline.teacher)
        assert torch.isfinite(student.head[2].weight).all() and not torch.equal(before, student.head[2].weight)


def test_amp_is_off_on_the_cpu_and_auto_is_the_cpu_here() -> None:
    assert TrainingDevice.resolve("cpu", "auto").amp is None
    assert TrainingDevice.resolve("auto", "bf16").device == (torch.device("cuda", 0) if torch.cuda.is_available()
                                                              else torch.device("cpu"))
    assert TrainingDevice(torch.device("cpu")).move(torch.arange(3))[0].dtype == torch.int64  # token ids stay ids


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_a_device_this_machine_lacks_is_refused_before_any_work(tmp_path) -> None:
    for spec in ("cuda", "cuda:1", "mps"):
        with pytest.raises(DeviceError, match=f"`device` {spec}:"):
            resolve_device(spec)
    with pytest.raises(ValueError, match="`device` must be auto, cpu, cuda, cuda:N or mps, but got 'tpu'"):
        EvalSettings(device="tpu")
    from slimtune.studies import Study, StudyError

    url = f"sqlite:///{tmp_path / 'd.db'}"
    with pytest.raises(StudyError, match="`device` cuda: this torch is built without CUDA"):
        Study.create_or_load("d", storage=url, task="digits", settings={"device": "cuda"})
    assert not (tmp_path / "d.db").exists()
    proc = subprocess.run([sys.executable, "-m", "slimtune.cli", "run", "--study", "d", "--task", "digits",
                           "--trials", "1", "--device", "cuda:0", "--storage", url],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        f"Error: `--device` cuda:0: this torch is built without CUDA (torch {torch.__version__}); "
        "use --device cpu (or auto)."]
    assert not (tmp_path / "d.db").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_a_study_trains_where_each_session_says_and_records_it(tmp_path) -> None:
    """``device`` is a session's choice: not stored with the study, so a worker on
    another device joins it; each trial stores where it trained and where it was timed."""
    from slimtune.studies import Study, StudyError

    url = f"sqlite:///{tmp_path / 's.db'}"
    settings = {"epochs": 1, "latency_repeats": 3, "latency_warmup": 1}
    with Study.create_or_load("s", storage=url, task="digits", settings={**settings, "device": "cpu"},
                              early_stopping=False) as study:
        assert "device" not in study.info()["settings"] and study.settings.device == "cpu"
        with pytest.raises(StudyError, match="`device` cuda:2"):
            study.optimize(n_trials=1, device="cuda:2", progress=False)
        assert study.trials() == []
        study.optimize(n_trials=1, progress=False, warm_start=False)
    with Study.create_or_load("s", storage=url, task="digits", settings={**settings, "device": "auto"}) as again:
        again.optimize(n_trials=1, progress=False, device="cpu", amp="auto")
        rows = again.trials()
    assert len(rows) == 2
    for row in rows:
        assert row["trained_on"]["device"] == "cpu" and row["trained_on"]["amp"] is None
        assert row["timed_on"]["runtime"] == "onnxruntime" and row["timed_on"]["fingerprint_id"] == row["fingerprint_id"]
