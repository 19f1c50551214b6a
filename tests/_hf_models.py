"""Models from a library nobody here wrote (Hugging Face ``transformers``), built
from small configs (1 channel, 32x32 inputs, 10 labels, random init), trained briefly
on scikit-learn's digits upsampled to 32x32, and handed over with ``Task.from_model``.
Also a plain MLP on tabular ``(N, features)`` data."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from slimtune import Task
from slimtune.tasks._outputs import LogitsOutput

ARCHITECTURES = ("resnet", "mobilenet_v2", "convnext")


def build_hf(arch: str) -> nn.Module:
    """A randomly initialised ``transformers`` image classifier (forward returns an
    output object with ``.logits``)."""
    import transformers as tf

    torch.manual_seed(0)
    if arch == "resnet":
        config = tf.ResNetConfig(num_channels=1, num_labels=10, embedding_size=16, hidden_sizes=[16, 32, 64, 128],
                                 depths=[1, 1, 1, 1], layer_type="basic")
        return tf.ResNetForImageClassification(config)
    if arch == "mobilenet_v2":
        config = tf.MobileNetV2Config(num_channels=1, num_labels=10, image_size=32, depth_multiplier=0.35)
        return tf.MobileNetV2ForImageClassification(config)
    if arch == "convnext":
        config = tf.ConvNextConfig(num_channels=1, num_labels=10, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1],
                                   patch_size=2)
        return tf.ConvNextForImageClassification(config)
    raise ValueError(f"`arch` must be one of {', '.join(ARCHITECTURES)}, but got {arch!r}.")


@functools.lru_cache(maxsize=1)
def digits32() -> tuple[torch.Tensor, ...]:
    """Digits 8x8 -> 32x32 (bilinear), split 60/20/20 as the built-in task."""
    from slimtune.tasks import get_task

    d = get_task("digits").data
    up = lambda x: F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)  # noqa: E731
    return up(d.x_train), d.y_train, up(d.x_val), d.y_val, up(d.x_test), d.y_test


def train_briefly(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float = 3e-3,
                  batch: int = 64) -> nn.Module:
    """Adam for ``steps`` steps of cross-entropy (seeded), as a user would have."""
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (batch,), generator=g)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@functools.lru_cache(maxsize=4)
def _trained_hf_state(arch: str, steps: int) -> dict[str, torch.Tensor]:
    xtr, ytr, *_ = digits32()
    model = LogitsOutput(build_hf(arch), "logits")
    train_briefly(model, xtr, ytr, steps)
    return {k: v.clone() for k, v in model.model.state_dict().items()}


def hf_task(arch: str, steps: int = 200, **kwargs) -> Task:
    """``Task.from_model`` of a briefly trained ``transformers`` classifier."""
    model = build_hf(arch)
    model.load_state_dict(_trained_hf_state(arch, steps))
    xtr, ytr, xva, yva, xte, yte = digits32()
    return Task.from_model(model.eval(), train=(xtr, ytr), val=(xva, yva), test=(xte, yte), output="logits",
                           name=f"hf-{arch}", **kwargs)


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))


def mlp_task(epochs: int = 30, **kwargs) -> Task:
    """A trained MLP on tabular data: the 64 pixel values of each digit as features."""
    from slimtune.tasks import get_task

    d = get_task("digits").data
    flat = lambda x: x.reshape(len(x), -1)  # noqa: E731
    model = mlp()
    train_briefly(model, flat(d.x_train), d.y_train, steps=epochs * 17)
    return Task.from_model(model, train=(flat(d.x_train), d.y_train), val=(flat(d.x_val), d.y_val),
                           test=(flat(d.x_test), d.y_test), name="tabular-mlp", **kwargs)


#: One candidate per knob family, as measured in tests and benchmarks/user_models.py.
KNOBS: dict[str, dict] = {
    "prune weight 0.5": {"prune.ratio": 0.5, "prune.granularity": "weight"},
    "prune channel 0.5": {"prune.ratio": 0.5, "prune.granularity": "channel"},
    "quant 8-bit ptq": {"quant.bits": 8, "quant.mode": "ptq"},
    "quant 4-bit qat": {"quant.bits": 4, "quant.mode": "qat"},
    "distill T=4 a=0.7": {"distill.temperature": 4.0, "distill.alpha": 0.7},
    "dsconv": {},  # filled per model: every eligible conv with more than one input channel
    "lowrank 0.5": {},  # filled per model: every low-rank group at half its rank
    "exits 0+1 @0.9": {"exits.0.enabled": True, "exits.0.threshold": 0.9,
                       "exits.1.enabled": True, "exits.1.threshold": 0.9},  # those of the two the model has
}


def dsconv_values(space, model: nn.Module) -> dict[str, bool]:
    """Every eligible conv with more than one input channel (a 1-channel stem gains
    nothing), or every eligible conv if that leaves none."""
    names = [p.name for p in space.params if p.name.startswith("dsconv.")]
    wide = [n for n in names if model.get_submodule(n[len("dsconv."):]).in_channels > 1]
    return {n: True for n in (wide or names)}


def run_knobs(task: Task, *, epochs: int | None = 1, repeats: int = 50,
              finetune_epochs: int | None = 1) -> tuple[dict, dict[str, dict]]:
    """The baseline measurement and, per knob of :data:`KNOBS` the space offers, the
    candidate's measured ratios: ``macs``, ``speedup`` (same-run reference latency /
    latency), ``size``, ``delta`` (metric change on validation), ``test_delta``,
    ``flags`` and the warnings raised while it was built and measured.  ``epochs`` and
    ``finetune_epochs`` (distillation, recovery): ``None`` takes the task's."""
    import warnings

    from slimtune.search._task_space import build_space
    from slimtune.search._baseline import get_baseline
    from slimtune.search._pipeline import EvalSettings, Evaluator

    space = build_space(task)
    settings = EvalSettings(epochs=epochs, finetune_epochs=finetune_epochs, latency_repeats=repeats, latency_warmup=5)
    evaluator = Evaluator(task, space, settings, get_baseline(task))
    base = evaluator.baseline_measurement()
    rows: dict[str, dict] = {}
    for label, values in KNOBS.items():
        if label == "dsconv":
            if "dsconv" in space.omitted:
                continue
            values = dsconv_values(space, task.build_model())
        elif label == "lowrank 0.5":
            values = {p.name: 0.5 for p in space.params if p.family == "lowrank"}
        elif label.startswith("exits "):
            values = {k: v for k, v in values.items() if k in space}
        if not values or any(name not in space for name in values):
            continue  # the space does not offer it (e.g. no exit points): see space.omitted
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            m = evaluator.evaluate(values).measurement
        rows[label] = {"macs": m.macs / base.macs, "speedup": m.speedup, "size": m.size_bytes / base.size_bytes,
                       "delta": m.accuracy - base.accuracy, "test_delta": m.test_accuracy - base.test_accuracy,
                       "accuracy": m.accuracy, "kernel_bits": m.kernel_bits, "flags": list(m.flags),
                       "exit_rates": list(m.exit_rates) if m.exit_rates else None,
                       "warnings": [f"{w.category.__name__}: {w.message}" for w in caught]}
    return base, rows
