"""How fast the dashboard opens on big studies, and what adding one trial costs.

Synthetic studies (no model is trained; :mod:`_synthetic`) are written into a real
SQLite database with bulk inserts: the rows a worker writes for each trial, checked
against trials written through ``Study.optimize`` by ``tests/test_widgets.py``.  The
study is created once through ``slimtune.Study.create_or_load`` (its baseline measured
once, then cached) and kept between runs.  The dashboard then opens it as a user would.

Measured per study size, each figure the median of ``--repeats`` rounds, each round
doing every step in turn (so that a change in the machine's load reaches all of them):

* read: ``study.trials()`` (every trial as a row: what ``slimtune show`` reads);
* open: ``StudyDashboard(study)`` returns (reading the trials, plot, table); the first
  open of the process apart (``first_open_s``: it also pays for first-use costs);
* ready: plus the selected model (chosen in the background);
* add: one trial reported by a search started from the dashboard (``add_rows``);
* poll: one watcher poll that finds one trial another worker has just written.

Bytes (``*_kb``) are what the widgets send to the browser, counted with a comm that
records every message (what a kernel would put on the wire, before compression).
``load`` is the 1-minute load average before each round; ``*_cpu_s`` the process's CPU
time (all its threads) beside the wall time of open and ready: on a loaded machine the
wall time also counts the waits for a core.

    PYTHONPATH=. python benchmarks/widgets.py [--sizes 5000 50000] [--repeats 3] [--json] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import _synthetic  # noqa: E402  (benchmarks/_synthetic.py)


class CountingComm:
    """Stands in for a kernel comm; counts what the widgets would send."""

    sent_bytes = 0
    messages = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        from comm.base_comm import BaseComm

        class _Comm(BaseComm):
            def publish_msg(self, msg_type, data=None, metadata=None, buffers=None, **keys):  # noqa: ANN001
                CountingComm.messages += 1
                CountingComm.sent_bytes += len(json.dumps(data, default=str)) + sum(len(memoryview(b).cast("B"))
                                                                                    for b in (buffers or []))

        self._comm = _Comm(*args, **kwargs)

    @classmethod
    def install(cls) -> None:
        import comm

        comm.create_comm = lambda *a, **k: cls(*a, **k)._comm

    @classmethod
    def reset(cls) -> None:
        cls.sent_bytes = 0
        cls.messages = 0


def synthetic_study(storage: str, name: str, n: int, *, seed: int = 0) -> Any:
    """A slimtune study of at least ``n`` synthetic trials in ``storage`` (kept)."""
    return _synthetic.synthetic_study(storage, name, n, seed=seed)


def add_one(study: Any, seed: int = 1) -> None:
    """Another worker finishing one trial (its rows written to the database)."""
    import random

    number = _synthetic.n_trials(study)
    trial = _synthetic.draw(number, study.baseline.to_dict(), seed=seed)
    trial.params = _synthetic.draw_params(_synthetic.distributions(study.space), random.Random(seed + number))
    _synthetic.write_in_bulk(study, [trial])


def measure(study: Any, repeats: int) -> dict[str, Any]:
    from slimtune.widgets import StudyDashboard

    got: dict[str, list[float]] = {k: [] for k in ("read_s", "open_s", "ready_s", "open_cpu_s", "ready_cpu_s",
                                                   "open_kb", "add_ms", "add_kb", "poll_s", "poll_kb", "load")}
    n = 0
    for i in range(repeats):
        got["load"].append(os.getloadavg()[0])
        t = time.perf_counter()
        rows = study.trials()
        got["read_s"].append(time.perf_counter() - t)
        n = len(rows)
        template = next(r for r in rows if r["state"] == "COMPLETE")
        CountingComm.reset()
        t, cpu = time.perf_counter(), time.process_time()
        dash = StudyDashboard(study, watch=False)
        got["open_s"].append(time.perf_counter() - t)
        got["open_cpu_s"].append(time.process_time() - cpu)
        dash.wait()  # the selected model, chosen in the background
        got["ready_s"].append(time.perf_counter() - t)
        got["ready_cpu_s"].append(time.process_time() - cpu)
        got["open_kb"].append(CountingComm.sent_bytes / 1024)
        # one trial reported by a search started from the dashboard (the callback path)
        row = dict(template, trial=10_000_000 + i, latency_ms=template["latency_ms"] * 0.5)
        CountingComm.reset()
        t = time.perf_counter()
        dash.add_rows([row])
        got["add_ms"].append(1000 * (time.perf_counter() - t))
        got["add_kb"].append(CountingComm.sent_bytes / 1024)
        # one trial written by another worker, found by the watcher's poll
        add_one(study, seed=100 + i)
        CountingComm.reset()
        t = time.perf_counter()
        added = dash.refresh()
        got["poll_s"].append(time.perf_counter() - t)
        got["poll_kb"].append(CountingComm.sent_bytes / 1024)
        assert added == 1, added
        dash.close()
    out: dict[str, Any] = {"trials": n}
    out.update({k: round(statistics.median(v), 4) for k, v in got.items() if k != "load"})
    out["first_open_s"] = round(got["open_s"][0], 4)  # the first in this process (imports, statement caches)
    out["load"] = [round(v, 1) for v in got["load"]]
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 5000])
    parser.add_argument("--dir", default=None,
                        help="where the SQLite file goes (default: $TMPDIR/slimtune-widgets-bench, reused)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="one JSON object per size, nothing else")
    args = parser.parse_args(argv)
    CountingComm.install()
    os.environ.setdefault("SLIMTUNE_CACHE_DIR", str(Path(tempfile.gettempdir()) / "slimtune-bench-cache"))
    directory = Path(args.dir or Path(tempfile.gettempdir()) / "slimtune-widgets-bench")
    directory.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{directory / 'bench.db'}"
    say = (lambda *a, **k: None) if args.json else print
    say(f"storage {storage}")
    say(f"{'trials':>7} {'setup s':>8} {'read s':>7} {'open s':>7} {'ready s':>8} {'open KB':>8} {'add ms':>7} "
        f"{'add KB':>7} {'poll s':>7} {'poll KB':>8}  load")
    import warnings

    for n in args.sizes:
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna's notes on creating a study
            study = synthetic_study(storage, f"bench-{n}", n)
        setup = time.perf_counter() - t
        r = measure(study, args.repeats)
        r["setup_s"] = round(setup, 2)
        if args.json:
            print(json.dumps(r), flush=True)
        else:
            print(f"{r['trials']:>7} {setup:>8.1f} {r['read_s']:>7.2f} {r['open_s']:>7.2f} {r['ready_s']:>8.2f} "
                  f"{r['open_kb']:>8.0f} {r['add_ms']:>7.1f} {r['add_kb']:>7.1f} {r['poll_s']:>7.3f} "
                  f"{r['poll_kb']:>8.1f}  {' '.join(map(str, r['load']))}", flush=True)
        study.close()
    say("setup = create or load the study, writing its synthetic trials in bulk the first time (kept); "
        "read = study.trials(); open = StudyDashboard(study) returns; ready = plus the selected model (chosen in "
        "the background); KB = bytes sent to the browser; add = one trial reported by a search started in the "
        "dashboard; poll = one watch refresh that finds one trial another worker wrote; load = 1-min load average "
        "before each round (--json also gives the CPU time of open and ready).")


if __name__ == "__main__":
    main()
