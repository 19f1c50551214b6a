"""``%load_ext slimtune``: the ``%slimtune`` line magic.

    %slimtune studies [--storage URL]
    %slimtune show NAME [--storage URL] [--objective latency|size|artifact|macs] [--no-watch]
    %slimtune run NAME --task T --trials N [--storage URL] [--timeout S] [--epochs E]

``run`` creates (or resumes) the study, starts the search in a background thread and
returns its dashboard at once.  Storage is ``--storage``, else ``$SLIMTUNE_STORAGE``
(which keeps a password out of the notebook), else ``sqlite:///slimtune.db``.  A
storage URL is shown with its password masked.  Optuna's info logs ("A new study
created ...") are silenced as in the CLI; add ``--verbose`` to see them.  Words and
units are the CLI's (``slimtune._vocabulary``).
"""

from __future__ import annotations

import argparse
import html
import math
import shlex
from typing import Any, Sequence

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class

from slimtune._vocabulary import STUDY_COLUMNS, created_text

from slimtune._defaults import DEFAULT_STORAGE  # noqa: E402


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError (shown as one line) instead of exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"%slimtune: {message}\n{self.format_usage().strip()}")

    def exit(self, status: int = 0, message: str | None = None) -> None:  # type: ignore[override]
        if message:
            raise UsageError(message.strip())
        raise _HelpShown()


class _HelpShown(Exception):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="%slimtune", description="slimtune studies in the notebook.")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser, metavar="{studies,show,run}")
    sub.required = True

    def storage(p: argparse.ArgumentParser) -> None:
        p.add_argument("--storage", default=None,
                       help=f"SQLAlchemy URL (default $SLIMTUNE_STORAGE, else {DEFAULT_STORAGE})")
        p.add_argument("--verbose", action="store_true", help="show Optuna's info logs")

    p = sub.add_parser("studies", help="list the studies in a storage")
    storage(p)
    p = sub.add_parser("show", help="the dashboard of a study")
    p.add_argument("name")
    storage(p)
    p.add_argument("--objective", default="latency", choices=["latency", "size", "artifact", "macs"])
    p.add_argument("--no-watch", action="store_true", help="do not poll the database for new trials")
    p = sub.add_parser("run", help="start a search in the background and show its dashboard")
    p.add_argument("name")
    p.add_argument("--task", required=True, help="built-in task (digits, fashion-mnist) or package.module:callable")
    p.add_argument("--trials", type=int, required=True, help="number of trials to run")
    storage(p)
    p.add_argument("--timeout", type=float, default=None, help="stop starting trials after this many seconds")
    p.add_argument("--epochs", type=int, default=None, help="distillation epochs per candidate")
    p.add_argument("--objective", default="latency", choices=["latency", "size", "artifact", "macs"])
    return parser


def default_storage() -> str:
    """``$SLIMTUNE_STORAGE``, else ``sqlite:///slimtune.db``."""
    from slimtune.studies._database import default_storage as studies_default

    return studies_default()


class StudyList:
    """``%slimtune studies``: a list of study summaries that renders as a table."""

    COLUMNS = ("name", "task", "objectives", "trials", "complete", "pruned", "failed", "created_at")

    def __init__(self, studies: Sequence[Any], storage: str) -> None:
        from slimtune.studies._database import mask_url

        self.studies = [s if isinstance(s, dict) else {"name": getattr(s, "name", str(s))} for s in studies]
        self.storage = mask_url(storage)  # what is shown: never the password

    def _columns(self) -> list[str]:
        keys = [c for c in self.COLUMNS if any(c in s for s in self.studies)]
        return keys or sorted({k for s in self.studies for k in s})

    def __len__(self) -> int:
        return len(self.studies)

    def __iter__(self):
        return iter(self.studies)

    def __repr__(self) -> str:
        if not self.studies:
            return f"No studies in {self.storage}."
        cols = self._columns()
        lines = ["  ".join(STUDY_COLUMNS.get(c, c) for c in cols)]
        lines += ["  ".join(_cell(s.get(c), c) for c in cols) for s in self.studies]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        esc = html.escape
        if not self.studies:
            return f"<i>No studies in {esc(self.storage)}.</i>"
        cols = self._columns()
        head = "".join(f"<th>{esc(STUDY_COLUMNS.get(c, c))}</th>" for c in cols)
        body = "".join("<tr>" + "".join(f"<td>{esc(_cell(s.get(c), c))}</td>" for c in cols) + "</tr>"
                       for s in self.studies)
        return (f"<div><b>{len(self.studies)} studies</b> in <code>{esc(self.storage)}</code>"
                f"<table><tr>{head}</tr>{body}</table></div>")


def _optuna_logs(*, verbose: bool) -> None:
    """Optuna's info logs only with ``--verbose``, as in the CLI."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.INFO if verbose else optuna.logging.WARNING)


def _cell(value: Any, column: str = "") -> str:
    if column == "created_at":
        return created_text(value)
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    return str(value)


@magics_class
class SlimtuneMagics(Magics):
    """The ``%slimtune`` magic (registered by ``%load_ext slimtune``)."""

    def __init__(self, shell: Any = None) -> None:
        super().__init__(shell)
        self.dashboards: dict[tuple[str, str], Any] = {}  # (storage, name) -> last dashboard

    @line_magic
    def slimtune(self, line: str) -> Any:
        """%slimtune studies | show NAME | run NAME --task T --trials N  [--storage URL]"""
        try:
            args = build_parser().parse_args(shlex.split(line))
        except _HelpShown:
            print(build_parser().format_help())
            return None
        except ValueError as exc:  # unbalanced quotes
            raise UsageError(f"%slimtune: {exc}") from None
        storage = args.storage or default_storage()
        _optuna_logs(verbose=args.verbose)
        if args.command == "studies":
            return self.studies(storage)
        if args.command == "show":
            return self.show(args.name, storage, objective=args.objective, watch=not args.no_watch)
        return self.run(args.name, storage, task=args.task, n_trials=args.trials, timeout=args.timeout,
                        epochs=args.epochs, objective=args.objective)

    def studies(self, storage: str) -> StudyList:
        from slimtune.studies import list_studies

        return StudyList(list_studies(storage), storage)

    def show(self, name: str, storage: str, *, objective: str = "latency", watch: bool = True) -> Any:
        from slimtune.studies import Study
        from slimtune.widgets._dashboard import StudyDashboard

        study = Study.load(name, storage=storage)
        return self._keep(storage, name, StudyDashboard(study, objective=objective, watch=watch))

    def run(self, name: str, storage: str, *, task: str, n_trials: int, timeout: float | None = None,
            epochs: int | None = None, objective: str = "latency") -> Any:
        from slimtune.studies import Study
        from slimtune.widgets._dashboard import StudyDashboard

        if n_trials < 1:
            raise UsageError(f"%slimtune run: --trials must be at least 1, but got {n_trials}.")
        if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
            raise UsageError(f"%slimtune run: --timeout must be a finite number of seconds above 0, but got {timeout}.")
        kwargs: dict[str, Any] = {"storage": storage, "task": task}
        if epochs is not None:
            kwargs["settings"] = {"epochs": epochs}
        study = Study.create_or_load(name, **kwargs)
        dashboard = StudyDashboard(study, objective=objective, watch=False, n_trials=n_trials)
        dashboard.start(n_trials, timeout=timeout)
        return self._keep(storage, name, dashboard)

    def _keep(self, storage: str, name: str, dashboard: Any) -> Any:
        old = self.dashboards.get((storage, name))
        if old is not None and old is not dashboard and not old.running:
            old.watch(False)  # one poller per study is enough
        self.dashboards[(storage, name)] = dashboard
        return dashboard


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext slimtune``."""
    ipython.register_magics(SlimtuneMagics)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext slimtune``: stop the dashboards' watchers."""
    magics = ipython.magics_manager.registry.get("SlimtuneMagics")
    if magics is not None:
        for dashboard in magics.dashboards.values():
            dashboard.watch(False)
        ipython.magics_manager.registry.pop("SlimtuneMagics", None)
        ipython.magics_manager.magics["line"].pop("slimtune", None)
