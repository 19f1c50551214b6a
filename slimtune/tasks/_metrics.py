"""The task's metric: what ``Measurement.accuracy`` / ``test_accuracy`` hold.

A metric maps ``(logits, labels)`` (torch tensors, ``(N, classes)`` and ``(N,)``) to a
float that is **maximized** (return the negative of a loss).  Built-in names:
``accuracy`` (top-1), ``top5``, ``balanced_accuracy`` (mean per-class recall over the
classes present in the labels) and ``f1_macro`` (mean per-class F1 over the classes
present in the labels or the predictions).

Example:
    >>> metric = get_metric("f1_macro")
    >>> metric(torch.tensor([[2.0, 0.1], [0.3, 1.0]]), torch.tensor([0, 1]))
    1.0
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

__all__ = ["METRICS", "Metric", "MetricError", "get_metric"]


class MetricError(ValueError):
    """An unknown metric name or a metric that does not return a number."""


@dataclass(frozen=True)
class Metric:
    """A named metric to maximize: ``metric(logits, labels) -> float``."""

    name: str
    fn: Callable[[torch.Tensor, torch.Tensor], Any]

    def __call__(self, logits: "torch.Tensor | np.ndarray", labels: "torch.Tensor | np.ndarray") -> float:
        logits_t = torch.as_tensor(np.asarray(logits) if not isinstance(logits, torch.Tensor) else logits)
        labels_t = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels).long()
        value = self.fn(logits_t.detach().float(), labels_t.detach())
        try:
            return float(value)
        except (TypeError, ValueError):
            raise MetricError(f"The metric {self.name!r} must return a number, but returned {type(value).__name__}.") from None


def _confusion(predicted: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``cm[true, predicted]`` counts."""
    index = labels * num_classes + predicted
    return torch.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy (an exact fraction: correct / samples, in float64)."""
    return int((logits.argmax(-1) == labels).sum()) / max(1, len(labels))


def top5(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of samples whose label is among the 5 highest logits (all of them with
    fewer than 5 classes)."""
    k = min(5, logits.shape[-1])
    return int((logits.topk(k, dim=-1).indices == labels[:, None]).any(dim=-1).sum()) / max(1, len(labels))


def balanced_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean recall over the classes present in ``labels``."""
    cm = _confusion(logits.argmax(-1), labels, logits.shape[-1]).double()
    support = cm.sum(dim=1)
    present = support > 0
    return float((cm.diag()[present] / support[present]).mean())


def f1_macro(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Unweighted mean F1 over the classes present in ``labels`` or the predictions."""
    cm = _confusion(logits.argmax(-1), labels, logits.shape[-1]).double()
    tp = cm.diag()
    support, predicted = cm.sum(dim=1), cm.sum(dim=0)
    present = (support + predicted) > 0
    f1 = 2 * tp / (support + predicted).clamp_min(1)
    return float(f1[present].mean())


#: The metrics known by name.
METRICS: dict[str, Callable[[torch.Tensor, torch.Tensor], float]] = {
    "accuracy": accuracy,
    "top5": top5,
    "balanced_accuracy": balanced_accuracy,
    "f1_macro": f1_macro,
}


def get_metric(metric: "str | Callable | Metric | None") -> Metric:
    """A :class:`Metric` from a name in :data:`METRICS`, a callable ``(logits, labels)
    -> float`` (named after the callable) or a :class:`Metric`; ``None`` is accuracy.

    Raises:
        MetricError: an unknown name (with close matches) or something else.
    """
    if metric is None:
        metric = "accuracy"
    if isinstance(metric, Metric):
        return metric
    if isinstance(metric, str):
        if metric not in METRICS:
            close = difflib.get_close_matches(metric, list(METRICS), n=3, cutoff=0.5)
            hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise MetricError(f"`metric` must be one of {', '.join(METRICS)} or a callable (logits, labels) -> float, "
                              f"but got {metric!r}.{hint}")
        return Metric(metric, METRICS[metric])
    if callable(metric):
        name = getattr(metric, "__name__", None) or type(metric).__name__
        return Metric("metric" if name == "<lambda>" else name, metric)
    raise MetricError(f"`metric` must be a name ({', '.join(METRICS)}) or a callable (logits, labels) -> float, "
                      f"but got {metric!r}.")
