"""
Audit events and where they go.

The dispatcher (and the login commands) describe each operation as an
L{AuditEvent} through an L{Auditor}, which hands it to every L{IAuditSink}:
the audit file, GELF. Sinks never block the caller. An event has only the
fields below, so request bodies (and passwords) never reach the audit trail.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Sequence

import attrs
import orjson
from twisted.internet.interfaces import IReactorTime
from zope.interface import Interface

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from oxidb.server.session import Session

#: Values of L{AuditEvent.result}.
OK = "ok"
ERROR = "error"
DENIED = "denied"


@attrs.frozen
class AuditEvent:
    """
    @ivar ts: seconds since the epoch.
    @ivar user: the session's user, or the name tried in a login; None if
        not known (a malformed login message).
    @ivar role: the wire role, or None before login.
    @ivar cmd: the command.
    @ivar collection: the request's collection (or other audited field).
    @ivar result: C{ok}, C{error} or C{denied}.
    @ivar detail: the error text, C{""} on success.
    @ivar peer: the client's C{host:port}.
    """

    ts: float
    user: str | None
    role: str | None
    cmd: str
    collection: str | None
    result: str
    detail: str
    peer: str

    def to_json_line(self) -> bytes:
        """One audit-file line: compact JSON, fields in a fixed order, C{\\n}."""
        record = {
            "ts": format_timestamp(self.ts),
            "user": self.user,
            "role": self.role,
            "cmd": self.cmd,
            "collection": self.collection,
            "result": self.result,
            "detail": self.detail,
            "peer": self.peer,
        }
        return json_line_safe(orjson.dumps(record)) + b"\n"


def json_line_safe(encoded: bytes) -> bytes:
    """
    Compact JSON with the two characters JSON leaves raw but some readers
    take for line breaks (U+2028, U+2029) escaped as well: the same JSON.
    """
    return encoded.replace("\u2028".encode(), b"\\u2028").replace("\u2029".encode(), b"\\u2029")


def format_timestamp(ts: float) -> str:
    """UTC with millisecond precision: C{2026-02-21T10:49:12.345Z}."""
    millis = int(round(ts * 1000))
    seconds, ms = divmod(millis, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{ms:03d}Z"


class IAuditSink(Interface):
    """A destination for audit events."""

    def record(event: AuditEvent) -> None:
        """Take one event. Never blocks and never raises."""

    def start() -> None:
        """Begin accepting events (called by the service at startup)."""

    def stop() -> "Deferred[None]":
        """Write out what was recorded (flush, fsync) and stop."""


class Auditor:
    """
    Builds events for the dispatcher and the login commands and fans them out
    to the sinks. Lives on the reactor thread.
    """

    def __init__(self, clock: IReactorTime, sinks: Sequence[Any]) -> None:
        self.clock = clock
        self.sinks = tuple(sinks)

    def record(self, event: AuditEvent) -> None:
        for sink in self.sinks:
            sink.record(event)

    def record_command(self, session: "Session", cmd: str, collection: str | None, result: str, detail: str) -> None:
        """One operation by a session (C{result}: ok, error or denied)."""
        role = session.role.wire if session.role is not None else None
        self.record(AuditEvent(self.clock.seconds(), session.user, role, cmd, collection, result, detail, session.peer))

    def record_login(
        self, session: "Session", cmd: str, username: str | None, role: str | None, result: str, detail: str
    ) -> None:
        """A login attempt: the name tried, and the role on success."""
        self.record(AuditEvent(self.clock.seconds(), username, role, cmd, None, result, detail, session.peer))
