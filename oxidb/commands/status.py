"""
Server status commands: C{server_status} (ours; upstream has none) and
C{proc_status} (upstream's shape, server.md 10).

Both read the service's L{oxidb.metrics.ServerMetrics} at
C{ctx.metrics}; their blocking parts (counting documents, walking the
data directory, reading C{/proc}) run through C{ctx.read}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from oxidb.auth.rbac import Role
from oxidb.commands._registry import Command
from oxidb.errors import InternalError

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from oxidb.commands._context import CommandContext
    from oxidb.metrics import ServerMetrics, StorageSample


def _metrics(ctx: CommandContext) -> ServerMetrics:
    """The server's metrics (every composed server has them)."""
    metrics = ctx.metrics
    if metrics is None:
        raise InternalError("no server metrics")
    return metrics


def server_status(ctx: CommandContext, request: dict[str, Any]) -> Deferred[dict[str, Any]]:
    """
    C{{"version", "mode", "uptime_s", "connections", "connections_total",
    "commands_served", "threadpool", "data_dir_bytes", "documents", "raft"}}.
    A fresh storage measurement, which C{/metrics} then exports too.
    """
    metrics = _metrics(ctx)
    d = ctx.read(metrics.measure_storage)
    d.addCallback(metrics.storage_measured)
    d.addCallback(_server_status_reply, metrics)
    return d


def _server_status_reply(storage: StorageSample, metrics: ServerMetrics) -> dict[str, Any]:
    raft = metrics.sample_raft()
    pool = metrics.threadpool()
    documents = storage.documents
    return {
        "version": metrics.version,
        "mode": "standalone" if raft is None else "cluster",
        "uptime_s": int(metrics.uptime()),
        "connections": metrics.connections,
        "connections_total": metrics.connections_total,
        "commands_served": metrics.commands_served(),
        "threadpool": None if pool is None else {"size": pool.size, "busy": pool.busy},
        "data_dir_bytes": storage.data_dir_bytes,
        "documents": None
        if documents is None
        else {"total": sum(documents.values()), "collections": dict(sorted(documents.items()))},
        "raft": None
        if raft is None
        else {
            "node_id": raft.node_id,
            "state": raft.state,
            "term": raft.term,
            "leader": raft.leader_id,
            "commit_index": raft.commit_index,
            "applied_index": raft.applied_index,
        },
    }


def proc_status(ctx: CommandContext, request: dict[str, Any]) -> Deferred[dict[str, Any]]:
    """C{{"cpu_percent", "mem_rss_mb", "threads", "uptime_s"}} (server.md 10)."""
    d = ctx.read(_metrics(ctx).process.sample)
    d.addCallback(lambda sample: sample.to_wire())
    return d


COMMANDS = [
    Command(
        "server_status",
        server_status,
        audit_collection=None,
        role=Role.READ,
        summary="Version, mode, uptime, connections, commands served, pool, storage and Raft state.",
    ),
    Command(
        "proc_status",
        proc_status,
        audit_collection=None,
        role=Role.READ,
        summary='`{"cpu_percent", "mem_rss_mb", "threads", "uptime_s"}`.',
    ),
]
