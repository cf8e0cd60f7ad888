"""
Server-level commands: C{ping}, C{hello} (server.md 2.6) and C{pipeline} (2.7).
"""

from __future__ import annotations

from typing import Any

from oxidb import __version__
from oxidb.auth.rbac import Role
from oxidb.commands._context import CommandContext
from oxidb.commands._registry import Command
from oxidb.commands._reply import Reply, TopLevel, command_name
from oxidb.commands._schema import Field, JsonType, fields
from oxidb.errors import BadRequestError, EncodedReplyTooLargeError, PipelineTooLongError
from oxidb.owner import current_owner
from oxidb.wire.codec import size_at_least
from oxidb.wire.limits import MAX_FRAME

#: the envelope of pipeline commands not run because the connection is closing.
CLOSING = "pipeline: not run, the connection is closing"

#: wire versions this server speaks.
WIRE_VERSIONS = (1,)

#: hello feature name -> a command whose presence proves the feature works.
FEATURE_COMMANDS = (
    ("indexes", "create_index"),
    ("aggregation", "aggregate"),
    ("fts", "text_search"),
    ("txn", "begin_tx"),
    ("blobs", "put_object"),
    ("stored_procedures", "call_procedure"),
    ("raft", "raft_metrics"),
)


def ping(ctx: CommandContext, request: dict[str, Any]) -> str:
    return "pong"


def _rust_list(values: list[Any]) -> str:
    return "[" + ", ".join(str(v) for v in values) + "]"


def hello(ctx: CommandContext, request: dict[str, Any]) -> TopLevel:
    """
    Advertise the server. Features are derived from what is really
    registered and configured, never a fixed list.
    """
    offered = request.get("wire_versions", [1])
    if not isinstance(offered, list) or not all(type(v) is int for v in offered):
        raise BadRequestError("'wire_versions' must be an array of integers")
    common = [v for v in offered if v in WIRE_VERSIONS]
    if not common:
        raise BadRequestError(
            f"no compatible wire version (server supports {_rust_list(list(WIRE_VERSIONS))}, "
            f"client offered {_rust_list(offered)})"
        )
    ctx.session.wire_version = max(common)
    services = ctx.services
    registry = services.registry
    features = [name for name, cmd in FEATURE_COMMANDS if cmd in registry]
    if services.auth_enabled:
        features += ["rbac", "scram_sha_256"]
    if services.tls_enabled:
        features.append("tls")
    if services.audit is not None:
        features.append("audit")
    return TopLevel(
        {
            "ok": True,
            "server": {
                "name": "oxidb-server",
                "version": __version__,
                "wire_version": ctx.session.wire_version,
                "supported_wire_versions": list(WIRE_VERSIONS),
                "stable_surface_version": "1.0",
                "features": features,
                "experimental_features": [],
                "auth_methods": ["scram-sha-256"] if services.auth_enabled else ["anonymous"],
            },
        }
    )


def pipeline(ctx: CommandContext, request: dict[str, Any]) -> Any:
    """
    Run each sub-request through the full dispatch (the auth gate included),
    in order, sharing the session; reply with the list of their envelopes.
    At most C{max_pipeline} commands (limits table).
    """
    commands = request.get("commands")
    if not isinstance(commands, list):
        raise BadRequestError("pipeline: missing 'commands' array")
    limit = ctx.config.limits.max_pipeline
    if len(commands) > limit:
        raise PipelineTooLongError(len(commands), limit)
    dispatcher = ctx.dispatcher
    envelopes: list[dict[str, Any]] = []
    # Later commands run from callbacks: keep them the connection's work.
    owner = current_owner.get()

    def run_from(index: int) -> Any:
        while index < len(commands):
            if ctx.session.close_after_reply or (owner is not None and owner.gone):
                # The connection is closing (too many failed logins) or
                # closed: run nothing more for it.
                envelopes.extend([{"ok": False, "error": CLOSING}] * (len(commands) - index))
                break
            sub = commands[index]
            index += 1
            if command_name(sub) == "pipeline":
                envelopes.append({"ok": False, "error": "pipeline: nested pipelines are not supported"})
                continue
            if command_name(sub) in ("watch", "unwatch"):
                envelopes.append({"ok": False, "error": f"pipeline: '{command_name(sub)}' cannot run in a pipeline"})
                continue
            token = current_owner.set(owner)
            try:
                outcome = dispatcher.dispatch(ctx, sub)
            finally:
                current_owner.reset(token)
            if isinstance(outcome, Reply):
                add(outcome)
                continue
            return outcome.addCallback(_collect, index)
        return envelopes

    def _collect(reply: Reply, index: int) -> Any:
        add(reply)
        return run_from(index)

    size = 0

    def add(reply: Reply) -> None:
        # Stop as soon as the whole reply surely exceeds a frame: it would
        # be refused anyway, and 1000 large results must not pile up first.
        nonlocal size
        size += size_at_least(reply.value, MAX_FRAME - size)
        if size > MAX_FRAME:
            raise EncodedReplyTooLargeError(f"at least {size}", MAX_FRAME)
        envelopes.append(reply.envelope())

    return run_from(0)


_WIRE_VERSIONS_TEXT = "'wire_versions' must be an array of integers"

COMMANDS = [
    Command(
        "ping", ping, pre_auth=True, audit_collection=None, role=Role.READ, summary='Liveness check: `"pong"`.'
    ),
    Command(
        "hello",
        hello,
        pre_auth=True,
        audited=False,
        audit_collection=None,
        role=Role.READ,
        schema=fields(
            Field(
                "wire_versions",
                JsonType.ARRAY,
                items=JsonType.INTEGER,
                invalid=_WIRE_VERSIONS_TEXT,
                doc="the versions the client speaks; default `[1]`",
            )
        ),
        summary="Negotiates the wire version; replies with a top-level object describing the server and its features.",
    ),
    Command(
        "pipeline",
        pipeline,
        pre_auth=True,
        audited=False,
        audit_collection=None,
        role=Role.READ,
        schema=fields(
            Field(
                "commands",
                JsonType.ARRAY,
                required=True,
                message="pipeline: missing 'commands' array",
                max_items="`OXIDB_MAX_PIPELINE`",
                doc="requests, run in order; each is checked (login, role) on its own; no nested pipelines",
            )
        ),
        summary="Runs several requests in order; replies with the list of their envelopes.",
    ),
]
