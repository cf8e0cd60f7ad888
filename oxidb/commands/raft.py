"""
Cluster management commands (server.md 8.2), registered only in cluster
mode (a standalone server answers C{unknown command: raft_*}): C{raft_init},
C{raft_add_learner}, C{raft_change_membership} and C{raft_metrics}, with
upstream's request fields, reply shapes and error texts; and our own
C{raft_remove_node}, C{raft_transfer_leader} and C{raft_status}
(docs/clustering.md). The handlers drive the node through C{ctx.cluster}
(an L{IClusterControl}).
"""

from __future__ import annotations

from typing import Any, TypeGuard

from twisted.internet.defer import Deferred, inlineCallbacks

from oxidb.auth.store import ADMIN_USER, SeedAdmin
from oxidb.commands._context import CommandContext, IClusterControl
from oxidb.commands._registry import Command
from oxidb.commands._schema import Field, JsonType, fields
from oxidb.errors import BadRequestError, OxiError, RaftError
from oxidb.logs import Logger

_log = Logger(namespace="oxidb.commands.raft")

_U64 = 2**64


def _cause(error: RaftError) -> str:
    """A Raft error's text without the C{raft error: } prefix."""
    return str(error).removeprefix("raft error: ")


def _cluster(ctx: CommandContext) -> IClusterControl:
    """The node; these commands are registered only in cluster mode."""
    cluster = ctx.cluster
    if cluster is None:
        raise RaftError("not running in cluster mode")
    return cluster


def _node_id(value: Any) -> TypeGuard[int]:
    return type(value) is int and 0 <= value < _U64


@inlineCallbacks
def raft_init(ctx: CommandContext, request: dict[str, Any]) -> Any:
    cluster = _cluster(ctx)
    addr = request.get("addr")
    if not isinstance(addr, str) or not addr:
        addr = cluster.published_address
    if not addr:
        host, port = ctx.config.raft_addr
        raise BadRequestError(
            "raft init: no Raft address known for this node — set OXIDB_RAFT_ADDR or pass 'addr'. "
            f"OXIDB_RAFT_ADDR={host}:{port} cannot be dialled by peers; set OXIDB_RAFT_ADVERTISE to this "
            "node's routable host:port"
        )
    try:
        yield cluster.initialize(addr)
    except RaftError as e:
        raise BadRequestError(f"raft init failed: {_cause(e)}") from None
    yield _seed_admin(ctx)
    return "cluster initialized"


@inlineCallbacks
def _seed_admin(ctx: CommandContext) -> Any:
    """
    With auth on, replicate this node's C{admin} (its first admin) through
    the log, so that the cluster has one first admin rather than one per
    node (L{SeedAdmin}). A failure is logged, not answered: the cluster is
    initialized either way, and the admin can still be set with
    C{update_user} on the leader.
    """
    auth = ctx.auth
    record = None if auth is None else auth.store.get(ADMIN_USER)
    if record is None:
        return
    try:
        yield ctx.write(SeedAdmin(record))
    except OxiError as e:
        _log.warn(
            "raft_init: could not replicate the first admin ({error}); set its password with update_user "
            "on the leader",
            error=str(e),
        )
    else:
        _log.info("raft_init: the first admin '{user}' is replicated to every node", user=record.username)


def _membership_reply(result: Any) -> dict[str, str]:
    log_id, membership = result
    return {"log_id": log_id.display(), "membership": membership.debug_text()}


def raft_add_learner(ctx: CommandContext, request: dict[str, Any]) -> Deferred[Any]:
    node_id = request.get("node_id")
    if not _node_id(node_id):
        raise BadRequestError("missing 'node_id'")
    addr = request.get("addr")
    if not isinstance(addr, str) or not addr:
        raise BadRequestError("missing 'addr' (raft address)")
    return _managed(_cluster(ctx).add_learner, "add learner failed", node_id, addr)


def raft_change_membership(ctx: CommandContext, request: dict[str, Any]) -> Deferred[Any]:
    members = request.get("members")
    if not isinstance(members, list):
        raise BadRequestError("missing 'members' array")
    if not all(_node_id(m) for m in members):
        raise BadRequestError("'members' must be array of node IDs")
    return _managed(_cluster(ctx).change_membership, "change membership failed", set(members))


@inlineCallbacks
def _managed(action: Any, failure: str, *args: Any) -> Any:
    try:
        result = yield action(*args)
    except RaftError as e:
        raise BadRequestError(f"{failure}: {_cause(e)}") from None
    return _membership_reply(result)


def raft_metrics(ctx: CommandContext, request: dict[str, Any]) -> dict[str, Any]:
    metrics: dict[str, Any] = _cluster(ctx).metrics().upstream_json()
    return metrics


def raft_remove_node(ctx: CommandContext, request: dict[str, Any]) -> Deferred[Any]:
    node_id = request.get("node_id")
    if not _node_id(node_id):
        raise BadRequestError("missing 'node_id'")
    return _managed(_cluster(ctx).remove_node, "remove node failed", node_id)


@inlineCallbacks
def raft_transfer_leader(ctx: CommandContext, request: dict[str, Any]) -> Any:
    node_id = request.get("node_id")
    if not _node_id(node_id):
        raise BadRequestError("missing 'node_id'")
    try:
        leader, term = yield _cluster(ctx).transfer_leadership(node_id)
    except RaftError as e:
        raise BadRequestError(f"transfer leader failed: {_cause(e)}") from None
    return {"leader": leader, "term": term}


def raft_status(ctx: CommandContext, request: dict[str, Any]) -> dict[str, Any]:
    return status_report(_cluster(ctx).metrics())


def status_report(metrics: Any) -> dict[str, Any]:
    """
    C{raft_status}: the node's view of the cluster, as fields and as a
    human-readable C{text} (one line per member).
    """
    stored = metrics.membership
    membership = stored.membership if stored is not None else None
    last = metrics.last_log_index or 0
    members = []
    if membership is not None:
        for node, addr in membership.nodes.items():
            role = "voter" if node in membership.voters else "learner"
            if node == metrics.id:
                match: int | None = last
            else:
                match = metrics.replication.get(node)
            refused = metrics.refused.get(node)
            members.append(
                {
                    "id": node,
                    "role": role,
                    "addr": addr,
                    "incarnation": membership.incarnations.get(node),
                    "match": match,
                    "lag": None if match is None else max(0, last - match),
                    "status": f"refused: {refused}" if refused else "ok",
                }
            )
    refused_by = metrics.refused_by
    report: dict[str, Any] = {
        "id": metrics.id,
        "state": metrics.state,
        "term": metrics.current_term,
        "leader": metrics.current_leader,
        "cluster_id": metrics.cluster_id,
        "incarnation": metrics.incarnation,
        "last_log_index": metrics.last_log_index,
        "commit_index": metrics.commit_index,
        "last_applied": metrics.last_applied.index if metrics.last_applied else None,
        "joint": bool(membership is not None and membership.is_joint),
        "members": members,
        "refused_by": None if refused_by is None else {"node": refused_by[0], "reason": refused_by[1]},
    }
    lines = [
        f"node {metrics.id}: {metrics.state}, term {metrics.current_term}, leader {metrics.current_leader}, "
        f"cluster {metrics.cluster_id}, incarnation {metrics.incarnation}",
        f"log: last {metrics.last_log_index}, commit {metrics.commit_index}, applied {report['last_applied']}",
    ]
    for m in members:
        known = "-" if m["match"] is None else f"match {m['match']} lag {m['lag']}"
        lines.append(
            f"  {m['id']:>4} {m['role']:<7} {m['addr']:<21} incarnation {m['incarnation'] or 'not pinned'}"
            f"  {known}  {m['status']}"
        )
    if refused_by is not None:
        lines.append(f"refused by node {refused_by[0]}: {refused_by[1]}")
    report["text"] = "\n".join(lines)
    return report


_NODE_ID = Field("node_id", JsonType.UINT, required=True, maximum=_U64 - 1, doc="a node id (u64)")
_NODE_ID_SCHEMA = fields(_NODE_ID)

#: In the registry in cluster mode only. All Admin-only; C{raft_metrics}
#: is open to health checkers with C{OXIDB_HEALTH_OPEN}.
RAFT_COMMANDS = [
    Command(
        "raft_init",
        raft_init,
        audit_collection=None,
        audit_target=("addr",),
        schema=fields(Field("addr", JsonType.STRING, doc="this node's Raft address; default the published one")),
        summary='Initializes a new cluster with this node as its only member: `"cluster initialized"`.',
    ),
    Command(
        "raft_add_learner",
        raft_add_learner,
        audit_collection=None,
        audit_target=("node_id", "addr"),
        schema=fields(
            _NODE_ID,
            Field(
                "addr",
                JsonType.STRING,
                required=True,
                nonempty=True,
                message="missing 'addr' (raft address)",
                doc="the node's Raft address",
            ),
        ),
        summary='Adds a non-voting member: `{"log_id", "membership"}`.',
    ),
    Command(
        "raft_change_membership",
        raft_change_membership,
        audit_collection=None,
        audit_target=("members",),
        schema=fields(
            Field(
                "members",
                JsonType.ARRAY,
                required=True,
                message="missing 'members' array",
                items=JsonType.UINT,
                items_message="'members' must be array of node IDs",
                doc="the voters' node ids",
            )
        ),
        summary='Changes the voters (joint consensus): `{"log_id", "membership"}`.',
    ),
    Command(
        "raft_metrics",
        raft_metrics,
        audit_collection=None,
        health_check=True,
        summary="The node's Raft metrics in upstream's shape (state, term, leader, log, membership).",
    ),
    Command(
        "raft_remove_node",
        raft_remove_node,
        audit_collection=None,
        schema=_NODE_ID_SCHEMA,
        summary='Removes a member: `{"log_id", "membership"}`.',
    ),
    Command(
        "raft_transfer_leader",
        raft_transfer_leader,
        audit_collection=None,
        schema=_NODE_ID_SCHEMA,
        summary='Hands leadership to a voter: `{"leader", "term"}`.',
    ),
    Command(
        "raft_status",
        raft_status,
        audit_collection=None,
        summary="The node's view of the cluster, as fields and as readable `text`.",
    ),
]
