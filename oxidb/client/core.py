"""
The sans-IO protocol core shared by the blocking and the Twisted clients:
requests to frames, received bytes to replies matched with their requests
in order, the SCRAM-SHA-256 conversation, which requests are safe to send
again after a lost connection, and L{Session}/L{RequestFlow}, the state
machine that decides how a request gets its answer (which seed to connect
to, leader discovery, backoff, retry or unknown outcome), and
L{InsertStream}, the bookkeeping of a pipelined bulk load. Nothing here does
I/O or keeps time: the clients perform the actions and feed back what
happened.
"""

from __future__ import annotations

import itertools
import json
from collections import deque
from collections.abc import Iterator
from typing import Any, TypeAlias

import attrs
from scramp import ScramClient

from oxidb.client.errors import (
    AuthenticationFailed,
    ClientError,
    ClientProtocolError,
    ConnectionFailed,
    DatabaseNotFound,
    InsertStreamFailed,
    NoLeader,
    NotLeader,
    PermissionDenied,
    ServerBusy,
    ServerError,
    UnknownOutcome,
    WriteLost,
    error_from_reply,
)
from oxidb.errors import DecodeError
from oxidb.wire import oxiwire
from oxidb.wire.codec import decode_reply
from oxidb.wire.framing import FrameDecoder, encode_frame

__all__ = [
    "FORMATS",
    "READ_ONLY",
    "Action",
    "MAX_IN_FLIGHT",
    "Adopt",
    "BatchOutcome",
    "Close",
    "Done",
    "Drop",
    "Event",
    "Fail",
    "InsertStream",
    "InsertStreamResult",
    "Lost",
    "Open",
    "OpenFailed",
    "Opened",
    "Pending",
    "ProtocolCore",
    "Replied",
    "Reply",
    "RequestFlow",
    "ScramLogin",
    "Send",
    "Session",
    "TimerFired",
    "Wait",
    "backoff_delay",
    "probed",
    "is_retry_safe",
    "not_applied",
]

FORMATS = ("json", "oxiwire")

#: Commands that change nothing: sending one again after a lost reply is harmless.
READ_ONLY = frozenset(
    {
        "ping", "hello", "find", "find_one", "count", "aggregate", "search", "text_search",
        "list_collections", "list_indexes", "list_procedures", "get_procedure", "list_schedules",
        "get_schedule", "list_buckets", "list_objects", "get_object", "head_object", "extract_text",
        "list_users", "server_status", "proc_status", "raft_metrics", "raft_status",
        "snapshot_begin", "snapshot_find", "snapshot_count", "snapshot_aggregate",
    }
)  # fmt: skip

# The server caps replies at 16 MiB; a little room for the envelope.
_MAX_REPLY = 16 * 1024 * 1024 + 4096


def is_retry_safe(request: dict[str, Any]) -> bool:
    """Whether C{request} may be sent again when its reply was lost (it writes nothing)."""
    cmd = request.get("cmd")
    if cmd == "pipeline":
        commands = request.get("commands")
        return isinstance(commands, list) and all(isinstance(c, dict) and is_retry_safe(c) for c in commands)
    return cmd in READ_ONLY


def not_applied(error: ServerError) -> bool:
    """Whether an error reply means for sure that the request changed nothing and may be sent elsewhere or later."""
    return isinstance(error, NotLeader | ServerBusy | NoLeader | WriteLost)


def backoff_delay(attempt: int, base: float = 0.05, cap: float = 2.0) -> float:
    """The pause before reconnect attempt C{attempt} (1, 2, ...): doubling from C{base}, at most C{cap}."""
    return float(min(cap, base * 2 ** max(0, attempt - 1)))


@attrs.frozen
class Pending:
    """A request sent and not yet answered."""

    request_id: int
    request: dict[str, Any]


@attrs.frozen
class Reply:
    """
    A decoded reply and the request it answers. C{value} is the C{data} of a
    success (for C{hello}, the top-level object without C{ok}) or the text of
    an error.
    """

    request_id: int
    request: dict[str, Any]
    ok: bool
    value: Any

    def error(self) -> ServerError | UnknownOutcome | None:
        """
        None for a success, else the error reply as its L{ServerError}
        subclass; a cluster's "outcome is unknown" errors are L{UnknownOutcome}.
        """
        if self.ok:
            return None
        message = str(self.value)
        if "outcome is unknown" in message:
            return UnknownOutcome(message, self.request)
        return error_from_reply(message)

    def result(self) -> Any:
        """The data, or L{error} raised."""
        error = self.error()
        if error is not None:
            raise error
        return self.value


#: How every change stream event frame starts (the server writes C{event} first).
_EVENT_PREFIX = b'{"event":'


def watch_request(collection: str | None, resume_after: int | None) -> dict[str, Any]:
    """The C{watch} request for C{collection} (None: all) resuming after C{resume_after} (None: from now)."""
    request: dict[str, Any] = {"cmd": "watch"}
    if collection is not None:
        request["collection"] = collection
    if resume_after is not None:
        request["resume_after"] = resume_after
    return request


def last_token(event: dict[str, Any], current: int | None) -> int | None:
    """The token to resume after once C{event} has been handled."""
    if event.get("event") == "change":
        data = event.get("data")
        if isinstance(data, dict) and isinstance(data.get("token"), int):
            return int(data["token"])
    return current


@attrs.define(eq=False)
class ProtocolCore:
    """
    One connection's framing and request bookkeeping. L{send} gives the
    bytes to write; L{receive} takes bytes read and gives the replies they
    complete, each paired with its request (the server answers in request
    order).

    @ivar format: C{"json"} or C{"oxiwire"}, the payload format of requests
        (the server answers in the same format).
    """

    format: str = "json"
    #: Change stream events received (C{{"event": ..., "data": ...}}), oldest first; the caller takes them.
    events: list[dict[str, Any]] = attrs.field(init=False, factory=list)
    _decoder: FrameDecoder = attrs.field(init=False, factory=lambda: FrameDecoder(_MAX_REPLY))
    _pending: deque[Pending] = attrs.field(init=False, factory=deque)
    _next_id: int = attrs.field(init=False, default=1)

    def __attrs_post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"unknown format {self.format!r}: expected json or oxiwire")

    @property
    def pending(self) -> tuple[Pending, ...]:
        """The requests sent and not answered, oldest first."""
        return tuple(self._pending)

    def encode(self, request: dict[str, Any]) -> bytes:
        """The payload of C{request} in this connection's format."""
        if self.format == "oxiwire":
            return bytes([oxiwire.MAGIC]) + oxiwire.encode_value(request)
        return json.dumps(request, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")

    def send(self, request: dict[str, Any], limit: int | None = None) -> tuple[int, bytes]:
        """
        Register C{request} as sent; its id and the frame to write.

        @param limit: refuse a payload above this many bytes (None: any).
        @raise TypeError: a value that cannot be encoded.
        @raise ValueError: a non-finite float, or a payload above C{limit}.
        """
        payload = self.encode(request)
        if limit is not None and len(payload) > limit:
            raise ValueError(f"the request encodes to {len(payload)} bytes, above the frame limit of {limit}")
        frame = encode_frame(payload)
        request_id = self._next_id
        self._next_id += 1
        self._pending.append(Pending(request_id, request))
        return request_id, frame

    def receive(self, data: bytes) -> list[Reply]:
        """
        The replies completed by C{data}, in order.

        @raise ClientProtocolError: an undecodable reply or one nothing asked for.
        """
        replies = []
        try:
            payloads = self._decoder.feed(data)
        except Exception as e:
            raise ClientProtocolError(f"bad reply frame: {e}") from None
        for payload in payloads:
            if payload.startswith(_EVENT_PREFIX):
                # Pushed by the server in watch mode; events are JSON for our formats.
                try:
                    event = json.loads(payload)
                except ValueError as e:
                    raise ClientProtocolError(f"bad event: {e}") from None
                self.events.append(event)
                continue
            if not self._pending:
                raise ClientProtocolError("a reply arrived with no request waiting")
            pending = self._pending.popleft()
            try:
                envelope = decode_reply(payload)
            except DecodeError as e:
                raise ClientProtocolError(str(e)) from None
            ok = bool(envelope.get("ok"))
            if not ok:
                value: Any = envelope.get("error")
            elif "data" in envelope:
                value = envelope["data"]
            else:
                value = {k: v for k, v in envelope.items() if k != "ok"}
            replies.append(Reply(pending.request_id, pending.request, ok, value))
        return replies

    def take_events(self) -> list[dict[str, Any]]:
        """The events received so far (and forget them)."""
        events, self.events = self.events, []
        return events

    def lose(self) -> list[Pending]:
        """The connection is gone: forget and return the requests that got no reply."""
        self.events = []
        pending, self._pending = list(self._pending), deque()
        self._decoder = FrameDecoder(_MAX_REPLY)
        return pending


# -- bulk loads ------------------------------------------------------------------

#: The most C{insert_many} batches an L{InsertStream} keeps in flight.
MAX_IN_FLIGHT = 64


@attrs.frozen
class BatchOutcome:
    """
    What became of one batch of an L{InsertStream}: documents C{start ..
    start + count - 1} of the stream. It landed when C{error} is None
    (C{ids}: their new ids, in order). Otherwise nothing of it was inserted
    (C{insert_many} is all-or-nothing) and C{error} says why: the server's
    error reply, or the C{TypeError}/C{ValueError} that kept it from being
    encoded (it was not sent); except for L{UnknownOutcome}: the connection
    broke before its reply, so it may have landed or not.
    """

    start: int
    count: int
    ids: list[Any] | None = None
    error: Exception | None = None

    @property
    def landed(self) -> bool:
        return self.error is None


@attrs.frozen
class InsertStreamResult:
    """An insert stream that landed whole: C{inserted} documents in C{batches} batches."""

    inserted: int
    batches: int


@attrs.define(eq=False)
class InsertStream:
    """
    The bookkeeping of one pipelined bulk load on one connection: documents
    read lazily from C{docs} into C{insert_many} requests of C{batch_size},
    at most C{in_flight} of them sent and not yet answered, and the replies
    matched to their batches in order. Memory is bounded by the batches in
    flight: the iterable is read one batch at a time, only when that batch
    can be sent.

    The driver loops: send every request L{next_request} gives (L{not_sent}
    for one that could not be encoded), then feed the next reply to
    L{replied} (or L{lost} when the connection broke), until L{finished};
    then L{result}.

    The first batch that does not land stops the stream: nothing more is
    read or sent, the batches already in flight are answered and recorded
    (they may land: they were sent before the failure was known), and
    L{result} raises L{InsertStreamFailed}.
    """

    collection: str
    docs: Iterator[dict[str, Any]]
    batch_size: int = 500
    in_flight: int = 2
    #: Documents landed, before the first batch that did not.
    inserted: int = attrs.field(init=False, default=0)
    #: Batches landed, before the first one that did not.
    batches: int = attrs.field(init=False, default=0)
    _sent: deque[tuple[dict[str, Any], int, int]] = attrs.field(init=False, factory=deque)
    _read: int = attrs.field(init=False, default=0)
    _sent_until: int = attrs.field(init=False, default=0)
    _exhausted: bool = attrs.field(init=False, default=False)
    # Outcomes from the first answered batch that did not land on.
    _outcomes: list[BatchOutcome] = attrs.field(init=False, factory=list)
    # The batch that could not be encoded: after every batch in flight then.
    _unsent: BatchOutcome | None = attrs.field(init=False, default=None)
    _source_error: Exception | None = attrs.field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        if type(self.batch_size) is not int or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, not {self.batch_size!r}")
        if type(self.in_flight) is not int or not 1 <= self.in_flight <= MAX_IN_FLIGHT:
            raise ValueError(f"in_flight must be an integer from 1 to {MAX_IN_FLIGHT}, not {self.in_flight!r}")

    @property
    def stopped(self) -> bool:
        """A batch did not land, or reading the documents failed: nothing more is sent."""
        return bool(self._outcomes) or self._unsent is not None or self._source_error is not None

    @property
    def waiting(self) -> int:
        """Batches sent and not answered."""
        return len(self._sent)

    @property
    def finished(self) -> bool:
        """Nothing is in flight and nothing more will be sent."""
        return not self._sent and (self._exhausted or self.stopped)

    def next_request(self) -> dict[str, Any] | None:
        """
        The next C{insert_many} to send now (counted in flight from here on),
        or None: the window is full, the documents are all sent, or the
        stream stopped. An exception from the iterable stops the stream; it
        is the cause of L{result}'s L{InsertStreamFailed}.
        """
        if self._exhausted or self.stopped or len(self._sent) >= self.in_flight:
            return None
        try:
            docs = list(itertools.islice(self.docs, self.batch_size))
        except Exception as e:  # noqa: BLE001 - the application's iterable: reported by result()
            self._source_error = e
            return None
        if len(docs) < self.batch_size:
            self._exhausted = True
            if not docs:
                return None
        request = {"cmd": "insert_many", "collection": self.collection, "docs": docs}
        self._sent.append((request, self._read, len(docs)))
        self._read += len(docs)
        self._sent_until = self._read
        return request

    def not_sent(self, request: dict[str, Any], error: Exception) -> BatchOutcome:
        """The request L{next_request} just gave could not be encoded (C{error}): it was not sent."""
        if not self._sent or self._sent[-1][0] is not request:
            raise ValueError("not_sent is for the last request given")
        _, start, count = self._sent.pop()
        self._sent_until = start
        self._unsent = BatchOutcome(start, count, error=error)
        return self._unsent

    def replied(self, reply: Reply) -> BatchOutcome:
        """
        The reply to the oldest batch in flight: its outcome.

        @raise ClientProtocolError: a reply to another request.
        """
        if not self._sent or self._sent[0][0] is not reply.request:
            raise ClientProtocolError("a reply arrived for a request the insert stream did not send")
        _, start, count = self._sent.popleft()
        error = reply.error()
        if error is not None:
            outcome = BatchOutcome(start, count, error=error)
        else:
            ids = reply.value
            outcome = BatchOutcome(start, count, ids=ids if isinstance(ids, list) else None)
        if self._outcomes or error is not None:
            self._outcomes.append(outcome)
        else:
            self.inserted += count
            self.batches += 1
        return outcome

    def lost(self, reason: str) -> list[BatchOutcome]:
        """The connection broke: every batch in flight has an unknown outcome (they are returned)."""
        lost = []
        while self._sent:
            request, start, count = self._sent.popleft()
            error = UnknownOutcome(f"insert_many: {reason}; it may or may not have been applied", request)
            lost.append(BatchOutcome(start, count, error=error))
        self._outcomes.extend(lost)
        return lost

    def result(self) -> InsertStreamResult:
        """
        The totals once L{finished}.

        @raise InsertStreamFailed: a batch did not land or reading the
            documents failed (the iterable's exception is its cause).
        """
        if not self.finished:
            raise ValueError("the insert stream has batches in flight or documents left")
        if not self.stopped:
            return InsertStreamResult(self.inserted, self.batches)
        landed = f"documents 0..{self.inserted - 1} landed" if self.inserted else "no document landed before"
        outcomes = self._outcomes + ([self._unsent] if self._unsent is not None else [])
        if outcomes:
            first = outcomes[0]
            message = (
                f"insert_many of documents {first.start}..{first.start + first.count - 1} "
                f"did not land: {first.error}; {landed}"
            )
        else:
            message = f"reading the documents failed: {self._source_error!r}; {landed}"
        error = InsertStreamFailed(message, self.inserted, outcomes, self._sent_until)
        raise error from self._source_error


@attrs.define(eq=False)
class ScramLogin:
    """
    The client side of the SCRAM-SHA-256 login (two round trips):
    C{first()}, then C{second(data)} with the first reply's data, then
    C{finish(data)} with the second's, which checks the server's signature.
    """

    user: str
    password: str
    _scram: ScramClient = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._scram = ScramClient(["SCRAM-SHA-256"], self.user, self.password)

    def first(self) -> dict[str, Any]:
        return {"cmd": "authenticate", "payload": self._scram.get_client_first()}

    def second(self, data: Any) -> dict[str, Any]:
        try:
            self._scram.set_server_first(data["payload"])
        except Exception as e:
            raise ClientProtocolError(f"bad SCRAM server-first message: {e}") from None
        return {"cmd": "authenticate_continue", "payload": self._scram.get_client_final()}

    def finish(self, data: Any) -> None:
        """@raise AuthenticationFailed: the server could not prove it knows the password."""
        try:
            self._scram.set_server_final(data["payload"])
        except Exception:
            raise AuthenticationFailed("authentication failed: the server's SCRAM signature is wrong") from None


# -- the request flow ---------------------------------------------------------

#: A seed: C{(host, port)}.
Address: TypeAlias = tuple[str, int]


@attrs.frozen
class Opened:
    """
    Event: the connection to C{address} is open and logged in. After a probe,
    what its C{raft_metrics} said: whether it leads, its node id and the
    leader's id (C{leader} stays true for a server that is not in a cluster
    or will not say).
    """

    address: Address
    leader: bool = True
    node_id: int | None = None
    leader_id: int | None = None


@attrs.frozen
class OpenFailed:
    """Event: C{address} could not be reached, greeted or logged in to."""

    address: Address
    error: Exception


@attrs.frozen
class Replied:
    """Event: the reply to the request sent."""

    reply: Reply


@attrs.frozen
class Lost:
    """Event: the connection broke; C{sent} says whether the request had been written."""

    reason: str
    sent: bool


@attrs.frozen
class TimerFired:
    """Event: the L{Wait} is over."""


Event: TypeAlias = Opened | OpenFailed | Replied | Lost | TimerFired


@attrs.frozen
class Open:
    """
    Action: open a connection to C{address} (hello, login); with C{probe},
    ask C{raft_metrics} too. Answer with L{Opened} or L{OpenFailed}; keep the
    connection until an L{Adopt} or L{Close} names it.
    """

    address: Address
    probe: bool


@attrs.frozen
class Adopt:
    """Action: the connection opened to C{address} is now the client's connection."""

    address: Address


@attrs.frozen
class Close:
    """Action: close the connection opened to C{address} (not adopted)."""

    address: Address


@attrs.frozen
class Drop:
    """Action: close the client's connection and forget it."""


@attrs.frozen
class Send:
    """Action: send C{request} on the client's connection; answer with L{Replied} or L{Lost}."""

    request: dict[str, Any]


@attrs.frozen
class Wait:
    """Action: wait C{seconds}; answer with L{TimerFired}."""

    seconds: float


@attrs.frozen
class Fail:
    """Action (the last): raise C{error}."""

    error: Exception


@attrs.frozen
class Done:
    """Action (the last): the request's data is C{value}."""

    value: Any


Action: TypeAlias = Open | Adopt | Close | Drop | Send | Wait | Fail | Done


def probed(address: Address, reply: Reply) -> Opened:
    """What a C{raft_metrics} reply says of a seed (an error: a server outside a cluster, taken as a leader)."""
    value = reply.value
    if not reply.ok or not isinstance(value, dict):
        return Opened(address)
    node_id, leader_id = value.get("id"), value.get("current_leader")
    return Opened(
        address,
        leader=value.get("state") == "Leader",
        node_id=node_id if isinstance(node_id, int) else None,
        leader_id=leader_id if isinstance(leader_id, int) else None,
    )


@attrs.define(eq=False)
class Session:
    """
    What a client remembers between requests: its seeds and retry budget,
    the seed it is (or was last) connected to, the seed to try first next
    time, the node id each probed seed reported, and whether a transaction
    is open on the connection.
    """

    seeds: tuple[Address, ...]
    retries: int = 5
    in_tx: bool = False
    address: Address | None = None
    preferred: Address | None = None
    node_ids: dict[Address, int] = attrs.field(factory=dict)

    def seed_order(self) -> list[Address]:
        """The seeds, the preferred one first."""
        seeds = list(self.seeds)
        if self.preferred in seeds:
            seeds.remove(self.preferred)
            seeds.insert(0, self.preferred)
        return seeds

    def seed_of(self, node_id: int | None) -> Address | None:
        """The seed known to be node C{node_id}, if any."""
        return next((a for a, n in self.node_ids.items() if n == node_id), None) if node_id is not None else None

    def prefer_leader(self, leader_id: int | None) -> None:
        """Next connect to the seed of node C{leader_id} if known, else to the seed after the current one."""
        hinted = self.seed_of(leader_id)
        if hinted is not None:
            self.preferred = hinted
            return
        seeds = list(self.seeds)
        if self.address in seeds and len(seeds) > 1:
            self.preferred = seeds[(seeds.index(self.address) + 1) % len(seeds)]

    def request(self, request: dict[str, Any], *, connected: bool) -> RequestFlow:
        """The flow that gets C{request} answered; C{connected}: whether the client has a live connection."""
        return RequestFlow(self, request, connected)

    def connect(self, *, connected: bool) -> RequestFlow:
        """The flow that only connects (it is L{Done} with None once connected)."""
        return RequestFlow(self, None, connected)


@attrs.define(eq=False)
class RequestFlow:
    """
    The decisions for one request, as a state machine: L{start} and then
    L{feed} with each event give the actions to perform, in order; the last
    action of each list is the one whose outcome is the next event (L{Open},
    L{Send}, L{Wait}), or L{Fail} or L{Done}, after which the flow is over.

    Connecting walks the seeds (the preferred one first). With more than one
    seed each is probed: a leader is adopted at once; the first follower is
    kept as a fallback (adopted if no leader answers) and a follower's hint
    of the leader puts that seed next. A pass that reaches nobody is repeated
    after a backoff, C{retries} times.

    The retry rule: a request is sent again only when it is known not to
    have been applied: it was not written before the connection broke, the
    server refused it (not leader, no leader, write lost, busy), or it
    changes nothing (L{is_retry_safe}). A write whose reply was lost fails
    with L{UnknownOutcome}, never a second send; inside a transaction
    nothing is retried.
    """

    session: Session
    request: dict[str, Any] | None
    connected: bool
    failures: int = attrs.field(init=False, default=0)
    _state: str = attrs.field(init=False, default="new")
    _attempt: int = attrs.field(init=False, default=0)
    _queue: list[Address] = attrs.field(init=False, factory=list)
    _opening: Address | None = attrs.field(init=False, default=None)
    _fallback: Address | None = attrs.field(init=False, default=None)
    _errors: list[str] = attrs.field(init=False, factory=list)

    @property
    def finished(self) -> bool:
        return self._state == "done"

    def start(self) -> list[Action]:
        """The first actions."""
        if self._state != "new":
            raise ValueError("the flow has started")
        session = self.session
        if self.connected:
            return self._send() if self.request is not None else self._end(Done(None))
        if session.in_tx and self.request is not None:
            session.in_tx = False
            return self._end(Fail(ConnectionFailed("the connection was lost inside a transaction; it was rolled back")))
        return self._begin_connect()

    def feed(self, event: Event) -> list[Action]:
        """
        The actions that follow C{event}.

        @raise ValueError: an event that does not answer the last action.
        """
        state = self._state
        if isinstance(event, Opened | OpenFailed) and state == "connecting" and event.address == self._opening:
            self._opening = None
            return self._opened(event) if isinstance(event, Opened) else self._open_failed(event)
        if isinstance(event, Replied) and state == "sending":
            return self._replied(event.reply)
        if isinstance(event, Lost) and state == "sending":
            return self._lost(event)
        if isinstance(event, TimerFired) and state == "connect-wait":
            return self._begin_pass()
        if isinstance(event, TimerFired) and state == "retry-wait":
            return self._begin_connect()
        raise ValueError(f"event {event!r} does not fit the flow's state {state!r}")

    # -- connecting ----------------------------------------------------------

    def _begin_connect(self) -> list[Action]:
        self._attempt = 0
        return self._begin_pass()

    def _begin_pass(self) -> list[Action]:
        self._state = "connecting"
        self._queue = self.session.seed_order()
        self._fallback = None
        return self._next_seed()

    def _next_seed(self) -> list[Action]:
        if self._queue:
            self._opening = self._queue.pop(0)
            return [Open(self._opening, probe=len(self.session.seeds) > 1)]
        if self._fallback is not None:
            return self._adopt(self._fallback)
        self._attempt += 1
        if self._attempt > self.session.retries:
            seeds = ",".join(f"{h}:{p}" for h, p in self.session.seeds)
            last = self._errors[-1] if self._errors else "no seeds"
            return self._end(Fail(ConnectionFailed(f"cannot connect to {seeds}: {last}")))
        self._state = "connect-wait"
        return [Wait(backoff_delay(self._attempt))]

    def _opened(self, event: Opened) -> list[Action]:
        session = self.session
        if event.node_id is not None:
            session.node_ids[event.address] = event.node_id
        if event.leader:
            return ([Close(self._fallback)] if self._fallback is not None else []) + self._adopt(event.address)
        hinted = session.seed_of(event.leader_id)
        if hinted is not None and hinted in self._queue:
            self._queue.remove(hinted)
            self._queue.insert(0, hinted)
        if self._fallback is None:
            self._fallback = event.address
            return self._next_seed()
        return [Close(event.address), *self._next_seed()]

    def _open_failed(self, event: OpenFailed) -> list[Action]:
        if isinstance(event.error, AuthenticationFailed | PermissionDenied | DatabaseNotFound):
            closing: list[Action] = [Close(self._fallback)] if self._fallback is not None else []
            self._fallback = None
            return closing + self._end(Fail(event.error))
        host, port = event.address
        self._errors.append(f"{host}:{port}: {event.error}")
        return self._next_seed()

    def _adopt(self, address: Address) -> list[Action]:
        self._fallback = None
        self.session.address = address
        self.connected = True
        if self.request is None:
            return [Adopt(address), *self._end(Done(None))]
        return [Adopt(address), *self._send()]

    # -- the request -----------------------------------------------------------

    def _send(self) -> list[Action]:
        assert self.request is not None
        self._state = "sending"
        return [Send(self.request)]

    def _replied(self, reply: Reply) -> list[Action]:
        error = reply.error()
        if error is None:
            return self._end(Done(reply.value))
        session = self.session
        if isinstance(error, ServerError) and not session.in_tx and not_applied(error):
            if self.failures < session.retries:
                # Not applied: look for the leader (or a less busy moment) and send it again.
                self.failures += 1
                session.prefer_leader(error.leader_id if isinstance(error, NotLeader) else None)
                return self._retry_later()
        return self._end(Fail(error))

    def _lost(self, event: Lost) -> list[Action]:
        assert self.request is not None
        session = self.session
        request = self.request
        cmd = request.get("cmd")
        self.connected = False
        error: ClientError
        if session.in_tx:
            session.in_tx = False
            if cmd == "commit_tx" and event.sent:
                error = UnknownOutcome(
                    f"commit_tx: {event.reason}; the transaction may or may not be committed", request
                )
            else:
                error = ConnectionFailed(f"{event.reason}; the transaction was rolled back")
            return [Drop(), *self._end(Fail(error))]
        if event.sent and not is_retry_safe(request):
            error = UnknownOutcome(f"{cmd}: {event.reason}; it may or may not have been applied", request)
            return [Drop(), *self._end(Fail(error))]
        self.failures += 1
        if self.failures > session.retries:
            return [Drop(), *self._end(Fail(ConnectionFailed(f"{cmd}: {event.reason}")))]
        return self._retry_later()

    def _retry_later(self) -> list[Action]:
        self.connected = False
        self._state = "retry-wait"
        return [Drop(), Wait(backoff_delay(self.failures))]

    def _end(self, action: Fail | Done) -> list[Action]:
        self._state = "done"
        return [action]
