"""Built-in tasks: data that ships offline (never downloaded) and a baseline model."""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from slimtune.tasks._registry import register_task
from slimtune.tasks._task import Task, TaskData, TaskError
from slimtune.tasks._models import resnet8, small_cnn

FASHION_DIR_ENV = "SLIMTUNE_FASHION_MNIST_DIR"
FASHION_DIR_DEFAULT = "/usr/share/datasets/fashion-mnist"


def _split(n: int, fractions: tuple[float, float], seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    a = int(round(n * fractions[0]))
    b = a + int(round(n * fractions[1]))
    return order[:a], order[a:b], order[b:]


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits as ``load_digits`` returns them (images ``(1797, 8,
    8)`` float64, targets int), read from the CSV file that ships inside scikit-learn
    without importing it: that import took ~1.6 s of each ``run`` worker's ~4 s start-up.
    Falls back to ``load_digits`` where the file is not found."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")  # finds the package; does not run it
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec and spec.origin else None
    if path is None or not path.is_file():
        from sklearn.datasets import load_digits

        bunch = load_digits()
        return bunch.images, bunch.target
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        data = np.loadtxt(fh, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int, copy=False)


@register_task("digits", "scikit-learn's 8x8 digits (1,797 images), 3-block CNN; seconds per candidate")
def digits() -> Task:
    """scikit-learn's bundled 8x8 digits with a three-block CNN."""
    images, target = _digits_arrays()
    x = torch.tensor(images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = (x - 0.3) / 0.4
    y = torch.tensor(target, dtype=torch.long)
    tr, va, te = _split(len(x), (0.6, 0.2), seed=0)
    data = TaskData(x[tr], y[tr], x[va], y[va], x[te], y[te])
    return Task(
        name="digits", build_model=lambda: small_cnn(10), data=data, num_classes=10,
        epochs=15, finetune_epochs=4, recovery_epochs=3, lr=3e-3, batch_size=64,
        notes="sklearn digits, fixed split 60/20/20 (seed 0)", extra={"warm_starts": DIGITS_WARM_STARTS},
        preprocessing="float32 of shape (batch, 1, 8, 8): x = pixels / 16 (sklearn digits pixels are 0..16), "
                      "then (x - 0.3) / 0.4",
    )


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        raw = fh.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_fashion_mnist(directory: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The real Fashion-MNIST IDX files from Debian's ``dataset-fashion-mnist``."""
    root = Path(directory or os.environ.get(FASHION_DIR_ENV, FASHION_DIR_DEFAULT))
    names = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    missing = [n for n in names if not (root / n).exists()]
    if missing:
        raise TaskError(
            f"Fashion-MNIST not found in {root} (missing {missing[0]}): install it with "
            "`apt-get install dataset-fashion-mnist` (slimtune never downloads data)."
        )
    return tuple(_read_idx(root / n) for n in names)  # type: ignore[return-value]


#: A new Fashion-MNIST study's first trials (``Task.extra["warm_starts"]``, see
#: :mod:`slimtune.search._warm_start`): well-known compressions of the baseline, measured
#: on this ResNet-8 (ONNX Runtime, 1 thread, batch 1, same-run speed-ups of the untrained
#: structures; ``benchmarks/compression.py``): int8 alone 1.7x faster, 3.7x smaller; DS-conv
#: on every conv but the stem (fp32) 3.5x faster; int8 + 50% channel pruning 1.8x faster,
#: 12.6x smaller; 4-bit weights with half of them pruned for the packed file.
#: The stem (``blocks.0.0``) has one input channel: its depthwise-separable form is a
#: rank-1 factorisation of its 16 filters that saves 5 of 178 us and cost most of the
#: accuracy: DS-conv everywhere was 3.4x faster at -2.6 validation points after 10
#: distillation epochs, every conv but the stem 3.5x at -0.7 (-0.2 test).
#: 30% or 40% channel pruning leaves widths that are not multiples of 8 and ran *slower*
#: than 50% (1.3x with int8, 1.2x in fp32): not a warm start.
FASHION_WARM_STARTS: tuple[dict, ...] = (
    {"quant.bits": 8, "quant.mode": "ptq"},
    {"dsconv.*": True, "dsconv.blocks.0.0": False},
    {"quant.bits": 8, "quant.mode": "ptq", "prune.granularity": "channel", "prune.ratio": 0.5},
    {"quant.bits": 4, "quant.mode": "qat", "prune.granularity": "weight", "prune.ratio": 0.5},
)


#: A new digits study's first trials: Fashion-MNIST's list, unchanged (the same
#: well-known compressions; this CNN's stem is ``blocks.0.0`` too).  What they gave
#: real searches, dated: ``docs/benchmarks.md``.
DIGITS_WARM_STARTS = FASHION_WARM_STARTS


@register_task("fashion-mnist", "Fashion-MNIST (Debian dataset-fashion-mnist), ResNet-8; trains on a 10k subset")
def fashion_mnist(train_subset: int = 10_000, val_size: int = 5_000) -> Task:
    """Fashion-MNIST 28x28 with a ResNet-8; a fixed 10k training subset, full 10k test."""
    xtr, ytr, xte, yte = load_fashion_mnist()
    mean, std = 0.286, 0.353

    def prep(images: np.ndarray) -> torch.Tensor:
        return (torch.tensor(images, dtype=torch.float32).unsqueeze(1) / 255.0 - mean) / std

    order = np.random.default_rng(0).permutation(len(xtr))
    tr, va = order[:train_subset], order[train_subset:train_subset + val_size]
    data = TaskData(prep(xtr[tr]), torch.tensor(ytr[tr], dtype=torch.long), prep(xtr[va]),
                    torch.tensor(ytr[va], dtype=torch.long), prep(xte), torch.tensor(yte, dtype=torch.long))
    return Task(
        name="fashion-mnist", build_model=lambda: resnet8(10), data=data, num_classes=10,
        # 3 distillation + 2 recovery epochs (after pruning, for QAT): with 1 + 1 a search lost
        # 3-6 test points on every candidate that was faster (benchmarks/compression.py)
        epochs=4, finetune_epochs=3, recovery_epochs=2, lr=3e-3, batch_size=128,
        preprocessing=f"float32 of shape (batch, 1, 28, 28): x = pixels / 255 (uint8 pixels 0..255), "
                      f"then (x - {mean}) / {std} (Fashion-MNIST mean and std)",
        notes=f"Fashion-MNIST: trained on a fixed {train_subset:,}-image subset of the 60k training set; "
        f"validation {val_size:,} other training images; accuracy on the full 10,000-image test split",
        extra={"warm_starts": FASHION_WARM_STARTS},
    )


#: Convs with at most this many input channels (a stem reading pixels, a ViT's patch
#: embedding) are left out of the DS-conv warm start: their depthwise-separable form is a
#: rank-1 factorisation that saves little and costs most of the accuracy.
FEW_INPUT_CHANNELS = 4


def model_warm_starts(model: nn.Module) -> list[dict[str, Any]]:
    """The built-in tasks' well-known compressions, adapted to ``model`` (the task's
    built model, output adapter included): int8 post-training quantization; int8 with a
    third of the channels pruned; a third of the channels pruned alone (on small models
    ONNX Runtime's int8 ran 0.4-0.7x the fp32 speed at batch 1, pruning alone 1.1-1.3x);
    DS-conv on every conv a ``dsconv`` switch can take except those with few input
    channels (:data:`FEW_INPUT_CHANNELS`; left out when no conv is left); 4-bit weights
    trained with quantization (QAT) and half of them pruned.
    A warm start whose parameters the study's space does not search is skipped
    (:mod:`slimtune.search._warm_start`)."""
    wide = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups == 1
            and max(m.kernel_size) > 1 and m.in_channels > FEW_INPUT_CHANNELS]
    out: list[dict[str, Any]] = [
        {"quant.bits": 8, "quant.mode": "ptq"},
        {"quant.bits": 8, "quant.mode": "ptq", "prune.granularity": "channel", "prune.ratio": 0.33},
        {"prune.granularity": "channel", "prune.ratio": 0.33},  # small models: int8 is slower at batch 1
    ]
    if wide:
        out.append({f"dsconv.{name}": True for name in wide})
    out.append({"quant.bits": 4, "quant.mode": "qat", "prune.granularity": "weight", "prune.ratio": 0.5})
    return out
