"""User tasks for the tests: ``--task tests.user_task:make_task``."""

from __future__ import annotations

import torch
from torch import nn

from slimtune import tasks


def _data(n: int = 96) -> tasks.TaskData:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 8, 8, generator=g)
    y = (x.mean(dim=(1, 2, 3)) > 0).long()
    return tasks.TaskData(x, y, x[:32], y[:32], x[:32], y[:32])


def make_task() -> tasks.Task:
    def model() -> nn.Module:
        return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))

    return tasks.Task(name="user-mlp-conv", build_model=model, data=_data(), num_classes=2, epochs=1, finetune_epochs=1)


def make_mlp_task() -> tasks.Task:
    """A model with no k×k conv: dsconv has nothing to act on."""

    def model() -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 2))

    return tasks.Task(name="user-mlp", build_model=model, data=_data(), num_classes=2, epochs=1, finetune_epochs=1)


def bad_task() -> tasks.Task:
    def model() -> nn.Module:
        return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1))  # feature maps, not logits

    return tasks.Task(name="bad", build_model=model, data=_data(), num_classes=2)


def not_a_task() -> int:
    return 42


def raising_task() -> tasks.Task:
    """A task callable that fails (as a user's data path typo would)."""
    raise FileNotFoundError("no such file: /data/train.csv")


def empty_loader_task() -> tasks.Task:
    """A task whose validation loader yields no batches."""
    from torch.utils.data import DataLoader, TensorDataset

    data = _data()
    train = DataLoader(TensorDataset(data.x_train, data.y_train), batch_size=32)
    empty = DataLoader(TensorDataset(data.x_val[:0], data.y_val[:0]), batch_size=32)
    return tasks.Task.from_loaders("empty", make_task().build_model, train, empty, train, num_classes=2)
