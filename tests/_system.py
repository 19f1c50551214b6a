"""Tests that need a system component (PostgreSQL, Chromium, Fashion-MNIST): skipped
with the reason on a developer's machine without it, but a failure under CI
(``CI=true``), where ``scripts/test.sh`` installs them: a missing component must turn
the run red, never silently shrink it."""

from __future__ import annotations

import os

import pytest


def under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


def require_system(reason: str | None) -> None:
    """Nothing when ``reason`` is ``None``; else skip with it, or fail under CI."""
    if reason is None:
        return
    if under_ci():
        pytest.fail(f"{reason} -- under CI=true this must be installed (scripts/test.sh installs it)", pytrace=False)
    pytest.skip(reason)
