"""
Cluster management commands (server.md 8.2), registered only in cluster
mode (a standalone server answers C{unknown command: raft_*}): C{raft_init},
C{raft_add_learner}, C{raft_change_membership} and C{raft_metrics}, with
upstream's request fields, reply shapes and error texts. The handlers reach
the node as C{ctx.services.raft} (an L{oxidb.raft.service.RaftService}).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks

from oxidb.commands._context import CommandContext
from oxidb.commands._registry import Command
from oxidb.errors import BadRequestError, RaftError

_U64 = 2**64


def _cause(error: RaftError) -> str:
    """A Raft error's text without the C{raft error: } prefix."""
    return str(error).removeprefix("raft error: ")


def _node_id(value: Any) -> bool:
    return type(value) is int and 0 <= value < _U64


@inlineCallbacks
def raft_init(ctx: CommandContext, request: dict[str, Any]) -> Any:
    raft = ctx.services.raft
    addr = request.get("addr")
    if not isinstance(addr, str) or not addr:
        addr = raft.published_address
    if not addr:
        host, port = ctx.services.config.raft_addr
        raise BadRequestError(
            "raft init: no Raft address known for this node — set OXIDB_RAFT_ADDR or pass 'addr'. "
            f"OXIDB_RAFT_ADDR={host}:{port} cannot be dialled by peers; set OXIDB_RAFT_ADVERTISE to this "
            "node's routable host:port"
        )
    try:
        yield raft.node.initialize(addr)
    except RaftError as e:
        raise BadRequestError(f"raft init failed: {_cause(e)}") from None
    return "cluster initialized"


def _membership_reply(result: Any) -> dict[str, str]:
    log_id, membership = result
    return {"log_id": log_id.display(), "membership": membership.debug_text()}


def raft_add_learner(ctx: CommandContext, request: dict[str, Any]) -> "Deferred[Any]":
    node_id = request.get("node_id")
    if not _node_id(node_id):
        raise BadRequestError("missing 'node_id'")
    addr = request.get("addr")
    if not isinstance(addr, str) or not addr:
        raise BadRequestError("missing 'addr' (raft address)")
    return _managed(ctx.services.raft.node.add_learner, "add learner failed", node_id, addr)


def raft_change_membership(ctx: CommandContext, request: dict[str, Any]) -> "Deferred[Any]":
    members = request.get("members")
    if not isinstance(members, list):
        raise BadRequestError("missing 'members' array")
    if not all(_node_id(m) for m in members):
        raise BadRequestError("'members' must be array of node IDs")
    return _managed(ctx.services.raft.node.change_membership, "change membership failed", set(members))


@inlineCallbacks
def _managed(action: Any, failure: str, *args: Any) -> Any:
    try:
        result = yield action(*args)
    except RaftError as e:
        raise BadRequestError(f"{failure}: {_cause(e)}") from None
    return _membership_reply(result)


def raft_metrics(ctx: CommandContext, request: dict[str, Any]) -> dict[str, Any]:
    metrics: dict[str, Any] = ctx.services.raft.node.metrics().upstream_json()
    return metrics


#: Added to the registry by the service in cluster mode only.
RAFT_COMMANDS = [
    Command("raft_init", raft_init, audit_collection=None, audit_target=("addr",)),
    Command("raft_add_learner", raft_add_learner, audit_collection=None, audit_target=("node_id", "addr")),
    Command("raft_change_membership", raft_change_membership, audit_collection=None, audit_target=("members",)),
    Command("raft_metrics", raft_metrics, audit_collection=None),
]
