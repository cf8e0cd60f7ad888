"""
GELF end to end: a real server process sends its log and audit events to a
UDP collector on loopback; chunked messages are reassembled here.
"""

from __future__ import annotations

import gzip
import json
import socket
import time
import zlib
from pathlib import Path
from typing import Any

from scramp import ScramClient

from oxidb._harness import ServerProcess

MAGIC = b"\x1e\x0f"


class Collector:
    """A GELF UDP receiver that reassembles chunks and decompresses."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.partial: dict[bytes, dict[int, bytes]] = {}
        self.messages: list[dict[str, Any]] = []

    def _complete(self, payload: bytes) -> None:
        if payload[:2] == b"\x1f\x8b":
            payload = gzip.decompress(payload)
        elif payload[:1] == b"\x78":
            payload = zlib.decompress(payload)
        self.messages.append(json.loads(payload))

    def receive_until(self, predicate: Any, timeout: float = 15.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(predicate(m) for m in self.messages):
                return self.messages
            try:
                datagram = self.sock.recv(65535)
            except TimeoutError:
                continue
            if datagram[:2] == MAGIC:
                message_id, seq, count = datagram[2:10], datagram[10], datagram[11]
                parts = self.partial.setdefault(message_id, {})
                parts[seq] = datagram[12:]
                if len(parts) == count:
                    del self.partial[message_id]
                    self._complete(b"".join(parts[i] for i in range(count)))
            else:
                self._complete(datagram)
        raise AssertionError(f"no matching GELF message; got {self.messages}")


def test_server_and_audit_events_reach_the_collector(tmp_path: Any) -> None:
    collector = Collector()
    process = ServerProcess(
        str(tmp_path / "data"),
        env={
            "OXIDB_GELF_ADDR": f"127.0.0.1:{collector.port}",
            "OXIDB_GELF_COMPRESS": "gzip",
            "OXIDB_GELF_CHUNK_SIZE": "512",
            "OXIDB_AUDIT": "true",
            "OXIDB_AUTH": "true",
        },
    ).start()
    try:
        password = Path(process.data_dir, "initial-admin-password").read_text().strip()
        client = process.client()
        scram = ScramClient(["SCRAM-SHA-256"], "admin", password)
        first = client.request({"cmd": "authenticate", "payload": scram.get_client_first()})
        scram.set_server_first(first["data"]["payload"])
        assert client.request({"cmd": "authenticate_continue", "payload": scram.get_client_final()})["ok"]
        # A large error detail makes a message that needs several chunks.
        client.request({"cmd": "x" * 3000})
        messages = collector.receive_until(lambda m: m.get("_type") == "audit" and m.get("_cmd") == "x" * 3000)
        assert any("listening on" in m.get("short_message", "") for m in messages)
        assert any(
            m.get("_type") == "audit" and m.get("_cmd") == "authenticate" and m.get("_user") == "admin"
            and m.get("_result") == "ok"
            for m in messages
        )
        big = next(m for m in messages if m.get("_cmd") == "x" * 3000)
        assert big["_result"] == "error" and big["_detail"] == "unknown command: " + "x" * 3000
        for m in messages:
            assert m["version"] == "1.1" and "host" in m and "timestamp" in m
            assert password not in json.dumps(m)
    finally:
        assert process.stop() == 0
