"""Real file sizes by weight bits and weight pruning: the packed model file
(``size_bytes``) beside the ONNX artifact that is timed (``artifact_bytes``).

For each setting the baseline model is snapped to the bits (and/or weight-pruned),
compiled for ONNX Runtime exactly as a trial is, packed, and unpacked again (the
restored bytes must equal the artifact).  Usage::

    python benchmarks/packed_sizes.py [--models digits,resnet8]

``digits`` is the digits task's trained baseline; ``resnet8`` the fashion-mnist
architecture (ResNet-8, 28x28) with random weights (no data needed).
"""

from __future__ import annotations

import argparse
import copy

import torch
from torch import nn

from slimtune.search.packed import pack, unpack
from slimtune.search._runtimes import compile_model
from slimtune.spaces.base import KnobContext
from slimtune.spaces.pruning import prune_weights
from slimtune.spaces.quantization import snap_weights
from slimtune.tasks._models import resnet8

SETTINGS = [(bits, 0.0) for bits in (32, 16, 8, 6, 4, 2)] + [(32, 0.5), (32, 0.7), (32, 0.9), (8, 0.7), (4, 0.7)]


def _model(name: str) -> tuple[nn.Module, torch.Tensor]:
    if name == "digits":
        from slimtune.search._baseline import get_baseline
        from slimtune.tasks import get_task

        task = get_task("digits")
        return get_baseline(task, seed=0).model.eval(), task.data.x_train[:256]
    if name == "resnet8":
        torch.manual_seed(0)
        return resnet8(10).eval(), torch.randn(256, 1, 28, 28)
    raise SystemExit(f"--models: unknown model {name!r} (digits, resnet8)")


def _variant(model: nn.Module, calib: torch.Tensor, bits: int, ratio: float) -> nn.Module:
    model = copy.deepcopy(model)
    if ratio:
        ctx = KnobContext(example_input=calib[:4], calibration=calib[:4], finetune=lambda *a, **k: None,
                          info={"flags": []})
        model = prune_weights(model, ratio, ctx)
    if bits < 32:
        snap_weights(model, bits)
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="digits,resnet8")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for name in args.models.split(","):
        model, calib = _model(name.strip())
        print(f"\n{name}: {sum(p.numel() for p in model.parameters()):,} parameters")
        print("| setting | packed file (size_bytes) | ONNX artifact (artifact_bytes) | fp32 packed / packed |")
        print("|---|---|---|---|")
        base = None
        for bits, ratio in SETTINGS:
            compiled = compile_model(_variant(model, calib, bits, ratio), bits=bits, calibration=calib)
            data = pack(compiled.artifact, artifact_format="onnx", bits=bits)
            assert unpack(data).artifact == compiled.artifact
            base = base or len(data)
            label = f"{bits}-bit" + (f", {ratio:.0%} weight-pruned" if ratio else "")
            print(f"| {label} | {len(data):,} B ({len(data) / 1024:.1f} KiB) | {len(compiled.artifact):,} B "
                  f"({len(compiled.artifact) / 1024:.1f} KiB) | {base / len(data):.2f}x |")


if __name__ == "__main__":
    main()
