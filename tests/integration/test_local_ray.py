"""The embedded Ray that `hdsu-ray run` starts: its workers can find their own cluster."""

import os


def test_workers_address_their_own_cluster(ray_local):
    # Ray Train's PlacementGroupCleaner (and any State API call in a worker) resolves "the"
    # cluster from RAY_ADDRESS; without it a stale /tmp/ray/ray_current_cluster made every
    # TorchTrainer.fit end 11 s late. The driver's own environment must stay untouched.
    ray = ray_local

    @ray.remote(num_cpus=0)
    def worker_address():
        return os.environ.get("RAY_ADDRESS")

    gcs = ray.get_runtime_context().gcs_address
    assert ray.get(worker_address.remote()) == gcs
    assert os.environ.get("RAY_ADDRESS") != gcs
    assert "RAY_GCS_SERVER_PORT" not in os.environ


def test_state_api_answers_from_a_worker(ray_local):
    # What the cleaner does once a second: look an actor up by id, from inside the cluster.
    ray = ray_local

    @ray.remote(num_cpus=0)
    class Probe:
        def state(self):
            from ray.util.state import get_actor

            return get_actor(ray.get_runtime_context().get_actor_id(), timeout=10).state

    probe = Probe.remote()
    assert ray.get(probe.state.remote(), timeout=60) == "ALIVE"
