"""Reply helpers shared by the real-process cluster tests."""

from __future__ import annotations

from typing import Any

from oxidb._harness import LocalCluster


def ok(reply: dict[str, Any]) -> Any:
    """The C{data} of a successful reply (fails the test otherwise)."""
    assert reply.get("ok") is True, reply
    return reply["data"]


def everything(cluster: LocalCluster, node: int) -> list[dict[str, Any]]:
    """Every document of collection C{docs} on C{node}, by C{_id}."""
    return ok(cluster.request(node, {"cmd": "find", "collection": "docs", "query": {}, "sort": {"_id": 1}}))
