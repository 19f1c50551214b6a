"""How fast the dashboard opens on big studies, and what adding one trial costs.

Synthetic studies (no model is trained) are written into a real SQLite database
through the public APIs: ``slimtune.Study.create_or_load`` for the study (its
baseline is measured once, then cached), Optuna's ``create_trial`` / ``add_trials``
for the trials, with the same objective values and user attributes slimtune's runner
writes.  The dashboard then opens them exactly as a user would.

Measured per study size:

* open: ``StudyDashboard(study)`` (reading the trials, building plot, table, select);
* of which ``study.trials()`` alone (the database read);
* add one trial: the widget update when a search started from the dashboard reports
  a trial (``add_rows``), with the bytes it sends to the browser;
* watch refresh: one poll that finds one new trial written by another process.

Bytes are counted with a comm that records every message the widgets send (what a
kernel would put on the wire, before compression).

    PYTHONPATH=. python benchmarks/widgets.py [--sizes 100 1000 5000] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


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


def synthetic_trials(study: Any, n: int, *, start: int = 0, seed: int = 0) -> list[Any]:
    """``n`` plausible finished trials (accuracy falls as latency falls; ~8% pruned,
    ~2% failed) with the space's real parameters, as Optuna FrozenTrials."""
    import optuna
    from optuna.trial import TrialState, create_trial

    from slimtune.search._backends._interface import distribution_of

    rng = random.Random(seed + start)
    params_spec = [(p, distribution_of(p)) for p in study.space.searched]
    base = study.baseline
    out = []
    for _ in range(n):
        params, dists = {}, {}
        for p, dist in params_spec:
            if isinstance(dist, optuna.distributions.CategoricalDistribution):
                params[p.name] = rng.choice(list(dist.choices))
            elif isinstance(dist, optuna.distributions.IntDistribution):
                params[p.name] = rng.randint(dist.low, dist.high)
            else:
                params[p.name] = rng.uniform(dist.low, dist.high)
            dists[p.name] = dist
        squeeze = rng.betavariate(2, 2)  # 0 = like the baseline, 1 = heavily compressed
        latency = base.latency_ms * (1.15 - 0.8 * squeeze) * rng.uniform(0.9, 1.1)
        accuracy = max(0.1, base.accuracy - 0.25 * squeeze ** 3 - abs(rng.gauss(0, 0.01)))
        size = int(base.size_bytes * (1.05 - 0.9 * squeeze))
        macs = int(base.macs * (1.1 - 0.8 * squeeze))
        # the attributes the rows need (each one is a row in Optuna's tables: keep few)
        attrs = {"latency_ms": latency, "size_bytes": size, "macs": macs}
        roll = rng.random()
        if roll < 0.08:
            attrs.update(stopped_reason="cannot reach the frontier", val_accuracy=accuracy - 0.05)
            out.append(create_trial(state=TrialState.PRUNED, params=params, distributions=dists, user_attrs=attrs))
        elif roll < 0.10:
            attrs = {"error": "RuntimeError: synthetic failure"}
            out.append(create_trial(state=TrialState.FAIL, params=params, distributions=dists, user_attrs=attrs))
        else:
            attrs["accuracy"] = accuracy
            values = [{"accuracy": accuracy, "latency_ms": latency, "size_bytes": size, "macs": macs}[o]
                      for o in study.objectives]
            out.append(create_trial(state=TrialState.COMPLETE, values=values, params=params, distributions=dists,
                                    user_attrs=attrs))
    return out


def synthetic_study(storage: str, name: str, n: int, *, seed: int = 0) -> Any:
    """A slimtune study of ``n`` synthetic trials in ``storage`` (created once)."""
    from slimtune import Study

    study = Study.create_or_load(name, storage=storage, task="digits",
                                 settings={"epochs": 1, "latency_repeats": 20}, seed=seed)
    have = len(study.optuna_study.get_trials(deepcopy=False))
    if have < n:
        fast_writer(study, storage).add_trials(synthetic_trials(study, n - have, start=have, seed=seed))
    return study


def fast_writer(study: Any, storage_url: str) -> Any:
    """The study's Optuna study on a storage whose SQLite connections skip fsync
    (``PRAGMA synchronous=OFF``): a synthetic fixture needs no durability, and this
    halves the time Optuna's ``add_trials`` takes."""
    import optuna
    from sqlalchemy import event

    storage = optuna.storages.RDBStorage(storage_url)
    if storage.engine.dialect.name == "sqlite":
        def no_sync(connection: Any, _record: Any) -> None:
            cursor = connection.cursor()
            cursor.execute("PRAGMA synchronous=OFF")
            cursor.close()

        event.listen(storage.engine, "connect", no_sync)
        storage.engine.dispose()
    return optuna.load_study(study_name=study.name, storage=storage)


def add_one(study: Any, seed: int = 1) -> None:
    """Another process finishing one trial (written straight to the database)."""
    have = len(study.optuna_study.get_trials(deepcopy=False))
    study.optuna_study.add_trials(synthetic_trials(study, 1, start=have, seed=seed))


def measure(study: Any, repeats: int) -> dict[str, float]:
    from slimtune.widgets import StudyDashboard

    reads = []
    for _ in range(repeats):
        t = time.perf_counter()
        rows = study.trials()
        reads.append(time.perf_counter() - t)
    opens, readies, sent = [], [], []
    for _ in range(repeats):
        CountingComm.reset()
        t = time.perf_counter()
        dash = StudyDashboard(study, watch=False)
        opens.append(time.perf_counter() - t)
        dash.wait()  # the selected model is asked of study.select in the background
        readies.append(time.perf_counter() - t)
        sent.append(CountingComm.sent_bytes)
        dash.close()
    dash = StudyDashboard(study, watch=False)
    # one trial reported by a search started from the dashboard (the callback path)
    template = next(r for r in rows if r["state"] == "COMPLETE")
    adds, add_bytes = [], []
    for i in range(repeats):
        row = dict(template, trial=10_000_000 + i, latency_ms=template["latency_ms"] * 0.5)
        CountingComm.reset()
        t = time.perf_counter()
        dash.add_rows([row])
        adds.append(time.perf_counter() - t)
        add_bytes.append(CountingComm.sent_bytes)
    # one trial written by another process, found by the watcher's poll
    polls = []
    for i in range(repeats):
        add_one(study, seed=100 + i)
        t = time.perf_counter()
        added = dash.refresh()
        polls.append(time.perf_counter() - t)
        assert added == 1, added
    dash.close()
    return {"trials": len(rows), "read_s": statistics.median(reads), "open_s": statistics.median(opens),
            "ready_s": statistics.median(readies),
            "open_kb": statistics.median(sent) / 1024, "add_ms": 1000 * statistics.median(adds),
            "add_kb": statistics.median(add_bytes) / 1024, "poll_s": statistics.median(polls)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 5000])
    parser.add_argument("--dir", default=None,
                        help="where the SQLite file goes (default: $TMPDIR/slimtune-widgets-bench, reused)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    CountingComm.install()
    os.environ.setdefault("SLIMTUNE_CACHE_DIR", str(Path(tempfile.gettempdir()) / "slimtune-bench-cache"))
    # kept between runs: writing 5,000 trials through Optuna takes a minute or two
    directory = Path(args.dir or Path(tempfile.gettempdir()) / "slimtune-widgets-bench")
    directory.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{directory / 'bench.db'}"
    print(f"storage {storage}")
    print(f"{'trials':>7} {'setup s':>8} {'read s':>7} {'open s':>7} {'ready s':>8} {'open KB':>8} {'add ms':>7} "
          f"{'add KB':>7} {'poll s':>7}")
    for n in args.sizes:
        t = time.perf_counter()
        study = synthetic_study(storage, f"bench-{n}", n)
        write = time.perf_counter() - t
        r = measure(study, args.repeats)
        print(f"{r['trials']:>7} {write:>8.1f} {r['read_s']:>7.2f} {r['open_s']:>7.2f} {r['ready_s']:>8.2f} "
              f"{r['open_kb']:>8.0f} {r['add_ms']:>7.1f} {r['add_kb']:>7.1f} {r['poll_s']:>7.2f}", flush=True)
        study.close()
    print("setup = create or load the study, writing its synthetic trials the first time (reused later); read = study.trials(); open = StudyDashboard(study) "
          "returns (incl. the read); ready = plus the selected model (study.select, in the background); "
          "KB = bytes sent to the browser; add = one trial reported by a search started in the dashboard; "
          "poll = one watch refresh that finds one new trial written by another process.")


if __name__ == "__main__":
    main()
