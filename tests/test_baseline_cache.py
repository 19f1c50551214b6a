"""The baseline cache keeps the teacher's logits and val/test metric beside the weights:
a load computes them only when their key (weights, training inputs in order, torch
version) does not match, and then writes them back."""

from __future__ import annotations

import pytest
import torch

from slimtune import tasks
from slimtune.search import _baseline
from slimtune.search._baseline import get_baseline, teacher_key
from slimtune.search._weights import load_weights
from tests import user_task


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SLIMTUNE_CACHE_DIR", str(tmp_path / "cache"))
    torch.set_num_threads(1)


@pytest.fixture
def forwards(monkeypatch):
    """How many times the baseline's logits on the training split were computed (the
    real function runs; it is only counted)."""
    calls = []
    real = _baseline.predict_logits

    def counted(model, x, *args, **kwargs):
        calls.append(len(x))
        return real(model, x, *args, **kwargs)

    monkeypatch.setattr(_baseline, "predict_logits", counted)
    return calls


def _permuted_task() -> tasks.Task:
    """``make_task`` with its training samples in another order: the same fingerprint
    (the same cache file) but logits that line up differently."""
    task = user_task.make_task()
    data = task.data
    order = torch.arange(len(data.x_train)).flip(0)
    permuted = tasks.TaskData(data.x_train[order], data.y_train[order], data.x_val, data.y_val, data.x_test,
                              data.y_test)
    return tasks.Task(name=task.name, build_model=task.build_model, data=permuted, num_classes=2, epochs=1,
                      finetune_epochs=1)


def _expected_logits(baseline) -> torch.Tensor:
    with torch.no_grad():
        return baseline.model.eval()(baseline.task.data.x_train)


def test_a_cached_baseline_reuses_its_teacher_logits(forwards):
    first = get_baseline(user_task.make_task())
    assert not first.cached and forwards == [96]
    blob = load_weights(first.path)
    assert blob["teacher_key"] == teacher_key(first.model, first.task)
    again = get_baseline(user_task.make_task())  # a fresh task object, as a new process builds it
    assert again.cached and forwards == [96]  # no forward pass over the training split this time
    assert torch.equal(again.teacher_logits, first.teacher_logits)
    assert torch.allclose(again.teacher_logits, _expected_logits(again), atol=1e-6)
    assert (again.val_accuracy, again.test_accuracy) == (first.val_accuracy, first.test_accuracy)


def test_a_cache_file_without_logits_computes_them_once_and_stores_them(forwards):
    first = get_baseline(user_task.make_task())
    torch.save({"state_dict": first.model.state_dict(), "val_accuracy": first.val_accuracy,
                "test_accuracy": first.test_accuracy}, first.path)  # as slimtune 0.x wrote it
    forwards.clear()
    assert get_baseline(user_task.make_task()).cached and forwards == [96]
    assert get_baseline(user_task.make_task()).cached and forwards == [96]  # written back: reused now
    assert load_weights(first.path)["teacher_key"] == teacher_key(first.model, first.task)


def test_stale_logits_are_recomputed_when_the_weights_change(forwards):
    first = get_baseline(user_task.make_task())
    blob = load_weights(first.path)
    blob["state_dict"] = {k: v + 0.5 if v.is_floating_point() else v for k, v in blob["state_dict"].items()}
    blob["val_accuracy"] = blob["test_accuracy"] = -1.0  # stale figures must not come back
    torch.save(blob, first.path)
    forwards.clear()
    changed = get_baseline(user_task.make_task())
    assert forwards == [96] and changed.val_accuracy >= 0 and changed.test_accuracy >= 0
    assert not torch.allclose(changed.teacher_logits, first.teacher_logits)
    assert torch.allclose(changed.teacher_logits, _expected_logits(changed), atol=1e-6)


def test_stale_logits_are_recomputed_when_the_training_order_changes(forwards):
    first = get_baseline(user_task.make_task())
    task = _permuted_task()
    assert task.fingerprint() == first.task.fingerprint()  # the same cache file ...
    forwards.clear()
    reordered = get_baseline(task)
    assert reordered.cached and forwards == [96]  # ... but its logits must line up with the new order
    assert torch.allclose(reordered.teacher_logits, first.teacher_logits.flip(0), atol=1e-6)
    assert get_baseline(user_task.make_task()).teacher_logits.allclose(first.teacher_logits, atol=1e-6)


def test_logits_of_another_length_are_not_used(forwards):
    first = get_baseline(user_task.make_task())
    blob = load_weights(first.path)
    blob["teacher_logits"] = blob["teacher_logits"][:10]  # right key, wrong rows: never index past them
    torch.save(blob, first.path)
    forwards.clear()
    assert len(get_baseline(user_task.make_task()).teacher_logits) == 96 and forwards == [96]


def test_the_rewritten_cache_file_keeps_the_usual_mode_and_leaves_no_temporary_file(forwards):
    first = get_baseline(user_task.make_task())
    first.path.chmod(0o644)
    torch.save({"state_dict": first.model.state_dict()}, first.path)  # no logits: rewritten on load
    get_baseline(user_task.make_task())
    assert load_weights(first.path).get("teacher_key")
    assert first.path.stat().st_mode & 0o777 == 0o666 & ~_umask()
    assert [p.name for p in first.path.parent.iterdir()] == [first.path.name]


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask
