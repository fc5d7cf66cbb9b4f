"""Integration fixtures: one small local Ray cluster per test session."""

import os

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def ray_local():
    """A 2-CPU local Ray cluster with a small object store, shared by the whole session."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False,
                 object_store_memory=512 * 2**20, log_to_driver=False)
    yield ray
    ray.shutdown()
