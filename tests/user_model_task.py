"""``Task.from_model`` tasks for the tests: ``--task tests.user_model_task:trained_task``."""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from slimtune import Task
from tests._train import train_plain


class DictOutput(nn.Module):
    """A classifier whose forward returns ``{"logits": ..., "features": ...}``."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.body(x)
        return {"features": features, "logits": self.fc(features)}


def data(n: int = 120, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Three classes told apart by the mean brightness of 8x8 images."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g)
    y = torch.bucketize(x.mean(dim=(1, 2, 3)), torch.tensor([-0.05, 0.05]))
    return x, y


def trained_model(seed: int = 0) -> DictOutput:
    """A fresh copy of the model trained with ``seed`` (trained once per process)."""
    model = DictOutput()
    model.load_state_dict(_trained_state(seed))
    return model.eval()


@functools.lru_cache(maxsize=4)
def _trained_state(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    x, y = data()

    class Logits(nn.Module):  # train through the logits only
        def __init__(self, inner: DictOutput) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x)["logits"]

    model = DictOutput()
    train_plain(Logits(model), x, y, epochs=60, lr=2e-2)
    return {k: v.clone() for k, v in model.state_dict().items()}


def trained_task(metric: str = "accuracy") -> Task:
    x, y = data()
    loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)
    return Task.from_model(trained_model(), train=loader, val=(x[:48], y[:48]), test=(x[48:], y[48:]),
                           metric=metric, output="logits", name="user-trained", finetune_epochs=1)


def bad_metric_task() -> Task:
    return trained_task(metric="f1_macr")


def no_adapter_task() -> Task:
    x, y = data()
    return Task.from_model(trained_model(), train=(x, y), val=(x, y), test=(x, y))
