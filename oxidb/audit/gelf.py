"""
GELF 1.1 over UDP, sans-IO: settings, the fields of log and audit events,
and the encoder that turns one message into datagrams (optionally zlib or
gzip compressed, chunked when larger than one datagram).

Chunking follows the GELF spec: each chunk starts with the magic bytes
C{0x1e 0x0f}, an 8-byte message id shared by the chunks, a 1-byte sequence
number and a 1-byte count; at most 128 chunks. A message that would need more
is truncated: the longest text field is halved until it fits, and the
message gets C{_truncated: "true"}. Only if it still cannot fit (hundreds of
short fields) is it dropped. Both outcomes are counted on the encoder
(C{truncated}, C{dropped}); the sender logs them.
"""

from __future__ import annotations

import gzip
import random
import re
import zlib
from collections.abc import Mapping
from typing import Any

import attrs
import orjson
from twisted.logger import LogLevel, formatEvent

from oxidb.audit.events import DENIED, ERROR, AuditEvent
from oxidb.errors import ConfigError

MAGIC = b"\x1e\x0f"
HEADER_LENGTH = 12
MAX_CHUNKS = 128
DEFAULT_CHUNK_SIZE = 1420
MIN_CHUNK_SIZE = 512
MAX_CHUNK_SIZE = 65507
COMPRESSIONS = ("none", "zlib", "gzip")

#: A text field is not cut below this many characters.
_MIN_FIELD_LENGTH = 64
_FIELD_NAME = re.compile(r"[\w.\-]+", re.ASCII)

_SYSLOG_LEVELS = {
    LogLevel.critical: 2,
    LogLevel.error: 3,
    LogLevel.warn: 4,
    LogLevel.info: 6,
    LogLevel.debug: 7,
}


@attrs.frozen
class GelfSettings:
    """
    @ivar host: the collector's host name or address.
    @ivar port: its UDP port.
    @ivar source: the C{host} field of every message (C{$HOSTNAME}, or
        C{oxidb-server}).
    @ivar compress: C{none}, C{zlib} or C{gzip}.
    @ivar chunk_size: the largest datagram sent, header included.
    """

    host: str
    port: int
    source: str = "oxidb-server"
    compress: str = "none"
    chunk_size: int = DEFAULT_CHUNK_SIZE


def parse_gelf_settings(environ: Mapping[str, str]) -> GelfSettings | None:
    """
    C{OXIDB_GELF_ADDR} (C{host:port}, C{[v6]:port}; unset or empty: off),
    C{OXIDB_GELF_COMPRESS} (C{none}/C{zlib}/C{gzip}, default none),
    C{OXIDB_GELF_CHUNK_SIZE} (512 to 65507, default 1420), C{HOSTNAME}.

    @raise ConfigError: a value is invalid.
    """
    addr = environ.get("OXIDB_GELF_ADDR", "")
    if addr == "":
        return None
    host, sep, port_text = addr.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port_text.isascii() or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f'OXIDB_GELF_ADDR must be host:port, got "{addr}"')
    compress_text = environ.get("OXIDB_GELF_COMPRESS", "")
    compress = compress_text.strip().lower() or "none"
    if compress not in COMPRESSIONS:
        raise ConfigError(f"OXIDB_GELF_COMPRESS must be 'none' / 'zlib' / 'gzip', got \"{compress_text}\"")
    size_text = environ.get("OXIDB_GELF_CHUNK_SIZE", "")
    chunk_size = DEFAULT_CHUNK_SIZE
    if size_text != "":
        if not size_text.isascii() or not size_text.isdigit() or not MIN_CHUNK_SIZE <= int(size_text) <= MAX_CHUNK_SIZE:
            raise ConfigError(
                f"OXIDB_GELF_CHUNK_SIZE must be an integer from {MIN_CHUNK_SIZE} to {MAX_CHUNK_SIZE}, "
                f'got "{size_text}"'
            )
        chunk_size = int(size_text)
    source = environ.get("HOSTNAME", "") or "oxidb-server"
    return GelfSettings(host, int(port_text), source, compress, chunk_size)


def log_event_fields(event: Mapping[str, Any], source: str) -> dict[str, Any] | None:
    """
    The GELF message for a C{twisted.logger} event, or None for events that
    must not leave the process: text written to stdout/stderr (C{log_io};
    the first-start password banner goes to stderr), and debug events (one
    per client connection and disconnection: noise a collector should not
    have to store).
    """
    if "log_io" in event or event.get("log_level") is LogLevel.debug:
        return None
    text = formatEvent(dict(event)) or "-"
    fields: dict[str, Any] = {
        "version": "1.1",
        "host": source,
        "short_message": text,
        "timestamp": float(event.get("log_time", 0.0)),
        "level": _SYSLOG_LEVELS.get(event.get("log_level"), 6),
        "_namespace": str(event.get("log_namespace", "")),
    }
    failure = event.get("log_failure")
    if failure is not None:
        fields["full_message"] = failure.getTraceback()
    for key, value in event.items():
        if key.startswith("log_") or key == "id" or not _FIELD_NAME.fullmatch(key):
            continue
        if isinstance(value, bool):
            value = int(value)
        if isinstance(value, (str, int, float)):
            fields["_" + key] = value
    return fields


def audit_event_fields(event: AuditEvent, source: str) -> dict[str, Any]:
    """The GELF message for an audit event (C{_type: "audit"})."""
    level = 4 if event.result == DENIED else 5 if event.result == ERROR else 6
    fields: dict[str, Any] = {
        "version": "1.1",
        "host": source,
        "short_message": f"audit: {event.user or '-'} {event.cmd} {event.result}",
        "timestamp": event.ts,
        "level": level,
        "_type": "audit",
        "_cmd": event.cmd,
        "_result": event.result,
        "_peer": event.peer,
    }
    for key in ("user", "role", "collection", "database", "detail"):
        value = getattr(event, key)
        if value:
            fields["_" + key] = value
    if event.target:
        fields["_target"] = orjson.dumps(event.target).decode()
    return fields


class GelfEncoder:
    """
    One message -> datagrams. See the module docstring.

    @ivar truncated: messages cut to fit into L{MAX_CHUNKS} chunks.
    @ivar dropped: messages that could not be made to fit.
    """

    def __init__(self, compress: str, chunk_size: int, rng: random.Random) -> None:
        if compress not in COMPRESSIONS:
            raise ValueError(f"unknown GELF compression {compress!r}")
        self.compress = compress
        self.chunk_size = chunk_size
        self.rng = rng
        self.truncated = 0
        self.dropped = 0

    @property
    def capacity(self) -> int:
        """The largest (compressed) payload that can be sent."""
        return MAX_CHUNKS * (self.chunk_size - HEADER_LENGTH)

    def pack(self, message: Mapping[str, Any]) -> bytes:
        """The message's payload: JSON, compressed as configured."""
        payload = orjson.dumps(message)
        if self.compress == "zlib":
            return zlib.compress(payload)
        if self.compress == "gzip":
            return gzip.compress(payload, mtime=0)
        return payload

    def encode(self, message: Mapping[str, Any]) -> list[bytes]:
        """The datagrams for C{message}; empty if it was dropped."""
        payload = self.pack(message)
        if len(payload) <= self.capacity:
            return self.chunk(payload)
        shortened = self._truncated(dict(message))
        if shortened is None:
            self.dropped += 1
            return []
        self.truncated += 1
        return self.chunk(shortened)

    def _truncated(self, message: dict[str, Any]) -> bytes | None:
        message["_truncated"] = "true"
        while True:
            texts = [k for k, v in message.items() if isinstance(v, str) and len(v) > _MIN_FIELD_LENGTH]
            if not texts:
                return None
            longest = max(texts, key=lambda k: len(message[k]))
            text = message[longest]
            message[longest] = text[: max(_MIN_FIELD_LENGTH, len(text) // 2)]
            payload = self.pack(message)
            if len(payload) <= self.capacity:
                return payload

    def chunk(self, payload: bytes) -> list[bytes]:
        """Split C{payload} into GELF chunks (or one plain datagram)."""
        if len(payload) <= self.chunk_size:
            return [payload]
        body = self.chunk_size - HEADER_LENGTH
        pieces = [payload[i : i + body] for i in range(0, len(payload), body)]
        if len(pieces) > MAX_CHUNKS:
            raise ValueError(f"payload of {len(payload)} bytes needs more than {MAX_CHUNKS} chunks")
        message_id = self.rng.randbytes(8)
        count = bytes([len(pieces)])
        return [MAGIC + message_id + bytes([seq]) + count + piece for seq, piece in enumerate(pieces)]
