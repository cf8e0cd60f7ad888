"""
Pipelined bulk loads (C{insert_stream}): the sans-IO L{InsertStream} on its
own, the Twisted client's frames and replies over a StringTransport (several
batches written before any reply, replies matched in order, a failed batch
and a lost connection mid-stream), and both clients against the server in
memory (the blocking one over in-memory sockets, the Twisted one over iosim).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from client_helpers import memory_connector, memory_server
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.test import iosim

from oxidb.client import Client, ConnectionFailed, UnknownOutcome
from oxidb.client.core import MAX_IN_FLIGHT, BatchOutcome, InsertStream, InsertStreamResult, Reply
from oxidb.client.errors import ClientProtocolError, InsertStreamFailed, UniqueViolation
from oxidb.client.twisted import OxiClientConnection, TwistedClient
from oxidb.client.url import ConnectOptions
from oxidb.testing import result_of
from oxidb.wire.framing import FrameDecoder, encode_frame
from oxidb.wire.limits import MAX_FRAME


class Counted:
    """An iterable of C{{"n": i}} documents that counts how many were read."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.read = 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i in range(self.n):
            self.read += 1
            yield {"n": i}


def ok(request: dict[str, Any], first_id: int) -> Reply:
    return Reply(0, request, True, list(range(first_id, first_id + len(request["docs"]))))


def err(request: dict[str, Any], text: str) -> Reply:
    return Reply(0, request, False, text)


def fill(stream: InsertStream) -> list[dict[str, Any]]:
    requests = []
    while (request := stream.next_request()) is not None:
        requests.append(request)
    return requests


# -- the sans-IO stream ---------------------------------------------------------


def test_stream_window_is_bounded_and_docs_are_read_lazily() -> None:
    docs = Counted(25)
    stream = InsertStream("c", iter(docs), batch_size=10, in_flight=2)
    first = fill(stream)
    assert [len(r["docs"]) for r in first] == [10, 10]
    assert first[0] == {"cmd": "insert_many", "collection": "c", "docs": [{"n": i} for i in range(10)]}
    # Only what fits in the window was read from the iterable.
    assert docs.read == 20 and stream.waiting == 2 and not stream.finished
    assert stream.replied(ok(first[0], 1)) == BatchOutcome(0, 10, ids=list(range(1, 11)))
    (last,) = fill(stream)
    assert last["docs"] == [{"n": i} for i in range(20, 25)]
    assert fill(stream) == [] and docs.read == 25
    stream.replied(ok(first[1], 11))
    stream.replied(ok(last, 21))
    assert stream.finished
    assert stream.result() == InsertStreamResult(inserted=25, batches=3)


def test_stream_of_nothing_and_of_exact_batches() -> None:
    empty = InsertStream("c", iter([]))
    assert fill(empty) == [] and empty.finished
    assert empty.result() == InsertStreamResult(0, 0)
    exact = InsertStream("c", iter([{"n": i} for i in range(4)]), batch_size=2, in_flight=4)
    requests = fill(exact)
    assert len(requests) == 2  # the third read finds nothing
    for i, request in enumerate(requests):
        exact.replied(ok(request, 1 + 2 * i))
    assert exact.result() == InsertStreamResult(4, 2)


def test_stream_replies_match_batches_in_order() -> None:
    stream = InsertStream("c", iter([{"n": i} for i in range(6)]), batch_size=2, in_flight=3)
    a, b, c = fill(stream)
    with pytest.raises(ClientProtocolError, match="did not send"):
        stream.replied(ok(b, 3))  # the oldest batch in flight is a
    with pytest.raises(ClientProtocolError):
        stream.replied(ok({"cmd": "insert_many", "docs": []}, 1))
    outcomes = [stream.replied(ok(r, 1 + 2 * i)) for i, r in enumerate((a, b, c))]
    assert [(o.start, o.count, o.ids) for o in outcomes] == [(0, 2, [1, 2]), (2, 2, [3, 4]), (4, 2, [5, 6])]
    unanswered = InsertStream("c", iter([{}]))
    fill(unanswered)
    with pytest.raises(ValueError, match="in flight"):
        unanswered.result()


def test_a_failed_batch_stops_the_stream_and_batches_in_flight_are_recorded() -> None:
    docs = Counted(100)
    stream = InsertStream("c", iter(docs), batch_size=10, in_flight=3)
    a, b, c = fill(stream)
    stream.replied(ok(a, 1))
    (d,) = fill(stream)
    failed = stream.replied(err(b, "unique constraint violated: field 'n' value already exists"))
    assert isinstance(failed.error, UniqueViolation) and not failed.landed and failed.ids is None
    # Nothing more is read or sent; c and d were already on their way.
    assert fill(stream) == [] and docs.read == 40
    assert stream.replied(ok(c, 11)).landed
    stream.replied(err(d, "server busy: worker queue full (OXIDB_POOL_QUEUE)"))
    assert stream.finished
    with pytest.raises(InsertStreamFailed) as info:
        stream.result()
    error = info.value
    assert error.inserted == 10 and error.resume_at == 40
    assert [(o.start, o.landed) for o in error.outcomes] == [(10, False), (20, True), (30, False)]
    assert error.outcomes[1].ids == list(range(11, 21))
    assert str(error) == (
        "insert_many of documents 10..19 did not land: unique constraint violated: field 'n' value already exists;"
        " documents 0..9 landed"
    )


def test_connection_lost_mid_stream_makes_batches_in_flight_unknown() -> None:
    stream = InsertStream("c", iter([{"n": i} for i in range(10)]), batch_size=2, in_flight=2)
    a, b = fill(stream)
    stream.replied(ok(a, 1))
    (c,) = fill(stream)
    lost = stream.lost("connection closed by the server")
    assert [(o.start, o.count) for o in lost] == [(2, 2), (4, 2)]
    assert all(isinstance(o.error, UnknownOutcome) for o in lost)
    assert isinstance(lost[1].error, UnknownOutcome) and lost[1].error.request is c
    assert stream.finished and fill(stream) == []
    with pytest.raises(
        InsertStreamFailed, match=r"documents 2\.\.3 did not land: insert_many: connection closed"
    ) as info:
        stream.result()
    assert info.value.inserted == 2 and info.value.resume_at == 6


def test_a_batch_that_cannot_be_encoded_is_not_sent() -> None:
    stream = InsertStream("c", iter([{"n": i} for i in range(6)]), batch_size=2, in_flight=3)
    a, b, c = fill(stream)
    stream.not_sent(c, ValueError("Out of range float values are not JSON compliant"))
    with pytest.raises(ValueError, match="last request"):
        stream.not_sent(a, ValueError("x"))
    stream.replied(ok(a, 1))
    stream.replied(ok(b, 3))
    with pytest.raises(InsertStreamFailed, match="Out of range float") as info:
        stream.result()
    assert info.value.inserted == 4 and info.value.resume_at == 4


def test_an_exception_of_the_iterable_stops_the_stream_and_is_the_cause() -> None:
    def docs() -> Iterator[dict[str, Any]]:
        yield {"n": 0}
        yield {"n": 1}
        raise KeyError("source broke")

    stream = InsertStream("c", docs(), batch_size=2, in_flight=2)
    (a,) = fill(stream)
    assert stream.stopped
    stream.replied(ok(a, 1))
    with pytest.raises(InsertStreamFailed, match="reading the documents failed: KeyError") as info:
        stream.result()
    assert isinstance(info.value.__cause__, KeyError)
    assert info.value.inserted == 2 and info.value.outcomes == [] and info.value.resume_at == 2


@pytest.mark.parametrize(
    "fields",
    [
        {"batch_size": 0},
        {"batch_size": -5},
        {"batch_size": 1.5},
        {"batch_size": True},
        {"in_flight": 0},
        {"in_flight": MAX_IN_FLIGHT + 1},
        {"in_flight": "2"},
        {"batch_size": 10**12, "in_flight": 10**12},
    ],
)
def test_stream_parameters_out_of_range(fields: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must be"):
        InsertStream("c", iter([]), **fields)


# -- the Twisted client over a StringTransport -----------------------------------------


class Scripted:
    """A L{TwistedClient} on one L{OxiClientConnection} whose server side the test writes by hand."""

    def __init__(self) -> None:
        self.conn = OxiClientConnection()
        self.transport = StringTransport()
        self.conn.makeConnection(self.transport)
        self.decoder = FrameDecoder(MAX_FRAME)
        self.client = TwistedClient("oxidb://s:1", reactor=None, connector=self._connect)
        self.connects = 0

    def _connect(self, host: str, port: int, options: ConnectOptions) -> Deferred[OxiClientConnection]:
        self.connects += 1
        return succeed(self.conn)

    def sent(self) -> list[dict[str, Any]]:
        """The requests written since the last call."""
        data = self.transport.value()
        self.transport.clear()
        return [json.loads(payload) for payload in self.decoder.feed(data)]

    def reply(self, obj: Any) -> None:
        self.conn.dataReceived(encode_frame(json.dumps(obj).encode()))

    def connected(self) -> None:
        """Answer C{hello}."""
        assert [r["cmd"] for r in self.sent()] == ["hello"]
        self.reply({"ok": True, "server": {"name": "scripted"}})


def test_twisted_stream_pipelines_and_matches_replies_in_order() -> None:
    s = Scripted()
    seen: list[BatchOutcome] = []
    d = s.client.insert_stream("c", ({"n": i} for i in range(7)), batch_size=3, in_flight=2, on_batch=seen.append)
    s.connected()
    # Two batches written before any reply.
    first = s.sent()
    assert [[doc["n"] for doc in r["docs"]] for r in first] == [[0, 1, 2], [3, 4, 5]]
    s.reply({"ok": True, "data": [1, 2, 3]})
    (third,) = s.sent()
    assert [doc["n"] for doc in third["docs"]] == [6]
    # The two replies due arrive in one read.
    s.conn.dataReceived(encode_frame(b'{"ok":true,"data":[4,5,6]}') + encode_frame(b'{"ok":true,"data":[7]}'))
    assert result_of(d) == InsertStreamResult(7, 3)
    assert [o.ids for o in seen] == [[1, 2, 3], [4, 5, 6], [7]]
    assert s.sent() == [] and s.conn.connected


def test_twisted_stream_error_mid_stream_reports_the_batches_in_flight() -> None:
    s = Scripted()
    d = s.client.insert_stream("c", ({"n": i} for i in range(20)), batch_size=4, in_flight=3)
    s.connected()
    assert len(s.sent()) == 3
    s.reply({"ok": True, "data": [1, 2, 3, 4]})
    assert len(s.sent()) == 1
    s.reply({"ok": False, "error": "unique constraint violated: field 'n' value already exists"})
    assert s.sent() == []  # stopped: nothing more is sent
    s.reply({"ok": True, "data": [9, 10, 11, 12]})
    assert not d.called
    s.reply({"ok": True, "data": [13, 14, 15, 16]})
    failure = result_failure(d)
    error = failure.value
    assert isinstance(error, InsertStreamFailed)
    assert error.inserted == 4 and error.resume_at == 16
    assert [(o.start, o.landed) for o in error.outcomes] == [(4, False), (8, True), (12, True)]
    assert isinstance(error.outcomes[0].error, UniqueViolation)
    # The connection is in step and stays in use.
    ping = s.client.ping()
    assert [r["cmd"] for r in s.sent()] == ["ping"]
    s.reply({"ok": True, "data": "pong"})
    assert result_of(ping) == "pong" and s.connects == 1


def test_twisted_stream_connection_lost_mid_stream() -> None:
    s = Scripted()
    d = s.client.insert_stream("c", ({"n": i} for i in range(20)), batch_size=5, in_flight=2)
    s.connected()
    s.sent()
    s.reply({"ok": True, "data": [1, 2, 3, 4, 5]})
    s.sent()
    s.conn.connectionLost(Failure(ConnectionDone()))
    error = result_failure(d).value
    assert isinstance(error, InsertStreamFailed)
    assert error.inserted == 5 and error.resume_at == 15
    assert [(o.start, type(o.error)) for o in error.outcomes] == [(5, UnknownOutcome), (10, UnknownOutcome)]


def test_twisted_stream_on_batch_raising_closes_the_connection() -> None:
    s = Scripted()

    def broken(outcome: BatchOutcome) -> None:
        raise RuntimeError("application bug")

    d = s.client.insert_stream("c", ({"n": i} for i in range(20)), batch_size=5, on_batch=broken)
    s.connected()
    s.sent()
    s.reply({"ok": True, "data": [1, 2, 3, 4, 5]})
    assert result_failure(d).check(RuntimeError)
    # A reply was still due: the connection is dropped rather than left out of step.
    assert s.transport.disconnecting


def test_twisted_stream_bad_arguments_fail_at_once() -> None:
    s = Scripted()
    with pytest.raises(ValueError, match="in_flight"):
        s.client.insert_stream("c", [], in_flight=0)
    assert s.connects == 0


def result_failure(d: Deferred[Any]) -> Failure:
    failures: list[Failure] = []
    d.addErrback(failures.append)
    assert failures, "the Deferred has not failed"
    return failures[0]


# -- against the server in memory ----------------------------------------------------


def test_blocking_stream_against_the_server(tmp_path: Path) -> None:
    with memory_server(tmp_path) as (server, _):
        client = Client("oxidb://mem:1", connector=memory_connector({("mem", 1): server}))
        seen: list[BatchOutcome] = []
        result = client.insert_stream(
            "c", ({"n": i} for i in range(1050)), batch_size=100, in_flight=3, on_batch=seen.append
        )
        assert result == InsertStreamResult(1050, 11)
        assert [o.ids[0] for o in seen if o.ids] == list(range(1, 1002, 100))
        assert client.count("c") == {"count": 1050}
        # A duplicate in the third batch: the first two landed, the third did not, the rest was never sent.
        client.create_unique_index("c", "n")
        docs = [{"n": 2000 + i} for i in range(1000)]
        docs[250] = {"n": 0}
        with pytest.raises(InsertStreamFailed, match=r"documents 200\.\.299 did not land: unique constraint") as info:
            client.insert_stream("c", docs, batch_size=100, in_flight=2)
        assert info.value.inserted == 200 and info.value.resume_at in (300, 400)
        assert isinstance(info.value.outcomes[0].error, UniqueViolation)
        assert client.count("c") == {"count": 1050 + sum(100 for o in info.value.outcomes if o.landed) + 200}
        # A batch that cannot be encoded is not sent; nor is one above the frame limit.
        with pytest.raises(InsertStreamFailed, match="not JSON compliant") as info:
            client.insert_stream("d", [{"x": 1}, {"x": math.nan}], batch_size=1)
        assert info.value.inserted == 1 and info.value.resume_at == 1
        big = "x" * (MAX_FRAME // 2)
        with pytest.raises(InsertStreamFailed, match="above the frame limit") as info:
            client.insert_stream("d", [{"s": big}, {"s": big}], batch_size=2)
        assert info.value.inserted == 0 and info.value.resume_at == 0
        assert client.count("d") == {"count": 1}


def test_blocking_stream_connection_lost_mid_stream(tmp_path: Path) -> None:
    with memory_server(tmp_path) as (server, _):
        connector = memory_connector({("mem", 1): server})
        client = Client("oxidb://mem:1", connector=connector, sleep=lambda seconds: None)
        client.connect()
        connector.sockets[-1].drop_after_send = True  # type: ignore[attr-defined]
        with pytest.raises(InsertStreamFailed) as info:
            client.insert_stream("c", ({"n": i} for i in range(50)), batch_size=10, in_flight=2)
        error = info.value
        assert error.inserted == 0 and error.resume_at == 20
        assert [type(o.error) for o in error.outcomes] == [UnknownOutcome, UnknownOutcome]
        # The first batch was delivered and applied; the client cannot know, and says so.
        assert client.count("c") == {"count": 10}
        with pytest.raises(ConnectionFailed):
            Client("oxidb://nowhere:1", connector=connector, sleep=lambda s: None).insert_stream("c", [{}])


def test_twisted_stream_against_the_server_over_iosim(tmp_path: Path) -> None:
    with memory_server(tmp_path) as (server, _):
        pumps: list[iosim.IOPump] = []

        def connector(host: str, port: int, options: ConnectOptions) -> Deferred[OxiClientConnection]:
            conn = OxiClientConnection(options.format)
            _, _, pump = iosim.connectedServerAndClient(
                lambda: server.factory.buildProtocol(None), lambda: conn, greet=True, clock=server.clock
            )
            pumps.append(pump)
            return succeed(conn)

        client = TwistedClient("oxidb://mem:1?format=oxiwire", reactor=server.clock, connector=connector)
        d = client.insert_stream("c", ({"n": i} for i in range(230)), batch_size=50, in_flight=3)
        for _ in range(50):
            for pump in pumps:
                pump.flush()
            if d.called:
                break
        assert result_of(d) == InsertStreamResult(230, 5)
        count = client.count("c")
        pumps[0].flush()
        assert result_of(count) == {"count": 230}
