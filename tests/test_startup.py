"""What a ``run`` worker pays before its first trial: the digits task reads its data
without importing scikit-learn (whose import took ~1.6 s of a ~4 s worker start-up),
and gets exactly the arrays ``load_digits`` returns."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def test_the_digits_arrays_are_sklearns():
    from sklearn.datasets import load_digits

    from slimtune.tasks._builtin import _digits_arrays

    images, target = _digits_arrays()
    bunch = load_digits()
    assert images.dtype == bunch.images.dtype and images.shape == (1797, 8, 8)
    assert np.array_equal(images, bunch.images) and np.array_equal(target, bunch.target)
    assert target.dtype == bunch.target.dtype


def test_loading_the_digits_task_does_not_import_sklearn():
    code = ("import sys; from slimtune.tasks import get_task; task = get_task('digits'); "
            "assert len(task.data.x_train) == 1078, len(task.data.x_train); "
            "print('sklearn' in sys.modules)")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stdout + out.stderr
