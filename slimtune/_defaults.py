"""Where slimtune keeps things unless told otherwise: one place for the defaults that
the CLI, the notebook magics and the study database share.  Imports nothing, so the
CLI can read it without loading torch."""

from __future__ import annotations

#: The study database when no ``--storage`` / ``storage=`` is given (embedded SQLite in
#: the working directory).
DEFAULT_STORAGE = "sqlite:///slimtune.db"
#: An environment variable that replaces :data:`DEFAULT_STORAGE` (keeps a password off
#: the command line, where process listings show it).
STORAGE_ENV = "SLIMTUNE_STORAGE"
