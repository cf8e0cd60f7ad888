"""The metrics site on a real loopback port, scraped with treq."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any, cast

import attrs
import pytest
import pytest_twisted
import treq
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor as global_reactor
from twisted.web.client import HTTPConnectionPool

from oxidb.metrics import NodeHealth, RaftStatus, ServerMetrics, ThreadPoolStats, make_metrics_site

reactor = cast(Any, global_reactor)


@attrs.define
class Node:
    """What the health answers are computed from, changed by the tests."""

    serving: bool = True
    raft: RaftStatus | None = None


@attrs.define
class Endpoint:
    url: str
    node: Node
    metrics: ServerMetrics
    pool: HTTPConnectionPool

    async def get(self, path: str, method: str = "GET", **kwargs: Any) -> tuple[int, dict[str, str], bytes]:
        response = await treq.request(method, self.url + path, pool=self.pool, **kwargs)
        body = await response.content()
        headers = {k.decode().lower(): v[0].decode() for k, v in response.headers.getAllRawHeaders()}
        return response.code, headers, body


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    node = Node()
    metrics = ServerMetrics(reactor, ["ping"])
    health = NodeHealth(lambda: node.serving, raft=lambda: node.raft)
    site = make_metrics_site(metrics, health, reactor, reactor.getThreadPool())
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    pool = HTTPConnectionPool(reactor, persistent=False)
    yield Endpoint(f"http://127.0.0.1:{port.getHost().port}", node, metrics, pool)
    pytest_twisted.blockon(port.stopListening())


def follower(**changes: Any) -> RaftStatus:
    fields: dict[str, Any] = dict(
        node_id=2, state="Follower", term=3, leader_id=1, last_log_index=9, commit_index=9, applied_index=9
    )
    fields.update(changes)
    return RaftStatus(**fields)


def parse(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


@pytest_twisted.ensureDeferred
async def test_metrics_in_classic_text_format(endpoint: Endpoint) -> None:
    endpoint.metrics.connection_opened()
    endpoint.metrics.command_finished("ping", "ok", 0.0001)
    for accept in [None, "application/openmetrics-text; version=1.0.0", "text/plain;version=1.0.0"]:
        headers = {"Accept": [accept]} if accept else None
        code, response_headers, body = await endpoint.get("/metrics", headers=headers)
        assert code == 200
        assert response_headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        samples = parse(body)
        assert samples[("oxidb_connections", ())] == 1
        assert samples[("oxidb_connections_total", ())] == 1
        assert samples[("oxidb_commands_total", (("cmd", "ping"), ("result", "ok")))] == 1
        assert body.count(b"# TYPE oxidb_connections ") == 1


@pytest_twisted.ensureDeferred
async def test_scrapes_collect_off_the_reactor_thread(endpoint: Endpoint) -> None:
    threads = []

    def stats() -> ThreadPoolStats:
        threads.append(threading.current_thread())
        return ThreadPoolStats(size=4, busy=2)

    endpoint.metrics.threadpool_source = stats
    code, _, body = await endpoint.get("/metrics")
    assert code == 200
    assert parse(body)[("oxidb_threadpool_busy", ())] == 2
    assert threads and threading.main_thread() not in threads


@pytest_twisted.ensureDeferred
async def test_health(endpoint: Endpoint) -> None:
    code, headers, body = await endpoint.get("/health")
    assert (code, body) == (200, b"serving\n")
    assert headers["content-type"] == "text/plain; charset=utf-8"
    assert headers["cache-control"] == "no-store"
    endpoint.node.serving = False
    code, _, body = await endpoint.get("/health")
    assert (code, body) == (503, b"not serving requests\n")


async def ready(endpoint: Endpoint, query: str = "", method: str = "GET") -> tuple[int, Any]:
    code, headers, body = await endpoint.get("/ready" + query, method=method)
    assert headers["cache-control"] == "no-store"
    return code, json.loads(body) if body else None


@pytest_twisted.ensureDeferred
async def test_ready_standalone(endpoint: Endpoint) -> None:
    assert await ready(endpoint) == (200, {"ready": True, "leader": True, "reason": "standalone"})
    assert await ready(endpoint, "?role=leader") == (200, {"ready": True, "leader": True, "reason": "standalone"})
    endpoint.node.serving = False
    expected = {"ready": False, "leader": False, "reason": "not serving requests"}
    assert await ready(endpoint) == (503, expected)
    assert await ready(endpoint, "?role=leader") == (503, expected)


@pytest_twisted.ensureDeferred
async def test_ready_in_a_cluster(endpoint: Endpoint) -> None:
    endpoint.node.raft = follower()
    assert await ready(endpoint) == (200, {"ready": True, "leader": False, "reason": "following leader 1"})
    assert await ready(endpoint, "?role=leader") == (503, {"ready": True, "leader": False, "reason": "not the leader"})

    endpoint.node.raft = follower(applied_index=7)
    not_caught_up = {"ready": False, "leader": False, "reason": "applied index 7 behind commit index 9"}
    assert await ready(endpoint) == (503, not_caught_up)
    assert await ready(endpoint, "?role=leader") == (503, not_caught_up)

    endpoint.node.raft = follower(leader_id=None, state="Candidate")
    assert await ready(endpoint) == (503, {"ready": False, "leader": False, "reason": "no known leader"})

    endpoint.node.raft = follower(state="Leader", leader_id=2)
    assert await ready(endpoint, "?role=leader") == (200, {"ready": True, "leader": True, "reason": "leader"})
    assert await ready(endpoint, "?role=leader", method="HEAD") == (200, None)
    endpoint.node.raft = follower()
    assert await ready(endpoint, "?role=leader", method="HEAD") == (503, None)


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("query", ["?role=follower", "?role=", "?role=leader&role=leader", "?role=LEADER"])
async def test_ready_rejects_unknown_roles(endpoint: Endpoint, query: str) -> None:
    code, body = await ready(endpoint, query)
    assert code == 400
    assert body == {"error": "role must be 'leader'"}


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [("GET", "/", 404), ("GET", "/nope", 404), ("POST", "/health", 405), ("PUT", "/ready", 405),
     ("POST", "/metrics", 405)],
)
async def test_other_paths_and_methods(endpoint: Endpoint, method: str, path: str, expected: int) -> None:
    code, _, _ = await endpoint.get(path, method=method)
    assert code == expected
