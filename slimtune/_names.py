"""Suggesting a known name for a misspelt one, in the one wording every error message uses.

Example:
    >>> close_matches("digit", ["digits", "fashion-mnist"])
    " Did you mean 'digits'?"
"""

from __future__ import annotations

import difflib


def close_matches(name: str, candidates: list[str]) -> str:
    """A ' Did you mean ...?' suffix listing close matches, or the known names."""
    matches = difflib.get_close_matches(name, candidates, n=3, cutoff=0.5)
    if matches:
        return " Did you mean " + " or ".join(repr(m) for m in matches) + "?"
    shown = ", ".join(sorted(candidates)[:12])
    more = "" if len(candidates) <= 12 else f", ... ({len(candidates)} in all)"
    return f" Known: {shown}{more}."


def quoted(text: object, limit: int = 60) -> str:
    """``repr(text)``, cut after ``limit`` characters with the full length said (a
    10,000-character name is not echoed in full)."""
    if not isinstance(text, str) or len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text):,} characters)"
