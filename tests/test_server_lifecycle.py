"""
Transitions of a client connection's machine (L{oxidb.server.lifecycle})
that the other protocol tests do not reach: frames while draining, a close
during an executing request, pausing while a request executes, an oversized
frame behind an executing request, login steps out of order on the wire.

All in memory: StringTransport connections on a MemoryReactorClock.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
from automat import NoTransition
from protocol_helpers import add_slow, connect, frame, make_server, replies
from twisted.internet.defer import Deferred

from oxidb.commands._registry import Command
from oxidb.testing import MemoryServer, result_of
from oxidb.wire.framing import MAX_FRAME

PONG = {"ok": True, "data": "pong"}


@pytest.fixture
def server(tmp_path: Any) -> MemoryServer:
    return make_server(tmp_path)


# --- draining ---------------------------------------------------------------------


def test_frames_arriving_while_draining_are_dropped(server: MemoryServer) -> None:
    pending = add_slow(server)
    protocol, transport = connect(server)
    protocol.dataReceived(frame({"cmd": "slow"}) + frame({"cmd": "ping"}))
    drained = protocol.drain()
    protocol.dataReceived(frame({"cmd": "ping"}))
    assert not drained.called and protocol.busy
    pending[0].callback("done")
    assert result_of(drained) is None
    # The executing request was answered; the queued and the late ping were not.
    assert replies(transport.value()) == [{"ok": True, "data": "done"}]
    protocol.dataReceived(frame({"cmd": "ping"}))
    assert replies(transport.value()) == [{"ok": True, "data": "done"}]
    assert not protocol.busy and not transport.disconnecting


def test_an_idle_connection_drains_at_once_and_twice(server: MemoryServer) -> None:
    protocol, transport = connect(server)
    assert result_of(protocol.drain()) is None
    assert result_of(protocol.drain()) is None
    protocol.dataReceived(frame({"cmd": "ping"}))
    assert transport.value() == b""


def test_an_oversized_frame_while_draining_aborts(server: MemoryServer) -> None:
    pending = add_slow(server)
    protocol, transport = connect(server)
    protocol.dataReceived(frame({"cmd": "slow"}))
    drained = protocol.drain()
    protocol.dataReceived(frame({"cmd": "ping"}) + struct.pack("<I", MAX_FRAME + 1))
    assert protocol.gone and transport.disconnecting
    protocol.connectionLost()
    assert result_of(drained) is None
    pending[0].callback("late")
    assert transport.value() == b""


# --- closing during a request ----------------------------------------------------------


def test_connection_lost_during_an_executing_request(server: MemoryServer) -> None:
    pending = add_slow(server)
    protocol, transport = connect(server)
    protocol.dataReceived(frame({"cmd": "slow"}) + frame({"cmd": "ping"}))
    drained = protocol.drain()
    protocol.connectionLost()
    assert protocol.gone and not protocol.busy
    assert result_of(drained) is None
    assert len(server.factory.connections) == 0
    pending[0].callback("too late")
    assert transport.value() == b""


def test_a_timeout_during_an_executing_request_drops_its_reply(tmp_path: Any) -> None:
    server = make_server(tmp_path, OXIDB_IDLE_TIMEOUT="10")
    pending = add_slow(server)
    protocol, transport = connect(server)
    protocol.dataReceived(frame({"cmd": "slow"}) + frame({"cmd": "ping"})[:5])  # a frame trickles in
    server.clock.advance(11)
    assert protocol.gone and transport.disconnecting
    pending[0].callback("too late")
    assert transport.value() == b""


def test_close_after_reply_leaves_queued_requests_unrun(server: MemoryServer) -> None:
    pending = add_slow(server)

    def last_words(ctx: Any, request: Any) -> Deferred[Any]:
        ctx.session.close_after_reply = True
        return pending_reply

    pending_reply: Deferred[Any] = Deferred()
    server.add_command(Command("last_words", last_words))
    protocol, transport = connect(server)
    protocol.dataReceived(frame({"cmd": "last_words"}) + frame({"cmd": "ping"}))
    pending_reply.callback("bye")
    assert replies(transport.value()) == [{"ok": True, "data": "bye"}]
    assert transport.disconnecting and protocol.gone
    assert pending == []


# --- pausing ---------------------------------------------------------------------------


def test_pausing_during_an_executing_request(server: MemoryServer) -> None:
    pending = add_slow(server)
    protocol, transport = connect(server)
    protocol.dataReceived(frame({"cmd": "slow"}) + frame({"cmd": "ping"}))
    protocol.pauseProducing()
    pending[0].callback("done")
    # The reply is written and counted unsent; the ping waits.
    assert replies(transport.value()) == [{"ok": True, "data": "done"}]
    assert server.factory.unsent == len(transport.value())
    protocol.resumeProducing()
    assert server.factory.unsent == 0
    assert replies(transport.value()) == [{"ok": True, "data": "done"}, PONG]


def test_draining_a_paused_connection_drops_what_waits(server: MemoryServer) -> None:
    protocol, transport = connect(server)
    protocol.pauseProducing()
    protocol.dataReceived(frame({"cmd": "ping"}))
    assert result_of(protocol.drain()) is None
    protocol.resumeProducing()
    assert transport.value() == b""


# --- an oversized frame behind an executing request ----------------------------------------


def test_oversized_frame_behind_an_executing_request(server: MemoryServer) -> None:
    pending = add_slow(server)
    protocol, transport = connect(server)
    protocol.dataReceived(frame({"cmd": "slow"}))
    protocol.dataReceived(frame({"cmd": "ping"}) + struct.pack("<I", MAX_FRAME + 1))
    assert transport.producerState == "paused"  # nothing more is read
    protocol.dataReceived(frame({"cmd": "ping"}))  # ignored
    assert not transport.disconnecting
    pending[0].callback("done")
    assert replies(transport.value()) == [{"ok": True, "data": "done"}, PONG]
    assert transport.disconnecting


def test_oversized_frame_while_paused_answers_after_resume(server: MemoryServer) -> None:
    protocol, transport = connect(server)
    protocol.pauseProducing()
    protocol.dataReceived(frame({"cmd": "ping"}) * 2 + struct.pack("<I", MAX_FRAME + 1))
    assert transport.value() == b"" and not transport.disconnecting
    protocol.resumeProducing()
    assert replies(transport.value()) == [PONG, PONG]
    assert transport.disconnecting


# --- impossible events -----------------------------------------------------------------------


def test_a_reply_without_a_request_has_no_transition(server: MemoryServer) -> None:
    protocol, _ = connect(server)
    with pytest.raises(NoTransition):
        protocol._machine.answered(b"{}")
    with pytest.raises(NoTransition):
        protocol._machine.connected()


# --- login on the wire ----------------------------------------------------------------------


def test_login_steps_out_of_order(tmp_path: Any) -> None:
    server = make_server(tmp_path, auth=True)
    protocol, transport = connect(server)
    protocol.dataReceived(frame({"cmd": "authenticate_continue", "payload": "c=biws,r=x,p=eA=="}))
    protocol.dataReceived(frame({"cmd": "find", "collection": "c"}))
    [continued, find] = replies(transport.value())
    assert continued["ok"] is False and "send 'authenticate' first" in continued["error"]
    assert find == {"ok": False, "error": "authentication required"}
    assert protocol.session.failed_logins == 0 and not protocol.gone


def test_login_deadline_during_a_scram_exchange(tmp_path: Any) -> None:
    server = make_server(tmp_path, auth=True, OXIDB_LOGIN_TIMEOUT="5", OXIDB_IDLE_TIMEOUT="0")
    protocol, transport = connect(server)
    protocol.dataReceived(frame({"cmd": "authenticate", "payload": "n,,n=alice,r=abcdefgh"}))
    [first] = replies(transport.value())
    assert first["ok"] is True and first["data"]["done"] is False
    assert protocol.session.auth_state is not None
    server.clock.advance(5)
    assert protocol.gone and transport.disconnecting
    protocol.connectionLost()
    assert protocol.session.auth_state is None
