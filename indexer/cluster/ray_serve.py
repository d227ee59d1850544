"""The sharded corpus served by a Ray cluster: R replicas of each of S shards run `ShardServer` as Ray actors
next to the shard's data (a shared filesystem's `index/shard-NN/`), and `RaySearcher` scatters each query to
one replica per shard, fails over to the next replica of a shard whose replica died, and merges
(`indexer.cluster.scatter.merge_hits`). The only module that imports ray, and only inside functions: ray is an extra
(`pip install cavsync[cluster]`), and nothing else loads it.

Placement: a replica takes one unit of the custom resource `ClusterConfig.resource` (nodes offer it with `ray
start --resources '{"cavsync_shard": N}'`: N replicas fit its memory) and is placed on the resource's node
(s + r) mod n (soft affinity: replicas of a shard on different nodes while there are enough of them; a
replica whose node is gone restarts wherever the resource is free). Ray restarts a dead replica
(`max_restarts=-1`); calls in flight to it fail and are sent to another replica of the shard; a shard whose
replicas all fail is a `ShardUnavailable` (503 naming it), never a silent partial answer.

Consistency: each request names the store version of every shard (the API's loaded generation,
`indexer.cluster.corpus`); a replica opens that version (two kept open), so replicas that lag or restarted answer
from the same data, and a video deleted before the request was made is in none of them. A version pruned by
later writes before a replica opened it is a `VersionGone`, raised to the caller (the API then searches the live
generation: `service.engine.Engine.search`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from indexer.cluster.corpus import shard_name
from indexer.cluster.scatter import SearchRequest, ShardState, ShardUnavailable, VersionGone, merge_hits, parts
from indexer.search.moments import TrackHit
from indexer.store.corpus import CorpusVersion, StoreError
from indexer.store.version import StoreVersion

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterConfig:
    """Where the cluster is and how the shards are served (built from the settings by `cavsync`)."""

    address: str  # "auto", "ray://head:10001", "127.0.0.1:6379"
    index_root: Path  # the data dir's index/ as the cluster's nodes see it (a shared filesystem)
    shards: int
    replicas: int = 2
    resource: str = "cavsync_shard"  # one unit per replica
    namespace: str = "cavsync"
    prefix: str = "cavsync"  # actor names: <prefix>-shard-SS-rR (one deployment's, reused by every API process)
    detached: bool = True  # replicas outlive the API process that started them
    gpus_per_replica: float = 0.0
    concurrency: int = 4  # searches a replica runs at once (threads)
    call_timeout_s: float = 30.0  # a replica slower than this is given up for another one
    ping_timeout_s: float = 2.0  # /health's wait for each replica
    suspect_s: float = 5.0  # a replica that failed is tried last this long
    retry_after_s: int = 1


class ShardServer:
    """One replica of one shard (a Ray actor; a plain class, usable without Ray): the store versions asked for,
    opened on first use (FAISS indexes read), the last `keep` kept."""

    def __init__(self, root: str, shard: int, gpu: bool = False, keep: int = 2) -> None:
        self.root, self.shard, self.gpu, self.keep = Path(root), shard, gpu, keep
        self._versions: OrderedDict[str, StoreVersion] = OrderedDict()
        self._lock = threading.Lock()
        self.started = time.time()

    def version(self, name: str) -> StoreVersion:
        with self._lock:
            if name in self._versions:
                self._versions.move_to_end(name)
                return self._versions[name]
            try:
                version = StoreVersion(self.root, name, self.gpu)
                version.index  # noqa: B018  (read now, so that a prune cannot take them)
            except (OSError, RuntimeError) as exc:
                if not (self.root / "versions" / name / "manifest.json").exists():  # pruned before or while opened
                    raise VersionGone(self.shard, name) from exc
                raise StoreError(f"shard {self.shard}: version {name} cannot be opened ({exc}); retry") from exc
            self._versions[name] = version
            while len(self._versions) > self.keep:
                self._versions.popitem(last=False)
            return version

    def search(self, name: str, query: np.ndarray, request: SearchRequest) -> list[TrackHit]:
        return request.run(self.version(name), query)

    def state(self) -> dict[str, Any]:
        """Where this replica runs and what it holds (a health probe)."""
        import ray

        loaded = list(self._versions)
        rss = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")  # resident bytes
        return {"shard": self.shard, "node": ray.get_runtime_context().get_node_id(), "versions": loaded, "rss": rss}


class RaySearcher:
    """`indexer.cluster.scatter.Searcher` over the replicas of a Ray cluster (see the module)."""

    needs_indexes = False  # the replicas read the FAISS indexes; the API maps tokens only

    def __init__(self, config: ClusterConfig, actors: list[list[Any]]) -> None:
        self.config, self.actors = config, actors
        self._suspect: dict[tuple[int, int], float] = {}
        self._turn = [0] * len(actors)
        self._lock = threading.Lock()
        self.failovers = [0] * len(actors)
        self.unavailable = [0] * len(actors)

    @classmethod
    def start(cls, config: ClusterConfig) -> RaySearcher:
        """Connect to the cluster and get (or start) every replica."""
        import ray

        if not ray.is_initialized():
            ray.init(address=config.address, namespace=config.namespace, log_to_driver=False)
        listed: list[dict[str, Any]] = ray.nodes()  # type: ignore[no-untyped-call]  # ray's API is untyped
        nodes = sorted(n["NodeID"] for n in listed if n["Alive"] and n["Resources"].get(config.resource, 0) > 0)
        if not nodes:
            raise RuntimeError(f"no node of the Ray cluster at {config.address} offers the {config.resource} resource")
        if len(nodes) < config.replicas:
            log.warning("%d nodes offer %s: replicas of a shard share nodes", len(nodes), config.resource)
        actors = [
            [_replica(config, s, r, nodes[(s + r) % len(nodes)]) for r in range(config.replicas)]
            for s in range(config.shards)
        ]
        return cls(config, actors)

    # ------------------------------------------------------------------------------------ searching
    def search(self, version: CorpusVersion, query: np.ndarray, request: SearchRequest) -> list[TrackHit]:
        import ray

        names = version.part_names
        if len(names) != len(self.actors):
            raise StoreError(f"the corpus has {len(names)} shards; the cluster serves {len(self.actors)}")
        tokens = ray.put(np.ascontiguousarray(query, dtype=np.float32))
        calls = {s: _Call(s, self._order(s)) for s, name in enumerate(names) if name is not None}
        running = {self._send(call, names[s], tokens, request): call for s, call in calls.items()}
        results: dict[int, list[TrackHit]] = {}
        while running:
            ready, _ = ray.wait(list(running), num_returns=1, timeout=self._remaining(running.values()))
            for ref in ready or [min(running, key=lambda r: running[r].sent)]:  # none ready: the oldest timed out
                call = running.pop(ref)
                found = self._result(ref, call, timed_out=not ready)
                if found is not None:
                    results[call.shard] = found
                else:
                    running[self._send(call, names[call.shard], tokens, request)] = call
        return merge_hits([results[s] for s in sorted(results)], request.k)

    def _remaining(self, calls: Iterable[_Call]) -> float:
        oldest = min(call.sent for call in calls)
        return max(0.0, oldest + self.config.call_timeout_s - time.monotonic())

    def _result(self, ref: Any, call: _Call, *, timed_out: bool) -> list[TrackHit] | None:
        """A replica's answer, or None when it failed (died, restarting, too slow): the next replica is tried."""
        import ray
        from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError, RayTaskError

        try:
            if timed_out:
                raise GetTimeoutError(f"no answer in {self.config.call_timeout_s} s")
            return list(ray.get(ref, timeout=self.config.call_timeout_s))
        except RayTaskError as exc:  # the search itself failed (a bad request, a pruned version): the caller's
            if isinstance(exc.cause, VersionGone):
                raise exc.cause from None  # plain: the engine searches the live generation instead
            raise exc.as_instanceof_cause() from None  # type: ignore[no-untyped-call]  # ray is untyped
        except (RayActorError, ActorUnavailableError, GetTimeoutError) as exc:
            self._failed(call, exc)
            return None

    def _failed(self, call: _Call, exc: Exception) -> None:
        replica = call.order[call.tried - 1]
        log.warning("shard %d replica %d failed (%s); trying another", call.shard, replica, type(exc).__name__)
        with self._lock:
            self._suspect[(call.shard, replica)] = time.monotonic() + self.config.suspect_s
            self.failovers[call.shard] += 1
        call.reason = f"{type(exc).__name__}: {exc}"[:200]

    def _send(self, call: _Call, name: str | None, tokens: Any, request: SearchRequest) -> Any:
        if call.tried >= len(call.order):
            with self._lock:
                self.unavailable[call.shard] += 1
            raise ShardUnavailable(call.shard, call.reason, self.config.retry_after_s)
        actor = self.actors[call.shard][call.order[call.tried]]
        call.tried, call.sent = call.tried + 1, time.monotonic()
        return actor.search.remote(name, tokens, request)

    def _order(self, shard: int) -> list[int]:
        """The shard's replicas in the order to try them: round robin, those that failed lately last."""
        with self._lock:
            start, now = self._turn[shard], time.monotonic()
            self._turn[shard] += 1
            order = [(start + i) % len(self.actors[shard]) for i in range(len(self.actors[shard]))]
            return sorted(order, key=lambda r: self._suspect.get((shard, r), 0.0) > now)

    # ------------------------------------------------------------------------------------ health
    def states(self, version: CorpusVersion | None) -> list[ShardState]:
        import ray

        probes = {
            actor.state.remote(): (s, r) for s, replicas in enumerate(self.actors) for r, actor in enumerate(replicas)
        }
        ready, _ = ray.wait(list(probes), num_returns=len(probes), timeout=self.config.ping_timeout_s)
        nodes: dict[int, list[str]] = {s: [] for s in range(len(self.actors))}
        for ref in ready:
            try:
                nodes[probes[ref][0]].append(str(ray.get(ref, timeout=0)["node"]))
            except Exception as exc:  # a dead or restarting replica is the answer
                log.info("replica %s does not answer: %s", probes[ref], type(exc).__name__)
        for ref in set(probes) - set(ready):
            ray.cancel(ref)
        held = parts(version) or (None,) * len(self.actors)
        return [
            ShardState(
                s,
                p.name if p else None,
                len(p) if p else 0,
                len(self.actors[s]),
                len(nodes[s]),
                tuple(nodes[s]),
                self.failovers[s],
                self.unavailable[s],
            )
            for s, p in enumerate(held)
        ]

    def wait_ready(self, timeout_s: float) -> bool:
        """Wait until every replica answers (a fresh start takes a worker process per replica); whether they do."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(s.alive == s.replicas for s in self.states(None)):
                return True
            time.sleep(0.2)
        return False

    def close(self) -> None:
        """Forget the replicas (detached ones keep running for the next API process; `stop` ends them)."""
        self.actors = [[] for _ in self.actors]

    def stop(self) -> None:
        """End every replica (an operator's teardown, the tests')."""
        import ray

        for replicas in self.actors:
            for actor in replicas:
                ray.kill(actor, no_restart=True)
        self.close()


@dataclass
class _Call:
    """One shard's part of a search: the replicas to try in order, how many were tried, when the last was sent."""

    shard: int
    order: list[int]
    tried: int = 0
    sent: float = 0.0
    reason: str = "no replica"


def _replica(config: ClusterConfig, shard: int, replica: int, node: str) -> Any:
    """Replica `replica` of `shard`, started on `node` unless one of its name already runs."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    options: dict[str, Any] = {
        "name": f"{config.prefix}-{shard_name(shard)}-r{replica}",
        "namespace": config.namespace,
        "get_if_exists": True,
        "num_cpus": 0,
        "num_gpus": config.gpus_per_replica,
        "resources": {config.resource: 1},
        "max_restarts": -1,
        "max_task_retries": 0,  # a call in flight on a dead replica fails fast; the searcher sends it elsewhere
        "max_concurrency": config.concurrency,
        "scheduling_strategy": NodeAffinitySchedulingStrategy(node, soft=True),
    }
    if config.detached:
        options["lifetime"] = "detached"
    remote = ray.remote(ShardServer).options(**options)
    root = str(config.index_root / shard_name(shard))
    return remote.remote(root, shard, config.gpus_per_replica > 0)
