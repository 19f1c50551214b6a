"""The openvino runtime (real OpenVINO, real NNCF) and the batch size latency is timed
at: the target (runtime, precision the runtime chose, batch size, threads) that each
trial stores, the artifact that was timed, early exits refused above batch 1."""

from __future__ import annotations

import json
import os

import numpy as np
import optuna
import pytest
import torch
from click.testing import CliRunner

if os.environ.get("CI") == "true":  # in CI the dev extra installs OpenVINO and NNCF: a missing one fails
    import openvino as ov
else:
    ov = pytest.importorskip("openvino")

from slimtune import Study
from slimtune.cli import main
from slimtune.search._profiling import measure
from slimtune.search._runtimes import compile_model, get_runtime
from slimtune.search._runtimes._openvino import openvino_config, shared_core
from slimtune.search._task_space import build_space
from tests._train import split_exit_net

optuna.logging.set_verbosity(optuna.logging.WARNING)

FAST = {"epochs": 1, "latency_repeats": 5, "latency_warmup": 2, "calibration_size": 64}
BATCH = 8


def _openvino_logits(path, x: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Logits of the file at ``path`` compiled by OpenVINO itself (the slimtune settings
    for one thread), in batches of its static size (the last one padded), and that size."""
    compiled = shared_core().compile_model(str(path), "CPU", openvino_config(1))
    shape = [int(d) for d in compiled.input(0).get_shape()]
    batch, out = shape[0], []
    for i in range(0, len(x), batch):
        chunk = x[i:i + batch]
        padded = np.concatenate([chunk, np.repeat(chunk[:1], batch - len(chunk), axis=0)])
        out.append(compiled(padded)[0][:len(chunk)])
    return np.concatenate(out), shape


@pytest.mark.parametrize("bits", [32, 8])
def test_openvino_chooses_the_precision_and_the_file_is_what_ran(digits_baseline, digits_task, tmp_path, bits):
    data = digits_task.data
    model = digits_baseline.model
    compiled = compile_model(model, runtime="openvino", bits=bits, calibration=data.x_train[:64], batch_size=BATCH)
    runtime_model = compiled._run.compiled_model  # noqa: SLF001 - the OpenVINO compiled model that is timed
    assert [int(d) for d in runtime_model.input(0).get_shape()] == [BATCH, 1, 8, 8]  # a static batch
    chosen = runtime_model.get_property("INFERENCE_PRECISION_HINT").to_string()
    assert compiled.precision == ("int8" if bits == 8 else chosen) and compiled.batch == BATCH
    if bits == 8:  # NNCF's QDQ model runs on OpenVINO's int8 kernels
        assert compiled.kernel_bits == 8 and compiled.info["int8_layers"] >= 4
    x = data.x_val[:37].numpy()  # not a multiple of the batch: predict pads the last one
    logits = compiled.predict(x)
    path = get_runtime("openvino").export(compiled, tmp_path / "model.onnx")
    assert path.read_bytes() == compiled.artifact
    again, shape = _openvino_logits(path, x)
    assert shape == [BATCH, 1, 8, 8]
    np.testing.assert_array_equal(logits, again)  # the exported file, compiled anew, computes the same
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    assert (logits.argmax(-1) == expected.argmax(-1)).mean() >= 0.97


def test_latency_is_timed_at_the_batch_size(digits_baseline, digits_task):
    data = digits_task.data
    model = digits_baseline.model
    compiled = compile_model(model, runtime="openvino", bits=8, calibration=data.x_train[:64], batch_size=BATCH)
    reference = compile_model(model, runtime="openvino", bits=32, calibration=data.x_train[:64], batch_size=BATCH)
    shapes = set()
    for timed in (compiled, reference):
        run = timed._run  # noqa: SLF001 - the real call, recording what it is given

        def recording(x, run=run):
            shapes.add(tuple(x.shape))
            return run(x)

        timed._run = recording  # noqa: SLF001
    m = measure(model, compiled, data.x_val, data.y_val, bits=8, example_input=data.x_val[:1],
                reference=reference, batch_size=BATCH, warmup=2, repeats=5)
    assert shapes == {(BATCH, 1, 8, 8)}  # accuracy (padded batches) and timing alike
    assert m.batch_size == BATCH and m.fingerprint["batch_size"] == BATCH and m.fingerprint["openvino"]
    assert m.target() == {"runtime": "openvino", "precision": "int8", "batch_size": BATCH, "threads": 1}
    assert m.reference_latency_ms > 0 and m.latency_ms > 0 and m.kernel_bits == 8


@pytest.fixture(scope="module")
def study(tmp_path_factory, digits_task):
    storage = f"sqlite:///{tmp_path_factory.mktemp('openvino') / 'studies.db'}"
    space = build_space(digits_task, fixed={"distill.alpha": 0.5}, families=["distill", "quant"], runtime="openvino",
                        batch_size=BATCH)
    st = Study.create_or_load("ov", storage=storage, task="digits", space=space,
                              settings={**FAST, "runtime": "openvino", "batch_size": BATCH}, seed=0,
                              early_stopping=False)
    st.optimize(n_trials=2, progress=False)
    yield st, storage
    st.close()


def test_an_openvino_search_stores_its_target_and_exports_what_was_timed(study, tmp_path):
    st, storage = study
    rows = st.trials()
    assert [r["state"] for r in rows] == ["COMPLETE"] * 3, [r.get("error") for r in rows]
    from slimtune.search._fidelity import is_training_free

    assert [is_training_free(r) for r in rows] == [True, False, False]  # rung 0: int8 of the model, untrained
    hint = st.baseline.precision
    assert hint in ("bf16", "f32", "f16")  # OpenVINO's choice for the fp32 baseline on this CPU
    val = st.task.data.x_val.numpy()
    labels = st.task.data.y_val.numpy()
    for row in rows:
        int8 = row["params"]["quant.bits"] <= 8
        assert row["target"] == {"runtime": "openvino", "precision": "int8" if int8 else hint, "batch_size": BATCH,
                                 "threads": 1}
        assert row["timed_on"]["batch_size"] == BATCH and row["timed_on"]["precision"] == row["target"]["precision"]
        path = st.candidate(row["trial"]).export(tmp_path / f"trial{row['trial']}.onnx")
        logits, shape = _openvino_logits(path, val)
        assert shape == [BATCH, 1, 8, 8]  # the file that was timed: its static batch
        assert float((logits.argmax(-1) == labels).mean()) == pytest.approx(row["accuracy"], abs=1.5 / len(labels))
    result = CliRunner().invoke(main, ["show", "ov", "--storage", storage, "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["baseline"]["target"] == {"runtime": "openvino", "precision": hint, "batch_size": BATCH,
                                           "threads": 1}
    assert {r["trial"]: r["target"] for r in shown["trials"]} == {r["trial"]: r["target"] for r in rows}
    text = CliRunner().invoke(main, ["show", "ov", "--storage", storage]).output
    assert (f"Target: openvino, batch {BATCH}, 1 thread; precision as the runtime chose it: {hint} for the baseline"
            in text.replace("\n  ", " "))


def test_early_exits_refuse_a_batch_above_one(digits_task):
    data = digits_task.data
    net = split_exit_net(data)
    with pytest.raises(ValueError, match=r"runs one sample at a time \(batch 1\), but the batch size is 4"):
        compile_model(net, runtime="onnxruntime", bits=32, calibration=data.x_train[:8], batch_size=4)
    assert compile_model(net, runtime="onnxruntime", bits=32, calibration=data.x_train[:8]).has_exits
    # a study's space leaves the exits family out on such a target, and says why
    at_one = build_space(digits_task, families=["exits"], batch_size=1)
    at_eight = build_space(digits_task, families=["exits"], batch_size=8)
    assert "exits" in [k.family for k in at_one.knobs] and "exits" not in [k.family for k in at_eight.knobs]
    assert "one sample at a time (batch 1), but the batch size is 8" in at_eight.omitted["exits"]
    on_openvino = build_space(digits_task, families=["exits"], runtime="openvino")
    assert "no registered runtime for a model with dynamic exits" in on_openvino.omitted["exits"]


def test_eval_with_exits_at_a_batch_above_one_is_one_line(tmp_path):
    result = CliRunner().invoke(main, ["eval", "--task", "digits", "--set", "exits.0.enabled=true",
                                       "--batch-size", "8", "--epochs", "0"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "exits" in lines[0] and "batch 1" in lines[0], result.output


SIGNAL_AFTER_TWO_MODELS = """
import gc, os, signal
import torch
from slimtune.search._runtimes import compile_model
from slimtune.tasks._models import small_cnn
model, x = small_cnn(10, width=4).eval(), torch.randn(16, 1, 8, 8)
signal.signal(signal.SIGUSR1, lambda *a: print("handled", flush=True))  # a Python handler (CPython: SA_ONSTACK)
first = compile_model(model, runtime="openvino", bits=32, calibration=x)
second = compile_model(model, runtime="openvino", bits=32, calibration=x)
del first; gc.collect()
del second; gc.collect()  # released in the order they were made
os.kill(os.getpid(), signal.SIGUSR1)
print("alive", flush=True)
"""


def test_a_signal_after_two_models_are_released_finds_a_live_signal_stack():
    """Each ``openvino.Core`` swaps the thread's alternate signal stack and restores the
    one it replaced when released: two Cores released in the order they were made left
    the main thread on a freed stack, and the next signal handled in Python (Ctrl-C, a
    worker's SIGTERM, a DataLoader's SIGCHLD) killed the process with SIGSEGV (an xdist
    worker died this way).  slimtune compiles every model on one Core."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", SIGNAL_AFTER_TWO_MODELS], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and done.stdout.split() == ["handled", "alive"], (done.returncode, done.stderr[-2000:])
