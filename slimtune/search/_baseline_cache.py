"""Where trained baselines are kept: ``$SLIMTUNE_CACHE_DIR/baselines`` (default
``~/.cache/slimtune/baselines``), one ``TASK-FINGERPRINT-seedN.pt`` file per task and
seed (tensors only, read with ``weights_only=True``).

No torch here: ``slimtune cache list|clear`` starts in a moment.

Example:
    >>> [f.name for f in cached_baselines()]          # doctest: +SKIP
    ['digits-3f2a9c0e1b7d4a55-seed0.pt']
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

CACHE_ENV = "SLIMTUNE_CACHE_DIR"
_NAME = re.compile(r"^(?P<task>.+)-(?P<fingerprint>[0-9a-f]{16})-seed(?P<seed>-?\d+)\.pt$")


def cache_root() -> Path:
    """``$SLIMTUNE_CACHE_DIR`` or ``~/.cache/slimtune`` (not created)."""
    return Path(os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "slimtune"))


def baselines_dir(*, create: bool = False) -> Path:
    """The folder of the cached baselines (created only when ``create``)."""
    path = cache_root() / "baselines"
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass(frozen=True)
class CachedBaseline:
    """One cached baseline file."""

    path: Path
    task: str
    fingerprint: str
    seed: int
    size_bytes: int
    modified: datetime

    @property
    def name(self) -> str:
        return self.path.name


def cached_baselines(task: str | None = None) -> list[CachedBaseline]:
    """The cached baselines (of ``task`` only, when given), by file name."""
    folder = baselines_dir()
    if not folder.is_dir():
        return []
    out = []
    for path in sorted(folder.glob("*.pt")):
        match = _NAME.match(path.name)
        if match is None or (task is not None and match["task"] != task):
            continue
        stat = path.stat()
        out.append(CachedBaseline(path, match["task"], match["fingerprint"], int(match["seed"]), stat.st_size,
                                  datetime.fromtimestamp(stat.st_mtime, tz=timezone.utc)))
    return out


def clear_baselines(task: str | None = None) -> list[CachedBaseline]:
    """Delete the cached baselines (of ``task`` only, when given); return what was deleted.
    The next run or eval retrains them."""
    removed = []
    for item in cached_baselines(task):
        item.path.unlink(missing_ok=True)
        removed.append(item)
    return removed
