"""
Snapshot reads (server.md 3.4 [N]): C{snapshot_begin} opens a read of the
database as it is now; C{snapshot_find}, C{snapshot_count} and
C{snapshot_aggregate} read inside it, whatever is written meanwhile;
C{snapshot_end} closes it. The engine part is L{oxidb.engine.snapshots}.

A snapshot belongs to the connection that began it (another connection's
reads of its id answer C{snapshot not found}) and ends with it, with
C{snapshot_end}, or C{OXIDB_SNAPSHOT_MAX_SECS} after it began, whichever
comes first; at most C{OXIDB_SNAPSHOT_MAX_OPEN} are open on a server. An
open snapshot keeps SQLite from checkpointing the WAL past it, hence the
bounds. In a cluster a snapshot reads the node it was begun on.

C{snapshot_begin} answers C{{"snap": id}} as upstream, plus [N] the
collections that exist in the snapshot (C{collections}), each one's id
high-water mark (C{last_ids}: the next insert gets a higher id) and the
seconds it may stay open (C{expires_in}).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from oxidb.auth.rbac import Role
from oxidb.commands._args import max_time_ms
from oxidb.commands._registry import Command
from oxidb.commands._schema import MAX_TIME_MS, Field, JsonType, collection_field, fields
from oxidb.commands.collections import engine_of
from oxidb.engine import store
from oxidb.engine.reads import Reader
from oxidb.wire.codec import RawJSON

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred
    from twisted.internet.interfaces import IDelayedCall, IReactorTime

    from oxidb.commands._context import CommandContext
    from oxidb.engine.engine import Engine
    from oxidb.engine.snapshots import Snapshots


def _collections(reader: Reader) -> dict[str, int]:
    infos = store.list_collections(reader.conn)
    return {info.name: info.last_id for info in infos if not store.is_reserved_collection(info.name)}


def _begin(engine: Engine, owner: object) -> dict[str, Any]:
    snapshot = engine.snapshots.begin(owner)
    last_ids = engine.snapshots.read(snapshot.id, owner, None, _collections)
    return {
        "snap": snapshot.id,
        "collections": sorted(last_ids),
        "last_ids": last_ids,
        "expires_in": engine.limits.snapshot_max_secs,
    }


@attrs.define(eq=False)
class _SessionSnapshots:
    """
    A connection's snapshots: each one's expiry timer, and the end of all
    of them when the connection closes. A timer is cancelled when its
    snapshot ends first, so a client that begins and ends snapshots in a
    loop leaves no pending calls behind.
    """

    snapshots: Snapshots
    owner: object
    timers: dict[int, IDelayedCall] = attrs.Factory(dict)

    @classmethod
    def of(cls, session: Any, snapshots: Snapshots) -> _SessionSnapshots:
        for hook in session.on_close:
            if isinstance(hook, cls):
                return hook
        created = cls(snapshots, session)
        session.on_close.append(created)
        return created

    def opened(self, clock: IReactorTime, snap_id: int, seconds: float) -> None:
        self.timers[snap_id] = clock.callLater(seconds, self.expired, snap_id)

    def expired(self, snap_id: int) -> None:
        self.timers.pop(snap_id, None)
        self.snapshots.drop(snap_id)

    def ended(self, snap_id: object) -> None:
        timer = self.timers.pop(snap_id, None) if isinstance(snap_id, int) else None
        if timer is not None and timer.active():
            timer.cancel()

    def __call__(self) -> None:
        """The connection closed: end its snapshots, cancel their timers."""
        for timer in self.timers.values():
            if timer.active():
                timer.cancel()
        self.timers.clear()
        self.snapshots.end_all(self.owner)


def snapshot_begin(ctx: CommandContext, request: dict[str, Any]) -> Deferred[Any]:
    engine = engine_of(ctx)
    snapshots = engine.snapshots
    session = ctx.session
    d: Deferred[Any] = ctx.read(_begin, engine, session)

    def opened(reply: dict[str, Any]) -> dict[str, Any]:
        # Ended with the connection, and at the latest when its time is up
        # (both never block: a read in progress closes it when it ends).
        _SessionSnapshots.of(session, snapshots).opened(ctx.clock, reply["snap"], engine.limits.snapshot_max_secs)
        return reply

    return d.addCallback(opened)


def _read(ctx: CommandContext, request: dict[str, Any], fn: Any, *args: Any) -> Deferred[Any]:
    engine = engine_of(ctx)
    d: Deferred[Any] = ctx.read(engine.snapshots.read, request["snap"], ctx.session, max_time_ms(request), fn, *args)
    return d


def _query(request: dict[str, Any]) -> Any:
    query = request.get("query")
    return {} if query is None else query


def snapshot_find(ctx: CommandContext, request: dict[str, Any]) -> Deferred[Any]:
    d = _read(
        ctx,
        request,
        Reader.find_raw,
        request["collection"],
        _query(request),
        request.get("sort"),
        request.get("skip"),
        request.get("limit"),
    )
    return d.addCallback(RawJSON)


def snapshot_count(ctx: CommandContext, request: dict[str, Any]) -> Deferred[Any]:
    return _read(ctx, request, Reader.count, request["collection"], _query(request))


def snapshot_aggregate(ctx: CommandContext, request: dict[str, Any]) -> Deferred[Any]:
    return _read(ctx, request, Reader.aggregate, request["collection"], request["pipeline"])


def snapshot_end(ctx: CommandContext, request: dict[str, Any]) -> Deferred[Any]:
    engine = engine_of(ctx)
    session = ctx.session
    d: Deferred[Any] = ctx.read(engine.snapshots.end, request["snap"], session)

    def closed(_: object) -> str:
        _SessionSnapshots.of(session, engine.snapshots).ended(request["snap"])
        return "snapshot closed"

    return d.addCallback(closed)


_SNAP = Field("snap", JsonType.UINT, required=True, message="missing 'snap'", doc="the id `snapshot_begin` answered")

COMMANDS = [
    Command(
        "snapshot_begin",
        snapshot_begin,
        role=Role.READ,
        audit_collection=None,
        summary='Opens a snapshot read of the database as it is now: `{"snap": id, "collections": [...], '
        '"last_ids": {collection: id}, "expires_in": seconds}`. It ends with `snapshot_end`, the connection, or after '
        "`OXIDB_SNAPSHOT_MAX_SECS`; at most `OXIDB_SNAPSHOT_MAX_OPEN` are open.",
    ),
    Command(
        "snapshot_find",
        snapshot_find,
        role=Role.READ,
        schema=fields(
            _SNAP,
            collection_field(),
            Field("query", JsonType.OBJECT, doc="a filter; absent or null: `{}`"),
            Field("sort", JsonType.OBJECT, doc="field -> 1 or -1"),
            Field("skip", JsonType.UINT),
            Field("limit", JsonType.UINT),
            MAX_TIME_MS,
        ),
        summary="`find` inside the snapshot: the documents as they were when it began.",
    ),
    Command(
        "snapshot_count",
        snapshot_count,
        role=Role.READ,
        schema=fields(_SNAP, collection_field(), Field("query", JsonType.OBJECT, doc="a filter"), MAX_TIME_MS),
        summary="The number of matching documents inside the snapshot (a bare number).",
    ),
    Command(
        "snapshot_aggregate",
        snapshot_aggregate,
        role=Role.READ,
        schema=fields(
            _SNAP,
            collection_field(),
            Field("pipeline", JsonType.ANY, required=True, doc="an array of stages (checked by the engine)"),
            MAX_TIME_MS,
        ),
        summary="`aggregate` inside the snapshot.",
    ),
    Command(
        "snapshot_end",
        snapshot_end,
        role=Role.READ,
        audit_collection=None,
        schema=fields(_SNAP),
        summary='`"snapshot closed"`: ends the snapshot and releases what it held.',
    ),
]
