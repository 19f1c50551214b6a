"""Shared fixtures: an isolated baseline cache and working directory per session."""

from __future__ import annotations

import os

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    # One baseline cache for the whole test session (each baseline is trained once), shared
    # by pytest-xdist's workers: their temporary folders have one parent, and the cache
    # writes each file atomically, so two workers never see half a file.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = tmp_path_factory.getbasetemp().parent / "slimtune-cache"
        shared.mkdir(exist_ok=True)
        os.environ.setdefault("SLIMTUNE_CACHE_DIR", str(shared))
    else:
        os.environ.setdefault("SLIMTUNE_CACHE_DIR", str(tmp_path_factory.mktemp("slimtune-cache")))
    torch.set_num_threads(1)  # 2 threads on a shared 2-core machine was several times slower


@pytest.fixture(scope="session")
def digits_task():
    from slimtune.tasks import get_task

    return get_task("digits")


@pytest.fixture(scope="session")
def digits_baseline(digits_task):
    from slimtune.search._baseline import get_baseline

    return get_baseline(digits_task, seed=0)


@pytest.fixture(scope="module")
def postgres_server():
    """A throwaway PostgreSQL server for the test module (:class:`slimtune._pgserver.PostgresServer`:
    ``url``, ``stop()``, ``start()``); skipped without one (failed under CI)."""
    from slimtune._pgserver import PostgresUnavailable, temporary_postgres_server
    from tests._system import require_system

    try:
        with temporary_postgres_server() as server:
            yield server
    except PostgresUnavailable as exc:
        require_system(str(exc))
