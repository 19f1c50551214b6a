from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from slimtune.cli import main

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "slimtune.cli", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def test_space_json_lists_every_family():
    result = CliRunner().invoke(main, ["space", "--task", "digits", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    names = {p["name"] for p in data["params"]}
    assert {"prune.ratio", "prune.granularity", "quant.bits", "quant.mode", "distill.temperature", "distill.alpha",
            "dsconv.blocks.1.0", "exits.0.threshold", "exits.1.enabled"} <= names
    bits = next(p for p in data["params"] if p["name"] == "quant.bits")
    assert bits["choices"] == [32, 16, 8, 6, 4, 2]


def test_space_table():
    result = CliRunner().invoke(main, ["space", "--task", "digits"])
    assert result.exit_code == 0 and "prune.ratio" in result.output and "[0.0, 0.9]" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--task", "digits", "--set", "prune.ration=0.3"], "Did you mean 'prune.ratio'"),
        (["--task", "digits", "--set", "quant.bits=3"], "`quant.bits` must be one of 32, 16, 8, 6, 4, 2"),
        (["--task", "digits", "--set", "prune.ratio"], "NAME=VALUE"),
        (["--task", "digitz"], "Unknown task 'digitz'"),
        (["--task", "tests.user_task:make_mlp_task", "--set", "dsconv.0=true"], "no eligible conv"),
        (["--task", "tests.user_task:bad_task"], "class logits"),
        (["--task", "tests.user_task:raising_task"], "raised FileNotFoundError: no such file: /data/train.csv"),
        (["--task", "tests.user_task_broken:make_task"], "raised RuntimeError: the data directory is not mounted"),
        (["--task", "tests.user_task:empty_loader_task"], "The val loader yields no batches"),
        (["--task", "digits", "--epochs", "1000000000"], "'--epochs': 1000000000 is not in the range"),
    ],
)
def test_eval_bad_input_is_one_line_exit_2(tmp_path, args, message):
    proc = run_cli("eval", *args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_eval_channel_pruning_int8_json(tmp_path):
    proc = run_cli("eval", "--task", "digits", "--set", "prune.ratio=0.5", "--set", "prune.granularity=channel",
                   "--set", "quant.bits=8", "--epochs", "2", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    base = report["baseline"]
    assert report["params"]["prune.ratio"] == 0.5 and report["params"]["prune.granularity"] == "channel"
    assert report["params"]["quant.bits"] == 8 and report["exit_rates"] is None
    assert report["macs"] < 0.4 * base["macs"]  # half the channels: about a quarter of the MACs
    assert report["size_bytes"] < 0.2 * base["size_bytes"]  # a quarter of the weights at a quarter of the bits
    assert report["kernel_bits"] == 8 and base["kernel_bits"] == 32
    # validation is what the search sees, test is reported apart; both from the int8 artifact
    assert report["accuracy"] == report["val_accuracy"] > 0.85 and report["test_accuracy"] > 0.85
    assert base["accuracy"] > 0.95 and base["test_accuracy"] > 0.95
    # a quarter of the MACs on int8 kernels is faster than fp32, timed interleaved in the same run
    assert report["speedup"] == pytest.approx(report["reference_latency_ms"] / report["latency_ms"])
    assert report["speedup"] > 1.2, report
    assert report["latency_kind"] == "p10" and report["runtime"] == "onnxruntime"
    # one thread: read on the calling thread's on-CPU clock, the wall-clock figure of the same calls beside it
    assert report["latency_clock"] == "cpu" and report["latency_wall_ms"] > 0
