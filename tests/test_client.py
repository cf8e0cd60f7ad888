"""
The client library: the sans-IO core, URLs, error mapping, and both clients
against the server in memory (the blocking one over in-memory sockets, the
Twisted one over iosim), with auth, both formats, transactions, paging, the
retry rule and a simulated leader change.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
from client_helpers import memory_connector, memory_server
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.test import iosim

from oxidb import errors as server_errors
from oxidb.client import Client, ConnectionFailed, UnknownOutcome, parse_url
from oxidb.client.core import ProtocolCore, backoff_delay, is_retry_safe, not_applied
from oxidb.client.errors import (
    AuthenticationFailed,
    AuthenticationRequired,
    ClientProtocolError,
    InvalidQuery,
    NoLeader,
    NotLeader,
    NoTransaction,
    PermissionDenied,
    ServerError,
    TransactionConflict,
    UniqueViolation,
    UnknownCommand,
    WriteLost,
    error_from_reply,
)
from oxidb.client.twisted import OxiClientConnection, TwistedClient
from oxidb.client.url import ConnectOptions
from oxidb.testing import result_of
from oxidb.wire import codec, oxiwire
from oxidb.wire.framing import encode_frame

NO_SLEEP: Any = lambda seconds: None  # noqa: E731


# -- URLs ---------------------------------------------------------------------


def test_url_full() -> None:
    options = parse_url("oxidb://al%40ice:p%3Ass@h1:5,[::1]:6,h3/app?tls=true&ca=/ca.pem&format=oxiwire&retries=2")
    assert options.seeds == (("h1", 5), ("::1", 6), ("h3", 4444))
    assert (options.user, options.password, options.database) == ("al@ice", "p:ss", "app")
    assert (options.tls, options.ca, options.format, options.retries) == (True, "/ca.pem", "oxiwire", 2)


def test_url_defaults_and_ca_implies_tls() -> None:
    assert parse_url("oxidb://localhost") == ConnectOptions(seeds=(("localhost", 4444),))
    assert parse_url("oxidb://h:1?ca=x.pem").tls is True


@pytest.mark.parametrize(
    "url, message",
    [
        ("http://h:1", "expected oxidb://"),
        ("oxidb://h:99999", "bad port"),
        ("oxidb://h:1?tls=maybe", "expected true or false"),
        ("oxidb://h:1?format=xml", "expected json or oxiwire"),
        ("oxidb://h:1?colour=red", "unknown URL option"),
        ("oxidb://:1", "no host"),
    ],
)
def test_url_errors(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_url(url)


# -- the core -----------------------------------------------------------------


def test_core_pipelined_replies_match_requests_in_order() -> None:
    core = ProtocolCore()
    first, frame1 = core.send({"cmd": "ping"})
    second, frame2 = core.send({"cmd": "count", "collection": "c"})
    assert frame1 == encode_frame(b'{"cmd":"ping"}')
    wire = encode_frame(codec.encode_ok(codec.WireFormat.JSON, "pong")) + encode_frame(
        codec.encode_error(codec.WireFormat.JSON, "no active transaction")
    )
    replies = core.receive(wire[:7]) + core.receive(wire[7:])
    assert [(r.request_id, r.ok, r.value) for r in replies] == [
        (first, True, "pong"),
        (second, False, "no active transaction"),
    ]
    assert replies[0].result() == "pong"
    with pytest.raises(NoTransaction):
        replies[1].result()
    assert core.pending == ()


def test_core_oxiwire_requests_and_replies() -> None:
    core = ProtocolCore("oxiwire")
    _, frame = core.send({"cmd": "ping"})
    assert frame[4:] == bytes.fromhex("db08010000000300000063 6d64 0604000000 70696e67".replace(" ", ""))
    (reply,) = core.receive(encode_frame(oxiwire.encode_ok([{"a": 1, "b": 2.5}])))
    assert reply.value == [{"a": 1, "b": 2.5}]
    core.send({"cmd": "x"})
    (reply,) = core.receive(encode_frame(oxiwire.encode_error("unknown command: x")))
    with pytest.raises(UnknownCommand, match="^unknown command: x$"):
        reply.result()


def test_core_hello_top_level_reply() -> None:
    core = ProtocolCore()
    core.send({"cmd": "hello"})
    (reply,) = core.receive(encode_frame(b'{"ok":true,"server":{"name":"oxidb-server"}}'))
    assert reply.value == {"server": {"name": "oxidb-server"}}


def test_core_bad_input() -> None:
    core = ProtocolCore()
    with pytest.raises(ValueError):
        core.send({"cmd": "insert", "doc": {"x": float("nan")}})
    with pytest.raises(TypeError):
        core.send({"cmd": "insert", "doc": {"x": object()}})
    assert core.pending == ()
    with pytest.raises(ClientProtocolError, match="no request waiting"):
        core.receive(encode_frame(b'{"ok":true,"data":1}'))
    core.send({"cmd": "ping"})
    with pytest.raises(ClientProtocolError):
        core.receive(encode_frame(b"\xdb\x07"))
    with pytest.raises(ValueError, match="unknown format"):
        ProtocolCore("xml")


def test_error_mapping_mirrors_server_errors() -> None:
    cases: list[tuple[server_errors.OxiError, type[ServerError]]] = [
        (server_errors.TransactionConflictError("c", 1, 2, 3), TransactionConflict),
        (server_errors.UniqueViolationError("email"), UniqueViolation),
        (server_errors.InvalidQueryError("bad"), InvalidQuery),
        (server_errors.PermissionDeniedError("read", "insert"), PermissionDenied),
        (server_errors.AuthenticationFailedError(), AuthenticationFailed),
        (server_errors.NotLeaderError(3, "127.0.0.1:9"), NotLeader),
    ]
    for original, cls in cases:
        error = error_from_reply(str(original))
        assert type(error) is cls
        assert str(error) == str(original)
        assert isinstance(error, type(original))
    not_leader = error_from_reply(str(server_errors.NotLeaderError(3, "127.0.0.1:9")))
    assert isinstance(not_leader, NotLeader) and not_leader.leader_id == 3
    assert type(error_from_reply("something new")) is ServerError


def test_cluster_write_errors() -> None:
    core = ProtocolCore()
    for text, expected in [
        ("raft error: no leader elected within 5s; retry", NoLeader),
        ("raft error: the write was lost in a leader change; retry it", WriteLost),
        ("raft error: the write was not committed within 30s; its outcome is unknown", UnknownOutcome),
        ("raft error: the leader (node 1) changed before it answered a forwarded write; its outcome is unknown",
         UnknownOutcome),
    ]:  # fmt: skip
        core.send({"cmd": "insert"})
        (reply,) = core.receive(encode_frame(codec.encode_error(codec.WireFormat.JSON, text)))
        with pytest.raises(expected) as info:
            reply.result()
        assert str(info.value) == text
        if isinstance(info.value, ServerError):
            assert not_applied(info.value)


def test_retry_rules() -> None:
    assert is_retry_safe({"cmd": "find"}) and not is_retry_safe({"cmd": "insert"})
    assert is_retry_safe({"cmd": "pipeline", "commands": [{"cmd": "ping"}, {"cmd": "count"}]})
    assert not is_retry_safe({"cmd": "pipeline", "commands": [{"cmd": "ping"}, {"cmd": "delete"}]})
    assert [backoff_delay(n) for n in (1, 2, 3, 10)] == [0.05, 0.1, 0.2, 2.0]


# -- the blocking client ------------------------------------------------------


def test_blocking_crud_both_formats(tmp_path: Path) -> None:
    with memory_server(tmp_path) as (server, _):
        for fmt in ("json", "oxiwire"):
            client = Client(f"oxidb://mem:1?format={fmt}", connector=memory_connector({("mem", 1): server}))
            collection = f"people_{fmt}"
            assert client.insert_many(collection, [{"name": "a", "age": 31}, {"name": "b", "age": 20}]) == [1, 2]
            assert client.find(collection, {"age": {"$gt": 30}}) == [{"name": "a", "age": 31, "_id": 1, "_version": 1}]
            assert client.count(collection) == {"count": 2}
            assert client.update_one(collection, {"name": "b"}, {"$set": {"age": 21}}) == {"modified": 1}
            assert client.find_one(collection, {"name": "b"})["age"] == 21
            with pytest.raises(InvalidQuery):
                client.find(collection, {"age": {"$nope": 1}})
            assert client.server_info is not None and client.server_info["server"]["name"] == "oxidb-server"
            client.close()


def test_blocking_auth(tmp_path: Path) -> None:
    with memory_server(tmp_path, auth=True) as (server, password):
        connector = memory_connector({("mem", 1): server})
        admin = Client(f"oxidb://admin:{password}@mem:1", connector=connector, sleep=NO_SLEEP)
        assert admin.insert("c", {"a": 1}) == {"id": 1}
        admin.command("create_user", username="reader", password="pw-reader", role="read")
        reader = Client("oxidb://reader:pw-reader@mem:1", connector=connector)
        assert reader.count("c") == {"count": 1}
        with pytest.raises(PermissionDenied, match="role 'read' cannot execute 'insert'"):
            reader.insert("c", {})
        with pytest.raises(AuthenticationFailed):
            Client("oxidb://admin:wrong@mem:1", connector=connector, sleep=NO_SLEEP).connect()
        with pytest.raises(AuthenticationRequired):
            Client("oxidb://mem:1", connector=connector).find("c")


def test_blocking_transactions(tmp_path: Path) -> None:
    with memory_server(tmp_path) as (server, _):
        client = Client("oxidb://mem:1", connector=memory_connector({("mem", 1): server}))
        with client.transaction():
            client.insert("c", {"a": 1})
            client.insert("c", {"a": 2})
        assert client.count("c") == {"count": 2}
        with pytest.raises(RuntimeError), client.transaction():
            client.insert("c", {"a": 3})
            raise RuntimeError("abandon")
        assert client.count("c") == {"count": 2}
        # A conflict at commit: another connection changes what the transaction read.
        other = Client("oxidb://mem:1", connector=memory_connector({("mem", 1): server}))
        with pytest.raises(TransactionConflict), client.transaction():
            client.find("c", {"a": 1})
            client.update("c", {"a": 1}, {"$set": {"b": 1}})
            other.update("c", {"a": 1}, {"$set": {"b": 2}})
        assert client.find_one("c", {"a": 1})["b"] == 2


def test_blocking_iter_find_pages_by_id(tmp_path: Path) -> None:
    with memory_server(tmp_path) as (server, _):
        client = Client("oxidb://mem:1", connector=memory_connector({("mem", 1): server}))
        client.insert_many("c", [{"n": n} for n in range(25)])
        pages = client.iter_find("c", {"n": {"$gte": 3}}, page_size=5)
        seen = [next(pages)["n"] for _ in range(5)]
        client.delete("c", {"n": {"$lt": 10}})  # a concurrent delete does not shift later pages
        seen += [doc["n"] for doc in pages]
        assert seen == [3, 4, 5, 6, 7, *range(10, 25)]
        assert [d["n"] for d in client.iter_find("c", sort={"n": -1}, page_size=4)] == list(range(24, 9, -1))
        with pytest.raises(ValueError):
            list(client.iter_find("c", page_size=0))


def test_blocking_read_retried_write_unknown_outcome(tmp_path: Path) -> None:
    with memory_server(tmp_path) as (server, _):
        connector = memory_connector({("mem", 1): server})
        client = Client("oxidb://mem:1", connector=connector, sleep=NO_SLEEP)
        client.insert("c", {"a": 1})
        # The reply to a read is lost: the read is sent again on a new connection.
        connector.sockets[-1].drop_after_send = True  # type: ignore[attr-defined]
        assert client.count("c") == {"count": 1}
        # The reply to a write is lost: it was applied, and the client says it cannot know.
        connector.sockets[-1].drop_after_send = True  # type: ignore[attr-defined]
        with pytest.raises(UnknownOutcome) as info:
            client.insert("c", {"a": 2})
        assert info.value.request["doc"] == {"a": 2}
        assert client.count("c") == {"count": 2}
        # The server closed an idle connection: noticed before sending, so a write goes through once.
        connector.sockets[-1].close()
        assert client.insert("c", {"a": 3}) == {"id": 3}
        assert client.count("c") == {"count": 3}


def test_blocking_seed_list_and_backoff(tmp_path: Path) -> None:
    with memory_server(tmp_path) as (server, _):
        pauses: list[float] = []
        client = Client(
            "oxidb://down:1,mem:1?retries=2", connector=memory_connector({("mem", 1): server}), sleep=pauses.append
        )
        assert client.ping() == "pong" and client.address == ("mem", 1)
        assert pauses == []
        nowhere = Client("oxidb://down:1,down:2?retries=3", connector=memory_connector({}), sleep=pauses.append)
        with pytest.raises(ConnectionFailed, match="cannot connect to down:1,down:2: down:2: down:2 refused"):
            nowhere.ping()
        assert pauses == [0.05, 0.1, 0.2]


class FakeNode:
    """A scripted cluster node: answers hello, raft_metrics, insert and count with the real codec."""

    def __init__(self, node_id: int, leader: bool) -> None:
        self.node_id = node_id
        self.leader = leader
        self.docs: list[Any] = []

    def answer(self, request: dict[str, Any]) -> bytes:
        fmt = codec.WireFormat.JSON
        cmd = request.get("cmd")
        if cmd == "hello":
            return codec.encode_json_top({"ok": True, "server": {"name": "fake", "node": self.node_id}})
        if cmd == "raft_metrics":
            return codec.encode_ok(fmt, {"id": self.node_id, "state": "Leader" if self.leader else "Follower"})
        if cmd == "insert":
            if not self.leader:
                return codec.encode_error(fmt, str(server_errors.NotLeaderError(None, None)))
            self.docs.append(request["doc"])
            return codec.encode_ok(fmt, {"id": len(self.docs)})
        return codec.encode_ok(fmt, {"count": len(self.docs)})


class FakeNodeSocket:
    def __init__(self, node: FakeNode) -> None:
        self.node = node
        self.out = b""
        self.closed = False

    def sendall(self, data: bytes) -> None:
        _, request = codec.decode_request(data[4:])
        assert isinstance(request, dict)
        self.out += encode_frame(self.node.answer(request))

    def recv(self, n: int) -> bytes:
        data, self.out = self.out, b""
        return data

    def peer_closed(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def fileno(self) -> int:
        return -1


def test_leader_discovery_and_leader_change() -> None:
    nodes = {("n", 1): FakeNode(1, leader=False), ("n", 2): FakeNode(2, leader=True), ("n", 3): FakeNode(3, False)}
    client = Client(
        "oxidb://n:1,n:2,n:3", connector=lambda host, port, options: FakeNodeSocket(nodes[(host, port)]), sleep=NO_SLEEP
    )
    assert client.insert("c", {"a": 1}) == {"id": 1}
    assert client.address == ("n", 2)
    assert client.server_info == {"server": {"name": "fake", "node": 2}}
    # Leadership moves to node 3: node 2 refuses the write (not applied), the client finds node 3 and sends it there.
    nodes[("n", 2)].leader, nodes[("n", 3)].leader = False, True
    assert client.insert("c", {"a": 2}) == {"id": 1}
    assert client.address == ("n", 3)
    assert [n.docs for n in nodes.values()] == [[], [{"a": 1}], [{"a": 2}]]
    # No leader (an election): the first follower reached is kept, with its own hello.
    nodes[("n", 3)].leader = False
    other = Client(
        "oxidb://n:1,n:2,n:3", connector=lambda host, port, options: FakeNodeSocket(nodes[(host, port)]), sleep=NO_SLEEP
    ).connect()
    assert other.address == ("n", 1) and other.server_info == {"server": {"name": "fake", "node": 1}}


# -- the Twisted client -------------------------------------------------------


def iosim_connector(server: Any, pumps: list[iosim.IOPump]) -> Any:
    def connector(host: str, port: int, options: ConnectOptions) -> Deferred[OxiClientConnection]:
        client = OxiClientConnection(options.format)
        _, _, pump = iosim.connectedServerAndClient(
            lambda: server.factory.buildProtocol(None), lambda: client, greet=True, clock=server.clock
        )
        pumps.append(pump)
        return succeed(client)

    return connector


def run(d: Deferred[Any], pumps: list[iosim.IOPump], server: Any) -> Any:
    for _ in range(50):
        for pump in list(pumps):
            pump.flush()
        if d.called:
            break
        server.clock.advance(0.5)
    return result_of(d)


def test_twisted_client(tmp_path: Path) -> None:
    with memory_server(tmp_path, auth=True) as (server, password):
        pumps: list[iosim.IOPump] = []
        client = TwistedClient(
            f"oxidb://admin:{password}@mem:1?format=oxiwire",
            reactor=server.clock,
            connector=iosim_connector(server, pumps),
        )
        assert run(client.insert_many("c", [{"n": n} for n in range(7)]), pumps, server) == list(range(1, 8))

        async def scenario() -> list[int]:
            async with client.transaction():
                await client.insert("c", {"n": 7})
            try:
                async with client.transaction():
                    await client.insert("c", {"n": 8})
                    raise KeyError("abandon")
            except KeyError:
                pass
            return [doc["n"] async for doc in client.iter_find("c", {"n": {"$gte": 2}}, page_size=3)]

        assert run(Deferred.fromCoroutine(scenario()), pumps, server) == [2, 3, 4, 5, 6, 7]
        with pytest.raises(InvalidQuery):
            run(client.find("c", {"n": {"$nope": 1}}), pumps, server)
        # A write whose reply is lost raises UnknownOutcome; a read is sent again.
        d = client.insert("c", {"n": 9})
        pump = pumps.pop()
        pump.pump()  # the server has the request and has answered; the reply is still on the way
        pump.client.connectionLost(Failure(ConnectionDone()))
        with pytest.raises(UnknownOutcome):
            run(d, pumps, server)
        assert run(client.count("c"), pumps, server) == {"count": 9}
        bad = TwistedClient("oxidb://admin:wrong@mem:1", reactor=server.clock, connector=iosim_connector(server, pumps))
        with pytest.raises(AuthenticationFailed):
            run(bad.ping(), pumps, server)


def test_idle_close_noticed_on_a_real_socket() -> None:
    """C{_alive} on a socket pair: idle is alive, a peer's close or stray bytes are not."""
    pairs = [socket.socketpair() for _ in range(2)]
    hello = encode_frame(b'{"ok":true,"server":{}}')
    for _, server_end in pairs:
        server_end.sendall(hello)
    ends = iter(client_end for client_end, _ in pairs)
    client = Client("oxidb://pair:1", connector=lambda host, port, options: next(ends))
    try:
        client.connect()
        assert client._alive()
        pairs[0][1].close()
        assert not client._alive()
        client._drop()
        client.connect()
        pairs[1][1].sendall(b"x")
        assert not client._alive()
    finally:
        client.close()
        for a, b in pairs:
            a.close()
            b.close()


def test_endpoint_connector_does_not_log_each_factory() -> None:
    """A Twisted application's log gets no "Starting factory" line per connection attempt."""
    from twisted.internet.testing import MemoryReactorClock
    from twisted.logger import globalLogPublisher

    from oxidb.client.twisted import endpoint_connector

    reactor = MemoryReactorClock()
    endpoint_connector(reactor)("127.0.0.1", 5, ConnectOptions())
    factory = reactor.tcpClients[0][2]
    seen: list[str] = []

    def observe(event: Any) -> None:
        seen.append(str(event.get("log_format", "")))

    globalLogPublisher.addObserver(observe)
    try:
        factory.doStart()
        factory.doStop()
    finally:
        globalLogPublisher.removeObserver(observe)
    assert not [text for text in seen if "factory" in text.lower()]
