"""Data that does not fit in memory: tasks whose splits stream from DataLoaders.

The loaders here read a dataset that refuses to be materialised: its batches are
counted while alive (weak references) and one more than a few at once raises.  A whole
search runs on it; the fingerprint stays stable under shuffling and augmentation; a
subprocess shows that peak memory grows by far less than the dataset's size.
"""

from __future__ import annotations

import gc
import json
import math
import os
import subprocess
import sys
import textwrap
import weakref

import numpy as np
import optuna
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset, default_collate

from slimtune import Study, Task, TaskError
from slimtune.search._baseline import get_baseline
from slimtune.search._pipeline import EvalSettings, Evaluator
from slimtune.search._profiling import measure
from slimtune.search._trainer import TrainConfig, score, train
from slimtune.spaces import get_knob
from slimtune.spaces._space import Space
from slimtune.tasks._data import LoaderSplit, TensorSplit, as_split, data_digest
from slimtune.tasks._models import small_cnn

optuna.logging.set_verbosity(optuna.logging.WARNING)

CLASSES, BATCH = 4, 32
LIVE_LIMIT = 6 * BATCH  # samples alive at once: a few batches, never the dataset
FAST = {"epochs": 1, "latency_repeats": 5, "latency_warmup": 2, "calibration_size": 64}


class LiveSamples:
    """Counts the samples of the batches still alive; more than ``limit`` at once raises."""

    def __init__(self, limit: int) -> None:
        self.limit, self.live, self.peak, self.requested = limit, 0, 0, 0

    def _release(self, n: int) -> None:
        self.live -= n

    def collate(self, samples: list) -> list:
        x, y = default_collate(samples)
        if self.live + len(x) > self.limit:
            gc.collect()  # what only a cycle keeps is not held
        if self.live + len(x) > self.limit:
            raise MemoryError(f"{self.live + len(x)} samples alive at once (limit {self.limit}): "
                              "the dataset is being materialised")
        self.live += len(x)
        self.peak = max(self.peak, self.live)
        weakref.finalize(x, self._release, len(x))
        return [x, y]


class RefusingDataset(Dataset):
    """``n`` digit-like samples made from their index (class prototype + noise), with a
    random augmentation (noise drawn from torch's global generator) on every read."""

    def __init__(self, n: int, tracker: LiveSamples, seed: int = 0, augment: float = 0.1) -> None:
        self.n, self.tracker, self.seed, self.augment = n, tracker, seed, augment
        self.prototypes = torch.randn(CLASSES, 1, 8, 8, generator=torch.Generator().manual_seed(1234))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if not 0 <= i < self.n:
            raise IndexError(i)
        self.tracker.requested += 1
        label = i % CLASSES
        noise = torch.randn(1, 8, 8, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + i))
        x = self.prototypes[label] + 0.6 * noise
        if self.augment:
            x = x + self.augment * torch.randn(1, 8, 8)
        return x, label


def _loaders(tracker: LiveSamples, n_train: int = 640, seed: int = 0, augment: float = 0.1,
             shuffle_seed: int | None = None) -> dict[str, DataLoader]:
    generator = torch.Generator().manual_seed(shuffle_seed) if shuffle_seed is not None else None
    train = DataLoader(RefusingDataset(n_train, tracker, seed, augment), batch_size=BATCH, shuffle=True,
                       collate_fn=tracker.collate, generator=generator)
    val = DataLoader(RefusingDataset(160, tracker, seed + 101, 0.0), batch_size=BATCH, shuffle=True,
                     collate_fn=tracker.collate)
    test = DataLoader(RefusingDataset(160, tracker, seed + 202, 0.0), batch_size=BATCH, collate_fn=tracker.collate)
    return {"train": train, "val": val, "test": test}


def _trained_model(loader: DataLoader) -> torch.nn.Module:
    """A small CNN trained for two epochs on the stream (the user's 'trained model')."""
    torch.manual_seed(0)
    model = small_cnn(CLASSES, width=8)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(2):
        for x, y in loader:
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def tracker() -> LiveSamples:
    return LiveSamples(LIVE_LIMIT)


@pytest.fixture(scope="module")
def streaming_task(tracker) -> Task:
    loaders = _loaders(tracker)
    return Task.from_model(_trained_model(loaders["train"]), **loaders, streaming=True, name="stream",
                           finetune_epochs=1, batch_size=BATCH)


def test_the_refusing_dataset_refuses_to_be_read_into_memory():
    """The guard itself: what the old code did with a loader (all batches read into a
    list) raises; reading it with streaming=False does too."""
    with pytest.raises(MemoryError, match="materialised"):
        list(_loaders(LiveSamples(LIVE_LIMIT))["train"])  # holding every batch
    with pytest.raises(MemoryError, match="materialised"):
        as_split(_loaders(LiveSamples(LIVE_LIMIT))["train"], "train", streaming=False)


def test_a_streaming_task_holds_no_split_and_keeps_only_a_digest_per_sample(streaming_task, tracker):
    data = streaming_task.data
    assert data.streaming and all(isinstance(s, LoaderSplit) for s in (data.train, data.val, data.test))
    assert data.summary() == {"train": 640, "val": 160, "test": 160}
    assert streaming_task.num_classes == CLASSES and streaming_task.input_shape == (1, 8, 8)
    with pytest.raises(TaskError, match="streams from a DataLoader"):
        data.x_train  # noqa: B018
    assert tracker.peak <= LIVE_LIMIT


def test_the_fingerprint_is_stable_under_shuffling_and_augmentation_and_sees_the_data():
    tracker = LiveSamples(LIVE_LIMIT)
    model = small_cnn(CLASSES, width=8).eval()

    def fingerprint(**kwargs) -> str:
        loaders = _loaders(tracker, **kwargs)
        return Task.from_model(model, **loaders, streaming=True).fingerprint()

    first = fingerprint(shuffle_seed=1)
    assert fingerprint(shuffle_seed=2) == first  # another shuffle, other augmentation draws
    assert fingerprint() == first
    assert fingerprint(seed=5) != first  # other samples
    assert fingerprint(n_train=639) != first  # one sample fewer
    # the digest is that of the samples, however they are held
    loader = _loaders(tracker, augment=0.0)["test"]
    streamed = as_split(loader, "test", streaming=True)
    held = as_split(loader, "test", streaming=False)
    assert isinstance(held, TensorSplit) and isinstance(streamed, LoaderSplit)
    assert streamed.digest() == held.digest() == data_digest(held.x, held.y)


def test_streaming_and_in_memory_give_the_same_metrics_and_measurement():
    torch.manual_seed(0)
    x, y = torch.randn(200, 1, 8, 8), torch.randint(0, CLASSES, (200,))
    loader = DataLoader(TensorDataset(x, y), batch_size=48, shuffle=True)
    streamed, held = as_split(loader, "val", streaming=True), TensorSplit(x, y, "val")
    model = small_cnn(CLASSES, width=8).eval()
    assert score(model, streamed) == pytest.approx(score(model, held), abs=1e-12)
    from slimtune.search._runtimes import compile_model

    compiled = compile_model(model, bits=8, calibration=x[:64])
    a = measure(model, compiled, streamed, None, x_test=streamed, bits=8, example_input=x[:1], warmup=1, repeats=3)
    b = measure(model, compiled, x, y, x_test=x, y_test=y, bits=8, example_input=x[:1], warmup=1, repeats=3)
    assert (a.accuracy, a.test_accuracy, a.runtime_agreement) == (b.accuracy, b.test_accuracy, b.runtime_agreement)
    assert a.size_bytes == b.size_bytes and a.macs == b.macs


def test_an_early_exit_model_is_measured_the_same_from_a_stream():
    from slimtune.search._runtimes import compile_model
    from slimtune.spaces.base import KnobContext
    from slimtune.spaces.exits import EarlyExitNet, EarlyExits

    torch.manual_seed(0)
    x, y = torch.randn(90, 1, 8, 8), torch.randint(0, CLASSES, (90,))
    ctx = KnobContext(example_input=x[:2], calibration=x[:8], finetune=lambda *a, **k: None)
    net = EarlyExits().apply(small_cnn(CLASSES, width=8), {"exits.0.enabled": True, "exits.0.threshold": 0.3}, ctx)
    assert isinstance(net, EarlyExitNet)
    net.eval()
    compiled = compile_model(net, bits=32, calibration=x[:8])
    streamed = as_split(DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True), "val", streaming=True)
    a = measure(net, compiled, streamed, None, bits=32, example_input=x[:1], warmup=1, repeats=4)
    b = measure(net, compiled, x, y, bits=32, example_input=x[:1], warmup=1, repeats=4)
    assert a.exit_rates == b.exit_rates and sum(a.exit_rates) == pytest.approx(1.0)
    assert (a.accuracy, a.runtime_agreement, a.macs) == (b.accuracy, b.runtime_agreement, b.macs)
    assert a.latency_kind == "mean_of_path_p10" and len(a.latency_samples_ms) == 4


def test_without_streaming_a_loader_streams_only_above_the_memory_limit(monkeypatch):
    import slimtune.tasks._data as data_module

    x, y = torch.randn(100, 1, 8, 8), torch.arange(100) % CLASSES
    loader = DataLoader(TensorDataset(x, y), batch_size=10, shuffle=True)
    assert isinstance(as_split(loader, "train"), TensorSplit)  # 28 KB: held
    monkeypatch.setattr(data_module, "MAX_IN_MEMORY_BYTES", 50 * 4 * 64)  # room for 50 samples' inputs
    streamed = as_split(loader, "train")
    assert isinstance(streamed, LoaderSplit) and len(streamed) == 100
    assert streamed.digest() == data_digest(x, y)


def test_a_loader_with_worker_processes_streams_with_a_stable_fingerprint():
    tracker = LiveSamples(10 * LIVE_LIMIT)  # workers prefetch: a few more batches in flight
    model = small_cnn(CLASSES, width=4).eval()

    def task(workers: int, augment: float) -> Task:
        dataset = RefusingDataset(256, tracker, augment=augment)
        loaders = {s: DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=workers) for s in
                   ("train", "val", "test")}
        return Task.from_model(model, **loaders, streaming=True)

    assert task(2, 0.1).fingerprint() == task(2, 0.1).fingerprint()  # augmented in the workers
    assert task(2, 0.0).fingerprint() == task(0, 0.0).fingerprint()  # the same samples
    assert len(task(2, 0.0).data.val.head(40)) == 40


def test_training_on_a_stream_distils_from_the_teacher_per_batch(streaming_task, tracker):
    calls = []
    teacher_model = streaming_task.build_model().eval()

    def teacher(xb: torch.Tensor, index):
        calls.append((len(xb), index))
        with torch.no_grad():
            return teacher_model(xb)

    student = small_cnn(CLASSES, width=4)
    hooks = get_knob("distill")().training({"distill.alpha": 0.7, "distill.temperature": 4.0})
    epochs, reason = train(student, streaming_task.data.train, TrainConfig(epochs=2, lr=1e-3, hooks=hooks),
                           teacher=teacher)
    assert (epochs, reason) == (2, None)
    assert len(calls) == 2 * math.ceil(640 / BATCH) and all(index is None for _, index in calls)
    assert sum(n for n, _ in calls) == 2 * 640  # every sample of every epoch, from the stream
    baseline = get_baseline(streaming_task)
    assert baseline.teacher_logits is None  # nothing computed for the whole split
    xb = streaming_task.data.train.head(5)
    assert torch.equal(baseline.teacher(xb, None), teacher_model(xb).detach())
    assert tracker.peak <= LIVE_LIMIT


def test_calibration_reads_a_bounded_number_of_training_batches(streaming_task, tracker):
    baseline = get_baseline(streaming_task)
    before = tracker.requested
    settings = EvalSettings(calibration_size=40)
    evaluator = Evaluator(streaming_task, Space.for_model(streaming_task.build_model()), settings, baseline)
    assert evaluator.calibration.shape == (40, 1, 8, 8)
    assert tracker.requested - before <= 2 * BATCH  # the batches 40 samples fill, never the split
    again = Evaluator(streaming_task, Space.for_model(streaming_task.build_model()), settings, baseline)
    assert torch.equal(again.calibration, evaluator.calibration)  # the same samples every time


def test_a_search_selects_and_exports_on_streaming_data(streaming_task, tracker, tmp_path):
    storage = f"sqlite:///{tmp_path / 'stream.db'}"
    study = Study.create_or_load("stream", storage=storage, task=streaming_task, settings=FAST, seed=0,
                                 early_stopping=False, objectives="accuracy,size_bytes",
                                 fixed={"quant.bits": 8, "quant.mode": "ptq", "distill.alpha": 0.5})
    rows = study.optimize(n_trials=2, progress=False)
    assert [r["state"] for r in study.trials()] == ["COMPLETE", "COMPLETE"], [r.get("error") for r in study.trials()]
    chosen = study.select(max_size_kb=1e9)
    path = chosen.export(tmp_path / "chosen.onnx")
    # the exported artifact's accuracy, recomputed batch by batch on the (shuffling) val loader, is the stored one
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    correct = total = 0
    for x, y in streaming_task.data.val.chunks():
        if len(session.get_outputs()) > 1:
            logits = np.concatenate([session.run(None, {name: x[i:i + 1].numpy()})[0] for i in range(len(x))])
        else:
            logits = session.run(None, {name: x.numpy()})[0]
        correct += int((logits.argmax(-1) == y.numpy()).sum())
        total += len(y)
    assert total == 160 and correct / total == pytest.approx(chosen.accuracy, abs=1e-12)
    assert chosen.accuracy > 1.5 / CLASSES  # learnt something (chance is 0.25)
    assert len(rows) >= 1 and tracker.peak <= LIVE_LIMIT
    study.close()


def _yields_tensors_only() -> DataLoader:
    return DataLoader(torch.randn(8, 1, 8, 8), batch_size=4)


@pytest.mark.parametrize("bad, message", [
    (lambda: DataLoader(TensorDataset(torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long))), "yields no batches"),
    (_yields_tensors_only, "must yield \\(inputs, labels\\) batches, but yielded Tensor"),
    (lambda: DataLoader(TensorDataset(torch.zeros(8, 1, 8, 8), torch.full((8,), 7)), batch_size=4),
     r"labels must lie in \[0, 3\].*range over \[7, 7\]"),
    (lambda: iter([(torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.long))]), "must be re-iterable to stream"),
])
def test_bad_streaming_input_is_one_clear_line(bad, message):
    x, y = torch.randn(8, 1, 8, 8), torch.arange(8) % CLASSES
    with pytest.raises(TaskError, match=message) as info:
        Task.from_model(small_cnn(CLASSES, width=4), train=bad(), val=(x, y), test=(x, y), streaming=True)
    assert "\n" not in str(info.value)


def test_a_loader_whose_inputs_change_shape_is_one_clear_line():
    batches = [(torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.long)),
               (torch.zeros(4, 1, 9, 9), torch.zeros(4, dtype=torch.long))]
    with pytest.raises(TaskError, match=r"shape \(1, 8, 8\) and then \(1, 9, 9\)"):
        as_split(batches, "train", streaming=True)


MEMORY_SCRIPT = textwrap.dedent("""
    import json, resource, sys
    import torch
    torch.set_num_threads(1)
    from torch import nn
    from torch.utils.data import DataLoader, Dataset
    from slimtune import Task
    from slimtune.search._baseline import get_baseline
    from slimtune.search._pipeline import EvalSettings, Evaluator
    from slimtune.spaces._space import Space

    SHAPE = (3, 32, 32)

    class OnTheFly(Dataset):
        def __init__(self, n):
            self.n = n
        def __len__(self):
            return self.n
        def __getitem__(self, i):
            label = i % 4
            return torch.randn(SHAPE, generator=torch.Generator().manual_seed(i)) + label, label

    def model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                             nn.Flatten(), nn.Linear(8, 4)).eval()

    def search_one(n, streaming):
        small = torch.stack([OnTheFly(64)[i][0] for i in range(64)]), torch.arange(64) % 4
        train = DataLoader(OnTheFly(n), batch_size=256, shuffle=True)
        task = Task.from_model(model(), train=train, val=small, test=small, streaming=streaming,
                               finetune_epochs=1, batch_size=256)
        ev = Evaluator(task, Space.for_model(task.build_model()), EvalSettings(epochs=1, latency_repeats=3,
                       latency_warmup=1, calibration_size=64), get_baseline(task))
        result = ev.evaluate({"quant.bits": 8, "quant.mode": "ptq", "distill.alpha": 0.5})
        return task.fingerprint(), result.measurement.accuracy

    search_one(1024, True)  # warm-up on 12 MB: torch, ONNX export, quantization, ONNX Runtime
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    n = int(sys.argv[1])
    fingerprint, accuracy = search_one(n, sys.argv[2] == "stream")
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"growth": after - before, "before": before, "dataset": n * 4 * 3 * 32 * 32,
                      "accuracy": accuracy, "fingerprint": fingerprint}))
""")


def test_peak_memory_grows_by_far_less_than_the_streamed_dataset(tmp_path):
    """200 MiB of samples made on the fly stream through a from_model task, its baseline
    and one trained, int8-quantized, measured candidate (after the same on 12 MB, so
    that libraries' own memory is already counted): peak RSS grows by less than a fifth
    of the dataset (measured: 19 MB streaming; read into memory instead: 630 MB)."""
    script = tmp_path / "memory.py"
    script.write_text(MEMORY_SCRIPT)
    n = -(-200 * 2**20 // (4 * 3 * 32 * 32))  # 200 MiB of float32 samples, rounded up
    out = subprocess.run([sys.executable, str(script), str(n), "stream"], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["dataset"] >= 200 * 2**20
    assert report["growth"] < report["dataset"] / 5, report


def test_run_sets_the_calibration_size_and_rejects_a_bad_one(tmp_path):
    from click.testing import CliRunner

    from slimtune.cli import main

    url = f"sqlite:///{tmp_path / 'cal.db'}"
    common = ["run", "--study", "cal", "--task", "tests.user_task:make_task", "--trials", "1", "--epochs", "1",
              "--latency-repeats", "3", "--storage", url]
    bad = CliRunner().invoke(main, [*common, "--calibration-size", "0"])
    assert bad.exit_code == 2 and "--calibration-size" in bad.output and "0" in bad.output
    assert not (tmp_path / "cal.db").exists()  # nothing written
    good = CliRunner().invoke(main, [*common, "--calibration-size", "32"])
    assert good.exit_code == 0, good.output
    study = Study.create_or_load("cal", storage=url)
    assert study.settings.calibration_size == 32
    study.close()
