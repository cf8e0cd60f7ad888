"""
End to end: the official client's blob methods against a real server
process, and a backup taken while another connection keeps writing,
restored and served by a second server process.

Pending: not collected (its name does not start with C{test_}) until
L{oxidb.service.OxiService} registers the blob operations with
C{oxidb.engine.blobs.register_appliers(self.engine)}; then rename it to
C{tests/test_blobs_e2e.py}. It passes against a tree with that one line.
"""

from __future__ import annotations

import os
import threading
import zlib
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest

from oxidb._harness import ServerProcess


@pytest.fixture
def server(tmp_path: Any) -> Iterator[ServerProcess]:
    process = ServerProcess(str(tmp_path / "data")).start()
    yield process
    if process.process.poll() is None:
        process.kill()


@pytest.fixture
def client(server: ServerProcess, official_client: ModuleType) -> Iterator[Any]:
    client = official_client.OxiDbClient("127.0.0.1", server.port, timeout=30)
    yield client
    client.close()


@pytest.mark.slow
def test_official_client_blob_methods(client: Any, official_client: ModuleType) -> None:
    assert client.create_bucket("docs") == "bucket created"
    assert client.list_buckets() == ["docs"]
    data = "Ünïcode lighthouse notes\n".encode() * 100
    record = client.put_object("docs", "notes/a.txt", data, "text/plain", {"author": "ann", "skip": 1})
    assert record["etag"] == format(zlib.crc32(data), "08x")
    assert record["metadata"] == {"author": "ann"}
    assert len(record["created_at"]) == 20 and record["created_at"].endswith("Z")
    binary = bytes(range(256)) * 4
    client.put_object("docs", "img/b.bin", binary)
    assert client.get_object("docs", "notes/a.txt") == (data, record)
    assert client.get_object("docs", "img/b.bin")[0] == binary
    assert client.head_object("docs", "notes/a.txt") == record
    assert [r["key"] for r in client.list_objects("docs")] == ["img/b.bin", "notes/a.txt"]
    assert [r["key"] for r in client.list_objects("docs", prefix="notes/")] == ["notes/a.txt"]
    assert [r["key"] for r in client.list_objects("docs", limit=1)] == ["img/b.bin"]
    hits = client.search("lighthouse")
    assert [(h["bucket"], h["key"]) for h in hits] == [("docs", "notes/a.txt")]
    assert client.search("ann", bucket="docs")[0]["key"] == "notes/a.txt"  # metadata is searchable
    assert client.search("lighthouse", bucket="other") == []
    assert client.extract_text("docs", "notes/a.txt") == data.decode()
    with pytest.raises(official_client.OxiDbError, match="^could not extract text from this file type$"):
        client.extract_text("docs", "img/b.bin")
    assert client.delete_object("docs", "notes/a.txt") == "object deleted"
    assert client.search("lighthouse") == []
    with pytest.raises(official_client.OxiDbError, match="^blob not found: docs/notes/a.txt$"):
        client.get_object("docs", "notes/a.txt")
    with pytest.raises(official_client.OxiDbError, match="^bucket not found: nope$"):
        client.list_objects("nope")
    with pytest.raises(official_client.OxiDbError, match="^invalid query: invalid bucket name: ../up$"):
        client.put_object("../up", "k", b"x")
    assert client.delete_bucket("docs") == "bucket deleted"
    assert client.list_buckets() == []


@pytest.mark.slow
def test_large_object_round_trip(client: Any) -> None:
    data = os.urandom(8 * 1024 * 1024)
    record = client.put_object("big", "blob", data)
    assert record["size"] == len(data)
    assert client.get_object("big", "blob")[0] == data


@pytest.mark.slow
def test_backup_of_a_busy_server_restores_and_serves(
    server: ServerProcess, client: Any, official_client: ModuleType, tmp_path: Any
) -> None:
    client.create_unique_index("load", "n")
    acked: list[tuple[int, int]] = []
    acked_blobs: list[tuple[str, str]] = []
    stop = threading.Event()
    failures: list[BaseException] = []

    def load() -> None:
        writer = official_client.OxiDbClient("127.0.0.1", server.port, timeout=30)
        n = 0
        try:
            while not stop.is_set():
                n += 1
                acked.append((n, writer.insert("load", {"n": n})["id"]))
                if n % 10 == 0:
                    record = writer.put_object("live", f"o{n}", f"word{n}".encode(), "text/plain")
                    acked_blobs.append((record["key"], record["etag"]))
        except BaseException as e:  # noqa: BLE001 - reported below
            failures.append(e)
        finally:
            writer.close()

    thread = threading.Thread(target=load)
    thread.start()
    try:
        while len(acked) < 100:
            assert thread.is_alive(), failures
            stop.wait(0.005)
        docs_before, blobs_before = list(acked), list(acked_blobs)
        path = str(tmp_path / "busy.tar.gz")
        reply = client._checked({"cmd": "backup", "path": path})
        assert reply["path"] == path and reply["size_bytes"] == os.path.getsize(path)
        assert reply["collections"] >= 1
    finally:
        stop.set()
        thread.join(60)
    assert not failures
    target = str(tmp_path / "restored")
    reply = client._checked({"cmd": "restore", "archive": path, "target": target})
    assert reply["message"] == "restore complete; restart server with this data directory to use"
    copy = ServerProcess(target).start()
    try:
        other = official_client.OxiDbClient("127.0.0.1", copy.port, timeout=30)
        try:
            docs = other.find("load")
            by_n = {d["n"]: d["_id"] for d in docs}
            for n, doc_id in docs_before:
                assert by_n.get(n) == doc_id
            assert sorted(by_n) == list(range(1, len(docs) + 1))
            assert other.count("load") == len(docs)
            assert other.insert("load", {"n": 0})["id"] == len(docs) + 1
            with pytest.raises(official_client.OxiDbError, match="unique constraint violated"):
                other.insert("load", {"n": 1})
            for key, etag in blobs_before:
                assert other.head_object("live", key)["etag"] == etag
                assert [h["key"] for h in other.search(f"word{key[1:]}")] == [key]
        finally:
            other.close()
    finally:
        copy.stop()
