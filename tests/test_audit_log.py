"""
The audit trail (oxidb.audit.events, oxidb.audit.log): line format, settings
with upstream's error texts, rotation and compression, and the writer thread.
"""

from __future__ import annotations

import gzip
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.task import Clock

from oxidb.audit.events import AuditEvent, Auditor, IAuditSink, format_timestamp
from oxidb.audit.log import AuditFile, AuditLog, AuditRotation, AuditSettings, Calendar, parse_audit_settings
from oxidb.auth.rbac import Role
from oxidb.errors import ConfigError
from oxidb.server.session import Session

# 2026-02-21T10:49:12.345Z
T0 = 1771670952.345


def event(n: int = 0, **changes: Any) -> AuditEvent:
    fields: dict[str, Any] = dict(
        ts=T0,
        user="alice",
        role="readWrite",
        cmd="insert",
        collection="users",
        result="ok",
        detail="",
        peer="1.2.3.4:5",
    )
    fields.update(changes)
    if n:
        fields["detail"] = f"event {n}"
    return AuditEvent(**fields)


# --- line format ----------------------------------------------------------------


def test_timestamp_format() -> None:
    assert format_timestamp(T0) == "2026-02-21T10:49:12.345Z"
    assert format_timestamp(0) == "1970-01-01T00:00:00.000Z"
    assert format_timestamp(59.9996) == "1970-01-01T00:01:00.000Z"  # rounding carries


def test_line_format() -> None:
    line = event().to_json_line()
    assert line == (
        b'{"ts":"2026-02-21T10:49:12.345Z","user":"alice","role":"readWrite","cmd":"insert",'
        b'"collection":"users","target":null,"result":"ok","detail":"","peer":"1.2.3.4:5"}\n'
    )
    named = event(cmd="create_user", collection=None, target={"username": "bob", "role": "read"}).to_json_line()
    assert b'"collection":null,"target":{"username":"bob","role":"read"},"result"' in named
    odd = event(user=None, role=None, collection=None, detail='quote " and \n newline').to_json_line()
    assert odd.count(b"\n") == 1
    assert json.loads(odd)["detail"] == 'quote " and \n newline'


def test_auditor_builds_events() -> None:
    clock = Clock()
    clock.advance(T0)
    got: list[AuditEvent] = []

    class Sink:
        def record(self, e: AuditEvent) -> None:
            got.append(e)

    auditor = Auditor(clock, [Sink(), Sink()])
    session = Session(peer="9.9.9.9:1", user="bob", role=Role.READ)
    auditor.record_command(session, "find", "c", "denied", "permission denied")
    auditor.record_login(Session(peer="9.9.9.9:2"), "auth_simple", "eve", None, "denied", "authentication failed")
    assert got[0] == AuditEvent(T0, "bob", "read", "find", "c", "denied", "permission denied", "9.9.9.9:1")
    assert got[1] == got[0]  # both sinks got it
    assert got[2] == AuditEvent(T0, "eve", None, "auth_simple", None, "denied", "authentication failed", "9.9.9.9:2")


# --- settings -------------------------------------------------------------------


def test_settings_defaults() -> None:
    settings = parse_audit_settings({})
    assert settings == AuditSettings()
    assert settings.startup_line() == "audit logging: enabled (rotation: unbounded)"


@pytest.mark.parametrize("value, on", [("true", True), ("1", True), ("True", False), ("on", False)])
def test_audit_switch(value: str, on: bool) -> None:
    assert parse_audit_settings({"OXIDB_AUDIT": value}).enabled is on


def test_settings_values() -> None:
    settings = parse_audit_settings(
        {
            "OXIDB_AUDIT": "1",
            "OXIDB_AUDIT_MAX_BYTES": "1048576",
            "OXIDB_AUDIT_MAX_AGE_SECS": "3600",
            "OXIDB_AUDIT_CALENDAR": "Daily-UTC",
            "OXIDB_AUDIT_COMPRESS": "YES",
        }
    )
    assert settings.rotation == AuditRotation(1048576, 3600, Calendar.DAILY, True)
    assert settings.startup_line() == (
        "audit logging: enabled (rotation: size=1048576B, age=3600s, calendar=DailyUtc, compress=gzip)"
    )


@pytest.mark.parametrize(
    "text, calendar",
    [("hourly", Calendar.HOURLY), ("HOURLYUTC", Calendar.HOURLY), ("hourly-utc", Calendar.HOURLY),
     ("daily", Calendar.DAILY), ("dailyutc", Calendar.DAILY), ("none", Calendar.NONE), ("", Calendar.NONE)],
)  # fmt: skip
def test_calendar_spellings(text: str, calendar: Calendar) -> None:
    assert parse_audit_settings({"OXIDB_AUDIT_CALENDAR": text}).rotation.calendar is calendar


@pytest.mark.parametrize(
    "env, message",
    [
        ({"OXIDB_AUDIT_MAX_BYTES": "1k"}, "OXIDB_AUDIT_MAX_BYTES must be a valid u64"),
        ({"OXIDB_AUDIT_MAX_BYTES": "-1"}, "OXIDB_AUDIT_MAX_BYTES must be a valid u64"),
        ({"OXIDB_AUDIT_MAX_AGE_SECS": "1.5"}, "OXIDB_AUDIT_MAX_AGE_SECS must be a valid u64"),
        (
            {"OXIDB_AUDIT_CALENDAR": "weekly"},
            "OXIDB_AUDIT_CALENDAR must be 'hourly' / 'daily' / 'none', got \"weekly\"",
        ),
        (
            {"OXIDB_AUDIT_COMPRESS": "maybe"},
            'OXIDB_AUDIT_COMPRESS must be a bool-shaped value (true/false/1/0/yes/no/on/off), got "maybe"',
        ),
    ],
)
def test_settings_errors(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_audit_settings(env)
    assert str(e.value) == message


def test_rotation_triggers() -> None:
    assert not AuditRotation().due(10**12, 0, 10**9)
    assert AuditRotation(max_bytes=100).due(100, 0, 0)
    assert not AuditRotation(max_bytes=100).due(99, 0, 0)
    assert AuditRotation(max_age=60).due(0, 1000, 1060)
    assert not AuditRotation(max_age=60).due(0, 1000, 1059.9)
    hourly = AuditRotation(calendar=Calendar.HOURLY)
    assert not hourly.due(0, 3600 * 5, 3600 * 6 - 0.001)
    assert hourly.due(0, 3600 * 6 - 0.001, 3600 * 6)
    daily = AuditRotation(calendar=Calendar.DAILY)
    assert not daily.due(0, 86400 * 3 + 1, 86400 * 4 - 1)
    assert daily.due(0, 86400 * 4 - 1, 86400 * 4)


# --- the file -------------------------------------------------------------------


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def test_file_append_and_mode(tmp_path: Path) -> None:
    directory = tmp_path / "_audit"
    audit = AuditFile(directory, AuditRotation(), T0)
    audit.write([event(1).to_json_line(), event(2).to_json_line()], T0)
    audit.close()
    audit = AuditFile(directory, AuditRotation(), T0)  # a restart appends
    audit.write([event(3).to_json_line()], T0)
    audit.close()
    path = directory / "audit.log"
    assert [line["detail"] for line in lines(path)] == ["event 1", "event 2", "event 3"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_size_rotation(tmp_path: Path) -> None:
    one = len(event(1).to_json_line())
    audit = AuditFile(tmp_path, AuditRotation(max_bytes=2 * one), T0)
    audit.write([event(1).to_json_line()], T0)
    assert os.listdir(tmp_path) == ["audit.log"]
    audit.write([event(2).to_json_line()], T0 + 1)
    audit.write([event(3).to_json_line()], T0 + 2)
    audit.close()
    rotated = tmp_path / f"audit.log.{int((T0 + 1) * 1_000_000)}"
    assert sorted(os.listdir(tmp_path)) == ["audit.log", rotated.name]
    assert [line["detail"] for line in lines(rotated)] == ["event 1", "event 2"]
    assert [line["detail"] for line in lines(tmp_path / "audit.log")] == ["event 3"]


def test_age_and_calendar_rotation(tmp_path: Path) -> None:
    start = 86400 * 100 + 3600 * 23 + 3000  # 23:50 UTC
    audit = AuditFile(tmp_path, AuditRotation(max_age=300, calendar=Calendar.DAILY), start)
    audit.write([event(1).to_json_line()], start + 200)  # no trigger
    audit.write([event(2).to_json_line()], start + 300)  # age
    audit.write([event(3).to_json_line()], start + 500)  # 23:58:20, young file
    audit.write([event(4).to_json_line()], start + 700)  # 00:01:40 next day: calendar
    audit.close()
    assert len(os.listdir(tmp_path)) == 3
    assert [line["detail"] for line in lines(tmp_path / "audit.log")] == []


def test_compressed_rotation(tmp_path: Path) -> None:
    audit = AuditFile(tmp_path, AuditRotation(max_bytes=1, compress=True), T0)
    audit.write([event(1).to_json_line()], T0)
    audit.close()
    [packed] = [name for name in os.listdir(tmp_path) if name != "audit.log"]
    assert packed == f"audit.log.{int(T0 * 1_000_000)}.gz"
    assert gzip.decompress((tmp_path / packed).read_bytes()) == event(1).to_json_line()


def test_rotation_names_never_collide(tmp_path: Path) -> None:
    audit = AuditFile(tmp_path, AuditRotation(max_bytes=1), T0)
    audit.write([event(1).to_json_line()], T0)
    audit.write([event(2).to_json_line()], T0)
    audit.close()
    assert len(os.listdir(tmp_path)) == 3


# --- the sink -------------------------------------------------------------------


class FakeReactor:
    def callFromThread(self, f: Any, *args: Any) -> None:
        f(*args)


def test_audit_log_is_a_sink(tmp_path: Path) -> None:
    from zope.interface.verify import verifyObject

    assert verifyObject(IAuditSink, AuditLog(tmp_path, AuditRotation(), FakeReactor()))


def test_full_queue_drops_and_counts(tmp_path: Path) -> None:
    sink = AuditLog(tmp_path, AuditRotation(), FakeReactor(), max_pending=2)
    for n in range(5):
        sink.record(event(n))  # no writer thread: the queue fills up
    assert sink.dropped == 3


@pytest_twisted.ensureDeferred
async def test_writer_thread_writes_everything_before_stop(tmp_path: Path) -> None:
    from twisted.internet import reactor

    sink = AuditLog(tmp_path, AuditRotation(max_bytes=4000), reactor)
    sink.start()
    for n in range(1, 201):
        sink.record(event(n))
    await sink.stop()
    files = sorted(tmp_path.iterdir(), key=lambda p: (p.name == "audit.log", p.name))
    assert len(files) > 1  # it rotated on the way
    details = [line["detail"] for path in files for line in lines(path)]
    assert details == [f"event {n}" for n in range(1, 201)]


@pytest_twisted.ensureDeferred
async def test_failing_fsync_does_not_stop_the_writer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from twisted.internet import reactor
    from twisted.logger import globalLogPublisher

    failures: list[dict[str, Any]] = []
    observer = failures.append
    globalLogPublisher.addObserver(observer)

    def broken_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    try:
        sink = AuditLog(tmp_path, AuditRotation(), reactor, sync_interval=0.05)
        sink.start()
        monkeypatch.setattr("oxidb.audit.log.os.fsync", broken_fsync)
        for n in range(1, 4):
            sink.record(event(n))
        await sink.stop()
    finally:
        globalLogPublisher.removeObserver(observer)
    assert [line["detail"] for line in lines(tmp_path / "audit.log")] == ["event 1", "event 2", "event 3"]
    assert any("log_failure" in e and e.get("log_namespace", "").startswith("oxidb.audit.log") for e in failures)
