"""How ``Study.dashboard()`` reaches the notebook side without importing it.

``studies`` sits below ``widgets`` and never imports it: the package root, the top
layer, installs the opener (:func:`install_dashboard`), a function that imports
``slimtune.widgets`` when it is called; a study only calls what it was given.
"""

from __future__ import annotations

from typing import Any, Callable

_opener: Callable[..., Any] | None = None


def install_dashboard(opener: Callable[..., Any]) -> None:
    """Make ``opener(study, **options)`` what :func:`open_dashboard` calls."""
    global _opener
    _opener = opener


def open_dashboard(study: Any, **options: Any) -> Any:
    """The dashboard widget of ``study`` (the installed opener's)."""
    if _opener is None:
        raise RuntimeError("No dashboard is installed: import slimtune (its root installs the one of slimtune.widgets).")
    return _opener(study, **options)
