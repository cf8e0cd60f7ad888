"""
GELF output (oxidb.audit.gelf, oxidb.audit.gelf_udp): settings, fields,
chunking, compression, truncation, and a real UDP round trip on 127.0.0.1.
"""

from __future__ import annotations

import gzip
import json
import random
import socket
import zlib
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger, LogLevel, LogPublisher
from twisted.python.failure import Failure

from oxidb.audit.events import AuditEvent
from oxidb.audit.gelf import (
    HEADER_LENGTH,
    MAGIC,
    MAX_CHUNKS,
    GelfEncoder,
    GelfSettings,
    audit_event_fields,
    log_event_fields,
    parse_gelf_settings,
)
from oxidb.audit.gelf_udp import GelfSender, resolve_gelf_address
from oxidb.errors import ConfigError

AUDIT = AuditEvent(1771670952.345, "alice", "read", "find", "users", "denied", "permission denied", "1.2.3.4:5")


# --- settings -------------------------------------------------------------------


def test_settings() -> None:
    assert parse_gelf_settings({}) is None
    assert parse_gelf_settings({"OXIDB_GELF_ADDR": ""}) is None
    assert parse_gelf_settings({"OXIDB_GELF_ADDR": "graylog:12201"}) == GelfSettings("graylog", 12201)
    assert parse_gelf_settings(
        {
            "OXIDB_GELF_ADDR": "[::1]:12201",
            "HOSTNAME": "db7",
            "OXIDB_GELF_COMPRESS": "GZIP",
            "OXIDB_GELF_CHUNK_SIZE": "8192",
        }
    ) == GelfSettings("::1", 12201, "db7", "gzip", 8192)


@pytest.mark.parametrize("addr", ["graylog", "graylog:", ":12201", "graylog:0", "graylog:65536", "h:12x"])
def test_bad_address(addr: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_gelf_settings({"OXIDB_GELF_ADDR": addr})
    assert str(e.value) == f'OXIDB_GELF_ADDR must be host:port, got "{addr}"'


def test_bad_compression_and_chunk_size() -> None:
    with pytest.raises(ConfigError, match="OXIDB_GELF_COMPRESS must be 'none' / 'zlib' / 'gzip', got \"lz4\""):
        parse_gelf_settings({"OXIDB_GELF_ADDR": "h:1", "OXIDB_GELF_COMPRESS": "lz4"})
    for size in ("511", "65508", "big"):
        with pytest.raises(
            ConfigError, match=f'OXIDB_GELF_CHUNK_SIZE must be an integer from 512 to 65507, got "{size}"'
        ):
            parse_gelf_settings({"OXIDB_GELF_ADDR": "h:1", "OXIDB_GELF_CHUNK_SIZE": size})


def test_unresolvable_host() -> None:
    with pytest.raises(ConfigError, match="^failed to create GELF logger: "):
        resolve_gelf_address(GelfSettings("no-such-host.invalid", 12201))
    assert resolve_gelf_address(GelfSettings("127.0.0.1", 12201)) == ("127.0.0.1", 12201)


# --- fields ---------------------------------------------------------------------


def test_audit_fields() -> None:
    assert audit_event_fields(AUDIT, "db7") == {
        "version": "1.1",
        "host": "db7",
        "short_message": "audit: alice find denied",
        "timestamp": 1771670952.345,
        "level": 4,
        "_type": "audit",
        "_cmd": "find",
        "_result": "denied",
        "_peer": "1.2.3.4:5",
        "_user": "alice",
        "_role": "read",
        "_collection": "users",
        "_detail": "permission denied",
    }


def test_log_fields() -> None:
    event = {
        "log_format": "client connected: {peer}",
        "log_level": LogLevel.info,
        "log_namespace": "oxidb.server",
        "log_time": 1000.5,
        "peer": "1.2.3.4:5",
        "count": 3,
        "flag": True,
        "id": "reserved",
        "bad name!": "x",
        "obj": object(),
    }
    assert log_event_fields(event, "h") == {
        "version": "1.1",
        "host": "h",
        "short_message": "client connected: 1.2.3.4:5",
        "timestamp": 1000.5,
        "level": 6,
        "_namespace": "oxidb.server",
        "_peer": "1.2.3.4:5",
        "_count": 3,
        "_flag": 1,
    }


def test_log_levels_and_failures() -> None:
    try:
        raise ZeroDivisionError("division by zero")
    except ZeroDivisionError:
        failure = Failure()
    fields = log_event_fields({"log_format": "boom", "log_level": LogLevel.critical, "log_failure": failure}, "h")
    assert fields is not None and fields["level"] == 2
    assert "ZeroDivisionError" in fields["full_message"]
    for level, number in [(LogLevel.error, 3), (LogLevel.warn, 4), (LogLevel.info, 6)]:
        fields = log_event_fields({"log_format": "x", "log_level": level}, "h")
        assert fields is not None and fields["level"] == number
    # Debug events (one per connection) stay local.
    assert log_event_fields({"log_format": "x", "log_level": LogLevel.debug}, "h") is None


def test_stdio_text_never_leaves() -> None:
    """The first-start banner is written to stderr; stdio events are not sent."""
    event = {"log_io": "  password: secret", "log_namespace": "stderr", "log_level": LogLevel.error}
    assert log_event_fields(event, "h") is None


# --- encoding -------------------------------------------------------------------


def reassemble(datagrams: list[bytes]) -> bytes:
    if not datagrams[0].startswith(MAGIC):
        assert len(datagrams) == 1
        return datagrams[0]
    ids = {d[2:10] for d in datagrams}
    assert len(ids) == 1
    counts = {d[11] for d in datagrams}
    assert counts == {len(datagrams)} and len(datagrams) <= MAX_CHUNKS
    ordered = sorted(datagrams, key=lambda d: d[10])
    assert [d[10] for d in ordered] == list(range(len(datagrams)))
    return b"".join(d[HEADER_LENGTH:] for d in ordered)


def unpack(payload: bytes) -> Any:
    if payload[:2] == b"\x1f\x8b":
        payload = gzip.decompress(payload)
    elif payload[:1] == b"\x78":
        payload = zlib.decompress(payload)
    return json.loads(payload)


def message(size: int) -> dict[str, Any]:
    text = random.Random(size).randbytes(size // 2).hex()
    return {"version": "1.1", "host": "h", "short_message": "big", "full_message": text, "level": 6}


def test_small_message_is_one_plain_datagram() -> None:
    [datagram] = GelfEncoder("none", 1420, random.Random(0)).encode(message(100))
    assert json.loads(datagram) == message(100)


@pytest.mark.parametrize("compress", ["none", "zlib", "gzip"])
def test_large_message_is_chunked(compress: str) -> None:
    encoder = GelfEncoder(compress, 1420, random.Random(0))
    big = message(100_000)
    datagrams = encoder.encode(big)
    assert len(datagrams) > 1 and all(len(d) <= 1420 for d in datagrams)
    assert unpack(reassemble(datagrams)) == big
    assert encoder.truncated == encoder.dropped == 0


def test_message_ids_differ() -> None:
    encoder = GelfEncoder("none", 600, random.Random(0))
    first, second = encoder.encode(message(5000)), encoder.encode(message(5000))
    assert first[0][2:10] != second[0][2:10]


def test_too_large_message_is_truncated() -> None:
    encoder = GelfEncoder("none", 600, random.Random(0))
    huge = message(200_000)  # > 128 * 588 bytes
    datagrams = encoder.encode(huge)
    assert len(datagrams) <= MAX_CHUNKS
    got = unpack(reassemble(datagrams))
    assert got["_truncated"] == "true" and huge["full_message"].startswith(got["full_message"])
    assert got["short_message"] == "big"
    assert (encoder.truncated, encoder.dropped) == (1, 0)


def test_message_that_cannot_fit_is_dropped() -> None:
    encoder = GelfEncoder("none", 512, random.Random(0))
    many_fields = {f"_f{i}": "x" * 60 for i in range(2000)}
    assert encoder.encode({"version": "1.1", "host": "h", "short_message": "m", **many_fields}) == []
    assert (encoder.truncated, encoder.dropped) == (0, 1)


# --- over a real UDP socket ------------------------------------------------------


class Collector(DatagramProtocol):
    """Reassembles GELF messages; fires C{wanted} when it has C{count}."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.partial: dict[bytes, list[bytes]] = {}
        self.messages: list[Any] = []
        self.wanted: Deferred[list[Any]] = Deferred()

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        if datagram.startswith(MAGIC):
            chunks = self.partial.setdefault(datagram[2:10], [])
            chunks.append(datagram)
            if len(chunks) < datagram[11]:
                return
            datagram = reassemble(chunks)
        self.messages.append(unpack(datagram))
        if len(self.messages) == self.count and not self.wanted.called:
            self.wanted.callback(self.messages)


@pytest.mark.timeout(30)
@pytest_twisted.ensureDeferred
async def test_udp_round_trip() -> None:
    from twisted.internet import reactor

    collector = Collector(3)
    port = reactor.listenUDP(0, collector, interface="127.0.0.1")
    port.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    settings = GelfSettings("127.0.0.1", port.getHost().port, "db7", "zlib", 1024)
    sender = GelfSender(reactor, settings, resolve_gelf_address(settings), GelfEncoder("zlib", 1024, random.Random(1)))
    sender.start()
    try:
        publisher = LogPublisher(sender.observer())
        log = Logger(namespace="oxidb.test", observer=publisher)
        log.debug("debug only: {peer}", peer="9.9.9.9:1")
        log.info("client connected: {peer}", peer="9.9.9.9:1")
        publisher({"log_io": "  password: hunter2", "log_namespace": "stderr", "log_level": LogLevel.error})
        big = random.Random(5).randbytes(40_000).hex()  # about 40 chunks
        log.warn("large: {blob}", blob=big)
        sender.record(AUDIT)
        messages = await collector.wanted
    finally:
        await sender.stop()
        port.stopListening()
    by_text = {m["short_message"][:20]: m for m in messages}
    connected = by_text["client connected: 9."]
    assert connected["_peer"] == "9.9.9.9:1" and connected["host"] == "db7" and connected["level"] == 6
    assert by_text["large: " + big[:13]]["_blob"] == big  # chunked, not lost
    assert by_text["audit: alice find de"]["_type"] == "audit"
    assert not any("hunter2" in json.dumps(m) for m in messages)
    assert not any(m["short_message"].startswith("debug only") for m in messages)
