"""A real study shared by the widget tests (trained once per test session).

``tests/test_widgets.py`` and ``tests/test_browser.py`` both need a study of at least
ten real trials in a real SQLite file; creating one takes about a minute, so the first
caller creates it and later callers (in the same pytest process) reuse it.

The study name holds HTML on purpose: every place it reaches must escape it.  New
studies take safe names only, so it is made under a safe name and renamed, as a study
made by an older slimtune.
"""

from __future__ import annotations

import os
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests._legacy import rename_study

STUDY_NAME = "widgets <i>test</i> & 'co'"
N_TRIALS = 10
SETTINGS = {"epochs": 1, "finetune_epochs": 1, "latency_repeats": 30}  # one epoch everywhere: fast, still real

_lock = threading.Lock()
_made: "RealStudy | None" = None


@dataclass(frozen=True)
class RealStudy:
    name: str
    storage: str
    path: Path

    def load(self):
        from slimtune.studies import Study

        return Study.load(self.name, storage=self.storage)


def real_study(tmp_path_factory: pytest.TempPathFactory) -> RealStudy:
    """The session's study of ``N_TRIALS`` real trials on ``digits`` (1 epoch)."""
    global _made
    with _lock:
        if _made is None:
            from slimtune.studies import Study

            # SLIMTUNE_TEST_STUDY_DIR keeps the study between runs (development only)
            keep = os.environ.get("SLIMTUNE_TEST_STUDY_DIR")
            directory = Path(keep) if keep else tmp_path_factory.getbasetemp() / "widgets-study"
            directory.mkdir(parents=True, exist_ok=True)
            path = directory / "study.db"
            storage = f"sqlite:///{path}"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna's heartbeat notice, once per trial
                if not path.exists():  # new studies take safe names only: rename it as an old one
                    # no early stopping: a rejection before training is a point at once, and the
                    # live tests count the points a Start adds trial by trial
                    Study.create_or_load("widgets-test", storage=storage, task="digits", settings=SETTINGS,
                                         seed=0, early_stopping=False).close()
                    rename_study(path, "widgets-test", STUDY_NAME)
                study = Study.create_or_load(STUDY_NAME, storage=storage, task="digits", settings=SETTINGS, seed=0,
                                             early_stopping=False)
                done = len(study.trials(states=("COMPLETE", "PRUNED", "FAIL")))
                if done < N_TRIALS:
                    study.optimize(n_trials=N_TRIALS - done, progress=False)
            study.close()
            _made = RealStudy(STUDY_NAME, storage, path)
        return _made


def isolated_env(tmp: Path) -> dict[str, str]:
    """Environment for a child Jupyter process: its own HOME and Jupyter/IPython
    dirs (nothing read from or written to the user's), this checkout importable."""
    env = dict(os.environ)
    for key, sub in (("HOME", "home"), ("JUPYTER_CONFIG_DIR", "jupyter-config"), ("JUPYTER_DATA_DIR", "jupyter-data"),
                     ("JUPYTER_RUNTIME_DIR", "jupyter-runtime"), ("IPYTHONDIR", "ipython"), ("MPLCONFIGDIR", "mpl")):
        (tmp / sub).mkdir(parents=True, exist_ok=True)
        env[key] = str(tmp / sub)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([root, *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
    env["PYTHONWARNINGS"] = "ignore"
    return env
