"""
L{oxidb.raft.forward.MemberGate}: forwarded writes (and Raft messages) are
taken only from members of the current configuration, and every forwarded
write is audited.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from zope.interface import implementer

from oxidb.audit.events import AuditEvent, Auditor
from oxidb.raft.forward import AUDIT_CMD, ForwardRequest, ForwardResult, MemberGate
from oxidb.raft.messages import MessageDecodeError
from oxidb.raft.transport import IPeerChannel


class Inner:
    def __init__(self) -> None:
        self.frames: list[tuple[int, dict[str, Any]]] = []

    def frame_received(self, peer: int, frame: dict[str, Any], channel: Any) -> None:
        self.frames.append((peer, frame))


@implementer(IPeerChannel)
class Channel:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send(self, payload: bytes) -> None:
        self.sent.append(orjson.loads(payload))


class Sink:
    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    def record(self, event: AuditEvent) -> None:
        self.events.append(event)


CREATE_ADMIN = {"CreateUser": {"username": "mallory", "password_hash": "x", "role": "admin"}}


def gate(members: frozenset[int] | None) -> tuple[MemberGate, Inner, Sink]:
    clock = Clock()
    clock.advance(1_700_000_000)
    inner, sink = Inner(), Sink()
    auditor = Auditor(clock, [sink])
    return MemberGate(inner, lambda: members, lambda: auditor, clock), inner, sink


def forward(user: str | None = None, request_id: int = 7) -> dict[str, Any]:
    frame: dict[str, Any] = orjson.loads(ForwardRequest(request_id, 3, CREATE_ADMIN, user).encode())
    return frame


def test_a_forward_from_a_non_member_is_refused_and_audited() -> None:
    g, inner, sink = gate(frozenset({1, 2, 3}))
    channel = Channel()
    with capturedLogs() as logs:
        g.frame_received(9, forward(), channel)
    assert inner.frames == []  # never reaches the node: nothing is proposed
    [answer] = channel.sent
    result = ForwardResult.from_json(answer)
    assert result == ForwardResult(7, False, error="raft error: node 9 is not a member of the cluster configuration")
    assert result.redirect is False
    [event] = sink.events
    assert (event.cmd, event.collection, event.result, event.peer) == (AUDIT_CMD, "CreateUser", "denied", "raft node 9")
    assert event.user == "raft node 9"
    assert any("not a member" in e["log_format"] for e in logs)
    assert g.refused == 1


def test_a_forward_from_a_member_is_audited_as_its_user() -> None:
    g, inner, sink = gate(frozenset({1, 2, 3}))
    g.frame_received(2, forward(user="alice"), Channel())
    g.frame_received(3, forward(), Channel())
    assert [peer for peer, _ in inner.frames] == [2, 3]
    assert [(e.user, e.result, e.peer) for e in sink.events] == [
        ("alice", "ok", "raft node 2"),
        ("raft node 3", "ok", "raft node 3"),
    ]


def test_learners_are_members() -> None:
    # The gate is given voters and learners alike (the membership's nodes).
    g, inner, _ = gate(frozenset({1, 4}))
    g.frame_received(4, forward(), Channel())
    assert len(inner.frames) == 1


def test_forward_results_from_non_members_are_dropped() -> None:
    g, inner, sink = gate(frozenset({1, 2}))
    result = orjson.loads(ForwardResult(7, True, {"id": 1}).encode())
    with capturedLogs():
        g.frame_received(9, result, Channel())
    assert inner.frames == [] and sink.events == [] and g.refused == 1
    g.frame_received(2, result, Channel())
    assert inner.frames == [(2, result)]


def test_raft_messages_are_left_to_raft() -> None:
    # A node whose configuration is behind must still take the entries of a
    # leader it does not know yet (added while it was down): Raft's terms and
    # log checks govern these, not the gate.
    g, inner, sink = gate(frozenset({1, 2}))
    append = {"type": "append_entries", "term": 9, "src": 5, "dst": 1}
    g.frame_received(5, append, Channel())
    assert inner.frames == [(5, append)] and sink.events == []


def test_a_node_without_a_configuration_accepts_authenticated_peers() -> None:
    # A new node learns its membership from the leader's first entries.
    g, inner, _ = gate(None)
    g.frame_received(5, {"type": "append_entries"}, Channel())
    g.frame_received(5, forward(), Channel())
    assert [peer for peer, _ in inner.frames] == [5, 5]


def test_auditing_off() -> None:
    inner = Inner()
    g = MemberGate(inner, lambda: frozenset({1}), lambda: None, Clock())
    channel = Channel()
    with capturedLogs():
        g.frame_received(2, forward(), channel)
    assert channel.sent[0]["ok"] is False and inner.frames == []


def test_the_forward_user_field_round_trips_and_is_checked() -> None:
    assert ForwardRequest.from_json(forward(user="bob")).user == "bob"
    assert ForwardRequest.from_json(forward()).user is None
    with pytest.raises(MessageDecodeError):
        ForwardRequest.from_json(dict(forward(), user=5))
