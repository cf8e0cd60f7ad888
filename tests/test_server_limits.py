"""
Resource limits of the client port, one test (or a few) per attack class:
what an unauthenticated client may send, pipelines, the worker pool's
admission and dropping, connection caps, clients that do not read, reply
size, and keeping big decodes and encodes off the reactor.

All in memory: StringTransport connections on a MemoryReactorClock.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest
from protocol_helpers import add_slow, connect, frame, make_server, replies
from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport

from oxidb.audit.events import AuditEvent, Auditor
from oxidb.commands._registry import Command
from oxidb.config import Config
from oxidb.engine.engine import Engine
from oxidb.errors import RequesterGoneError, ServerBusyError
from oxidb.limits import Limits
from oxidb.server.executor import LocalExecutor
from oxidb.server.protocol import OFFLOAD_BYTES
from oxidb.server.workers import WorkerPool
from oxidb.testing import MemoryServer, QueuedReactor, result_of
from oxidb.wire.framing import MAX_FRAME, encode_frame


def add_command(server: MemoryServer, name: str, fn: Callable[..., Any], **kw: Any) -> None:
    server.add_command(Command(name, fn, **kw))


# --- before login -------------------------------------------------------------


def test_preauth_frame_over_the_limit_closes_on_its_prefix(tmp_path: Any) -> None:
    server = make_server(tmp_path, auth=True)
    protocol, transport = connect(server)
    # The 4-byte prefix alone is enough: none of the payload is awaited.
    protocol.dataReceived(struct.pack("<I", 64 * 1024 + 1))
    assert transport.value() == b""
    assert protocol.gone and transport.disconnecting
    # Exactly the limit is a frame like any other.
    protocol, transport = connect(server)
    body = b'{"cmd":"ping","pad":"' + b"x" * (64 * 1024 - 23) + b'"}'
    protocol.dataReceived(encode_frame(body))
    assert replies(transport.value()) == [{"ok": True, "data": "pong"}]


def test_frames_up_to_16_mib_once_logged_in(tmp_path: Any) -> None:
    server = make_server(tmp_path, auth=True)
    protocol, transport = connect(server)
    protocol.dataReceived(frame({"cmd": "fake_login"}))
    body = b'{"cmd":"ping","pad":"' + b"x" * (1024 * 1024) + b'"}'
    protocol.dataReceived(encode_frame(body))
    assert replies(transport.value())[1] == {"ok": True, "data": "pong"}
    assert not protocol.gone


def test_preauth_queued_bytes_are_bounded_by_the_frame_limit(tmp_path: Any) -> None:
    server = make_server(tmp_path, auth=True)
    add_slow(server, pre_auth=True)
    protocol, transport = connect(server)
    protocol.dataReceived(frame({"cmd": "slow"}) + frame({"cmd": "ping", "pad": "x" * 1000}) * 70)
    assert transport.producerState == "paused"


def test_preauth_pipeline_runs_only_preauth_commands(tmp_path: Any) -> None:
    server = make_server(tmp_path, auth=True)
    protocol, transport = connect(server)
    request = {
        "command": "pipeline",
        "commands": [
            {"cmd": "find", "collection": "c"},
            {"command": "find", "collection": "c"},
            {"cmd": "ping"},
            {"command": "pipeline", "commands": [{"cmd": "find", "collection": "c"}]},
            {"cmd": "pipeline", "commands": [{"cmd": "find", "collection": "c"}]},
        ],
    }
    protocol.dataReceived(frame(request))
    required = {"ok": False, "error": "authentication required"}
    nested = {"ok": False, "error": "pipeline: nested pipelines are not supported"}
    pong = {"ok": True, "data": "pong"}
    assert replies(transport.value()) == [{"ok": True, "data": [required, required, pong, nested, nested]}]


def test_login_deadline_closes_the_connection(tmp_path: Any) -> None:
    server = make_server(tmp_path, auth=True, OXIDB_LOGIN_TIMEOUT="5", OXIDB_IDLE_TIMEOUT="0")
    idle, _ = connect(server)
    pinging, _ = connect(server)
    logged_in, _ = connect(server)
    logged_in.dataReceived(frame({"cmd": "fake_login"}))
    for _ in range(4):
        server.clock.advance(1)
        pinging.dataReceived(frame({"cmd": "ping"}))  # activity does not extend the deadline
    assert not idle.gone and not pinging.gone
    server.clock.advance(1)
    assert idle.gone and pinging.gone
    assert not logged_in.gone
    server.clock.advance(1000)
    assert not logged_in.gone


def test_nothing_before_login_is_audited(tmp_path: Any) -> None:
    server = make_server(tmp_path, auth=True)
    events: list[AuditEvent] = []

    class Sink:
        def record(self, event: AuditEvent) -> None:
            events.append(event)

    server.rebuild(audit=Auditor(server.clock, [Sink()]))
    protocol, _ = connect(server)
    requests = [
        {"cmd": "ping"},
        {"cmd": "hello"},
        {"cmd": "find", "collection": "c"},
        {"cmd": "pipeline", "commands": [{"cmd": "ping"}] * 5},
    ]
    protocol.dataReceived(b"".join(frame(r) for r in requests * 10))
    assert events == []
    protocol.dataReceived(frame({"cmd": "fake_login"}) + frame({"cmd": "ping"}))
    assert [(e.user, e.cmd, e.result) for e in events] == [("admin", "ping", "ok")]


# --- pipelines ----------------------------------------------------------------


def test_pipeline_has_an_element_cap(tmp_path: Any) -> None:
    server = make_server(tmp_path, OXIDB_MAX_PIPELINE="3")
    assert server.request({"cmd": "pipeline", "commands": [{"cmd": "ping"}] * 3})["ok"]
    assert server.request({"cmd": "pipeline", "commands": [{}] * 4}) == {
        "ok": False,
        "error": "pipeline: 4 commands exceed the limit of 3 (OXIDB_MAX_PIPELINE)",
    }


def test_a_pipelines_commands_count_as_queued_requests(tmp_path: Any) -> None:
    server = make_server(tmp_path, OXIDB_MAX_QUEUED_REQUESTS="8")
    pending = add_slow(server)
    protocol, transport = connect(server)
    protocol.dataReceived(frame({"cmd": "pipeline", "commands": [{"cmd": "slow"}] * 7}))
    assert transport.producerState == "producing"
    protocol.dataReceived(frame({"cmd": "ping"}))
    assert transport.producerState == "paused"  # 7 running + 1 waiting
    while pending:
        pending.pop(0).callback(1)
    assert transport.producerState == "producing"
    assert len(replies(transport.value())) == 2


class FlowTransport(StringTransport):
    """Records each change of its producer state (the protocol pausing and resuming reading)."""

    def __init__(self) -> None:
        super().__init__()
        self.changes: list[str] = []

    def pauseProducing(self) -> None:
        super().pauseProducing()
        self.changes.append(self.producerState)

    def resumeProducing(self) -> None:
        super().resumeProducing()
        self.changes.append(self.producerState)


def test_a_synchronous_pipeline_counts_for_its_commands_only_while_it_runs(tmp_path: Any) -> None:
    server = make_server(tmp_path, OXIDB_MAX_QUEUED_REQUESTS="8")
    pending = add_slow(server)
    protocol, transport = connect(server, transport=FlowTransport())
    # One read: a pipeline of 7 pings (answered at once), then a slow
    # request with two pings waiting behind it.
    pipeline = frame({"cmd": "pipeline", "commands": [{"cmd": "ping"}] * 7})
    protocol.dataReceived(pipeline + frame({"cmd": "slow"}) + frame({"cmd": "ping"}) * 2)
    # 7 running + 3 waiting, then 1 running + 2 waiting.
    assert transport.changes == ["paused", "producing"]
    pending.pop().callback(1)
    assert [r["ok"] for r in replies(transport.value())] == [True] * 4
    assert transport.changes == ["paused", "producing"]


def test_queued_bytes_are_exact_after_every_turn(tmp_path: Any) -> None:
    server = make_server(tmp_path, OXIDB_MAX_QUEUED_BYTES="65536")
    pending = add_slow(server)
    protocol, transport = connect(server, transport=FlowTransport())
    padded = frame({"cmd": "ping", "pad": "x" * 1000})
    for waiting, state in [(40, "producing"), (40, "producing"), (70, "paused"), (40, "producing")]:
        # 30 frames of 1 KB answered at once, then a slow request with
        # that many frames of 1 KB waiting behind it.
        protocol.dataReceived(padded * 30 + frame({"cmd": "slow"}) + padded * waiting)
        assert transport.producerState == state
        pending.pop().callback(1)
        assert transport.producerState == "producing"
        assert [r["ok"] for r in replies(transport.value())] == [True] * (31 + waiting)
        transport.clear()
    assert transport.changes == ["paused", "producing"]


# --- the worker pool ----------------------------------------------------------


class Owner:
    gone = False


@pytest.fixture
def blocked_pool() -> Any:
    """An owned one-thread pool (2 jobs may wait) whose thread waits for C{gate}."""
    reactor = QueuedReactor()
    pool = WorkerPool(reactor, 1, owned=True, max_queued=2)
    pool.start()
    gate = threading.Event()
    started = threading.Event()

    def block() -> None:
        started.set()
        gate.wait(10)

    pool.submit(None, block)
    assert started.wait(10)
    yield pool, reactor, gate
    gate.set()
    pool.stop()


def test_job_of_a_gone_owner_never_runs(blocked_pool: Any) -> None:
    pool, reactor, gate = blocked_pool
    ran: list[str] = []
    owner = Owner()
    dropped = pool.submit(owner, ran.append, "dropped")
    unowned = pool.defer(ran.append, "unowned")  # no current owner: always runs
    owner.gone = True
    gate.set()
    pool.stop()
    reactor.run_pending()
    assert ran == ["unowned"]
    with pytest.raises(RequesterGoneError):
        result_of(dropped)
    assert result_of(unowned) is None
    assert pool.dropped == 1


def test_full_worker_queue_answers_server_busy_at_once(blocked_pool: Any) -> None:
    pool, reactor, gate = blocked_pool
    owner = Owner()
    waiting = [pool.submit(owner, lambda: "ran") for _ in range(2)]
    refused = pool.submit(owner, lambda: "ran")
    with pytest.raises(ServerBusyError, match=r"^server busy: worker queue full \(OXIDB_POOL_QUEUE\)$"):
        result_of(refused)
    internal = pool.submit(None, lambda: "internal")  # work without an owner is always admitted
    gate.set()
    pool.stop()
    reactor.run_pending()
    assert [result_of(d) for d in waiting] == ["ran", "ran"]
    assert result_of(internal) == "internal"


def test_reads_of_a_closed_connection_are_dropped(tmp_path: Any, blocked_pool: Any) -> None:
    """Through the protocol: the read a request queued belongs to its connection."""
    pool, reactor, gate = blocked_pool
    server = make_server(tmp_path)
    server.rebuild(executor=lambda lifecycle: LocalExecutor(reactor, pool, lifecycle))
    ran: list[int] = []
    add_command(server, "work", lambda ctx, request: ctx.read(ran.append, request["n"]))
    closing, _ = connect(server)
    staying, transport = connect(server)
    closing.dataReceived(frame({"cmd": "work", "n": 1}))
    staying.dataReceived(frame({"cmd": "work", "n": 2}))
    closing.connectionLost()
    gate.set()
    pool.stop()
    reactor.run_pending()
    assert ran == [2]
    assert replies(transport.value()) == [{"ok": True, "data": None}]


def test_busy_pool_is_a_reply_not_a_wait(tmp_path: Any, blocked_pool: Any) -> None:
    pool, reactor, gate = blocked_pool
    server = make_server(tmp_path)
    server.rebuild(executor=lambda lifecycle: LocalExecutor(reactor, pool, lifecycle))
    add_command(server, "work", lambda ctx, request: ctx.read(lambda: "done"))
    connections = [connect(server) for _ in range(3)]
    for protocol, _ in connections:
        protocol.dataReceived(frame({"cmd": "work"}))
    assert replies(connections[2][1].value()) == [
        {"ok": False, "error": "server busy: worker queue full (OXIDB_POOL_QUEUE)"}
    ]
    gate.set()
    pool.stop()
    reactor.run_pending()
    assert [replies(t.value()) for _, t in connections[:2]] == [[{"ok": True, "data": "done"}]] * 2


# --- connections ----------------------------------------------------------------


def test_connection_caps_overall_and_per_address(tmp_path: Any) -> None:
    server = make_server(tmp_path, OXIDB_MAX_CONNECTIONS="3", OXIDB_MAX_CONNECTIONS_PER_IP="2")
    first, _ = connect(server, "10.0.0.1")
    connect(server, "10.0.0.1")
    _, transport = connect(server, "10.0.0.1")
    assert replies(transport.value()) == [
        {"ok": False, "error": "server busy: too many connections from your address (OXIDB_MAX_CONNECTIONS_PER_IP)"}
    ]
    assert transport.disconnecting
    connect(server, "10.0.0.2")
    _, transport = connect(server, "10.0.0.3")
    assert replies(transport.value()) == [
        {"ok": False, "error": "server busy: too many connections (OXIDB_MAX_CONNECTIONS)"}
    ]
    assert len(server.factory.connections) == 3 and server.factory.refused == 2
    first.connectionLost()
    again, transport = connect(server, "10.0.0.1")
    again.dataReceived(frame({"cmd": "ping"}))
    assert replies(transport.value()) == [{"ok": True, "data": "pong"}]


# --- output -------------------------------------------------------------------


class PausingTransport(StringTransport):
    """Like a TCP transport: pauses its producer when more than 64 KiB wait; L{drain} sends them."""

    def write(self, data: bytes) -> None:
        super().write(data)
        producer: Any = self.producer
        if len(self.io.getvalue()) > 64 * 1024 and producer is not None:
            producer.pauseProducing()

    def writeSequence(self, data: Iterable[bytes]) -> None:
        self.write(b"".join(data))

    def drain(self) -> bytes:
        data = self.value()
        self.clear()
        producer: Any = self.producer
        if producer is not None:
            producer.resumeProducing()
        return data


def test_non_reading_clients_share_a_bounded_reply_budget(tmp_path: Any) -> None:
    server = make_server(tmp_path, OXIDB_MAX_UNSENT_BYTES=str(1024 * 1024))
    add_command(server, "big", lambda ctx, request: "x" * (600 * 1024))
    clients = [connect(server, transport=PausingTransport()) for _ in range(3)]
    for protocol, _ in clients:
        protocol.dataReceived(frame({"cmd": "big"}) * 5)
    (_, first), (_, second), (_, third) = clients
    busy = {"ok": False, "error": "server busy: too many reply bytes unsent (OXIDB_MAX_UNSENT_BYTES)"}
    # The first reply fits the budget and fills its transport, so that
    # connection runs nothing more; the others' replies would pass the
    # budget and become short errors.
    assert [r["ok"] for r in replies(first.value())] == [True]
    assert replies(second.value()) == [busy] * 5
    assert replies(third.value()) == [busy] * 5
    reply_size = len(first.value())
    assert server.factory.unsent == reply_size
    first.drain()  # the first client reads: its next reply is written
    assert server.factory.unsent == reply_size
    assert [r["ok"] for r in replies(first.value())] == [True]
    # A closed connection frees its share.
    clients[0][0].connectionLost()
    assert server.factory.unsent == 0


def test_a_reply_over_the_frame_limit_becomes_an_error(tmp_path: Any) -> None:
    server = make_server(tmp_path)
    add_command(server, "huge", lambda ctx, request: ["y" * 1024] * (MAX_FRAME // 1024))
    protocol, transport = connect(server)
    protocol.dataReceived(frame({"cmd": "huge"}) + frame({"cmd": "ping"}))
    [error, pong] = replies(transport.value())
    assert error["ok"] is False
    assert error["error"].startswith("reply too large: ")
    assert "'limit' and 'skip'" in error["error"] and f"the {MAX_FRAME}-byte frame limit" in error["error"]
    assert pong == {"ok": True, "data": "pong"}


# --- decoding and encoding off the reactor ----------------------------------------


def capture_offloads(server: Any) -> list[tuple[Deferred[Any], Callable[..., Any], tuple[Any, ...]]]:
    """
    Make the server's off-reactor work wait: each job is recorded as
    (Deferred, fn, args) for the test to run and fire.
    """
    offloaded: list[tuple[Deferred[Any], Callable[..., Any], tuple[Any, ...]]] = []

    def offload(owner: Any, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        offloaded.append((d, fn, args))
        return d

    server.factory.offload = offload
    return offloaded


def test_large_frames_and_replies_are_coded_off_the_reactor(tmp_path: Any) -> None:
    server = make_server(tmp_path)
    add_command(server, "echo", lambda ctx, request: request["pad"])
    offloaded = capture_offloads(server)
    protocol, transport = connect(server)
    pad = "z" * OFFLOAD_BYTES
    protocol.dataReceived(frame({"cmd": "ping"}) + frame({"cmd": "echo", "pad": pad}) + frame({"cmd": "ping"}))
    # The small ping ran inline; the large frame waits for the pool, and the
    # ping behind it waits too (one connection's requests stay in order).
    assert replies(transport.value()) == [{"ok": True, "data": "pong"}]
    [(d, fn, args)] = offloaded
    assert fn.__name__ == "decode_large"
    d.callback(fn(*args))
    [_, (d, fn, args)] = offloaded
    assert fn.__name__ == "_encode"  # the large reply
    d.callback(fn(*args))
    assert replies(transport.value()) == [
        {"ok": True, "data": "pong"},
        {"ok": True, "data": pad},
        {"ok": True, "data": "pong"},
    ]
    assert len(offloaded) == 2


def test_pipeline_stops_when_its_connection_must_close(tmp_path: Any) -> None:
    """A pre-login pipeline of many failing logins does not run them all."""
    server = make_server(tmp_path, auth=True)
    ran: list[int] = []

    def failing_login(ctx: Any, request: Any) -> str:
        ran.append(1)
        ctx.session.close_after_reply = True  # what the third failed login does
        return "no"

    add_command(server, "failing_login", failing_login, pre_auth=True, audited=False)
    protocol, transport = connect(server)
    protocol.dataReceived(frame({"cmd": "pipeline", "commands": [{"cmd": "ping"}] + [{"cmd": "failing_login"}] * 50}))
    [reply] = replies(transport.value())
    closing = {"ok": False, "error": "pipeline: not run, the connection is closing"}
    assert reply["data"] == [{"ok": True, "data": "pong"}, {"ok": True, "data": "no"}] + [closing] * 49
    assert ran == [1] and transport.disconnecting


def test_pipeline_stops_once_its_reply_surely_exceeds_a_frame(tmp_path: Any) -> None:
    server = make_server(tmp_path)
    chunk = "x" * (4 * 1024 * 1024)
    ran: list[int] = []

    def big(ctx: Any, request: Any) -> str:
        ran.append(1)
        return chunk

    add_command(server, "big", big)
    reply = server.request({"cmd": "pipeline", "commands": [{"cmd": "big"}] * 100})
    assert reply["ok"] is False
    assert reply["error"].startswith("reply too large: at least ")
    assert len(ran) == 4  # just over 16 MiB: no more ran after that


def test_gc_pause_for_large_decodes_is_bounded() -> None:
    import gc

    from oxidb.server.protocol import _GcPause

    pause = _GcPause()
    assert gc.isenabled()
    seen: list[bool] = []

    def nested(depth: int) -> None:
        seen.append(gc.isenabled())
        if depth:
            pause.run(nested, depth - 1)

    # Overlapping decodes: collection stays off for at most MAX_STREAK of them.
    pause.run(nested, _GcPause.MAX_STREAK + 3)
    assert seen[: _GcPause.MAX_STREAK] == [False] * _GcPause.MAX_STREAK
    assert gc.isenabled()
    pause.run(lambda: seen.append(gc.isenabled()))
    assert seen[-1] is False and gc.isenabled()


def test_a_frame_decoded_after_its_connection_closed_does_not_run(tmp_path: Any) -> None:
    server = make_server(tmp_path)
    ran: list[int] = []
    add_command(server, "work", lambda ctx, request: ran.append(1))
    offloaded = capture_offloads(server)
    protocol, _ = connect(server)
    protocol.dataReceived(frame({"cmd": "work", "pad": "z" * OFFLOAD_BYTES}))
    protocol.connectionLost()
    [(d, fn, args)] = offloaded
    d.callback(fn(*args))
    assert ran == []


# --- a request that is all data ------------------------------------------------------


def aggregate_docs_frame(pipeline: list[Any], count: int) -> bytes:
    docs = [{"k": i % 7, "n": i, "pad": "p" * 200} for i in range(count)]
    return frame({"cmd": "aggregate_docs", "pipeline": pipeline, "docs": docs})


@pytest.fixture
def engine_server(tmp_path: Any) -> Iterator[Callable[..., MemoryServer]]:
    """Servers over a real engine whose limits the test sets."""
    engines: list[Engine] = []

    def build(**limits: int) -> MemoryServer:
        engine = Engine(str(tmp_path / f"data{len(engines)}"), synchronous="OFF", limits=Limits.with_values(**limits))
        engine.open()
        engines.append(engine)
        return MemoryServer(Config(data_dir=str(tmp_path)), engine=engine)

    yield build
    for engine in engines:
        engine.close()


def run_with_offloads(server: MemoryServer, protocol: Any, data: bytes) -> None:
    """Feed C{data}, running every job the server moves off the reactor, in order."""
    offloaded = capture_offloads(server)
    protocol.dataReceived(data)
    done = 0
    while done < len(offloaded):
        d, fn, args = offloaded[done]
        done += 1
        d.callback(fn(*args))


GROUP_BY_K = [{"$group": {"_id": "$k", "total": {"$sum": "$n"}}}, {"$sort": {"_id": 1}}]


def test_a_16_mib_aggregate_docs_request_is_bounded_by_the_aggregation_budget(
    engine_server: Callable[..., MemoryServer],
) -> None:
    # ~15 MiB of documents in one frame: the memory budget of the input
    # stage refuses it with the budget's text, and the connection serves on.
    server = engine_server(agg_max_bytes=4 * 1024 * 1024)
    protocol, transport = connect(server)
    request = aggregate_docs_frame(GROUP_BY_K, 66_000)
    assert 14 * 1024 * 1024 < len(request) < MAX_FRAME
    run_with_offloads(server, protocol, request + frame({"cmd": "ping"}))
    [refused, pong] = replies(transport.value())
    assert refused["ok"] is False
    assert refused["error"].startswith("aggregation stage input exceeded the memory limit of 4194304 bytes")
    assert pong == {"ok": True, "data": "pong"}
    assert not protocol.gone


def test_a_16_mib_aggregate_docs_request_within_the_budget_is_answered(
    engine_server: Callable[..., MemoryServer],
) -> None:
    server = engine_server()
    protocol, transport = connect(server)
    count = 66_000
    run_with_offloads(server, protocol, aggregate_docs_frame(GROUP_BY_K, count))
    [answer] = replies(transport.value())
    want = [{"_id": k, "total": sum(range(k, count, 7))} for k in range(7)]
    assert answer == {"ok": True, "data": want}
