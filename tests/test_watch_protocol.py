"""
Change streams on a connection (oxidb.commands.watch, the watch mode of
oxidb.server.protocol): ack, event shapes, formats, resume, unwatch, bad
input, watchers that never read, limits, roles and audit.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
from protocol_helpers import connect, frame
from twisted.internet.task import Clock

from oxidb.audit.events import AuditEvent, Auditor
from oxidb.auth.rbac import Role
from oxidb.commands._registry import Command
from oxidb.config import Config
from oxidb.engine import transactions
from oxidb.engine.engine import Engine
from oxidb.testing import MemoryServer
from oxidb.wire.framing import encode_frame


def frames(data: bytes) -> list[Any]:
    out = []
    while data:
        (n,) = struct.unpack_from("<I", data)
        payload = data[4 : 4 + n]
        out.append(json.loads(payload) if payload[:1] == b"{" else msgpack.unpackb(payload))
        data = data[4 + n :]
    return out


class Sink:
    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    def record(self, event: AuditEvent) -> None:
        self.events.append(event)


def read_login(ctx: Any, request: Any) -> str:
    ctx.session.login.machine.succeeded("reader", Role.READ)
    return "logged in"


@pytest.fixture
def engine(tmp_path: Any) -> Iterator[Engine]:
    engine = Engine(str(tmp_path / "data"), synchronous="OFF")
    transactions.register_appliers(engine)
    with engine:
        yield engine


def make(engine: Engine, **env: str) -> MemoryServer:
    config = Config.from_sources({"OXIDB_DATA": engine.data_dir, **env})
    return MemoryServer(config, engine=engine)


class Conn:
    """A StringTransport connection speaking JSON frames."""

    def __init__(self, server: MemoryServer) -> None:
        self.server = server
        self.protocol, self.transport = connect(server)

    def send(self, obj: Any) -> None:
        self.protocol.dataReceived(frame(obj))

    def take(self) -> list[Any]:
        self.server.clock.advance(0)  # the writer's changes reach the reactor thread
        got = frames(self.transport.value())
        self.transport.clear()
        return got

    def call(self, obj: Any) -> Any:
        self.send(obj)
        (reply,) = self.take()
        return reply


def change(token: int, operation: str, doc_id: int, collection: str = "c", **extra: Any) -> dict[str, Any]:
    data = {"token": token, "operation": operation, "collection": collection, "doc_id": doc_id, **extra}
    return {"event": "change", "data": data}


def test_events_follow_writes_in_order(engine: Engine) -> None:
    server = make(engine)
    watcher, writer = Conn(server), Conn(server)
    assert watcher.call({"cmd": "watch"}) == {"ok": True, "data": "watching"}
    writer.call({"cmd": "insert", "collection": "c", "doc": {"a": 1}})
    writer.call({"cmd": "update", "collection": "c", "query": {"a": 1}, "update": {"$set": {"b": 2}}})
    writer.call({"cmd": "delete", "collection": "c", "query": {}})
    assert watcher.take() == [
        change(1 << 20, "insert", 1, document={"a": 1, "_id": 1, "_version": 1}),
        change(2 << 20, "update", 1),
        change(3 << 20, "delete", 1),
    ]


def test_transactions_carry_tx_id_and_collection_filter(engine: Engine) -> None:
    server = make(engine)
    only_d, writer = Conn(server), Conn(server)
    assert only_d.call({"cmd": "watch", "collection": "d"})["data"] == "watching"
    tx_id = writer.call({"cmd": "begin_tx"})["data"]["tx_id"]
    writer.call({"cmd": "insert", "collection": "d", "doc": {"x": 1}})
    writer.call({"cmd": "commit_tx"})
    writer.call({"cmd": "insert", "collection": "c", "doc": {"y": 1}})
    events = only_d.take()
    assert [e["data"]["operation"] for e in events] == ["insert"]
    assert events[0]["data"]["tx_id"] == tx_id and events[0]["data"]["collection"] == "d"


def test_a_watch_follows_one_database(engine: Engine) -> None:
    server = make(engine)
    writer = Conn(server)
    assert writer.call({"cmd": "create_database", "name": "crm"})["ok"] is True
    every_crm, crm_users, default_all = Conn(server), Conn(server), Conn(server)
    assert every_crm.call({"cmd": "watch", "db": "crm"})["data"] == "watching"
    assert crm_users.call({"cmd": "use_db", "name": "crm"})["ok"] is True
    assert crm_users.call({"cmd": "watch", "collection": "users"})["data"] == "watching"
    assert default_all.call({"cmd": "watch"})["data"] == "watching"
    writer.call({"cmd": "insert", "collection": "users", "doc": {"where": "oxidb"}})
    writer.call({"cmd": "insert", "collection": "users", "doc": {"where": "crm"}, "db": "crm"})
    writer.call({"cmd": "insert", "collection": "orders", "doc": {"where": "crm"}, "db": "crm"})
    # Events name the collection as clients do, and another database's add db.
    crm = [(e["data"]["collection"], e["data"].get("db"), e["data"]["document"]["where"]) for e in every_crm.take()]
    assert crm == [("users", "crm", "crm"), ("orders", "crm", "crm")]
    assert [(e["data"]["collection"], e["data"]["document"]["where"]) for e in crm_users.take()] == [("users", "crm")]
    [default] = default_all.take()
    assert default["data"]["collection"] == "users" and "db" not in default["data"]
    assert default["data"]["document"]["where"] == "oxidb"


def test_resume_replays_and_a_too_old_token_is_refused(engine: Engine) -> None:
    server = make(engine)
    writer = Conn(server)
    for n in range(3):
        writer.call({"cmd": "insert", "collection": "c", "doc": {"n": n}})
    first = Conn(server)
    first.send({"cmd": "watch", "resume_after": 1 << 20})
    ack, *events = first.take()
    assert ack["data"] == "watching"
    assert [e["data"]["token"] for e in events] == [2 << 20, 3 << 20]
    # A restarted feed's buffer starts at the database's last token.
    server.rebuild()
    fresh = Conn(server)
    assert fresh.call({"cmd": "watch", "resume_after": 1 << 20}) == {"ok": False, "error": "resume token too old"}
    # The connection goes on after the error.
    assert fresh.call({"cmd": "ping"}) == {"ok": True, "data": "pong"}
    assert fresh.call({"cmd": "watch", "resume_after": 3 << 20})["data"] == "watching"
    assert fresh.take() == []


@pytest.mark.parametrize(
    ("request_", "error"),
    [
        ({"collection": 5}, "'collection' must be a string"),
        ({"collection": "_procedures"}, "reserved"),
        ({"resume_after": "1"}, "'resume_after' must be an unsigned 64-bit integer"),
        ({"resume_after": -1}, "'resume_after' must be an unsigned 64-bit integer"),
        ({"resume_after": 1.5}, "'resume_after' must be an unsigned 64-bit integer"),
        ({"resume_after": True}, "'resume_after' must be an unsigned 64-bit integer"),
        ({"resume_after": 2**64}, "'resume_after' must be an unsigned 64-bit integer"),
        ({"resume_after": 2**64 - 1}, "resume token is ahead of this server's last change"),
    ],
)
def test_bad_input_is_a_clear_error(engine: Engine, request_: dict[str, Any], error: str) -> None:
    conn = Conn(make(engine))
    reply = conn.call({"cmd": "watch", **request_})
    assert reply["ok"] is False and error in reply["error"]
    assert conn.call({"cmd": "ping"})["data"] == "pong"


def test_unwatch_ends_the_stream_and_the_connection_goes_on(engine: Engine) -> None:
    server = make(engine)
    watcher, writer = Conn(server), Conn(server)
    assert watcher.call({"cmd": "unwatch"}) == {"ok": False, "error": "not watching"}
    watcher.call({"cmd": "watch"})
    # In watch mode other requests are dropped unanswered (server.md 3.6).
    watcher.send({"cmd": "ping"})
    watcher.protocol.dataReceived(encode_frame(b"not json"))
    assert watcher.take() == []
    writer.call({"cmd": "insert", "collection": "c", "doc": {}})
    watcher.send({"cmd": "unwatch"})
    assert [e.get("event") for e in watcher.take()] == ["change", None]
    writer.call({"cmd": "insert", "collection": "c", "doc": {}})
    assert watcher.call({"cmd": "ping"}) == {"ok": True, "data": "pong"}
    assert not server.services.changes.subscriptions


def test_events_use_the_watch_request_format(engine: Engine) -> None:
    server = make(engine)
    watcher, writer = Conn(server), Conn(server)
    watcher.protocol.dataReceived(encode_frame(msgpack.packb({"cmd": "watch"})))
    assert watcher.take() == [{"ok": True, "data": "watching"}]
    writer.call({"cmd": "insert", "collection": "c", "doc": {"a": 1}})
    raw = watcher.transport.value()
    assert raw[4:5] != b"{"  # a MessagePack map
    assert watcher.take()[0]["data"]["document"] == {"a": 1, "_id": 1, "_version": 1}


def test_a_watcher_that_never_reads_gets_overflow_and_writers_go_on(engine: Engine) -> None:
    server = make(engine)
    server.services.changes.capacity = 8
    watcher, writer = Conn(server), Conn(server)
    watcher.call({"cmd": "watch"})
    watcher.protocol.pauseProducing()  # what the transport does when the client stops reading
    for n in range(20):
        assert writer.call({"cmd": "insert", "collection": "c", "doc": {"n": n}})["ok"]
    assert watcher.take() == []
    (subscription,) = server.services.changes.subscriptions
    assert subscription.dropped == 12  # counted, not kept
    watcher.protocol.resumeProducing()
    events = watcher.take()
    assert events[0] == {"event": "overflow", "data": {"dropped": 12}}
    assert [e["data"]["doc_id"] for e in events[1:]] == list(range(13, 21))


def test_the_watcher_cap(engine: Engine) -> None:
    server = make(engine, OXIDB_MAX_WATCHERS="1")
    first, second = Conn(server), Conn(server)
    first.call({"cmd": "watch"})
    busy = {"ok": False, "error": "server busy: too many watchers (OXIDB_MAX_WATCHERS)"}
    assert second.call({"cmd": "watch"}) == busy
    first.protocol.connectionLost(None)
    assert second.call({"cmd": "watch"})["data"] == "watching"


def test_watch_is_refused_in_a_pipeline(engine: Engine) -> None:
    conn = Conn(make(engine))
    reply = conn.call({"cmd": "pipeline", "commands": [{"cmd": "watch"}, {"cmd": "ping"}]})
    assert reply["data"] == [
        {"ok": False, "error": "pipeline: 'watch' cannot run in a pipeline"},
        {"ok": True, "data": "pong"},
    ]


def test_a_watcher_is_not_cut_by_the_idle_timeout(engine: Engine) -> None:
    server = make(engine, OXIDB_IDLE_TIMEOUT="5")
    watcher, idle = Conn(server), Conn(server)
    watcher.call({"cmd": "watch"})
    server.clock.advance(60)
    assert idle.transport.disconnecting and not watcher.transport.disconnecting


def test_read_role_watches_and_both_commands_are_audited(engine: Engine) -> None:
    sink = Sink()
    config = Config.from_sources({"OXIDB_DATA": engine.data_dir, "OXIDB_AUTH": "true"})
    login = Command("read_login", read_login, pre_auth=True, audited=False)
    server = MemoryServer(config, engine=engine, commands=[login], audit=Auditor(Clock(), [sink]))
    conn = Conn(server)
    assert conn.call({"cmd": "watch"}) == {"ok": False, "error": "authentication required"}
    conn.call({"cmd": "read_login"})
    assert conn.call({"cmd": "watch", "collection": "c"})["data"] == "watching"
    conn.send({"cmd": "unwatch"})
    assert conn.take() == [{"ok": True, "data": "unwatched"}]
    assert [(e.cmd, e.role, e.collection, e.result) for e in sink.events] == [
        ("watch", "read", "c", "ok"),
        ("unwatch", "read", None, "ok"),
    ]


def test_a_replaced_history_closes_the_watch(engine: Engine) -> None:
    server = make(engine)
    watcher = Conn(server)
    watcher.call({"cmd": "watch"})
    server.services.changes.reset(99 << 20)  # the engine reopened on another database
    assert watcher.transport.disconnecting or watcher.transport.disconnected


def test_connection_loss_cancels_the_subscription(engine: Engine) -> None:
    server = make(engine)
    watcher = Conn(server)
    watcher.call({"cmd": "watch"})
    assert server.services.changes.subscriptions
    watcher.protocol.connectionLost(None)
    assert not server.services.changes.subscriptions


def test_an_event_too_large_for_a_frame_leaves_the_document_out(engine: Engine) -> None:
    """A document that fits an insert frame but not an event frame: the event comes, marked, without it."""
    from oxidb.wire.limits import MAX_FRAME

    server = make(engine)
    watcher, writer = Conn(server), Conn(server)
    assert watcher.call({"cmd": "watch"}) == {"ok": True, "data": "watching"}
    big = "x" * (MAX_FRAME - 100)
    assert writer.call({"cmd": "insert", "collection": "c", "doc": {"s": big}}) == {"ok": True, "data": {"id": 1}}
    writer.call({"cmd": "insert", "collection": "c", "doc": {"s": "small"}})
    assert watcher.take() == [
        change(1 << 20, "insert", 1, document_omitted=True),
        change(2 << 20, "insert", 2, document={"s": "small", "_id": 2, "_version": 1}),
    ]
