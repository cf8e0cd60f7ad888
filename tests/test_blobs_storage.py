"""
Blob storage in the engine (engine.md 7): buckets, objects, the metadata
record, strict base64, limits, and blob search kept in step with every write
(8.2, 8.4), through the engine's registered appliers and reads.
"""

from __future__ import annotations

import base64
import binascii
import sqlite3
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oxidb.engine import blobs, textindex
from oxidb.engine.engine import Engine
from oxidb.errors import (
    BadRequestError,
    BlobNotFoundError,
    BucketNotFoundError,
    InvalidQueryError,
    TooLargeError,
    UnextractableError,
)

NOW = 1_700_000_000.75  # 2023-11-14T22:13:20Z


@pytest.fixture
def engine(tmp_path: Any) -> Iterator[Engine]:
    engine = Engine(str(tmp_path / "data"), synchronous="NORMAL")
    blobs.register_appliers(engine)
    with engine:
        yield engine


def put(
    engine: Engine,
    bucket: str,
    key: str,
    data: bytes,
    content_type: str | None = "application/octet-stream",
    metadata: Any = None,
    now: float = NOW,
) -> Any:
    body: dict[str, Any] = {"bucket": bucket, "key": key, "data_b64": base64.b64encode(data).decode()}
    if content_type is not None:
        body["content_type"] = content_type
    if metadata is not None:
        body["metadata"] = metadata
    return engine.apply({"PutObject": body}, now)


def search(engine: Engine, query: str, bucket: str | None = None, limit: int = 10) -> list[dict[str, Any]]:
    return engine.read(blobs.search, query, bucket, limit)


def keys(results: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(r["bucket"], r["key"]) for r in results]


# --- objects ------------------------------------------------------------------


def test_put_returns_the_metadata_record(engine: Engine) -> None:
    data = b"hello blob"
    record = put(engine, "docs", "a/b.txt", data, "text/plain", {"owner": "ann", "n": 5, "flag": True})
    assert record == {
        "key": "a/b.txt",
        "bucket": "docs",
        "size": len(data),
        "content_type": "text/plain",
        "etag": format(zlib.crc32(data) & 0xFFFFFFFF, "08x"),
        "created_at": "2023-11-14T22:13:20Z",
        "metadata": {"owner": "ann"},
    }
    assert list(record) == ["key", "bucket", "size", "content_type", "etag", "created_at", "metadata"]


def test_etag_is_zero_padded_lowercase_crc32(engine: Engine) -> None:
    # crc32(b"a\x95") == 0x0000_... has leading zeros; find a short one by search.
    data = next(bytes([a, b]) for a in range(256) for b in range(256) if zlib.crc32(bytes([a, b])) < 0x10000000)
    etag = put(engine, "b", "k", data)["etag"]
    assert len(etag) == 8 and etag.startswith("0") and etag == etag.lower()
    assert int(etag, 16) == zlib.crc32(data)


def test_get_and_head_object(engine: Engine) -> None:
    data = bytes(range(256)) * 10
    record = put(engine, "b", "bin", data)
    got = engine.read(blobs.get_object, "b", "bin")
    assert got == {"content": base64.b64encode(data).decode(), "metadata": record}
    assert engine.read(blobs.head_object, "b", "bin") == record
    assert engine.read(blobs.read_object, "b", "bin") == (data, record)


def test_defaults_content_type_and_metadata(engine: Engine) -> None:
    record = put(engine, "b", "k", b"x", content_type=None, metadata=None)
    assert record["content_type"] == "application/octet-stream"
    assert record["metadata"] == {}
    record = put(engine, "b", "k", b"x", content_type=None, metadata=["not", "an", "object"])
    assert record["metadata"] == {}


def test_empty_object(engine: Engine) -> None:
    record = put(engine, "b", "empty", b"")
    assert record["size"] == 0 and record["etag"] == "00000000"
    assert engine.read(blobs.get_object, "b", "empty")["content"] == ""


def test_reput_replaces_content_metadata_and_created_at(engine: Engine) -> None:
    put(engine, "b", "k", b"first", "text/plain", {"v": "1"}, now=NOW)
    record = put(engine, "b", "k", b"second!", "application/x-thing", {"w": "2"}, now=NOW + 3600)
    assert record["size"] == 7
    assert record["metadata"] == {"w": "2"}
    assert record["created_at"] == "2023-11-14T23:13:20Z"
    assert engine.read(blobs.read_object, "b", "k") == (b"second!", record)
    assert len(engine.read(blobs.list_objects, "b")) == 1


def test_put_auto_creates_the_bucket(engine: Engine) -> None:
    assert engine.read(blobs.list_buckets) == []
    put(engine, "fresh", "k", b"x")
    assert engine.read(blobs.list_buckets) == ["fresh"]


def test_delete_object(engine: Engine) -> None:
    put(engine, "b", "k", b"x")
    assert engine.apply({"DeleteObject": {"bucket": "b", "key": "k"}}, NOW) == "object deleted"
    with pytest.raises(BlobNotFoundError, match=r"^blob not found: b/k$"):
        engine.read(blobs.head_object, "b", "k")
    with pytest.raises(BlobNotFoundError, match=r"^blob not found: b/k$"):
        engine.apply({"DeleteObject": {"bucket": "b", "key": "k"}}, NOW)
    with pytest.raises(BucketNotFoundError, match=r"^bucket not found: nope$"):
        engine.apply({"DeleteObject": {"bucket": "nope", "key": "k"}}, NOW)


def test_unknown_bucket_and_key_errors(engine: Engine) -> None:
    # Before any blob table exists...
    with pytest.raises(BucketNotFoundError, match=r"^bucket not found: b$"):
        engine.read(blobs.get_object, "b", "k")
    put(engine, "b", "other", b"x")
    # ... and after.
    with pytest.raises(BucketNotFoundError, match=r"^bucket not found: c$"):
        engine.read(blobs.get_object, "c", "k")
    with pytest.raises(BlobNotFoundError, match=r"^blob not found: b/k$"):
        engine.read(blobs.get_object, "b", "k")
    with pytest.raises(BlobNotFoundError):
        engine.read(blobs.extract_object_text, "b", "k")


def test_reads_before_any_blob_write(engine: Engine) -> None:
    assert engine.read(blobs.list_buckets) == []
    assert search(engine, "anything") == []
    with pytest.raises(BucketNotFoundError):
        engine.read(blobs.list_objects, "b")


def test_keys_are_opaque_strings(engine: Engine) -> None:
    weird = ["../../etc/passwd", "/abs/path", "a\\b", "with space", "ünï", "nul\x00inside", ".hidden", "x" * 1024]
    for key in weird:
        put(engine, "b", key, key.encode())
    for key in weird:
        assert engine.read(blobs.read_object, "b", key)[0] == key.encode()
    assert [r["key"] for r in engine.read(blobs.list_objects, "b")] == sorted(weird)


@pytest.mark.parametrize("key", ["", "x" * 1025, "é" * 513, 5, None])
def test_invalid_keys(engine: Engine, key: Any) -> None:
    with pytest.raises(InvalidQueryError, match=r"^invalid query: object key"):
        engine.apply({"PutObject": {"bucket": "b", "key": key, "data_b64": ""}}, NOW)


# --- buckets ------------------------------------------------------------------


def test_buckets_create_list_delete(engine: Engine) -> None:
    assert engine.apply({"CreateBucket": {"bucket": "zeta"}}, NOW) == "bucket created"
    assert engine.apply({"CreateBucket": {"bucket": "alpha"}}, NOW) == "bucket created"
    assert engine.apply({"CreateBucket": {"bucket": "alpha"}}, NOW) == "bucket created"  # idempotent
    assert engine.read(blobs.list_buckets) == ["alpha", "zeta"]
    put(engine, "alpha", "k1", b"one")
    put(engine, "alpha", "k2", b"two")
    put(engine, "zeta", "k1", b"three")
    assert engine.apply({"DeleteBucket": {"bucket": "alpha"}}, NOW) == "bucket deleted"
    assert engine.read(blobs.list_buckets) == ["zeta"]
    with pytest.raises(BucketNotFoundError):
        engine.read(blobs.get_object, "alpha", "k1")
    assert engine.read(blobs.read_object, "zeta", "k1")[0] == b"three"
    # Re-created, the bucket is empty.
    engine.apply({"CreateBucket": {"bucket": "alpha"}}, NOW)
    assert engine.read(blobs.list_objects, "alpha") == []


def test_delete_unknown_bucket(engine: Engine) -> None:
    with pytest.raises(BucketNotFoundError, match=r"^bucket not found: ghost$"):
        engine.apply({"DeleteBucket": {"bucket": "ghost"}}, NOW)


@pytest.mark.parametrize("name", ["", ".", "..", ".hidden", "a/b", "../up", "a\\b", "nul\x00", "/abs", 7, None])
def test_invalid_bucket_names(engine: Engine, name: Any) -> None:
    expected = rf"^invalid query: invalid bucket name: {name}$".replace("\\", "\\\\") if isinstance(name, str) else None
    for op in (
        {"CreateBucket": {"bucket": name}},
        {"DeleteBucket": {"bucket": name}},
        {"PutObject": {"bucket": name, "key": "k", "data_b64": ""}},
        {"DeleteObject": {"bucket": name, "key": "k"}},
    ):
        with pytest.raises(InvalidQueryError) as info:
            engine.apply(op, NOW)
        assert str(info.value).startswith("invalid query: invalid bucket name: ")
        if expected is not None:
            assert str(info.value) == f"invalid query: invalid bucket name: {name}"
    with pytest.raises(InvalidQueryError):
        engine.read(blobs.list_objects, name)


@pytest.mark.parametrize("name", ["_private", "with space", "UPPER", "ünïcode", "dots.inside", "a-b_c"])
def test_valid_bucket_names(engine: Engine, name: str) -> None:
    put(engine, name, "k", b"x")
    assert name in engine.read(blobs.list_buckets)


def test_malformed_operation_bodies(engine: Engine) -> None:
    for kind in (op.KIND for op in blobs.OPERATIONS):
        with pytest.raises(BadRequestError, match="^malformed operation$"):
            engine.apply({kind: ["not", "a", "dict"]}, NOW)
    with pytest.raises(BadRequestError, match=r"^missing 'data' \(base64\)$"):
        engine.apply({"PutObject": {"bucket": "b", "key": "k", "data_b64": 5}}, NOW)


def test_failed_put_leaves_no_trace(engine: Engine) -> None:
    with pytest.raises(BadRequestError):
        engine.apply({"PutObject": {"bucket": "newbucket", "key": "k", "data_b64": "@@@@"}}, NOW)
    assert engine.read(blobs.list_buckets) == []


# --- listing ------------------------------------------------------------------


def test_list_objects_sorted_with_prefix_and_limit(engine: Engine) -> None:
    names = ["b/2", "a/1", "b/1", "c", "b", "ba", "b/10", "é", "Z"]
    for name in names:
        put(engine, "bk", name, name.encode())
    listed = engine.read(blobs.list_objects, "bk")
    assert [r["key"] for r in listed] == sorted(names)
    assert all(set(r) == {"key", "bucket", "size", "content_type", "etag", "created_at", "metadata"} for r in listed)
    assert [r["key"] for r in engine.read(blobs.list_objects, "bk", "b/")] == ["b/1", "b/10", "b/2"]
    assert [r["key"] for r in engine.read(blobs.list_objects, "bk", "b")] == ["b", "b/1", "b/10", "b/2", "ba"]
    assert [r["key"] for r in engine.read(blobs.list_objects, "bk", "b", 2)] == ["b", "b/1"]
    assert engine.read(blobs.list_objects, "bk", "zzz") == []
    assert engine.read(blobs.list_objects, "bk", None, 0) == []
    assert [r["key"] for r in engine.read(blobs.list_objects, "bk", "", 3)] == sorted(names)[:3]


def test_list_objects_default_limit_and_paging(engine: Engine) -> None:
    for i in range(1100):
        engine.submit({"PutObject": {"bucket": "many", "key": f"k{i:05d}", "data_b64": ""}}, NOW)
    put(engine, "many", "zlast", b"")
    listed = engine.read(blobs.list_objects, "many")
    assert len(listed) == 1000
    assert [r["key"] for r in listed] == [f"k{i:05d}" for i in range(1000)]
    assert len(engine.read(blobs.list_objects, "many", "k", 5000)) == 1100


def test_list_only_its_own_bucket(engine: Engine) -> None:
    put(engine, "a", "k", b"1")
    put(engine, "b", "k", b"2")
    assert [(r["bucket"], r["key"]) for r in engine.read(blobs.list_objects, "a")] == [("a", "k")]


# --- base64 and size ----------------------------------------------------------


@pytest.mark.parametrize(
    "text, detail",
    [
        ("QQ", "Invalid padding"),
        ("QUJ", "Invalid padding"),
        ("Q", "Invalid input length."),
        ("QUJDR", "Invalid input length."),
        ("Q!==", "Invalid symbol 33, offset 1."),
        ("QQ==\n", "Invalid symbol 10, offset 4."),
        (" QQ==", "Invalid symbol 32, offset 0."),
        ("QQ==QQ==", "Invalid symbol 61, offset 2."),
        ("=QQ=", "Invalid symbol 61, offset 0."),
        ("QQ=A", "Invalid symbol 61, offset 2."),
        ("Q===", "Invalid symbol 61, offset 1."),
        ("QR==", "Invalid last symbol 82, offset 1."),
        ("QUJ=", "Invalid last symbol 74, offset 2."),
        ("QQ-_", "Invalid symbol 45, offset 2."),
        ("ééé=", "Invalid symbol 195, offset 0."),
    ],
)
def test_bad_base64(engine: Engine, text: str, detail: str) -> None:
    with pytest.raises(BadRequestError) as info:
        blobs.decode_base64(text)
    assert str(info.value) == f"invalid base64: {detail}"
    with pytest.raises(BadRequestError, match="^invalid base64: "):
        engine.apply({"PutObject": {"bucket": "b", "key": "k", "data_b64": text}}, NOW)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_base64_round_trip(data: bytes) -> None:
    assert blobs.decode_base64(base64.b64encode(data).decode()) == data


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ABCQRab09+/=\n -_", max_size=12))
def test_base64_accepts_exactly_canonical_padded_text(text: str) -> None:
    try:
        data = base64.b64decode(text, validate=True)
        canonical = base64.b64encode(data).decode() == text
    except binascii.Error:
        canonical = False
    if canonical:
        assert blobs.decode_base64(text) == data
    else:
        with pytest.raises(BadRequestError, match="^invalid base64: "):
            blobs.decode_base64(text)


def test_size_limit(engine: Engine) -> None:
    assert blobs.MAX_OBJECT_BYTES == 12 * 1024 * 1024
    at_limit = base64.b64encode(b"\x00" * blobs.MAX_OBJECT_BYTES).decode()
    over = base64.b64encode(b"\x00" * (blobs.MAX_OBJECT_BYTES + 1)).decode()
    assert blobs.decoded_size(at_limit) == blobs.MAX_OBJECT_BYTES
    assert blobs.decoded_size(over) == blobs.MAX_OBJECT_BYTES + 1
    with pytest.raises(
        TooLargeError, match=rf"^object too large: {blobs.MAX_OBJECT_BYTES + 1} bytes \(limit 12582912\)$"
    ):
        engine.apply({"PutObject": {"bucket": "b", "key": "big", "data_b64": over}}, NOW)
    record = engine.apply({"PutObject": {"bucket": "b", "key": "big", "data_b64": at_limit}}, NOW)
    assert record["size"] == blobs.MAX_OBJECT_BYTES
    assert engine.read(blobs.read_object, "b", "big")[0] == b"\x00" * blobs.MAX_OBJECT_BYTES


def test_created_at_format() -> None:
    assert blobs.format_created_at(0) == "1970-01-01T00:00:00Z"
    assert blobs.format_created_at(NOW) == "2023-11-14T22:13:20Z"
    assert len(blobs.format_created_at(4102444800.9)) == 20


# --- search -------------------------------------------------------------------


def test_search_scores_match_the_reference_ranker(engine: Engine) -> None:
    corpus = {
        ("b1", "fox.txt"): ("text/plain", b"The quick brown fox jumps over the lazy dog"),
        ("b1", "dogs.txt"): ("text/plain", b"dog dog dog and a fox"),
        ("b2", "page.html"): ("text/html", b"<h1>Foxes</h1><p>a fox in the <b>garden</b></p>"),
        ("b2", "data.json"): ("application/json", b'{"animal": "fox", "count": 3, "notes": ["garden party"]}'),
        ("b2", "img.png"): ("image/png", b"fox fox fox"),
        ("b3", "empty.txt"): ("text/plain", b"the a an"),
    }
    for (bucket, key), (content_type, data) in corpus.items():
        put(engine, bucket, key, data, content_type)
    texts = [
        ((b, k), blobs.searchable_text(ct, data, {})) for (b, k), (ct, data) in corpus.items()
    ]
    for query in ["fox", "dog fox", "garden", "fox fox garden", "lazy", "the", "nothing"]:
        expected = textindex.rank(query, texts, limit=100)
        got = search(engine, query, limit=100)
        assert sorted((r["bucket"], r["key"], round(r["score"], 12)) for r in got) == sorted(
            (b, k, round(score, 12)) for (b, k), score in expected
        ), query


def test_search_result_shape_order_and_limit(engine: Engine) -> None:
    put(engine, "b", "one", b"apple", "text/plain")
    put(engine, "b", "two", b"apple banana", "text/plain")
    put(engine, "b", "three", b"apple banana cherry", "text/plain")
    results = search(engine, "apple")
    assert [set(r) for r in results] == [{"bucket", "key", "score"}] * 3
    assert [r["key"] for r in results] == ["one", "two", "three"]
    assert results[0]["score"] > results[1]["score"] > results[2]["score"]
    assert keys(search(engine, "apple", limit=2)) == [("b", "one"), ("b", "two")]
    assert search(engine, "apple", limit=0) == []
    assert search(engine, "the and of") == []  # only stop words
    assert search(engine, "") == []


def test_search_ties_are_ordered_by_bucket_then_key(engine: Engine) -> None:
    for bucket, key in [("b", "z"), ("a", "y"), ("b", "a"), ("a", "z")]:
        put(engine, bucket, key, b"same words", "text/plain")
    assert keys(search(engine, "words")) == [("a", "y"), ("a", "z"), ("b", "a"), ("b", "z")]


def test_bucket_filter_keeps_global_idf(engine: Engine) -> None:
    put(engine, "mine", "doc", b"rare common", "text/plain")
    for i in range(5):
        put(engine, "theirs", f"d{i}", b"common filler", "text/plain")
    filtered = search(engine, "common rare", bucket="mine")
    assert keys(filtered) == [("mine", "doc")]
    # N = 6 and df counted over both buckets, not over "mine" only.
    n = 6
    expected = 0.5 * textindex.idf(n, 6) + 0.5 * textindex.idf(n, 1)
    assert filtered[0]["score"] == pytest.approx(expected)
    assert search(engine, "common", bucket="nobody") == []
    assert len(search(engine, "common", bucket="theirs", limit=3)) == 3


def test_search_sees_a_put_at_once_and_forgets_a_delete(engine: Engine) -> None:
    put(engine, "b", "k", b"ephemeral words", "text/plain")
    assert keys(search(engine, "ephemeral")) == [("b", "k")]
    engine.apply({"DeleteObject": {"bucket": "b", "key": "k"}}, NOW)
    assert search(engine, "ephemeral") == []
    assert postings_rows(engine) == (0, 0)


def test_reput_reindexes(engine: Engine) -> None:
    put(engine, "b", "k", b"old words", "text/plain")
    put(engine, "b", "k", b"new words", "text/plain")
    assert search(engine, "old") == []
    assert keys(search(engine, "new")) == [("b", "k")]


def test_reput_with_non_extractable_type_purges_old_text(engine: Engine) -> None:
    put(engine, "b", "k", b"searchable content", "text/plain")
    put(engine, "b", "k", b"searchable content", "application/octet-stream")
    assert search(engine, "searchable") == []
    assert postings_rows(engine) == (0, 0)


def test_delete_bucket_purges_its_postings(engine: Engine) -> None:
    put(engine, "gone", "k", b"vanishing text", "text/plain")
    put(engine, "kept", "k", b"staying text", "text/plain")
    engine.apply({"DeleteBucket": {"bucket": "gone"}}, NOW)
    assert search(engine, "vanishing") == []
    assert keys(search(engine, "text")) == [("kept", "k")]
    assert postings_rows(engine) == (1, 2)
    # Re-creating the bucket does not resurrect anything.
    engine.apply({"CreateBucket": {"bucket": "gone"}}, NOW)
    assert search(engine, "vanishing") == []


def test_metadata_values_are_searchable_for_every_type(engine: Engine) -> None:
    put(engine, "b", "photo.jpg", b"\xff\xd8\xff binary", "image/jpeg", {"caption": "sunset harbour", "n": 1})
    put(engine, "b", "note.txt", b"body words", "text/plain", {"author": "harbour master"})
    assert keys(search(engine, "sunset")) == [("b", "photo.jpg")]
    assert sorted(keys(search(engine, "harbour"))) == [("b", "note.txt"), ("b", "photo.jpg")]
    assert keys(search(engine, "body")) == [("b", "note.txt")]
    # Binary content itself is never indexed.
    assert search(engine, "binary") == []


def test_objects_without_tokens_do_not_count_in_n(engine: Engine) -> None:
    put(engine, "b", "words", b"lonely", "text/plain")
    put(engine, "b", "blank", b"   ", "text/plain")
    put(engine, "b", "bin", b"zzz", "application/octet-stream")
    assert postings_rows(engine)[0] == 1
    assert search(engine, "lonely")[0]["score"] == pytest.approx(1.0)


def test_extract_text(engine: Engine) -> None:
    put(engine, "b", "page", b"<p>Hello <i>there</i></p>", "text/html")
    put(engine, "b", "bin", b"\x00\x01", "application/octet-stream")
    put(engine, "b", "bad", b"\xff\xfe", "text/plain")
    assert engine.read(blobs.extract_object_text, "b", "page")["text"].split() == ["Hello", "there"]
    for key in ("bin", "bad"):
        with pytest.raises(UnextractableError, match="^could not extract text from this file type$"):
            engine.read(blobs.extract_object_text, "b", key)


def test_postings_rebuilt_when_the_tokenizer_changes(engine: Engine) -> None:
    put(engine, "b", "k", b"stable words", "text/plain")
    # Pretend the stored postings were built by another tokenizer version.
    conn = sqlite3.connect(engine.path)
    conn.execute("UPDATE oxi_meta SET value = 'old' WHERE key = 'blob_text_format'")
    conn.execute("DELETE FROM oxi_blob_terms")
    conn.commit()
    conn.close()
    assert search(engine, "stable") == []
    put(engine, "other", "k2", b"unrelated", "text/plain")  # any blob write refreshes
    assert keys(search(engine, "stable")) == [("b", "k")]


def postings_rows(engine: Engine) -> tuple[int, int]:
    def count(reader: Any) -> tuple[int, int]:
        docs = reader.conn.execute("SELECT count(*) FROM oxi_blob_docs").fetchone()[0]
        terms = reader.conn.execute("SELECT count(*) FROM oxi_blob_terms").fetchone()[0]
        return docs, terms

    return engine.read(count)


# --- the prepared-put handoff -------------------------------------------------


def test_prepared_put_is_used_by_the_applier(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = blobs._prepare

    def counting(data_b64: Any, content_type: str, metadata: dict[str, str]) -> Any:
        calls.append(content_type)
        return real(data_b64, content_type, metadata)

    monkeypatch.setattr(blobs, "_prepare", counting)
    data_b64 = base64.b64encode(b"prepared text").decode()
    blobs.prepare_put(engine.prepared_puts, data_b64, "text/plain", {})  # the handler's side
    engine.apply({"PutObject": {"bucket": "b", "key": "k", "data_b64": data_b64, "content_type": "text/plain"}}, NOW)
    assert calls == ["text/plain"]  # the writer did not decode or tokenize again
    assert keys(search(engine, "prepared")) == [("b", "k")]
    # Another content type, or an equal but distinct string: prepared afresh.
    blobs.prepare_put(engine.prepared_puts, data_b64, "text/plain", {})
    engine.apply({"PutObject": {"bucket": "b", "key": "k2", "data_b64": data_b64, "content_type": "text/html"}}, NOW)
    copy = "".join(list(data_b64))
    assert copy == data_b64 and copy is not data_b64
    engine.apply({"PutObject": {"bucket": "b", "key": "k3", "data_b64": copy, "content_type": "text/plain"}}, NOW)
    assert calls == ["text/plain", "text/plain", "text/html", "text/plain"]
    assert sorted(keys(search(engine, "prepared"))) == [("b", "k"), ("b", "k2"), ("b", "k3")]


def test_prepared_puts_belong_to_one_engine(engine: Engine, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A put prepared for one engine is not taken by another engine of the process."""
    other = Engine(str(tmp_path / "other"), synchronous="NORMAL")
    blobs.register_appliers(other)
    assert other.prepared_puts is not engine.prepared_puts
    calls: list[str] = []
    real = blobs._prepare

    def counting(data_b64: Any, content_type: str, metadata: dict[str, str]) -> Any:
        calls.append(content_type)
        return real(data_b64, content_type, metadata)

    monkeypatch.setattr(blobs, "_prepare", counting)
    data_b64 = base64.b64encode(b"shared text").decode()
    prepared = blobs.prepare_put(engine.prepared_puts, data_b64, "text/plain", {})
    with other:
        other.apply(blobs.PutObject("b", "k", data_b64, "text/plain", {}), NOW)
        assert keys(other.read(blobs.search, "shared")) == [("b", "k")]
    assert calls == ["text/plain", "text/plain"]  # the other engine did its own work
    assert engine.prepared_puts.take(data_b64) is prepared  # and left this engine's entry alone


def test_prepared_cache_is_bounded() -> None:
    cache = blobs.PreparedPuts(max_bytes=100)
    entries = [blobs._prepare(base64.b64encode(bytes([i]) * 20).decode(), "x/y", {}) for i in range(5)]
    for entry in entries:
        cache.add(entry)
    # Each entry holds 20 + 28 bytes: only the last two fit.
    assert cache.take(entries[0].data_b64) is None
    assert cache.take(entries[4].data_b64) is entries[4]
    assert cache.take(entries[4].data_b64) is None
    assert cache.take(entries[3].data_b64) is entries[3]


def test_blob_tables_live_in_the_engine_database(engine: Engine) -> None:
    put(engine, "b", "k", b"x")
    conn = sqlite3.connect(engine.path)
    names = {row[0] for row in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")}
    conn.close()
    assert {"oxi_blob_buckets", "oxi_blob_objects", "oxi_blob_docs", "oxi_blob_terms"} <= names
    assert engine.list_collections() == []  # blobs are not collections


def test_base64_rejects_padding_after_a_complete_quantum() -> None:
    # Found by hypothesis: Python's strict decoder accepts these.
    for text in ("0000=", "AAAA==", "AAAAAA=="[:5]):
        with pytest.raises(BadRequestError, match="^invalid base64: "):
            blobs.decode_base64(text)
