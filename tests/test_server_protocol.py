"""
The client-port protocol in memory: framing, formats, ordering, flow control,
timeouts, dispatch errors, hello and pipeline.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport

from oxidb.commands._registry import Command
from oxidb.config import Config
from oxidb.testing import MemoryServer, result_of
from oxidb.wire.framing import MAX_FRAME, encode_frame

PING_OXIWIRE = bytes.fromhex("db080100000003000000636d640604000000" + "70696e67")


def frame(obj: Any) -> bytes:
    return encode_frame(json.dumps(obj).encode())


@pytest.fixture
def server(tmp_path: Any) -> MemoryServer:
    return MemoryServer(Config(data_dir=str(tmp_path)))


def add_slow_command(server: MemoryServer) -> list[Deferred[Any]]:
    """A command whose replies the test fires by hand."""
    pending: list[Deferred[Any]] = []

    def slow(ctx: Any, request: dict[str, Any]) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        pending.append(d)
        return d

    server.add_command(Command("slow", slow))
    return pending


def test_ping_json_bytes(server: MemoryServer) -> None:
    client, pump = server.connect()
    client.transport.write(bytes.fromhex("0e000000") + b'{"cmd":"ping"}')
    sent: list[bytes] = []
    client.dataReceived = sent.append  # type: ignore[method-assign]
    pump.flush()
    assert b"".join(sent) == bytes.fromhex("19000000") + b'{"ok":true,"data":"pong"}'


def test_ping_oxiwire_bytes(server: MemoryServer) -> None:
    client, pump = server.connect()
    d = client.request_raw(PING_OXIWIRE)
    pump.flush()
    assert result_of(d) == ("binary", bytes.fromhex("db000604000000") + b"pong")


def test_official_client_style_json(server: MemoryServer) -> None:
    # json.dumps default separators and \u escapes, as the official client sends.
    assert server.request({"cmd": "ping", "x": "\u00e9"}) == {"ok": True, "data": "pong"}


@pytest.mark.parametrize(
    "request_, error",
    [
        ({}, "missing or invalid 'cmd' field"),
        ({"cmd": 5}, "missing or invalid 'cmd' field"),
        ([1], "missing or invalid 'cmd' field"),
        ({"cmd": "nope"}, "unknown command: nope"),
        ({"cmd": "PING"}, "unknown command: PING"),
        ({"cmd": " ping"}, "unknown command:  ping"),
    ],
)
def test_dispatch_errors(server: MemoryServer, request_: Any, error: str) -> None:
    assert server.request(request_) == {"ok": False, "error": error}


def test_command_alias(server: MemoryServer) -> None:
    assert server.request({"command": "ping"}) == {"ok": True, "data": "pong"}


def test_decode_errors_reply_in_json_and_keep_the_connection(server: MemoryServer) -> None:
    client, pump = server.connect()
    bad_json = client.request_raw(b'{"cmd":')
    bad_wire = client.request_raw(b"\xdb\x07\xff\xff\xff\xff")
    empty = client.request_raw(b"")
    nan = client.request_raw(b'{"cmd":"ping","x":NaN}')
    ping = client.request({"cmd": "ping"})
    pump.flush()
    assert result_of(bad_json)["error"].startswith("invalid JSON: ")
    assert result_of(bad_wire)["error"].startswith("invalid OxiWire request: ")
    assert result_of(empty)["error"].startswith("invalid MsgPack: ")
    assert result_of(nan)["error"].startswith("invalid JSON: ")
    assert result_of(ping) == {"ok": True, "data": "pong"}


def test_leading_whitespace_is_json(server: MemoryServer) -> None:
    client, pump = server.connect()
    d = client.request_raw(b'\n {"cmd":"ping"}')
    pump.flush()
    assert result_of(d) == {"ok": True, "data": "pong"}


def test_pipelined_frames_in_one_write_answer_in_order(server: MemoryServer) -> None:
    client, pump = server.connect()
    replies: list[bytes] = []
    client.dataReceived = replies.append  # type: ignore[method-assign]
    requests = [{"cmd": "ping"}, {"cmd": "nope"}, {"cmd": "ping"}, {}] * 50
    client.transport.write(b"".join(frame(r) for r in requests))
    pump.flush()
    data = b"".join(replies)
    answers = []
    while data:
        (n,) = struct.unpack_from("<I", data)
        answers.append(json.loads(data[4 : 4 + n]))
        data = data[4 + n :]
    assert answers == [
        {"ok": True, "data": "pong"},
        {"ok": False, "error": "unknown command: nope"},
        {"ok": True, "data": "pong"},
        {"ok": False, "error": "missing or invalid 'cmd' field"},
    ] * 50


def test_one_connection_runs_requests_strictly_in_order(server: MemoryServer) -> None:
    pending = add_slow_command(server)
    client, pump = server.connect()
    slow = client.request({"cmd": "slow"})
    ping = client.request({"cmd": "ping"})
    pump.flush()
    assert len(pending) == 1
    assert not ping.called  # queued behind the slow request
    pending[0].callback("done")
    pump.flush()
    assert result_of(slow) == {"ok": True, "data": "done"}
    assert result_of(ping) == {"ok": True, "data": "pong"}


def test_other_connections_are_served_concurrently(server: MemoryServer) -> None:
    pending = add_slow_command(server)
    first, pump1 = server.connect()
    second, pump2 = server.connect()
    slow = first.request({"cmd": "slow"})
    pump1.flush()
    ping = second.request({"cmd": "ping"})
    pump2.flush()
    assert result_of(ping) == {"ok": True, "data": "pong"}
    assert not slow.called
    pending[0].callback(1)
    pump1.flush()
    assert result_of(slow) == {"ok": True, "data": 1}


def test_handler_exceptions_give_a_generic_error(server: MemoryServer) -> None:
    def broken(ctx: Any, request: Any) -> Any:
        raise ZeroDivisionError("secret detail")

    server.add_command(Command("broken", broken))
    assert server.request({"cmd": "broken"}) == {"ok": False, "error": "internal error"}
    assert server.request({"cmd": "ping"}) == {"ok": True, "data": "pong"}


def test_oversized_frame_closes_without_reply(server: MemoryServer) -> None:
    client, pump = server.connect()
    replies: list[bytes] = []
    client.dataReceived = replies.append  # type: ignore[method-assign]
    client.transport.write(struct.pack("<I", MAX_FRAME + 1) + b"{")
    pump.flush()
    assert replies == []
    assert client.lost_d.called


def test_exactly_16_mib_is_accepted(server: MemoryServer) -> None:
    client, pump = server.connect()
    body = b'{"cmd":"ping","pad":"' + b"x" * (MAX_FRAME - 23) + b'"}'
    assert len(body) == MAX_FRAME
    d = client.request_raw(body)
    pump.flush()
    assert result_of(d) == {"ok": True, "data": "pong"}


def test_eof_mid_frame_closes_quietly(server: MemoryServer) -> None:
    client, pump = server.connect()
    client.transport.write(struct.pack("<I", 100) + b'{"cmd"')
    pump.flush()
    client.transport.loseConnection()
    pump.flush()
    assert len(server.factory.connections) == 0


def test_idle_timeout_closes_a_silent_connection(server: MemoryServer) -> None:
    client, pump = server.connect()
    server.clock.advance(29)
    pump.flush()
    assert not client.lost_d.called
    server.clock.advance(1.5)
    pump.flush()
    assert client.lost_d.called


def test_activity_restarts_the_idle_clock(server: MemoryServer) -> None:
    client, pump = server.connect()
    for _ in range(5):
        server.clock.advance(20)
        d = client.request({"cmd": "ping"})
        pump.flush()
        assert result_of(d)["ok"]
    assert not client.lost_d.called


def test_idle_clock_stops_while_a_request_executes(server: MemoryServer) -> None:
    pending = add_slow_command(server)
    client, pump = server.connect()
    d = client.request({"cmd": "slow"})
    pump.flush()
    server.clock.advance(100)
    pump.flush()
    assert not client.lost_d.called
    pending[0].callback("ok")
    pump.flush()
    assert result_of(d)["ok"]
    server.clock.advance(29)
    pump.flush()
    assert not client.lost_d.called
    server.clock.advance(2)
    pump.flush()
    assert client.lost_d.called


def test_slowly_arriving_frame_is_cut(server: MemoryServer) -> None:
    client, pump = server.connect()
    payload = frame({"cmd": "ping"})
    for byte in payload[:-1]:
        client.transport.write(bytes([byte]))
        pump.flush()
        server.clock.advance(2)
        pump.flush()
    assert client.lost_d.called


def test_idle_timeout_zero_means_never(tmp_path: Any) -> None:
    server = MemoryServer(Config(data_dir=str(tmp_path), idle_timeout=0))
    client, pump = server.connect()
    server.clock.advance(10**6)
    pump.flush()
    assert not client.lost_d.called


def test_timeout_rolls_back_the_transaction(server: MemoryServer) -> None:
    client, pump = server.connect()
    protocol = next(iter(server.factory.connections))
    protocol.session.tx = object()
    server.clock.advance(31)
    pump.flush()
    assert protocol.session.tx is None


def make_protocol(server: MemoryServer) -> tuple[Any, StringTransport]:
    protocol = server.factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def counting_protocol(server: MemoryServer, pause_above: int | None = None) -> tuple[Any, CountingTransport]:
    """A connection of C{server} on a L{CountingTransport}."""
    protocol = server.factory.buildProtocol(None)
    transport = CountingTransport(pause_above)
    protocol.makeConnection(transport)
    return protocol, transport


def test_reading_pauses_when_too_many_requests_are_queued(server: MemoryServer) -> None:
    pending = add_slow_command(server)
    protocol, transport = make_protocol(server)
    protocol.dataReceived(frame({"cmd": "slow"}) + frame({"cmd": "ping"}) * 1000)
    assert transport.producerState == "paused"
    pending[0].callback(None)
    assert transport.producerState == "producing"
    replies = transport.value()
    assert replies.count(b'"pong"') == 1000


def test_client_that_does_not_read_stops_request_processing(server: MemoryServer) -> None:
    protocol, transport = make_protocol(server)
    protocol.pauseProducing()  # what the transport does when its buffer is full
    protocol.dataReceived(frame({"cmd": "ping"}) * 1000)
    assert transport.value() == b""
    assert transport.producerState == "paused"  # and we stop reading too
    protocol.resumeProducing()
    assert transport.value().count(b'"pong"') == 1000
    assert transport.producerState == "producing"


class CountingTransport(StringTransport):
    """Counts writes; pauses its producer once it holds C{pause_above} bytes, as a full socket buffer does."""

    def __init__(self, pause_above: int | None = None) -> None:
        super().__init__()
        self.writes: list[int] = []
        self.pause_above = pause_above

    def write(self, data: bytes) -> None:
        self.writes.append(len(data))
        super().write(data)
        if self.pause_above is not None and len(self.value()) > self.pause_above and self.producer is not None:
            self.producer.pauseProducing()

    def writeSequence(self, data: Iterable[bytes]) -> None:
        self.write(b"".join(data))


def replies_of(data: bytes) -> list[Any]:
    answers = []
    while data:
        (n,) = struct.unpack_from("<I", data)
        answers.append(json.loads(data[4 : 4 + n]))
        data = data[4 + n :]
    return answers


def test_the_replies_of_one_read_are_written_at_once(server: MemoryServer) -> None:
    protocol, transport = counting_protocol(server)
    protocol.dataReceived(b"".join(frame({"cmd": "ping" if i % 3 else "nope"}) for i in range(32)))
    assert len(transport.writes) == 1
    assert replies_of(transport.value()) == [
        {"ok": False, "error": "unknown command: nope"} if i % 3 == 0 else {"ok": True, "data": "pong"}
        for i in range(32)
    ]


def test_batched_replies_go_out_before_a_pending_one(server: MemoryServer) -> None:
    pending = add_slow_command(server)
    protocol, transport = counting_protocol(server)
    protocol.dataReceived(frame({"cmd": "ping"}) * 3 + frame({"cmd": "slow"}) + frame({"cmd": "ping"}) * 2)
    assert replies_of(transport.value()) == [{"ok": True, "data": "pong"}] * 3
    pending[0].callback("done")
    assert replies_of(transport.value()) == [{"ok": True, "data": "pong"}] * 3 + [
        {"ok": True, "data": "done"}
    ] + [{"ok": True, "data": "pong"}] * 2
    assert len(transport.writes) == 3  # the pings before, the slow reply, the pings after


def test_a_batch_is_written_by_64_kib_and_a_pause_stops_the_turn(server: MemoryServer) -> None:
    """Replies of about 10 KiB: a write every 64 KiB; a transport that is full stops further requests."""
    server.add_command(Command("blob", lambda ctx, request: "x" * 10_000))
    protocol, transport = counting_protocol(server, pause_above=100_000)
    protocol.dataReceived(frame({"cmd": "blob"}) * 40)
    # Seven replies make a batch past 64 KiB; the second batch fills the transport.
    assert transport.writes == [7 * 10_025, 7 * 10_025]
    assert protocol.factory.unsent == 7 * 10_025  # the batch written while it paused us
    transport.clear()
    transport.pause_above = None
    protocol.resumeProducing()
    assert protocol.factory.unsent == 0
    assert len(replies_of(transport.value())) == 40 - 14


def test_a_large_reply_is_written_on_its_own_after_the_batch(server: MemoryServer) -> None:
    server.add_command(Command("big", lambda ctx, request: "y" * 20_000))
    protocol, transport = counting_protocol(server)
    protocol.dataReceived(frame({"cmd": "ping"}) * 2 + frame({"cmd": "big"}) + frame({"cmd": "ping"}))
    answers = replies_of(transport.value())
    assert [a["data"][:1] for a in answers] == ["p", "p", "y", "p"]
    assert len(transport.writes) == 3


def test_hello(server: MemoryServer) -> None:
    reply = server.request({"cmd": "hello", "client": "test"})
    assert reply["ok"] is True
    assert "data" not in reply
    info = reply["server"]
    assert info["name"] == "oxidb-server"
    assert info["wire_version"] == 1
    assert info["supported_wire_versions"] == [1]
    assert info["auth_methods"] == ["anonymous"]
    assert "experimental_features" in info


def test_hello_reports_only_registered_features(server: MemoryServer) -> None:
    info = server.request({"cmd": "hello"})["server"]
    for feature, command in [("txn", "begin_tx"), ("blobs", "put_object"), ("fts", "text_search")]:
        assert (feature in info["features"]) == (command in server.services.registry)


def test_hello_without_common_version(server: MemoryServer) -> None:
    assert server.request({"cmd": "hello", "wire_versions": [2, 3]}) == {
        "ok": False,
        "error": "no compatible wire version (server supports [1], client offered [2, 3])",
    }


def test_hello_success_is_json_even_over_oxiwire(server: MemoryServer) -> None:
    client, pump = server.connect()
    hello = bytes.fromhex("db080100000003000000636d640605000000") + b"hello"
    d = client.request_raw(hello)
    pump.flush()
    assert result_of(d)["server"]["name"] == "oxidb-server"


def test_pipeline(server: MemoryServer) -> None:
    reply = server.request(
        {"cmd": "pipeline", "commands": [{"cmd": "ping"}, {"cmd": "nope"}, {"cmd": "pipeline", "commands": []}]}
    )
    assert reply == {
        "ok": True,
        "data": [
            {"ok": True, "data": "pong"},
            {"ok": False, "error": "unknown command: nope"},
            {"ok": False, "error": "pipeline: nested pipelines are not supported"},
        ],
    }


def test_pipeline_waits_for_asynchronous_commands(server: MemoryServer) -> None:
    pending = add_slow_command(server)
    client, pump = server.connect()
    d = client.request({"cmd": "pipeline", "commands": [{"cmd": "slow"}, {"cmd": "ping"}]})
    pump.flush()
    assert not d.called
    pending[0].callback(7)
    pump.flush()
    assert result_of(d)["data"] == [{"ok": True, "data": 7}, {"ok": True, "data": "pong"}]


def test_pipeline_without_commands(server: MemoryServer) -> None:
    assert server.request({"cmd": "pipeline"}) == {"ok": False, "error": "pipeline: missing 'commands' array"}


def test_clean_shutdown_finishes_in_flight_requests(server: MemoryServer) -> None:
    pending = add_slow_command(server)
    client, pump = server.connect()
    d = client.request({"cmd": "slow"})
    pump.flush()
    stopped = server.service.stopService()
    pump.flush()
    assert not stopped.called
    pending[0].callback("finished")
    pump.flush()
    assert result_of(d) == {"ok": True, "data": "finished"}
    assert stopped.called
    assert client.lost_d.called


def test_requests_before_an_oversized_frame_are_answered_then_the_connection_closes(server: MemoryServer) -> None:
    client, pump = server.connect()
    replies: list[bytes] = []
    client.dataReceived = replies.append  # type: ignore[method-assign]
    client.transport.write(frame({"cmd": "ping"}) * 2 + struct.pack("<I", MAX_FRAME + 1) + b"{")
    pump.flush()
    assert b"".join(replies) == (encode_frame(b'{"ok":true,"data":"pong"}')) * 2
    assert client.lost_d.called


def test_pool_work_of_a_turn_belongs_to_the_connection_and_only_during_it(server: MemoryServer) -> None:
    """The owner is set once for a turn's requests and is gone after it (also after a handler raised)."""
    from oxidb.owner import current_owner

    seen: list[Any] = []

    def owner(ctx: Any, request: dict[str, Any]) -> str:
        seen.append(current_owner.get())
        return "seen"

    def broken(ctx: Any, request: dict[str, Any]) -> str:
        raise RuntimeError("boom")

    server.add_command(Command("owner", owner))
    server.add_command(Command("broken", broken))
    protocol, transport = counting_protocol(server)
    protocol.dataReceived(frame({"cmd": "owner"}) + frame({"cmd": "broken"}) + frame({"cmd": "owner"}))
    assert seen == [protocol, protocol]
    assert current_owner.get() is None
    assert [a["ok"] for a in replies_of(transport.value())] == [True, False, True]


def test_a_fired_deferred_is_answered_in_the_same_turn(server: MemoryServer) -> None:
    """A handler's already-fired Deferred (an inline read) answers like a plain value, errors too."""
    from twisted.internet.defer import fail, succeed

    from oxidb.errors import BadRequestError

    server.add_command(Command("fired", lambda ctx, request: succeed({"n": 1})))
    server.add_command(Command("failed", lambda ctx, request: fail(BadRequestError("no"))))
    pending = add_slow_command(server)
    protocol, transport = counting_protocol(server)
    protocol.dataReceived(frame({"cmd": "fired"}) + frame({"cmd": "failed"}) + frame({"cmd": "slow"}))
    assert replies_of(transport.value()) == [{"ok": True, "data": {"n": 1}}, {"ok": False, "error": "no"}]
    assert len(transport.writes) == 1
    pending[0].callback("late")
    assert replies_of(transport.value())[2] == {"ok": True, "data": "late"}
    metrics = server.services.metrics
    assert metrics is not None
    count = metrics.registry.get_sample_value
    assert count("oxidb_commands_total", {"cmd": "fired", "result": "ok"}) == 1
    assert count("oxidb_commands_total", {"cmd": "failed", "result": "error"}) == 1


class ScriptedPool:
    """Stands in for the factory's offload: records each job and leaves running it to the test."""

    def __init__(self, server: MemoryServer, refuse: bool = False) -> None:
        self.jobs: list[tuple[Any, tuple[Any, ...], Deferred[Any]]] = []
        self.refuse = refuse
        server.factory.offload = self.offload  # type: ignore[method-assign]

    def offload(self, owner: Any, fn: Any, *args: Any) -> Deferred[Any]:
        from twisted.internet.defer import fail

        from oxidb.errors import ServerBusyError

        if self.refuse:
            return fail(ServerBusyError("worker queue full (OXIDB_POOL_QUEUE)"))
        d: Deferred[Any] = Deferred()
        self.jobs.append((fn, args, d))
        return d

    def run(self, index: int) -> None:
        fn, args, d = self.jobs[index]
        d.callback(fn(*args))


def large_ping(tag: int) -> bytes:
    """A ping frame above the protocol's OFFLOAD_BYTES (decoded on the pool)."""
    from oxidb.server.protocol import OFFLOAD_BYTES

    return frame({"cmd": "ping", "tag": tag, "pad": "x" * OFFLOAD_BYTES})


def test_the_next_large_frame_is_decoded_while_a_request_executes(server: MemoryServer) -> None:
    from oxidb.server.protocol import decode_large

    pending = add_slow_command(server)
    pool = ScriptedPool(server)
    protocol, transport = counting_protocol(server)
    protocol.dataReceived(frame({"cmd": "slow"}) + large_ping(1))
    # slow executes; the frame behind it is decoded ahead, and nothing more runs.
    assert [fn for fn, _, _ in pool.jobs] == [decode_large]
    pool.run(0)
    assert transport.value() == b""
    pending[0].callback("first")
    # Its turn takes the decode done ahead: no second decode.
    assert replies_of(transport.value()) == [{"ok": True, "data": "first"}, {"ok": True, "data": "pong"}]
    assert len(pool.jobs) == 1
    # A frame arriving while a request executes is decoded ahead too, even before the decode ends.
    transport.clear()
    protocol.dataReceived(frame({"cmd": "slow"}))
    protocol.dataReceived(large_ping(2) + large_ping(3))
    assert len(pool.jobs) == 2  # one frame ahead at most
    pending[1].callback("second")
    assert replies_of(transport.value()) == [{"ok": True, "data": "second"}]
    pool.run(1)
    # The third frame is decoded in its own turn, after the second's reply.
    assert len(pool.jobs) == 3
    pool.run(2)
    assert [r["data"] for r in replies_of(transport.value())] == ["second", "pong", "pong"]


def test_decoding_ahead_refused_by_a_full_pool_is_left_to_the_frames_turn(server: MemoryServer) -> None:
    pending = add_slow_command(server)
    pool = ScriptedPool(server, refuse=True)
    protocol, transport = counting_protocol(server)
    protocol.dataReceived(frame({"cmd": "slow"}) + large_ping(1))
    pool.refuse = False
    pending[0].callback("done")
    assert len(pool.jobs) == 1  # decoded in its turn, not answered "server busy"
    pool.run(0)
    assert [r["data"] for r in replies_of(transport.value())] == ["done", "pong"]


def test_a_frame_decoded_ahead_is_dropped_with_its_connection(server: MemoryServer) -> None:
    from twisted.python.failure import Failure

    from oxidb.errors import RequesterGoneError

    pending = add_slow_command(server)
    pool = ScriptedPool(server)
    protocol, transport = counting_protocol(server)
    protocol.dataReceived(frame({"cmd": "slow"}) + large_ping(1))
    protocol.connectionLost(Failure(ConnectionError("gone")))
    # The pool drops the work of a closed connection; nobody waits for it and nothing is logged as unhandled.
    _, _, d = pool.jobs[0]
    d.errback(RequesterGoneError())
    assert d.called and d.result is None
    pending[0].callback("late")
    assert transport.value() == b""


def test_text_replies_and_their_counts(server: MemoryServer) -> None:
    """Short text results share their reply; every request is counted in its command's row."""
    long_text = "x" * 100
    server.add_command(Command("long_text", lambda ctx, request: long_text, audited=False))
    server.add_command(Command("short_text", lambda ctx, request: "short", audited=False))
    protocol, transport = make_protocol(server)
    protocol.dataReceived(b"".join(frame({"cmd": cmd}) for cmd in ["ping", "long_text", "short_text"] * 40))
    assert replies_of(transport.value()) == [{"ok": True, "data": text} for text in ["pong", long_text, "short"] * 40]
    metrics = server.services.metrics
    assert metrics is not None
    for cmd in ["ping", "long_text", "short_text"]:
        assert metrics.registry.get_sample_value("oxidb_commands_total", {"cmd": cmd, "result": "ok"}) == 40
        assert metrics.registry.get_sample_value("oxidb_command_duration_seconds_count", {"cmd": cmd}) == 40
