"""
The blob commands on the wire (server.md 3.2-3.4): reply shapes, upstream's
validation texts, bad input, RBAC rows, through an in-memory server on a real
engine.
"""

from __future__ import annotations

import base64
import zlib
from collections.abc import Iterator
from typing import Any

import pytest

from oxidb.auth.rbac import Role
from oxidb.commands import default_registry
from oxidb.config import Config
from oxidb.engine import blobs
from oxidb.engine.engine import Engine
from oxidb.testing import MemoryServer


@pytest.fixture
def server(tmp_path: Any) -> Iterator[MemoryServer]:
    data_dir = str(tmp_path / "data")
    engine = Engine(data_dir, synchronous="NORMAL")
    blobs.register_appliers(engine)
    with engine:
        server = MemoryServer(Config(data_dir=data_dir), engine=engine)
        server.clock.advance(1_700_000_000)
        yield server


def ok(server: MemoryServer, request: dict[str, Any]) -> Any:
    reply = server.request(request)
    assert reply.get("ok") is True, reply
    return reply["data"]


def error(server: MemoryServer, request: dict[str, Any]) -> str:
    reply = server.request(request)
    assert reply.get("ok") is False, reply
    return str(reply["error"])


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def put(server: MemoryServer, bucket: str, key: str, data: bytes, **extra: Any) -> Any:
    return ok(server, {"cmd": "put_object", "bucket": bucket, "key": key, "data": b64(data), **extra})


# --- replies ------------------------------------------------------------------


def test_bucket_commands(server: MemoryServer) -> None:
    assert ok(server, {"cmd": "create_bucket", "bucket": "photos"}) == "bucket created"
    assert ok(server, {"cmd": "create_bucket", "bucket": "photos"}) == "bucket created"
    assert ok(server, {"cmd": "create_bucket", "bucket": "docs"}) == "bucket created"
    assert ok(server, {"cmd": "list_buckets"}) == ["docs", "photos"]
    assert ok(server, {"cmd": "delete_bucket", "bucket": "photos"}) == "bucket deleted"
    assert ok(server, {"cmd": "list_buckets"}) == ["docs"]
    assert error(server, {"cmd": "delete_bucket", "bucket": "photos"}) == "bucket not found: photos"


def test_object_round_trip(server: MemoryServer) -> None:
    data = bytes(range(256))
    record = put(server, "b", "dir/file.bin", data, content_type="application/x-demo", metadata={"a": "1", "b": 2})
    assert record == {
        "key": "dir/file.bin",
        "bucket": "b",
        "size": 256,
        "content_type": "application/x-demo",
        "etag": format(zlib.crc32(data), "08x"),
        "created_at": "2023-11-14T22:13:20Z",
        "metadata": {"a": "1"},
    }
    assert ok(server, {"cmd": "get_object", "bucket": "b", "key": "dir/file.bin"}) == {
        "content": b64(data),
        "metadata": record,
    }
    assert ok(server, {"cmd": "head_object", "bucket": "b", "key": "dir/file.bin"}) == record
    assert ok(server, {"cmd": "list_objects", "bucket": "b"}) == [record]
    assert ok(server, {"cmd": "delete_object", "bucket": "b", "key": "dir/file.bin"}) == "object deleted"
    assert (
        error(server, {"cmd": "head_object", "bucket": "b", "key": "dir/file.bin"}) == "blob not found: b/dir/file.bin"
    )


def test_created_at_comes_from_the_server_clock(server: MemoryServer) -> None:
    server.clock.advance(3600)
    assert put(server, "b", "k", b"x")["created_at"] == "2023-11-14T23:13:20Z"


def test_list_objects_prefix_limit_and_defaults(server: MemoryServer) -> None:
    for key in ["b/2", "a", "b/1", "c"]:
        put(server, "bk", key, key.encode())
    listed = ok(server, {"cmd": "list_objects", "bucket": "bk"})
    assert [r["key"] for r in listed] == ["a", "b/1", "b/2", "c"]
    assert [r["key"] for r in ok(server, {"cmd": "list_objects", "bucket": "bk", "prefix": "b/"})] == ["b/1", "b/2"]
    assert [r["key"] for r in ok(server, {"cmd": "list_objects", "bucket": "bk", "limit": 1})] == ["a"]
    assert ok(server, {"cmd": "list_objects", "bucket": "bk", "limit": 0}) == []
    # Optional fields of the wrong type are ignored (server.md 3.2).
    for bad in ("3", -1, 1.5, True, None):
        assert len(ok(server, {"cmd": "list_objects", "bucket": "bk", "limit": bad})) == 4
    assert len(ok(server, {"cmd": "list_objects", "bucket": "bk", "prefix": 5})) == 4


def test_list_objects_pages_with_start_after(server: MemoryServer) -> None:
    keys = ["a", "b/1", "b/2", "b/3", "c", "\u00e9"]
    for key in keys:
        put(server, "pg", key, b"x")

    def page(**fields: Any) -> list[str]:
        return [r["key"] for r in ok(server, {"cmd": "list_objects", "bucket": "pg", **fields})]

    # Each page asks for the keys after the last one seen, until a short page.
    seen: list[str] = []
    after: str | None = None
    while True:
        got = page(limit=2, **({} if after is None else {"start_after": after}))
        seen += got
        if len(got) < 2:
            break
        after = got[-1]
    assert seen == keys
    assert page(start_after="b/1") == ["b/2", "b/3", "c", "\u00e9"]
    assert page(start_after="b") == ["b/1", "b/2", "b/3", "c", "\u00e9"]  # not a key: after it all the same
    assert page(prefix="b/", start_after="b/1") == ["b/2", "b/3"]
    assert page(prefix="b/", start_after="a") == ["b/1", "b/2", "b/3"]  # before the prefix: the prefix rules
    assert page(prefix="b/", start_after="b/3") == []
    assert page(start_after="\u00e9") == [] and page(start_after="") == keys
    assert error(server, {"cmd": "list_objects", "bucket": "pg", "start_after": 5}) == "'start_after' must be a string"
    assert error(server, {"cmd": "list_objects", "bucket": "pg", "start_after": ["a"]}) == (
        "'start_after' must be a string"
    )


def test_search_and_extract_text(server: MemoryServer) -> None:
    put(server, "b1", "a.txt", b"the lighthouse keeper", content_type="text/plain")
    put(server, "b2", "b.html", b"<p>a <b>lighthouse</b> at night</p>", content_type="text/html")
    put(server, "b2", "c.bin", b"lighthouse", content_type="application/octet-stream")
    results = ok(server, {"cmd": "search", "query": "lighthouse"})
    assert sorted((r["bucket"], r["key"]) for r in results) == [("b1", "a.txt"), ("b2", "b.html")]
    assert all(isinstance(r["score"], float) for r in results)
    assert [r["key"] for r in ok(server, {"cmd": "search", "query": "lighthouse", "bucket": "b2"})] == ["b.html"]
    assert len(ok(server, {"cmd": "search", "query": "lighthouse", "limit": 1})) == 1
    assert len(ok(server, {"cmd": "search", "query": "lighthouse", "limit": "x"})) == 2
    assert ok(server, {"cmd": "search", "query": "lighthouse", "bucket": 5}) == results  # ignored
    assert ok(server, {"cmd": "extract_text", "bucket": "b2", "key": "b.html"})["text"].split() == [
        "a",
        "lighthouse",
        "at",
        "night",
    ]
    assert (
        error(server, {"cmd": "extract_text", "bucket": "b2", "key": "c.bin"})
        == "could not extract text from this file type"
    )


def test_search_sees_writes_immediately(server: MemoryServer) -> None:
    put(server, "b", "k", b"instant", content_type="text/plain")
    assert [r["key"] for r in ok(server, {"cmd": "search", "query": "instant"})] == ["k"]
    ok(server, {"cmd": "delete_bucket", "bucket": "b"})
    assert ok(server, {"cmd": "search", "query": "instant"}) == []


# --- validation texts ---------------------------------------------------------


@pytest.mark.parametrize(
    "request_, expected",
    [
        ({"cmd": "create_bucket"}, "missing 'bucket'"),
        ({"cmd": "create_bucket", "bucket": 5}, "missing 'bucket'"),
        ({"cmd": "delete_bucket"}, "missing 'bucket'"),
        ({"cmd": "put_object", "key": "k", "data": ""}, "missing 'bucket'"),
        ({"cmd": "put_object", "bucket": "b", "data": ""}, "missing 'key'"),
        ({"cmd": "put_object", "bucket": "b", "key": None, "data": ""}, "missing 'key'"),
        ({"cmd": "put_object", "bucket": "b", "key": "k"}, "missing 'data' (base64)"),
        ({"cmd": "put_object", "bucket": "b", "key": "k", "data": [1, 2]}, "missing 'data' (base64)"),
        ({"cmd": "put_object", "bucket": "b", "key": "k", "data": "QQ"}, "invalid base64: Invalid padding"),
        (
            {"cmd": "put_object", "bucket": "b", "key": "k", "data": "QQ==\n"},
            "invalid base64: Invalid symbol 10, offset 4.",
        ),
        (
            {"cmd": "put_object", "bucket": "b", "key": "k", "data": "aGk-"},
            "invalid base64: Invalid symbol 45, offset 3.",
        ),
        ({"cmd": "get_object", "bucket": "b"}, "missing 'key'"),
        ({"cmd": "get_object", "key": "k"}, "missing 'bucket'"),
        ({"cmd": "head_object", "bucket": "b", "key": 1}, "missing 'key'"),
        ({"cmd": "delete_object", "bucket": "b"}, "missing 'key'"),
        ({"cmd": "extract_text", "key": "k"}, "missing 'bucket'"),
        ({"cmd": "list_objects"}, "missing 'collection'"),
        ({"cmd": "list_objects", "bucket": ["b"]}, "missing 'collection'"),
        ({"cmd": "search"}, "missing 'query'"),
        ({"cmd": "search", "query": 7}, "missing 'query'"),
        ({"cmd": "get_object", "bucket": "nope", "key": "k"}, "bucket not found: nope"),
        ({"cmd": "head_object", "bucket": "nope", "key": "k"}, "bucket not found: nope"),
        ({"cmd": "delete_object", "bucket": "nope", "key": "k"}, "bucket not found: nope"),
        ({"cmd": "list_objects", "bucket": "nope"}, "bucket not found: nope"),
        ({"cmd": "extract_text", "bucket": "nope", "key": "k"}, "bucket not found: nope"),
    ],
)
def test_validation_errors(server: MemoryServer, request_: dict[str, Any], expected: str) -> None:
    assert error(server, request_) == expected


def test_unknown_key_in_existing_bucket(server: MemoryServer) -> None:
    ok(server, {"cmd": "create_bucket", "bucket": "b"})
    for cmd in ("get_object", "head_object", "delete_object", "extract_text"):
        assert error(server, {"cmd": cmd, "bucket": "b", "key": "x/y"}) == "blob not found: b/x/y"


@pytest.mark.parametrize("bucket", ["", ".", "..", "../etc", "a/b", "a\\b", ".git", "/tmp", "x\x00y"])
def test_path_like_bucket_names_are_refused(server: MemoryServer, bucket: str, tmp_path: Any) -> None:
    expected = f"invalid query: invalid bucket name: {bucket}"
    for request in (
        {"cmd": "create_bucket", "bucket": bucket},
        {"cmd": "delete_bucket", "bucket": bucket},
        {"cmd": "put_object", "bucket": bucket, "key": "k", "data": ""},
        {"cmd": "get_object", "bucket": bucket, "key": "k"},
        {"cmd": "list_objects", "bucket": bucket},
    ):
        assert error(server, request) == expected
    assert ok(server, {"cmd": "list_buckets"}) == []


def test_path_like_keys_are_plain_keys(server: MemoryServer, tmp_path: Any) -> None:
    before = sorted(p.name for p in tmp_path.rglob("*"))
    for key in ["../../escape", "/etc/passwd", "a/../b", "C:\\win"]:
        put(server, "b", key, key.encode())
        assert base64.b64decode(ok(server, {"cmd": "get_object", "bucket": "b", "key": key})["content"]) == key.encode()
    # Nothing but the database files appeared on disk.
    after = sorted(p.name for p in tmp_path.rglob("*"))
    assert set(after) - set(before) <= {"oxidb.sqlite3-journal"}


def test_empty_and_overlong_keys(server: MemoryServer) -> None:
    assert error(server, {"cmd": "put_object", "bucket": "b", "key": "", "data": ""}) == (
        "invalid query: object key must not be empty"
    )
    assert error(server, {"cmd": "put_object", "bucket": "b", "key": "k" * 1025, "data": ""}) == (
        "invalid query: object key longer than 1024 bytes"
    )
    assert put(server, "b", "k" * 1024, b"")["key"] == "k" * 1024


def test_oversize_object_is_refused_before_decoding(server: MemoryServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(blobs, "MAX_OBJECT_BYTES", 10)
    assert put(server, "b", "ten", b"0123456789")["size"] == 10
    # Not even valid base64: the size check comes first and costs nothing.
    assert error(server, {"cmd": "put_object", "bucket": "b", "key": "k", "data": "!" * 16}) == (
        "object too large: 12 bytes (limit 10)"
    )
    assert error(server, {"cmd": "put_object", "bucket": "b", "key": "k", "data": b64(b"x" * 11)}) == (
        "object too large: 11 bytes (limit 10)"
    )
    assert ok(server, {"cmd": "list_objects", "bucket": "b"})[0]["key"] == "ten"


def test_content_type_and_metadata_of_wrong_types(server: MemoryServer) -> None:
    record = put(server, "b", "k", b"x", content_type=5, metadata="not an object")
    assert record["content_type"] == "application/octet-stream"
    assert record["metadata"] == {}
    record = put(server, "b", "k", b"x", content_type="", metadata={"s": "v", "l": [1], "o": {"a": "b"}, "n": None})
    assert record["content_type"] == ""
    assert record["metadata"] == {"s": "v"}


def test_put_object_failure_changes_nothing(server: MemoryServer) -> None:
    put(server, "b", "k", b"original", content_type="text/plain")
    assert error(server, {"cmd": "put_object", "bucket": "b", "key": "k", "data": "%%%%"}).startswith("invalid base64")
    assert base64.b64decode(ok(server, {"cmd": "get_object", "bucket": "b", "key": "k"})["content"]) == b"original"


# --- registry and RBAC --------------------------------------------------------

BLOB_COMMANDS = {
    "create_bucket": (True, Role.READWRITE),
    "list_buckets": (False, Role.READ),
    "delete_bucket": (True, Role.READWRITE),
    "put_object": (True, Role.READWRITE),
    "get_object": (False, Role.READ),
    "head_object": (False, Role.READ),
    "delete_object": (True, Role.READWRITE),
    "list_objects": (False, Role.READ),
    "search": (False, Role.READ),
    "extract_text": (False, Role.READ),
}


@pytest.mark.parametrize("name", sorted(BLOB_COMMANDS))
def test_registry_rows(name: str) -> None:
    registry = default_registry()
    command = registry.get(name)
    assert command is not None
    writes, role = BLOB_COMMANDS[name]
    assert command.writes is writes
    assert registry.access.required_role(name) is role
    assert command.audit_collection == (None if name == "list_buckets" else "bucket")
