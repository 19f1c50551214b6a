"""slimtune's version, in a module that imports nothing: the package root and the
study database both read it (``studies/`` never imports the package root)."""

from __future__ import annotations

__version__ = "0.1.0"
