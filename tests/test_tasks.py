from __future__ import annotations

import pytest
import torch
from torch import nn

from slimtune.search._baseline import get_baseline
from slimtune.tasks import Task, TaskError, get_task, list_tasks
from slimtune.tasks._builtin import FASHION_DIR_ENV


def test_builtin_tasks_listed():
    assert {"digits", "fashion-mnist"} <= set(list_tasks())


def test_digits_split_is_fixed_and_disjoint(digits_task):
    again = get_task("digits")
    assert torch.equal(digits_task.data.x_test, again.data.x_test)
    sizes = digits_task.data.summary()
    assert sum(sizes.values()) == 1797
    assert digits_task.input_shape == (1, 8, 8)


def test_digits_baseline_reaches_97_percent_and_is_cached(digits_task, digits_baseline):
    assert digits_baseline.test_accuracy >= 0.97
    again = get_baseline(digits_task, seed=0)
    assert again.cached
    assert again.test_accuracy == digits_baseline.test_accuracy
    assert again.teacher_logits.shape == (len(digits_task.data.x_train), 10)
    for a, b in zip(again.model.state_dict().values(), digits_baseline.model.state_dict().values()):
        assert torch.equal(a, b)


def test_unknown_task_suggests_close_match():
    with pytest.raises(TaskError, match="digits"):
        get_task("digitz")


def test_fashion_mnist_missing_files_says_which_package(monkeypatch, tmp_path):
    monkeypatch.setenv(FASHION_DIR_ENV, str(tmp_path))
    with pytest.raises(TaskError, match="apt-get install dataset-fashion-mnist"):
        get_task("fashion-mnist")


def test_user_task_from_module_spec():
    task = get_task("tests.user_task:make_task")
    assert task.name == "user-mlp-conv"
    task.check_model()


def test_model_without_logits_is_refused():
    task = get_task("tests.user_task:bad_task")
    with pytest.raises(TaskError, match="class logits"):
        task.check_model()


def test_user_task_not_returning_task():
    with pytest.raises(TaskError, match="must return a slimtune.Task"):
        get_task("tests.user_task:not_a_task")


def test_from_loaders_materialises_batches():
    from torch.utils.data import DataLoader, TensorDataset

    x, y = torch.randn(20, 1, 8, 8), torch.randint(0, 3, (20,))
    loader = DataLoader(TensorDataset(x, y), batch_size=7)
    task = Task.from_loaders("t", lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 3)), loader, loader, loader)
    assert task.num_classes == 3 and len(task.data.x_train) == 20


def test_the_readme_user_task_api_is_importable_from_the_package():
    import subprocess
    import sys

    import slimtune

    assert slimtune.Task is Task and slimtune.TaskError is TaskError and "Task" in slimtune.__all__
    done = subprocess.run([sys.executable, "-c", "from slimtune import Task; print(Task.__name__)"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "Task", done.stderr


def test_fashion_mnist_loads_from_the_debian_package():
    """The real data set (scripts/test.sh installs dataset-fashion-mnist): under CI a
    missing package fails this test instead of skipping it."""
    import os

    from slimtune.tasks._builtin import FASHION_DIR_DEFAULT
    from tests._system import require_system

    require_system(None if os.path.isdir(FASHION_DIR_DEFAULT) else
                   f"Fashion-MNIST is not installed ({FASHION_DIR_DEFAULT} missing; apt-get install dataset-fashion-mnist)")
    task = get_task("fashion-mnist")
    data = task.data
    assert task.num_classes == 10 and tuple(data.x_train.shape[1:]) == (1, 28, 28)
    assert len(data.x_train) == 10_000 and len(data.x_test) == 10_000 and len(data.x_val) == 5_000
    assert sorted(set(data.y_test.tolist())) == list(range(10))


def test_a_missing_system_component_fails_under_ci_and_skips_elsewhere(monkeypatch):
    from tests._system import require_system

    require_system(None)  # present: nothing happens
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="under CI=true"):
        require_system("PostgreSQL server binaries not found")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        require_system("PostgreSQL server binaries not found")
