"""The words and units that the CLI and the notebook both show, defined once.

Example:
    >>> STATE_WORDS["PRUNED"], SIZE_UNIT
    ('stopped', 'KiB')
"""

from __future__ import annotations

#: Optuna's trial states as slimtune shows them (a PRUNED trial was stopped early).
STATE_WORDS = {"COMPLETE": "complete", "PRUNED": "stopped", "FAIL": "failed", "RUNNING": "running", "WAITING": "waiting"}

#: The same where a phrase fits (details, hover text, messages): an early-stopped trial
#: reads "stopped early", never Optuna's "pruned" (which is pruning's word here).
STATE_PHRASES = {**STATE_WORDS, "PRUNED": "stopped early"}

#: Sizes are shown in KiB (1 KiB = 1024 bytes) everywhere.
SIZE_UNIT = "KiB"

#: Column titles of a study list (``slimtune studies``, ``%slimtune studies``) by row key.
STUDY_COLUMNS = {"name": "study", "task": "task", "objectives": "objectives", "trials": "trials",
                 "complete": "complete", "pruned": "stopped", "failed": "failed", "created_at": "created"}


def created_text(value: object) -> str:
    """A study's creation time to the minute, ``2026-11-30 20:41`` (UTC)."""
    return "" if value is None else str(value)[:16].replace("T", " ")


def state_word(state: object) -> str:
    """``"PRUNED"`` -> ``"stopped"``; unknown states in lower case."""
    return STATE_WORDS.get(str(state).upper(), str(state).lower())


def state_phrase(state: object) -> str:
    """``"PRUNED"`` -> ``"stopped early"``; other states as :func:`state_word`."""
    return STATE_PHRASES.get(str(state).upper(), str(state).lower())
