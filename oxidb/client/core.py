"""
The sans-IO protocol core shared by the blocking and the Twisted clients:
requests to frames, received bytes to replies matched with their requests
in order, the SCRAM-SHA-256 conversation, and which requests are safe to
send again after a lost connection. Nothing here does I/O or keeps time.
"""

from __future__ import annotations

import json
from collections import deque
from typing import Any

import attrs
from scramp import ScramClient

from oxidb.client.errors import (
    AuthenticationFailed,
    ClientProtocolError,
    NoLeader,
    NotLeader,
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
    "Pending",
    "ProtocolCore",
    "Reply",
    "ScramLogin",
    "backoff_delay",
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

    def result(self) -> Any:
        """
        The data, or the error reply raised as its L{ServerError} subclass;
        a cluster's "outcome is unknown" errors raise L{UnknownOutcome}.
        """
        if self.ok:
            return self.value
        message = str(self.value)
        if "outcome is unknown" in message:
            raise UnknownOutcome(message, self.request)
        raise error_from_reply(message)


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

    def send(self, request: dict[str, Any]) -> tuple[int, bytes]:
        """
        Register C{request} as sent; its id and the frame to write.

        @raise TypeError: a value that cannot be encoded.
        @raise ValueError: a non-finite float.
        """
        frame = encode_frame(self.encode(request))
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
