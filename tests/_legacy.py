"""Studies as an older slimtune left them, for tests of what must still open."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def rename_study(path: "str | Path", old: str, new: str) -> None:
    """Rename study ``old`` to ``new`` in a SQLite study database, in slimtune's tables
    and Optuna's: how a study made before names were restricted (``new`` may hold
    characters a new study may not) looks today."""
    with sqlite3.connect(path) as conn:
        for table in ("slimtune_studies", "slimtune_candidates", "studies"):
            conn.execute(f"update {table} set study_name = ? where study_name = ?", (new, old))
    conn.close()
