"""
The router's C{/metrics} (Prometheus text, prometheus-client): per shard,
the leader (a gauge per member, 1 for the leader), the term seen, leader
changes, requests, error replies and failures, unknown outcomes, and the
mean backend latency; collected from the groups at each scrape.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from oxidb.config import format_address
from oxidb.pool.backend import Group

__all__ = ["PoolCollector", "metrics_site", "render_metrics"]

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


class PoolCollector(Collector):
    def __init__(self, groups: Sequence[Group]) -> None:
        self.groups = groups

    def collect(self) -> Iterator[Any]:
        shard_label = ["shard"]
        leader = GaugeMetricFamily(
            "oxipool_shard_leader",
            "1 for the member the router takes as the shard's leader",
            labels=["shard", "member"],
        )
        has_leader = GaugeMetricFamily("oxipool_shard_has_leader", "1 when the leader is known", labels=shard_label)
        term = GaugeMetricFamily("oxipool_shard_term", "the highest Raft term seen", labels=shard_label)
        changes = CounterMetricFamily("oxipool_shard_leader_changes", "leader changes seen", labels=shard_label)
        requests = CounterMetricFamily("oxipool_shard_requests", "requests sent to the shard", labels=shard_label)
        errors = CounterMetricFamily("oxipool_shard_errors", "error replies and failures", labels=shard_label)
        unknown = CounterMetricFamily("oxipool_shard_unknown_outcomes", "writes of unknown outcome", labels=shard_label)
        latency = CounterMetricFamily(
            "oxipool_shard_latency_seconds", "total seconds answered requests took", labels=shard_label
        )
        for group in self.groups:
            shard = str(group.index)
            state = group.state
            for address in group.members:
                leader.add_metric([shard, format_address(address)], 1.0 if address == state.leader else 0.0)
            has_leader.add_metric([shard], 1.0 if state.leader is not None else 0.0)
            term.add_metric([shard], float(state.term))
            changes.add_metric([shard], float(state.leader_changes))
            requests.add_metric([shard], float(state.requests))
            errors.add_metric([shard], float(state.errors))
            unknown.add_metric([shard], float(state.unknown_outcomes))
            latency.add_metric([shard], state.latency_total)
        yield from (leader, has_leader, term, changes, requests, errors, unknown, latency)


def render_metrics(groups: Sequence[Group]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PoolCollector(groups))
    return generate_latest(registry)


class _Metrics(Resource):
    isLeaf = True

    def __init__(self, groups: Sequence[Group]) -> None:
        super().__init__()
        self.groups = groups

    def render_GET(self, request: Request) -> bytes:
        if request.path not in (b"/metrics", b"/metrics/"):
            request.setResponseCode(404)
            return b"not found\n"
        request.setHeader(b"content-type", CONTENT_TYPE)
        return render_metrics(self.groups)


def metrics_site(groups: Sequence[Group]) -> Site:
    return Site(_Metrics(groups))
