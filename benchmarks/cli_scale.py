"""How fast ``slimtune show`` and ``slimtune select`` answer on big studies, and that
they print what the slow path prints.

The studies are ``benchmarks/widgets.py``'s: synthetic trials (no model trained;
:mod:`_synthetic`) written with bulk inserts into a real SQLite file, created once and
kept.  Each command runs as a user runs it, ``python -m slimtune.cli ...`` in a fresh
process: its wall time from start to exit (imports included) and the CPU time of that
process (``resource.getrusage(RUSAGE_CHILDREN)``; on a loaded machine the wall time also
counts the waits for a core).

The slow path is the same command with ``Study.overview()`` built from
``Study.trials()`` (every trial read in full, as ``show`` and ``select`` read before
they read figures in bulk); ``same`` says whether both printed the same bytes (stdout
and stderr) and exited alike.  It runs at every size up to ``--compare-up-to``.

    PYTHONPATH=. python benchmarks/cli_scale.py [--sizes 2000 50000] [--repeats 3] [--json] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import _synthetic  # noqa: E402  (benchmarks/_synthetic.py)

ROOT = Path(__file__).resolve().parents[1]


def slow_cli(argv: list[str]) -> None:
    """``slimtune ARGV`` with every trial read in full (the slow path, see the module)."""
    from slimtune.cli import main
    from slimtune.studies._overview import Overview
    from slimtune.studies._reading import Reading

    Reading.overview = lambda self: Overview.of_rows(self, self.trials())  # type: ignore[method-assign]
    main.main(argv, prog_name="slimtune")


def run(argv: list[str], *, slow: bool = False) -> dict[str, Any]:
    """One command in a fresh process: wall and CPU seconds, exit code, output."""
    command = ([sys.executable, str(Path(__file__).resolve()), "--slow-cli", *argv] if slow
               else [sys.executable, "-m", "slimtune.cli", *argv])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    done = subprocess.run(command, capture_output=True, env=env, check=False)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu, "rc": done.returncode, "out": done.stdout, "err": done.stderr}


def commands(study: Any, storage: str) -> dict[str, list[str]]:
    """The commands timed: ``show --pareto``, the whole ``show`` table, and ``select``
    with a latency limit, with both limits, and with one nothing meets."""
    base = study.baseline
    name = study.name
    latency, accuracy = f"{base.latency_ms * 0.6:.4g}", f"{base.accuracy - 0.05:.4f}"
    return {
        "show_pareto": ["show", name, "--pareto", "--storage", storage],
        "show": ["show", name, "--storage", storage],
        "select": ["select", name, "--max-latency-ms", latency, "--storage", storage],
        "select_both": ["select", name, "--max-latency-ms", latency, "--min-accuracy", accuracy, "--storage", storage],
        "select_none": ["select", name, "--max-latency-ms", f"{base.latency_ms * 0.01:.4g}", "--storage", storage],
    }


def measure(study: Any, storage: str, repeats: int, *, compare: bool, skip: set[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"trials": len(study.overview().points)}
    for key, argv in commands(study, storage).items():
        if key in skip:
            continue
        runs = [run(argv) for _ in range(repeats)]
        out[f"{key}_s"] = round(statistics.median(r["wall_s"] for r in runs), 3)
        out[f"{key}_cpu_s"] = round(statistics.median(r["cpu_s"] for r in runs), 3)
        out[f"{key}_lines"] = runs[0]["out"].count(b"\n")
        if compare:
            slow = run(argv, slow=True)
            out[f"{key}_slow_s"] = round(slow["wall_s"], 3)
            out[f"{key}_slow_cpu_s"] = round(slow["cpu_s"], 3)
            out[f"{key}_same"] = all((r["rc"], r["out"], r["err"]) == (slow["rc"], slow["out"], slow["err"])
                                     for r in runs)
    out["load"] = round(os.getloadavg()[0], 1)
    return out


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--slow-cli"]:
        slow_cli(argv[1:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 50000])
    parser.add_argument("--dir", default=None,
                        help="where the SQLite file goes (default: $TMPDIR/slimtune-widgets-bench, reused)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compare-up-to", type=int, default=2000,
                        help="run the slow path too (and compare outputs) at sizes up to this")
    parser.add_argument("--skip", nargs="*", default=[], help="commands not timed (e.g. show: the whole table)")
    parser.add_argument("--json", action="store_true", help="one JSON object per size, nothing else")
    args = parser.parse_args(argv)
    os.environ.setdefault("SLIMTUNE_CACHE_DIR", str(Path(tempfile.gettempdir()) / "slimtune-bench-cache"))
    directory = Path(args.dir or Path(tempfile.gettempdir()) / "slimtune-widgets-bench")
    directory.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{directory / 'bench.db'}"
    import warnings

    for n in args.sizes:
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna's notes on creating a study
            study = _synthetic.synthetic_study(storage, f"bench-{n}", n)
        setup = time.perf_counter() - t
        r = measure(study, storage, args.repeats, compare=n <= args.compare_up_to, skip=set(args.skip))
        r["setup_s"] = round(setup, 2)
        study.close()
        if args.json:
            print(json.dumps(r), flush=True)
        else:
            print(f"{n} trials in {storage} (setup {setup:.1f} s, load {r['load']}):")
            for key in commands_keys(r):
                slow = (f"; slow path {r[key + '_slow_s']:.2f} s wall, {r[key + '_slow_cpu_s']:.2f} s CPU, "
                        f"same output: {r[key + '_same']}" if key + "_slow_s" in r else "")
                print(f"  {key:<12} {r[key + '_s']:7.2f} s wall {r[key + '_cpu_s']:7.2f} s CPU "
                      f"({r[key + '_lines']} lines){slow}", flush=True)


def commands_keys(result: dict[str, Any]) -> list[str]:
    return [k[:-len("_cpu_s")] for k in result if k.endswith("_cpu_s") and not k.endswith("_slow_cpu_s")]


if __name__ == "__main__":
    main()
