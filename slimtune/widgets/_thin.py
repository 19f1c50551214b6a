"""Which points a scatter mark sends to the browser: all of them up to a limit, then one
per cell of a grid finer than a dot.

A dot is about 8 pixels wide and the plot about 600 by 360: beyond :data:`LIMIT` points,
points closer than :data:`CELLS` of the plot's width or height cover each other, so one
point per cell shows the same picture while the data sent stays bounded (at most
``CELLS[0] * CELLS[1]`` points, whatever the study's size).  Points that must be seen
(the front, so that every front point stays a dot one can click) are always kept.
:class:`Thinning` keeps the grid between updates: a new point is drawn when its cell is
empty, and the grid is rebuilt only when a point falls outside its range.

Example:
    >>> import numpy as np
    >>> x, y = np.random.rand(50_000), np.random.rand(50_000)
    >>> len(Thinning().update(x, y)) <= CELLS[0] * CELLS[1]
    True
"""

from __future__ import annotations

import numpy as np

#: Up to this many points a mark shows every one.
LIMIT = 5000
#: The grid beyond it: cells of about 4 x 4 pixels.
CELLS = (160, 100)


class Thinning:
    """The shown indices of one mark's points, updated as points are appended."""

    def __init__(self, *, limit: int = LIMIT, cells: tuple[int, int] = CELLS) -> None:
        self.limit, self.cells = limit, cells
        self.log_x = False
        self.reset()

    def reset(self) -> None:
        """Forget the grid (the coordinates changed: another axis, a log scale)."""
        self._grid: tuple[float, float, float, float] | None = None
        self._occupied: set[int] = set()
        self._shown: list[int] = []
        self._seen = 0  # points already placed

    def update(self, x: np.ndarray, y: np.ndarray, keep: np.ndarray | None = None) -> np.ndarray:
        """The indices to draw of the points ``x``, ``y`` (those appended since the last
        call are placed), ``keep`` included, in increasing order."""
        n = len(x)
        keep = np.zeros(0, dtype=int) if keep is None else np.asarray(keep, dtype=int)
        if n <= self.limit:
            self.reset()
            return np.arange(n)
        gx, gy = self._coordinates(x), np.asarray(y, dtype=float)
        fresh = slice(self._seen, n)
        if self._grid is None or not self._inside(gx[fresh], gy[fresh]):
            self._build(gx, gy)
        else:
            for i, cell in zip(range(self._seen, n), self._cell(gx[fresh], gy[fresh])):
                if cell >= 0 and cell not in self._occupied:
                    self._occupied.add(cell)
                    self._shown.append(i)
        self._seen = n
        return np.union1d(np.asarray(self._shown, dtype=int), keep)

    def _coordinates(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=float)
        if not self.log_x:
            return x
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(x > 0, np.log10(np.where(x > 0, x, 1.0)), np.nan)

    def _build(self, gx: np.ndarray, gy: np.ndarray) -> None:
        finite = np.isfinite(gx) & np.isfinite(gy)
        if not finite.any():
            self._grid, self._occupied, self._shown = (0.0, 1.0, 0.0, 1.0), set(), []
            return
        x0, x1, y0, y1 = gx[finite].min(), gx[finite].max(), gy[finite].min(), gy[finite].max()
        padx, pady = (x1 - x0) * 0.05 or 1e-9, (y1 - y0) * 0.05 or 1e-9  # room to grow before a rebuild
        self._grid = (x0 - padx, x1 + padx, y0 - pady, y1 + pady)
        cells = self._cell(gx, gy)
        found, first = np.unique(cells, return_index=True)
        first = first[found >= 0]
        self._occupied = set(found[found >= 0].tolist())
        self._shown = sorted(first.tolist())

    def _inside(self, gx: np.ndarray, gy: np.ndarray) -> bool:
        x0, x1, y0, y1 = self._grid
        finite = np.isfinite(gx) & np.isfinite(gy)
        return bool(np.all((gx[finite] >= x0) & (gx[finite] <= x1) & (gy[finite] >= y0) & (gy[finite] <= y1)))

    def _cell(self, gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
        """Each point's cell number, -1 for a point with a NaN (not drawn by the grid)."""
        x0, x1, y0, y1 = self._grid
        nx, ny = self.cells
        with np.errstate(invalid="ignore"):
            ix = np.clip(((gx - x0) / (x1 - x0) * nx).astype(float), 0, nx - 1)
            iy = np.clip(((gy - y0) / (y1 - y0) * ny).astype(float), 0, ny - 1)
        bad = ~(np.isfinite(ix) & np.isfinite(iy))
        cells = np.where(bad, -1, np.nan_to_num(ix).astype(int) * ny + np.nan_to_num(iy).astype(int))
        return cells.astype(int)
