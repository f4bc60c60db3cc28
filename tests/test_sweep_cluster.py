"""A sweep on a two-node Ray cluster (in-process nodes): its trials run on both.

Its own file, so the parallel suite (make test: one file per process) runs it beside the other sweeps.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from mnist_cnn.core.config import ExperimentConfig, SweepConfig
from mnist_cnn.sweep.compare import run_sweep


@pytest.mark.slow
def test_sweep_on_a_two_node_ray_cluster_uses_both_nodes(tmp_path: Path) -> None:
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        # The shapes of the other sweeps' trials (300 images): their compiled steps are in the suite's JAX cache.
        config = SweepConfig(experiment=ExperimentConfig(limit=300, epochs=1, backend="jax"), seeds=(0, 1))
        statistics = run_sweep(config, tmp_path / "cluster", ray_address=cluster.address, stream=io.StringIO())
    finally:
        cluster.shutdown()
    nodes = {trial.node_id for trial in statistics.trials}
    assert len(nodes) == 2, statistics.trials  # One CPU a node, two trials at once: one on each.
