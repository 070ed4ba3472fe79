"""Shared fixtures: one real local Ray instance for the whole test run (it costs ~10 s to start)."""
from __future__ import annotations

import os

import pytest

# Tiny `shapes` settings for end-to-end runs: the real pipeline, sized to finish in seconds.
TINY = {
    "data.num_train": 150, "data.num_val": 40, "data.num_ood": 120, "data.num_source": 120,
    "teacher.fit_steps": 30, "train.epochs": 2, "train.iters_per_epoch": 4, "train.batch_size": 4,
}


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray cluster with 2 CPUs and the dashboard on (Train's placement-group cleaner needs it)."""
    import ray

    from orchestrator.ray_runtime import init_ray

    os.environ.pop("RAY_ADDRESS", None)
    init_ray(num_cpus=2, quiet=True)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory):
    """One cache for the session, so the tiny benchmark, teacher and labels are made once."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def sqlite_uri(tmp_path):
    return f"sqlite:///{tmp_path / 'mlflow.db'}"
