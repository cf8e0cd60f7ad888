"""
Log output for operators: the JSON log's shape, debug events dropped under
twistd unless verbose (health checks' connections), and the startup lines.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogEvent, LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure

from oxidb import logs
from oxidb.config import Config
from oxidb.logs import Logger, event_as_json, json_observer, set_minimum_level
from oxidb.metrics import NodeHealth, ServerMetrics, make_metrics_site
from oxidb.service import OxiService
from oxidb.tap import makeService
from oxidb.testing import MemoryServer


@pytest.fixture
def events() -> Iterator[list[LogEvent]]:
    seen: list[LogEvent] = []
    globalLogPublisher.addObserver(seen.append)
    yield seen
    globalLogPublisher.removeObserver(seen.append)


@pytest.fixture(autouse=True)
def all_levels() -> Iterator[None]:
    yield
    set_minimum_level(None)


# --- the JSON log ---------------------------------------------------------------------


def test_one_flat_object_per_event_with_the_rendered_message(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    observer = json_observer()
    log = Logger(namespace="oxidb.test", observer=observer)
    log.warn("user {user} at {peer} failed {count} times", user="eve\nforged", peer=("1.2.3.4", 5), count=3)
    log.info("{message} in {namespace}", message="a field named message", namespace="a field named namespace")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["level"] == "warn" and first["namespace"] == "oxidb.test"
    assert first["message"] == "user eve\\nforged at ('1.2.3.4', 5) failed 3 times"
    assert first["user"] == "eve\\nforged" and first["count"] == 3 and first["peer"] == ["1.2.3.4", 5]
    assert first["time"].endswith("Z") and first["time"][:2] == "20"
    assert not any(key.startswith("log_") for key in first)
    # Fields named like the object's own keys keep their value under a prefix.
    assert second["message"] == "a field named message in a field named namespace"
    assert second["field_message"] == "a field named message" and second["namespace"] == "oxidb.test"
    assert second["field_namespace"] == "a field named namespace" and second["level"] == "info"


def test_failures_and_values_json_cannot_hold() -> None:
    try:
        raise ZeroDivisionError("boom")
    except ZeroDivisionError:
        failure = Failure()
    event = {
        "log_format": "boom {thing}",
        "log_level": LogLevel.error,
        "log_namespace": "n",
        "log_time": 0.25,
        "log_failure": failure,
        "thing": object(),
        "nan": float("nan"),
        "keys": {1: "x"},
    }
    out = event_as_json(event)
    assert out["time"] == "1970-01-01T00:00:00.250Z" and out["level"] == "error"
    assert "ZeroDivisionError" in out["failure"]
    assert out["thing"].startswith("<object object") and out["nan"] == "nan" and out["keys"] == "{1: 'x'}"
    json.dumps(out)


def test_legacy_events_are_rendered_without_their_bookkeeping() -> None:
    from twisted.python import log as legacy

    seen: list[LogEvent] = []
    globalLogPublisher.addObserver(seen.append)
    try:
        legacy.msg("old style", "message")
    finally:
        globalLogPublisher.removeObserver(seen.append)
    out = event_as_json(seen[-1])
    assert out["message"] == "old style message" and out["level"] == "info"
    assert set(out) == {"time", "level", "namespace", "message"}


# --- debug events --------------------------------------------------------------------------


def test_the_minimum_level_drops_debug_events(events: list[LogEvent]) -> None:
    log = Logger(namespace="oxidb.test")
    set_minimum_level(LogLevel.info)
    log.debug("hidden")
    log.info("shown")
    set_minimum_level(None)
    log.debug("shown again")
    assert [formatEvent(e) for e in events if e.get("log_namespace") == "oxidb.test"] == ["shown", "shown again"]


def test_a_connection_without_a_frame_logs_only_at_debug(tmp_path: Path, events: list[LogEvent]) -> None:
    server = MemoryServer(Config(data_dir=str(tmp_path)))
    client, pump = server.connect()
    client.transport.loseConnection()
    pump.flush()
    ours = [e for e in events if str(e.get("log_namespace", "")).startswith("oxidb.server")]
    assert [formatEvent(e).split(":")[0] for e in ours] == ["client connected", "client disconnected"]
    assert {e["log_level"] for e in ours} == {LogLevel.debug}


def test_health_checks_write_no_log_lines(events: list[LogEvent]) -> None:
    reactor = MemoryReactorClock()
    health = NodeHealth(lambda: True, raft=lambda: None)
    site = make_metrics_site(ServerMetrics(reactor, ["ping"]), health, reactor, None)
    site.startFactory()
    before = len(events)
    for _ in range(3):
        protocol = site.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert transport.value().startswith(b"HTTP/1.1 200")
        protocol.connectionLost(Failure(ConnectionError()))
    assert [e for e in events[before:] if e.get("log_level") != LogLevel.debug] == []


@pytest.mark.parametrize("verbose, minimum", [("false", LogLevel.info), ("true", None)])
def test_twistd_keeps_debug_events_only_when_verbose(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, verbose: str, minimum: LogLevel | None
) -> None:
    monkeypatch.setattr(os, "environ", {"OXIDB_DATA": str(tmp_path), "OXIDB_VERBOSE": verbose})
    makeService({}, reactor=MemoryReactorClock())
    assert logs._minimum is minimum


# --- startup lines ----------------------------------------------------------------------


def started(environ: dict[str, str]) -> OxiService:
    service: OxiService = makeService({}, environ=environ, reactor=MemoryReactorClock())
    service.startService()
    service.engine.close()
    service.threadpool.stop()
    service.datadir_lock.release()
    return service


def line(events: list[LogEvent], prefix: str) -> str:
    found = [formatEvent(e) for e in events if formatEvent(e).startswith(prefix)]
    assert len(found) == 1, found
    return found[0]


def test_startup_lines_say_where_and_how_to_connect(tmp_path: Path, events: list[LogEvent]) -> None:
    started({"OXIDB_DATA": str(tmp_path / "a"), "OXIDB_ADDR": "127.0.0.1:4444"})
    listening = line(events, "oxidb-server listening on")
    assert f"data_dir={tmp_path / 'a'}" in listening
    # The memory reactor reports its ports as bound to 0.0.0.0: a wildcard becomes loopback in the URL.
    assert line(events, "oxidb-server ready") == (
        "oxidb-server ready: auth off, TLS off, standalone; connect with: oxidb-cli --url oxidb://127.0.0.1:4444"
    )
    events.clear()
    started({"OXIDB_DATA": str(tmp_path / "b"), "OXIDB_ADDR": "127.0.0.1:4444", "OXIDB_AUTH": "true",
             "OXIDB_ADMIN_PASSWORD": "pw"})  # fmt: skip
    assert line(events, "oxidb-server ready") == (
        "oxidb-server ready: auth on, TLS off, standalone; connect with: oxidb-cli --url oxidb://admin@127.0.0.1:4444"
    )


def test_the_connect_url_of_other_addresses(tmp_path: Path) -> None:
    service = OxiService(Config(data_dir=str(tmp_path)), MemoryReactorClock())

    class Port:
        def __init__(self, host: str) -> None:
            self.host, self.port = host, 4444

        def getHost(self) -> Any:
            return self

    for host, url in [("::", "oxidb://[::1]:4444"), ("10.0.0.5", "oxidb://10.0.0.5:4444")]:
        service.port = Port(host)
        assert service.connect_url() == url
    service.tls_options = object()
    assert service.connect_url() == "oxidb://10.0.0.5:4444?tls=true"
