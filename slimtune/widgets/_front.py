"""A front kept up to date point by point: the non-dominated members of a growing set.

Built once with the frontier module's sort (:func:`slimtune.studies._frontier.non_dominated_losses`),
then each new point is compared with the members only (a point dominated by anything
is dominated by a member), so adding one costs the size of the front, not the study's.
The rule is the frontier module's: every loss is minimized, a point with a NaN is
never a member, equal points are all members.

Example:
    >>> import numpy as np
    >>> front = ParetoSet(np.array([[1.0, -0.9], [2.0, -0.8]]))
    >>> front.add(2, np.array([0.5, -0.95]))
    True
    >>> front.indices.tolist()
    [2]
"""

from __future__ import annotations

import numpy as np

from slimtune._dominance import dominates_rows, non_dominated_losses


class ParetoSet:
    """The indices (and losses) of the non-dominated points among those added."""

    def __init__(self, losses: np.ndarray) -> None:
        losses = np.asarray(losses, dtype=float)  # (n, k)
        keep = np.flatnonzero(non_dominated_losses(losses)) if len(losses) else np.zeros(0, dtype=int)
        self.indices = keep.astype(int)
        self.losses = losses[keep]

    def add(self, index: int, loss: np.ndarray) -> bool:
        """Add point ``index``; ``True`` when it joins the front (then the members it
        dominates leave)."""
        loss = np.asarray(loss, dtype=float).reshape(1, -1)
        if np.isnan(loss).any() or (len(self.losses) and dominates_rows(self.losses, loss).any()):
            return False
        stay = ~dominates_rows(loss, self.losses) if len(self.losses) else np.zeros(0, dtype=bool)
        self.indices = np.append(self.indices[stay], int(index))
        self.losses = np.concatenate([self.losses[stay].reshape(-1, loss.shape[1]), loss])
        return True

    def __contains__(self, index: int) -> bool:
        return bool((self.indices == index).any())

    def __len__(self) -> int:
        return len(self.indices)
