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
