"""
The client's request flow (L{oxidb.client.core.RequestFlow}) on its own:
scripted event sequences for each rule, and Hypothesis over arbitrary
sequences for the invariants: a write whose outcome is unknown is never
sent again (the flow fails with L{UnknownOutcome}), every connection it
opens is adopted or closed, it sends only on an adopted connection, and it
always ends.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oxidb import errors as server_errors
from oxidb.client import core
from oxidb.client.core import (
    Adopt,
    Close,
    Done,
    Drop,
    Fail,
    Lost,
    Open,
    Opened,
    OpenFailed,
    Replied,
    Reply,
    Send,
    Session,
    TimerFired,
    Wait,
    is_retry_safe,
    not_applied,
)
from oxidb.client.errors import (
    AuthenticationFailed,
    ConnectionFailed,
    InvalidQuery,
    NotLeader,
    ServerError,
    UnknownOutcome,
    error_from_reply,
)

A, B, C = ("a", 1), ("b", 2), ("c", 3)
INSERT = {"cmd": "insert", "collection": "c", "doc": {"x": 1}}
FIND = {"cmd": "find", "collection": "c"}


def ok(request: dict[str, Any], value: Any = "done") -> Replied:
    return Replied(Reply(1, request, True, value))


def err(request: dict[str, Any], text: str) -> Replied:
    return Replied(Reply(1, request, False, text))


NOT_LEADER_3 = str(server_errors.NotLeaderError(3, "10.0.0.3:7000"))
NOT_LEADER = str(server_errors.NotLeaderError(None, None))


# -- scripted sequences -------------------------------------------------------


def test_connected_request_is_sent_and_answered() -> None:
    flow = Session((A,)).request(INSERT, connected=True)
    assert flow.start() == [Send(INSERT)]
    assert flow.feed(ok(INSERT, {"id": 1})) == [Done({"id": 1})]
    assert flow.finished
    with pytest.raises(ValueError):
        flow.feed(TimerFired())


def test_single_seed_connects_without_probe_and_backs_off() -> None:
    session = Session((A,), retries=2)
    flow = session.request(FIND, connected=False)
    assert flow.start() == [Open(A, probe=False)]
    assert flow.feed(OpenFailed(A, OSError("refused"))) == [Wait(0.05)]
    assert flow.feed(TimerFired()) == [Open(A, probe=False)]
    assert flow.feed(OpenFailed(A, OSError("refused"))) == [Wait(0.1)]
    assert flow.feed(TimerFired()) == [Open(A, probe=False)]
    (fail,) = flow.feed(OpenFailed(A, OSError("still refused")))
    assert isinstance(fail, Fail) and isinstance(fail.error, ConnectionFailed)
    assert str(fail.error) == "cannot connect to a:1: a:1: still refused"


def test_leader_discovery_probes_keeps_one_fallback_and_follows_the_hint() -> None:
    session = Session((A, B, C))
    flow = session.request(INSERT, connected=False)
    assert flow.start() == [Open(A, probe=True)]
    # A is a follower that knows nothing yet: kept as the fallback.
    assert flow.feed(Opened(A, leader=False, node_id=1)) == [Open(B, probe=True)]
    # B is a follower too: closed, the fallback stays.
    assert flow.feed(Opened(B, leader=False, node_id=2)) == [Close(B), Open(C, probe=True)]
    assert flow.feed(Opened(C, leader=True, node_id=3)) == [Close(A), Adopt(C), Send(INSERT)]
    assert session.node_ids == {A: 1, B: 2, C: 3} and session.address == C
    # Leadership moves to node 1: C refuses (not applied) and names it; the client goes straight there.
    assert flow.feed(err(INSERT, str(server_errors.NotLeaderError(1, "raft:1")))) == [Drop(), Wait(0.05)]
    assert session.preferred == A
    assert flow.feed(TimerFired()) == [Open(A, probe=True)]
    assert flow.feed(Opened(A, leader=True, node_id=1)) == [Adopt(A), Send(INSERT)]
    assert flow.feed(ok(INSERT)) == [Done("done")]


def test_follower_hint_reorders_the_pass() -> None:
    session = Session((A, B, C), node_ids={C: 3})
    flow = session.connect(connected=False)
    assert flow.start() == [Open(A, probe=True)]
    assert flow.feed(Opened(A, leader=False, node_id=1, leader_id=3)) == [Open(C, probe=True)]
    assert flow.feed(Opened(C, leader=True, node_id=3)) == [Close(A), Adopt(C), Done(None)]


def test_no_leader_anywhere_adopts_the_fallback() -> None:
    flow = Session((A, B)).request(FIND, connected=False)
    flow.start()
    assert flow.feed(OpenFailed(A, OSError("down"))) == [Open(B, probe=True)]
    assert flow.feed(Opened(B, leader=False)) == [Adopt(B), Send(FIND)]


def test_wrong_password_fails_at_once_and_closes_what_is_open() -> None:
    flow = Session((A, B), retries=5).request(FIND, connected=False)
    flow.start()
    flow.feed(Opened(A, leader=False))
    denied = AuthenticationFailed("authentication failed")
    assert flow.feed(OpenFailed(B, denied)) == [Close(A), Fail(denied)]


def test_lost_write_is_an_unknown_outcome_lost_read_is_sent_again() -> None:
    session = Session((A,))
    flow = session.request(INSERT, connected=True)
    flow.start()
    drop, fail = flow.feed(Lost("connection closed by the server", sent=True))
    assert drop == Drop() and isinstance(fail, Fail) and isinstance(fail.error, UnknownOutcome)
    assert str(fail.error) == "insert: connection closed by the server; it may or may not have been applied"
    assert fail.error.request is INSERT
    # Not written at all: safe to send again.
    flow = session.request(INSERT, connected=True)
    flow.start()
    assert flow.feed(Lost("send failed", sent=False)) == [Drop(), Wait(0.05)]
    assert flow.feed(TimerFired()) == [Open(A, probe=False)]
    assert flow.feed(Opened(A)) == [Adopt(A), Send(INSERT)]
    # A read whose reply was lost is sent again.
    flow = session.request(FIND, connected=True)
    flow.start()
    assert flow.feed(Lost("gone", sent=True)) == [Drop(), Wait(0.05)]


def test_retries_run_out() -> None:
    flow = Session((A,), retries=1).request(FIND, connected=True)
    flow.start()
    assert flow.feed(Lost("gone", sent=True)) == [Drop(), Wait(0.05)]
    flow.feed(TimerFired())
    flow.feed(Opened(A))
    drop, fail = flow.feed(Lost("gone again", sent=True))
    assert isinstance(fail, Fail) and str(fail.error) == "find: gone again"
    # A refusal after the budget is the server's error itself.
    flow = Session((A,), retries=0).request(INSERT, connected=True)
    flow.start()
    (fail,) = flow.feed(err(INSERT, NOT_LEADER))
    assert isinstance(fail, Fail) and isinstance(fail.error, NotLeader)


def test_errors_that_may_have_applied_are_raised() -> None:
    flow = Session((A,)).request(INSERT, connected=True)
    flow.start()
    (fail,) = flow.feed(err(INSERT, "raft error: the write was not committed within 30s; its outcome is unknown"))
    assert isinstance(fail, Fail) and isinstance(fail.error, UnknownOutcome)
    flow = Session((A,)).request(FIND, connected=True)
    flow.start()
    (fail,) = flow.feed(err(FIND, "invalid query: unknown operator $nope"))
    assert isinstance(fail, Fail) and isinstance(fail.error, InvalidQuery)


def test_transactions_never_retry() -> None:
    session = Session((A,), in_tx=True)
    flow = session.request(INSERT, connected=False)
    (fail,) = flow.start()
    assert isinstance(fail, Fail) and "lost inside a transaction" in str(fail.error) and not session.in_tx
    session.in_tx = True
    flow = session.request(INSERT, connected=True)
    flow.start()
    (fail,) = flow.feed(err(INSERT, NOT_LEADER))
    assert isinstance(fail, Fail) and isinstance(fail.error, NotLeader)
    commit = {"cmd": "commit_tx"}
    flow = session.request(commit, connected=True)
    flow.start()
    _, fail = flow.feed(Lost("gone", sent=True))
    assert isinstance(fail, Fail) and isinstance(fail.error, UnknownOutcome) and not session.in_tx
    session.in_tx = True
    flow = session.request(FIND, connected=True)
    flow.start()
    _, fail = flow.feed(Lost("gone", sent=True))
    assert isinstance(fail, Fail) and isinstance(fail.error, ConnectionFailed)
    assert str(fail.error) == "gone; the transaction was rolled back"


def test_events_out_of_turn_are_refused() -> None:
    flow = Session((A,)).request(FIND, connected=False)
    with pytest.raises(ValueError):
        flow.feed(TimerFired())
    flow.start()
    with pytest.raises(ValueError):
        flow.start()
    with pytest.raises(ValueError):
        flow.feed(Opened(B))
    with pytest.raises(ValueError):
        flow.feed(ok(FIND))


def test_probed_reads_raft_metrics() -> None:
    metrics = {"id": 2, "state": "Follower", "current_leader": 1}
    assert core.probed(A, Reply(1, {}, True, metrics)) == Opened(A, leader=False, node_id=2, leader_id=1)
    assert core.probed(A, Reply(1, {}, False, "unknown command: raft_metrics")) == Opened(A)
    assert core.probed(A, Reply(1, {}, True, {"state": "Leader", "id": "x"})) == Opened(A, leader=True)


# -- Hypothesis over event sequences ------------------------------------------

REQUESTS = [INSERT, FIND, {"cmd": "commit_tx"}, {"cmd": "pipeline", "commands": [FIND, INSERT]}]
REPLIES = [
    None,  # success
    NOT_LEADER,
    NOT_LEADER_3,
    "raft error: no leader elected within 5s; retry",
    "raft error: the write was lost in a leader change; retry it",
    "server busy: too many requests in flight",
    "raft error: the write was not committed within 30s; its outcome is unknown",
    "invalid query: bad",
    "unique constraint violated on field 'x'",
]


@settings(max_examples=120, deadline=None)
@given(
    data=st.data(),
    n_seeds=st.integers(1, 3),
    retries=st.integers(0, 3),
    in_tx=st.booleans(),
    request=st.sampled_from(REQUESTS),
    connected=st.booleans(),
)
def test_flow_invariants(
    data: st.DataObject, n_seeds: int, retries: int, in_tx: bool, request: dict[str, Any], connected: bool
) -> None:
    seeds = ((A, B, C))[:n_seeds]
    session = Session(seeds, retries=retries, in_tx=in_tx)
    flow = session.request(request, connected=connected)
    safe = is_retry_safe(request)
    opened: set[tuple[str, int]] = set()
    have_connection = connected
    maybe_applied = False  # the request reached a server and may have run
    sends = 0
    previous: core.Event | None = None
    actions = flow.start()
    for _ in range(500):
        event: core.Event | None = None
        assert actions, "every step ends in an action"
        for i, action in enumerate(actions):
            last = i == len(actions) - 1
            assert last == isinstance(action, Open | Send | Wait | Fail | Done), actions
            if isinstance(action, Open):
                assert action.address in seeds and action.address not in opened
                assert action.probe == (n_seeds > 1)
                if data.draw(st.booleans(), "open succeeds"):
                    opened.add(action.address)
                    event = Opened(
                        action.address,
                        leader=data.draw(st.booleans(), "leader"),
                        node_id=data.draw(st.sampled_from([None, 1, 2, 3]), "node id"),
                        leader_id=data.draw(st.sampled_from([None, 1, 2, 3]), "leader id"),
                    )
                else:
                    error = data.draw(st.sampled_from([OSError("refused"), AuthenticationFailed("bad password")]))
                    event = OpenFailed(action.address, error)
            elif isinstance(action, Adopt):
                assert action.address in opened and not have_connection
                opened.remove(action.address)
                have_connection = True
            elif isinstance(action, Close):
                assert action.address in opened
                opened.remove(action.address)
            elif isinstance(action, Drop):
                have_connection = False
            elif isinstance(action, Send):
                assert have_connection and action.request is request
                # The rule: never a second send of what may have been applied.
                assert not maybe_applied or safe
                assert sends == 0 or not in_tx
                sends += 1
                if data.draw(st.booleans(), "reply arrives"):
                    text = data.draw(st.sampled_from(REPLIES), "reply")
                    event = ok(request) if text is None else err(request, text)
                    if text is None or not not_applied(error_from_reply(text)):
                        maybe_applied = True
                else:
                    sent = data.draw(st.booleans(), "sent before the loss")
                    event = Lost("gone", sent=sent)
                    maybe_applied = maybe_applied or sent
            elif isinstance(action, Wait):
                assert 0.05 <= action.seconds <= 2.0
                event = TimerFired()
            elif isinstance(action, Fail):
                assert flow.finished and not opened, "no connection left open"
                error = action.error
                if isinstance(previous, Lost) and previous.sent and in_tx:
                    assert type(error) is (UnknownOutcome if request["cmd"] == "commit_tx" else ConnectionFailed)
                elif isinstance(previous, Lost) and previous.sent and not safe:
                    assert isinstance(error, UnknownOutcome) and error.request is request
                if isinstance(previous, Replied) and "outcome is unknown" in str(previous.reply.value):
                    assert isinstance(error, UnknownOutcome)
                if isinstance(error, ServerError):
                    assert isinstance(previous, Replied | OpenFailed)
                return
            else:
                assert isinstance(action, Done) and flow.finished and not opened and have_connection
                return
        assert event is not None
        previous = event
        actions = flow.feed(event)
    raise AssertionError("the flow did not end")
