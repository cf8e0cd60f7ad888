"""
The whole service on the real reactor, on loopback ports: requests over TCP,
then /metrics, /health and /ready scraped with treq.
"""

from __future__ import annotations

from typing import Any, cast

import pytest_twisted
import treq
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor as global_reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.web.client import HTTPConnectionPool

from oxidb.config import Config
from oxidb.service import OxiService
from oxidb.testing import OxiClientProtocol

reactor = cast(Any, global_reactor)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


@pytest_twisted.ensureDeferred
async def test_metrics_health_and_ready_of_a_running_service(tmp_path: Any) -> None:
    config = Config(addr=("127.0.0.1", 0), data_dir=str(tmp_path), metrics_addr=("127.0.0.1", 0))
    service = OxiService(config, reactor)
    service.startService()
    pool = HTTPConnectionPool(reactor, persistent=False)
    try:
        base = f"http://127.0.0.1:{service.metrics_port.getHost().port}"
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", service.port.getHost().port)
        client = await connectProtocol(endpoint, OxiClientProtocol())
        assert await client.request({"cmd": "ping"}) == {"ok": True, "data": "pong"}
        assert (await client.request({"cmd": "nope"}))["ok"] is False
        assert (await client.request({"cmd": "server_status"}))["data"]["connections"] == 1

        response = await treq.get(base + "/metrics", pool=pool)
        assert response.code == 200
        values = samples(await response.text())
        assert values[("oxidb_commands_total", (("cmd", "ping"), ("result", "ok")))] == 1
        assert values[("oxidb_commands_total", (("cmd", "unknown"), ("result", "error")))] == 1
        assert values[("oxidb_connections", ())] == 1
        assert values[("oxidb_bytes_received_total", ())] > 0

        for path in ("/health", "/ready", "/ready?role=leader"):
            response = await treq.get(base + path, pool=pool)
            assert response.code == 200, path
            await response.content()
        client.transport.loseConnection()
        await client.lost_d
    finally:
        await service.stopService()
        await pool.closeCachedConnections()
