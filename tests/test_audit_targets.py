"""
Audit lines of admin and index operations name their target (the audit
line's C{target} field, from each registry row's C{audit_target}).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from oxidb.audit.events import MAX_TARGET_TEXT, AuditEvent, Auditor, audit_target
from oxidb.audit.gelf import audit_event_fields
from oxidb.commands.auth import USER_COMMANDS
from oxidb.config import Config
from oxidb.engine import procedures, transactions
from oxidb.engine.engine import Engine
from oxidb.testing import MemoryServer


class Sink:
    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    def record(self, event: AuditEvent) -> None:
        self.events.append(event)


@pytest.fixture
def audited(tmp_path: Any) -> Iterator[tuple[MemoryServer, Sink]]:
    engine = Engine(str(tmp_path / "data"), synchronous="OFF")
    transactions.register_appliers(engine)
    procedures.register_appliers(engine)
    with engine:
        sink = Sink()
        # Without auth the user commands fail, but are audited.
        server = MemoryServer(Config(data_dir=engine.data_dir), engine=engine, commands=USER_COMMANDS)
        server.rebuild(audit=Auditor(server.clock, [sink]))
        server.clock.advance(1_700_000_000)
        yield server, sink


def last_target(server: MemoryServer, sink: Sink, request: dict[str, Any]) -> Any:
    server.request(request)
    event = sink.events[-1]
    assert event.cmd == request["cmd"]
    return event.target


def test_admin_operations_name_their_target(audited: tuple[MemoryServer, Sink], tmp_path: Any) -> None:
    server, sink = audited
    steps = [{"step": "return", "value": 1}]
    cases = [
        (
            {"cmd": "create_user", "username": "bob", "password": "pw", "role": "read"},
            {"username": "bob", "role": "read"},
        ),
        ({"cmd": "update_user", "username": "bob", "password": "new"}, {"username": "bob"}),
        ({"cmd": "drop_user", "username": "bob"}, {"username": "bob"}),
        ({"cmd": "create_procedure", "name": "p", "steps": steps}, {"name": "p"}),
        ({"cmd": "call_procedure", "name": "p"}, {"name": "p"}),
        ({"cmd": "create_schedule", "name": "s", "procedure": "p", "every": "1h"}, {"name": "s", "procedure": "p"}),
        ({"cmd": "disable_schedule", "name": "s"}, {"name": "s"}),
        ({"cmd": "delete_schedule", "name": "s"}, {"name": "s"}),
        ({"cmd": "delete_procedure", "name": "p"}, {"name": "p"}),
        ({"cmd": "backup", "path": str(tmp_path / "b.tar.gz")}, {"path": str(tmp_path / "b.tar.gz")}),
        ({"cmd": "restore", "archive": "/a.tgz", "target": "/t"}, {"archive": "/a.tgz", "target": "/t"}),
        ({"cmd": "create_index", "collection": "c", "field": "email"}, {"field": "email"}),
        ({"cmd": "create_unique_index", "collection": "c", "field": "id"}, {"field": "id"}),
        ({"cmd": "create_composite_index", "collection": "c", "fields": ["a", "b"]}, {"fields": ["a", "b"]}),
        ({"cmd": "create_text_index", "collection": "c", "fields": ["body"]}, {"fields": ["body"]}),
        ({"cmd": "drop_index", "collection": "c", "index": "email"}, {"index": "email"}),
    ]
    for request, expected in cases:
        assert last_target(server, sink, request) == expected, request
    assert sink.events[-1].collection == "c"
    for event in sink.events:
        assert "pw" not in event.to_json_line().decode() and "new" not in str(event.target)


def test_plain_commands_have_no_target(audited: tuple[MemoryServer, Sink]) -> None:
    server, sink = audited
    assert last_target(server, sink, {"cmd": "insert", "collection": "c", "doc": {"name": "x"}}) is None
    assert last_target(server, sink, {"cmd": "list_collections"}) is None


def test_target_values_are_bounded() -> None:
    long = "k" * (MAX_TARGET_TEXT + 50)
    target = audit_target({"path": long, "fields": [{"nested": 1}], "n": True, "id": 7}, ("path", "fields", "n", "id"))
    assert target == {"path": "k" * MAX_TARGET_TEXT + "...(cut)", "id": 7}
    assert audit_target({"x": 1}, ()) is None
    assert audit_target("not a dict", ("x",)) is None


def test_gelf_carries_the_target() -> None:
    event = AuditEvent(0.0, "root", "admin", "drop_user", None, "ok", "", "1.2.3.4:5", {"username": "bob"})
    assert audit_event_fields(event, "h")["_target"] == '{"username":"bob"}'


def test_the_target_database_is_worked_out_only_for_an_audit_line(
    audited: tuple[MemoryServer, Sink], tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the audit off (and data names off in the metrics) nothing is built for it per request."""
    from oxidb.server import dispatch

    looked_up: list[Any] = []
    real = dispatch.requested_database

    def spy(session: Any, request: Any) -> str:
        looked_up.append(request.get("cmd"))
        return real(session, request)

    monkeypatch.setattr(dispatch, "requested_database", spy)
    server, sink = audited
    server.request({"cmd": "insert", "collection": "c", "doc": {"a": 1}})
    assert looked_up == ["insert"]
    assert sink.events[-1].database == "oxidb"  # the default database
    quiet = MemoryServer(Config(data_dir=str(tmp_path / "quiet")), engine=server.services.engine)
    assert quiet.request({"cmd": "find", "collection": "c", "query": {}})["ok"] is True
    assert quiet.request({"cmd": "nope"})["ok"] is False
    assert looked_up == ["insert"]
