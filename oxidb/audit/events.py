"""
Audit events and where they go.

The dispatcher (and the login commands) describe each operation as an
L{AuditEvent} through an L{Auditor}, which hands it to every L{IAuditSink}:
the audit file, GELF. Sinks never block the caller. An event has only the
fields below, so request bodies (and passwords) never reach the audit trail.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

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
    @ivar database: the database a command acting in one targeted (the
        line's C{db}, left out for other commands), or None.
    @ivar target: what an operation acted on beyond its collection, from
        the request fields its registry row names (C{audit_target}): the
        user and role of user management, a procedure's or schedule's name,
        a backup's path, an index's field or name; None when the command
        names none. Values are strings, lists of strings or integers.
    """

    ts: float
    user: str | None
    role: str | None
    cmd: str
    collection: str | None
    result: str
    detail: str
    peer: str
    target: dict[str, Any] | None = attrs.field(default=None, hash=False)
    database: str | None = None

    def to_json_line(self) -> bytes:
        """One audit-file line: compact JSON, fields in a fixed order, C{\\n}."""
        record = {
            "ts": format_timestamp(self.ts),
            "user": self.user,
            "role": self.role,
            "cmd": self.cmd,
            "collection": self.collection,
            **({"db": self.database} if self.database is not None else {}),
            "target": self.target,
            "result": self.result,
            "detail": self.detail,
            "peer": self.peer,
        }
        return json_line_safe(orjson.dumps(record)) + b"\n"


#: Longest string kept in an audit target value; longer ones are cut and
#: marked, so that a huge key or path cannot bloat the audit trail.
MAX_TARGET_TEXT = 1024


def _target_value(value: Any) -> Any:
    if isinstance(value, str):
        return value if len(value) <= MAX_TARGET_TEXT else value[:MAX_TARGET_TEXT] + "...(cut)"
    if type(value) is int:
        return value
    if (
        type(value) is list
        and len(value) <= 64
        and all(isinstance(v, (str, int)) and type(v) is not bool for v in value)
    ):
        return [_target_value(v) for v in value]
    return None


def audit_target(request: Any, keys: Sequence[str]) -> dict[str, Any] | None:
    """
    The C{target} of an audit line: the request's values at C{keys} that
    are strings, integers or short lists of them (others are left out);
    None when none is present. Never name a secret field (a password) in
    C{keys}: the audit trail holds no request bodies.
    """
    if not keys or type(request) is not dict:
        return None
    target = {}
    for key in keys:
        value = _target_value(request.get(key))
        if value is not None:
            target[key] = value
    return target or None


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

    def stop() -> Deferred[None]:
        """Write out what was recorded (flush, fsync) and stop."""


@attrs.define(eq=False)
class Auditor:
    """
    Builds events for the dispatcher and the login commands and fans them out
    to the sinks. Lives on the reactor thread.
    """

    clock: IReactorTime
    sinks: tuple[Any, ...] = attrs.field(converter=tuple)

    def record(self, event: AuditEvent) -> None:
        for sink in self.sinks:
            sink.record(event)

    def record_command(
        self,
        session: Session,
        cmd: str,
        collection: str | None,
        result: str,
        detail: str,
        target: dict[str, Any] | None = None,
        database: str | None = None,
    ) -> None:
        """
        One operation by a session (C{result}: ok, error or denied), and what
        it acted on (C{database}: the one a command acting in a database
        targeted).
        """
        role = session.role.wire if session.role is not None else None
        self.record(
            AuditEvent(
                self.clock.seconds(),
                session.user,
                role,
                cmd,
                collection,
                result,
                detail,
                session.peer,
                target,
                database,
            )
        )

    def record_login(
        self, session: Session, cmd: str, username: str | None, role: str | None, result: str, detail: str
    ) -> None:
        """A login attempt: the name tried, and the role on success."""
        self.record(AuditEvent(self.clock.seconds(), username, role, cmd, None, result, detail, session.peer))
