"""The ``slimtune`` command: a thin layer over the Python API.

:func:`main` is the entry point (``slimtune = "slimtune.cli:main"``; ``python -m
slimtune.cli`` runs it too, as the workers of ``run --workers`` do).  Its modules:
the group (:mod:`~slimtune.cli._main`), the commands that train
(:mod:`~slimtune.cli._search_commands`) and those that read studies
(:mod:`~slimtune.cli._study_commands`), options (:mod:`~slimtune.cli._options`), bad-input
reporting (:mod:`~slimtune.cli._user_errors`), what is printed
(:mod:`~slimtune.cli._reports`), stop signals and worker processes
(:mod:`~slimtune.cli._workers`).

Heavy modules (torch, the spaces, the search) are imported inside the commands that
need them, so ``slimtune --help``, ``studies`` and ``show`` start in well under a
second (``benchmarks/startup.py`` measures it).
"""

from slimtune.cli._main import main
from slimtune.cli import _search_commands, _study_commands  # noqa: F401,E402  (they register the commands)

__all__ = ["main"]
