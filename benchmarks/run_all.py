"""Every benchmark's quick version, in one command (target: under 15 minutes on 2 cores).

    PYTHONPATH=. python benchmarks/run_all.py --quick [--out benchmarks/results/quick.md]

Each benchmark runs as its own process, one after the other (so none times another's
load), and its markdown output is gathered into one report headed by the date, the
machine (CPU model, core count, the CPU features that decide int8 kernels, torch and
onnxruntime versions) and the command.  Without ``--quick`` every benchmark runs at
its full default size (hours on 2 cores).  A benchmark that fails is reported as
failed and the others still run; the exit code is 1 then.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))

#: (script, quick arguments, full arguments): what each measures is in its docstring.
BENCHMARKS: list[tuple[str, list[str], list[str]]] = [
    ("frontier_ceiling.py", ["--quick", "--markdown"], ["--markdown"]),
    ("compression.py", ["--quick"], []),
    ("overhead.py", ["--trials", "3", "--size", "10000"], []),
    ("overhead.py", ["--task", "fashion-mnist", "--trials", "2", "--size", "0"], ["--task", "fashion-mnist"]),
    ("latency_fidelity.py", ["--runs", "3", "--processes", "2", "--repeats", "50"], []),
    ("scale.py", ["--quick"], []),
    ("packed_sizes.py", ["--models", "digits"], []),
    ("runtimes.py", ["--tasks", "digits", "--repeats", "50"], ["--tasks", "digits,fashion-mnist"]),
]


def machine_lines() -> list[str]:
    """The machine a report was measured on, as markdown bullet lines."""
    import onnxruntime
    import torch

    from slimtune.search._cpu import cpu_features

    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    features = ", ".join(cpu_features() or ()) or "unknown"
    return [f"- CPU: {model}, {os.cpu_count()} cores; int8-relevant features: {features}",
            f"- {platform.system()} {platform.release()}, Python {platform.python_version()}, torch {torch.__version__}, "
            f"onnxruntime {onnxruntime.__version__}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the quick version of each benchmark")
    parser.add_argument("--only", default="", help="comma-separated script names to run (default: all)")
    parser.add_argument("--out", type=Path, default=None, help="also write the report here")
    args = parser.parse_args(argv)
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = "PYTHONPATH=. python benchmarks/run_all.py" + (" --quick" if args.quick else "")
    report = [f"# slimtune benchmarks, {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC", "",
              *machine_lines(), f"- Command: `{command}`", ""]
    print("\n".join(report), flush=True)
    failed, started = [], time.perf_counter()
    for script, quick, full in BENCHMARKS:
        if only and script not in only and script.removesuffix(".py") not in only:
            continue
        path = ROOT / "benchmarks" / script
        cmd = [sys.executable, str(path), *(quick if args.quick else full)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        took = time.perf_counter() - t0
        section = [f"## {script} ({took:.0f} s): `{' '.join(['python', 'benchmarks/' + script, *cmd[2:]])}`", "",
                   proc.stdout.strip()]
        if proc.returncode != 0:
            failed.append(script)
            section += ["", f"**failed** (exit {proc.returncode}):", "```", proc.stderr.strip()[-3000:], "```"]
        section.append("")
        print("\n".join(section), flush=True)
        report += section
    total = time.perf_counter() - started
    tail = f"All benchmarks: {total / 60:.1f} min" + (f"; failed: {', '.join(failed)}" if failed else "")
    print(tail)
    report.append(tail)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(report) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
