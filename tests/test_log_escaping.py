"""
Control characters in client-supplied strings never reach a log raw: not
the text log (twistd's default format or oxidb.logs.text_observer), not the
JSON log, not GELF, not the audit file.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import (
    FileLogObserver,
    LogLevel,
    LogPublisher,
    eventAsJSON,
    formatEventAsClassicLogText,
)
from twisted.python.failure import Failure

from oxidb import logs
from oxidb.audit.events import AuditEvent, Auditor
from oxidb.audit.gelf import audit_event_fields, log_event_fields
from oxidb.auth.manager import AuthManager
from oxidb.auth.settings import AuthSettings
from oxidb.auth.throttle import ThrottlePolicy
from oxidb.commands import auth as auth_commands
from oxidb.commands._context import CommandContext
from oxidb.logs import Logger, escape_control
from oxidb.server.session import Session
from oxidb.testing import fake_services

EVIL = "bob\n2026-01-01T00:00:00+0000 [oxidb] admin logged in\r\x1b[2K\x1b[31mALERT\x07\u2028end"
RAW = ("\r", "\x1b", "\x07", "\u2028")


def assert_clean(text: str) -> None:
    """No control character but Twisted's own line breaks (each followed by a tab indent)."""
    for char in RAW:
        assert char not in text, repr(text)
    body = text[:-1] if text.endswith("\n") else text
    assert "\n" not in body.replace("\n\t", ""), repr(text)


def test_escape_control() -> None:
    assert (
        escape_control("a\nb\rc\td\x1b[0m\x00\x7f\x85\u2028é/ok") == "a\\nb\\rc\\td\\x1b[0m\\x00\\x7f\\x85\\u2028é/ok"
    )


def captured(emit: Any) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    publisher = LogPublisher(events.append)
    emit(Logger(namespace="test", observer=publisher))
    return events


def test_every_observer_sees_escaped_fields() -> None:
    [event] = captured(
        lambda log: log.info(
            "failed login for {user} from {peer} on {collection}: {error}",
            user=EVIL,
            peer=EVIL,
            collection=EVIL,
            error=ValueError(EVIL),
        )
    )
    text = formatEventAsClassicLogText(event)
    assert text is not None
    assert_clean(text)
    assert "bob\\n2026" in text and "\\x1b[31mALERT" in text
    payload = eventAsJSON(event)
    assert "\\u001b" not in payload and "\\r" not in payload.replace("\\\\r", "")
    assert json.loads(payload)["user"] == escape_control(EVIL)
    fields = log_event_fields(event, "host")
    assert fields is not None
    assert_clean(fields["short_message"])
    assert fields["_user"] == escape_control(EVIL)


def test_the_text_observer_escapes_failures_too() -> None:
    out = io.StringIO()
    observer: FileLogObserver = logs.text_observer()
    observer._outFile = out  # type: ignore[attr-defined]

    try:
        raise KeyError(EVIL)
    except KeyError:
        failure = Failure()
    [event] = captured(lambda log: log.failure("command {cmd} failed", failure, cmd=EVIL))
    observer(event)
    written = out.getvalue()
    assert written.endswith("\n")
    assert_clean(written)
    assert "Traceback" in written


def test_audit_lines_and_gelf_are_escaped_json() -> None:
    event = AuditEvent(0.0, EVIL, None, EVIL, EVIL, "denied", EVIL, EVIL)
    line = event.to_json_line()
    assert line.endswith(b"\n") and b"\n" not in line[:-1]
    for char in RAW:
        assert char.encode() not in line
    fields = audit_event_fields(event, "host")
    encoded = json.dumps(fields)
    assert "\x1b" not in encoded and "\n" not in encoded


class _Sink:
    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    def record(self, event: AuditEvent) -> None:
        self.events.append(event)


def test_a_failed_login_with_a_hostile_user_name(tmp_path: Path) -> None:
    clock = Clock()
    clock.advance(1_700_000_000)

    def read(fn: Any, *args: Any, **kwargs: Any) -> Deferred[Any]:
        try:
            return succeed(fn(*args, **kwargs))
        except Exception as e:
            return fail(e)

    policy = ThrottlePolicy(base_delay=0.1, max_delay=1.0, max_failures=4, window=60.0)
    manager = AuthManager.open(tmp_path, AuthSettings(enabled=True, throttle=policy), clock, read, random.Random(0))
    sink = _Sink()
    services = fake_services(auth=manager, audit=Auditor(clock, [sink]), metrics=None, clock=clock)
    ctx = CommandContext(Session(peer="127.0.0.1:5000"), services)
    events: list[dict[str, Any]] = []
    original = auth_commands._log.observer
    auth_commands._log.observer = LogPublisher(events.append)
    try:
        d = auth_commands.auth_simple(ctx, {"cmd": "auth_simple", "username": EVIL, "password": "x"})
        clock.advance(10)
        failures: list[Failure] = []
        d.addErrback(failures.append)
        assert failures and "authentication failed" in str(failures[0].value)
    finally:
        auth_commands._log.observer = original
    [event] = [e for e in events if e.get("log_level") is LogLevel.info]
    text = formatEventAsClassicLogText(event)
    assert text is not None and "failed login for bob\\n2026" in text
    assert_clean(text)
    [audited] = sink.events
    assert audited.user == EVIL  # the audit file's JSON encoding escapes it
    assert b"\x1b" not in audited.to_json_line()


@pytest.mark.parametrize("value", [5, None, 1.5, ("a\n", 1)])
def test_other_field_types_pass_through(value: Any) -> None:
    [event] = captured(lambda log: log.info("{v!r}", v=value))
    assert event["v"] == value
