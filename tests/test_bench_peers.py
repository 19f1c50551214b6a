"""benchmarks/peers.py end to end on digits (--run --quick): a real study, the peers
installed with the dev extras (ONNX Runtime's quantizer, NNCF, OpenVINO), every model
timed interleaved; checks the JSON's shape and that every model really ran."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
from tests._bench import BENCHMARKS

pytest.importorskip("openvino")
pytest.importorskip("nncf")

PEERS = {"ORT quantize_static (defaults)", "ORT quantize_static (QOperator u8s8)", "NNCF int8 on ONNX Runtime",
         "NNCF int8 on OpenVINO", "OpenVINO default (fp32 model)"}
BASELINE = "fp32 baseline (ONNX Runtime)"


@pytest.mark.slow
def test_quick_digits_run_times_every_model_and_prints_one_json_object(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(BENCHMARKS.parent)}
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "peers.py"), "--run", "--task", "digits", "--quick", "--json",
         "--peers", "ort-quantizer,nncf,openvino", "--storage", f"sqlite:///{tmp_path / 'p.db'}", "--study", "p"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)  # stdout is exactly one JSON object
    assert result["task"] == "digits" and result["batches"] == [1, 64] and result["threads"] == 1
    rows = result["rows"]
    systems = {r["system"] for r in rows}
    assert PEERS | {BASELINE} <= systems
    slimtune = [r for r in rows if r["kind"] == "slimtune"]
    assert slimtune, "the study's front was not compared"
    for name in PEERS | {BASELINE} | {r["system"] for r in slimtune}:
        assert {r["batch"] for r in rows if r["system"] == name} == {1, 64}, name  # timed at both batch sizes
    assert "left out" not in "".join(line for line in done.stderr.splitlines() if "slimtune trial" not in line)
    for r in rows:
        assert set(r) >= {"system", "kind", "runtime", "batch", "speedup", "test_accuracy", "delta", "file_bytes",
                          "latency_ms", "precision"}
        assert r["latency_ms"] > 0 and math.isfinite(r["speedup"]) and r["speedup"] > 0, r
        assert r["file_bytes"] > 1000
        if r["kind"] in ("peer", "baseline"):
            assert r["test_accuracy"] > 0.8, r  # it really predicts (chance is 0.1)
    base = [r for r in rows if r["system"] == BASELINE]
    assert all(r["speedup"] == 1.0 and r["delta"] == 0.0 for r in base)
    int8 = {r["system"]: r["precision"] for r in rows if r["kind"] == "peer"}
    assert int8["NNCF int8 on OpenVINO"] == "int8" and int8["ORT quantize_static (QOperator u8s8)"] == "int8"
    # the exported front points score on the test split what their trials recorded (digits' whole test split)
    for r in slimtune:
        assert r["test_accuracy"] == pytest.approx(r["stored_test_accuracy"], abs=1e-9), r["system"]
    assert [v["batch"] for v in result["verdicts"]] == [1, 64]
    assert all(isinstance(v["ahead"], bool) for v in result["verdicts"])
    assert sum("slimtune's best at <= 1 test point" in line for line in done.stderr.splitlines()) == 2
