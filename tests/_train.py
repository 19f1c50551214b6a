"""A plain cross-entropy training loop for tests that need a trained tiny model."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def train_plain(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int = 3, lr: float = 5e-3) -> nn.Module:
    """Adam on every output (each early exit and the final head), seeded, one thread."""
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    outputs = getattr(model, "forward_all", None)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: one thread is fastest (and robust on a busy machine)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x) - 1, 64):
            idx = order[i:i + 64]
            outs = outputs(x[idx]) if outputs else [model(x[idx])]
            loss = sum(F.cross_entropy(o, y[idx]) for o in outs)
            opt.zero_grad()
            loss.backward()
            opt.step()
    torch.set_num_threads(threads)
    return model.eval()


def split_exit_net(data) -> nn.Module:
    """A small CNN with exits after blocks 0 and 1, trained 3 epochs on ``data``'s
    training split, with thresholds that split its test samples across the exits (60%
    and 50% quantiles of each exit's confidence)."""
    from slimtune.spaces.exits import EarlyExitNet, ExitHead
    from slimtune.tasks._models import small_cnn

    torch.manual_seed(0)
    base = small_cnn(width=8)
    net = EarlyExitNet(base.blocks, base.head, {0: ExitHead(8, 10), 1: ExitHead(16, 10)}, {0: 2.0, 1: 2.0})
    train_plain(net, data.x_train, data.y_train, epochs=3)
    with torch.no_grad():
        outs = net.forward_all(data.x_test)
    confidence = [F.softmax(o, -1).amax(-1) for o in outs[:2]]
    net.set_thresholds([float(confidence[0].quantile(0.6)), float(confidence[1].quantile(0.5))])
    return net
