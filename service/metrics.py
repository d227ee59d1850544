"""Prometheus metrics: requests and latencies per route template (never the raw path), the index size.

Each app has its own registry (several apps may live in one process, in tests for one).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from indexer.cluster.scatter import ShardState

UNMATCHED = "<unmatched>"
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "cavsync_http_requests",
            "HTTP requests by route template and status code",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "cavsync_http_request_duration_seconds",
            "HTTP request latency by route template",
            ["method", "route"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.index_clips = Gauge(
            "cavsync_index_clips", "Live clips in the loaded index version", registry=self.registry
        )
        self.index_version = Gauge(
            "cavsync_index_version", "Number of the loaded index version (0: empty index)", registry=self.registry
        )
        self.inferences = Gauge("cavsync_inferences_in_progress", "Inference slots in use", registry=self.registry)
        self.shard_gauges = {
            name: Gauge(f"cavsync_shard_{metric}", text, ["shard"], registry=self.registry)
            for name, metric, text in (
                ("replicas", "replicas", "Replicas meant to serve the shard"),
                ("alive", "replicas_alive", "Replicas of the shard that answered a ping"),
                ("clips", "clips", "Live clips in the shard's loaded version"),
                ("failovers", "failovers", "Calls moved from a failed replica to another (cumulative)"),
                ("unavailable", "unavailable", "Searches refused for want of a live replica (cumulative)"),
            )
        }

    def shards(self, states: Sequence[ShardState]) -> None:
        """Each shard's gauges, from the searcher's states (`indexer.cluster.scatter.ShardState`)."""
        for state in states:
            for name, gauge in self.shard_gauges.items():
                gauge.labels(str(state.shard)).set(getattr(state, name))

    def render(self) -> bytes:
        return generate_latest(self.registry)


def route_template(scope: Scope) -> str:
    """The matched route's path template (e.g. /videos/{video_id}), or a fixed label for no match."""
    route = scope.get("route")
    return getattr(route, "path", None) or UNMATCHED


class MetricsMiddleware:
    """Pure ASGI: counts every HTTP request with its final status and observes its latency."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            route, method = route_template(scope), scope["method"]
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(time.perf_counter() - start)
