"""A real local Ray cluster of 3 nodes (`ray.cluster_utils.Cluster`, one process group per node on this machine)
with this process connected as its driver: what the shards' tests on Ray share. One per test module (the
`ray_cluster` fixture of tests/conftest.py): a module may remove a node or end replicas for good."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

RESOURCE = "cavsync_shard"  # what a shard replica takes (indexer.cluster.ray_serve.ClusterConfig.resource)
NODE: dict[str, Any] = {"num_cpus": 1, "object_store_memory": 100 * 2**20, "resources": {RESOURCE: 6}}


@dataclass(frozen=True)
class LocalCluster:
    cluster: Any  # ray.cluster_utils.Cluster
    workers: list[Any]  # the non-head nodes (the head holds the driver: never removed)
    address: str
    namespace: str


@contextmanager
def local_cluster(nodes: int = 3, namespace: str = "cavsync-test") -> Iterator[LocalCluster]:
    """Start the head and `nodes - 1` workers, each offering `RESOURCE`, connect, and end them all after."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={**NODE, "include_dashboard": False})
    try:
        workers = [cluster.add_node(**NODE) for _ in range(nodes - 1)]
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, namespace=namespace, log_to_driver=False)
        yield LocalCluster(cluster, workers, cluster.address, namespace)
    finally:
        ray.shutdown()
        cluster.shutdown()
