"""
Blob storage and blob search inside the engine's SQLite database
(engine.md 7, 8.1, 8.2, 8.4).

Objects live in the same database file as the documents, written by the
engine's writer thread through registered appliers (L{register_appliers}),
so a put is atomic and durable with the group commit that carries it, its
search postings change in the same transaction (a search right after a put
sees it), and the engine's online backup carries blobs with no extra step.

Tables (created by the first blob write; reads cope with their absence):

  - C{oxi_blob_buckets(name)}: one row per bucket.
  - C{oxi_blob_objects(id, bucket, key, size, content_type, etag,
    created_at, metadata, content)}: one row per object, C{(bucket, key)}
    unique; C{metadata} is compact JSON of the string values kept, C{content}
    the raw bytes (last, so that listing never reads it).
  - C{oxi_blob_docs(id, ntok)} and C{oxi_blob_terms(term, id, tf)}: search
    postings by object id, as for a collection's text index. An object's
    indexed text is its extracted content (L{oxidb.engine.blobtext}) followed
    by its metadata values, so objects of other types are found by their
    metadata only; objects without any token are not indexed and do not
    count in C{N}.

Scores are L{oxidb.engine.textindex.score}'s, with C{N} and C{df} over every
bucket; a C{bucket} filter only selects what is returned. Ties are ordered by
bucket, then key.

Operations (L{OPERATIONS}; their JSON forms are the Raft log's, server.md
8.6): L{CreateBucket}, L{DeleteBucket}, L{PutObject}, L{DeleteObject}.
"""

from __future__ import annotations

import base64
import binascii
import collections
import functools
import threading
import time
import zlib
from collections.abc import Iterator
from typing import Any, ClassVar

import attrs
import orjson

from oxidb.engine import blobtext, sqlite, store, textindex, textstore
from oxidb.engine.governor import DEFAULT_LIMITS, NO_DEADLINE, approx_size, reply_cap
from oxidb.engine.operations import Operation, check
from oxidb.engine.writes import WriteTxn
from oxidb.errors import (
    BadRequestError,
    BlobNotFoundError,
    BucketNotFoundError,
    InvalidQueryError,
    TooLargeError,
    UnextractableError,
)

#: Largest object, in bytes of raw data: 12 MiB. Its base64 text (16 MiB)
#: already fills a request frame, so in practice the frame limit (16 MiB of
#: request, C{data} included) is reached first; the engine enforces this
#: bound for every other path (Raft entries, embedding applications).
MAX_OBJECT_BYTES = 12 * 1024 * 1024

#: Longest object key, in bytes of UTF-8.
MAX_KEY_BYTES = 1024

DEFAULT_CONTENT_TYPE = "application/octet-stream"

#: Objects returned by C{list_objects} without a C{limit}.
DEFAULT_LIST_LIMIT = 1000

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS oxi_blob_buckets(name TEXT PRIMARY KEY) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS oxi_blob_objects("
    " id INTEGER PRIMARY KEY, bucket TEXT NOT NULL, key TEXT NOT NULL, size INTEGER NOT NULL,"
    " content_type TEXT NOT NULL, etag TEXT NOT NULL, created_at TEXT NOT NULL,"
    " metadata TEXT NOT NULL, content BLOB NOT NULL, UNIQUE (bucket, key))",
    "CREATE TABLE IF NOT EXISTS oxi_blob_docs(id INTEGER PRIMARY KEY, ntok INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS oxi_blob_terms("
    " term TEXT NOT NULL, id INTEGER NOT NULL, tf INTEGER NOT NULL, PRIMARY KEY (term, id)) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS oxi_blob_terms_id ON oxi_blob_terms(id)",
)

_RECORD_COLUMNS = "key, bucket, size, content_type, etag, created_at, metadata"

#: C{oxi_meta} key of the fingerprint of tokenizer and extractor the stored
#: postings were built with.
_TEXT_FORMAT_KEY = "blob_text_format"


# --- validation -------------------------------------------------------------


def validate_bucket_name(name: object) -> str:
    """
    The name if it is a safe bucket name (the collection rule, engine.md 1.6
    REC: non-empty, no C{/}, C{\\} or NUL, no leading C{.}), else
    L{InvalidQueryError} C{invalid bucket name: <name>}.
    """
    if (
        not isinstance(name, str)
        or not name
        or name.startswith(".")
        or any(ch in name for ch in "/\\\x00")
        or not _is_utf8(name)
    ):
        raise InvalidQueryError(f"invalid bucket name: {name}")
    return name


def validate_key(key: object) -> str:
    """
    The key if it is a valid object key: any non-empty string of at most
    L{MAX_KEY_BYTES} bytes of UTF-8 (slashes are ordinary characters).
    """
    if not isinstance(key, str) or not key:
        raise InvalidQueryError("object key must not be empty")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidQueryError("object key is not valid UTF-8") from None
    if size > MAX_KEY_BYTES:
        raise InvalidQueryError(f"object key longer than {MAX_KEY_BYTES} bytes")
    return key


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def clean_metadata(metadata: object) -> dict[str, str]:
    """The string values of a metadata object (others are dropped, engine.md 7.2)."""
    if type(metadata) is not dict:
        return {}
    kept = {k: v for k, v in metadata.items() if isinstance(k, str) and isinstance(v, str)}
    if not all(_is_utf8(k) and _is_utf8(v) for k, v in kept.items()):
        raise InvalidQueryError("metadata is not valid UTF-8")
    return kept


def decoded_size(data_b64: str) -> int:
    """The number of bytes a padded base64 text decodes to (before checking it)."""
    padding = 2 if data_b64.endswith("==") else 1 if data_b64.endswith("=") else 0
    return max(0, len(data_b64) // 4 * 3 - padding)


def check_size(size: int) -> None:
    if size > MAX_OBJECT_BYTES:
        raise TooLargeError(f"object too large: {size} bytes (limit {MAX_OBJECT_BYTES})")


_B64_SYMBOLS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_VALUES = {symbol: value for value, symbol in enumerate(_B64_SYMBOLS)}
_B64_ALPHABET = frozenset(_B64_SYMBOLS.encode("ascii"))


def decode_base64(data_b64: object) -> bytes:
    """
    Decode standard base64 with padding, strictly: no whitespace, no other
    alphabet, no missing or misplaced padding, no stray bits in the last
    symbol. Errors are L{BadRequestError} C{invalid base64: <detail>} with
    the detail upstream's decoder gives.
    """
    if not isinstance(data_b64, str):
        raise BadRequestError("missing 'data' (base64)")
    check_size(decoded_size(data_b64))
    try:
        data = binascii.a2b_base64(data_b64, strict_mode=True)
        if len(data_b64) % 4:
            # Python's strict mode still accepts padding after a complete
            # quantum ("AAAA="); canonical padded base64 never has it.
            raise binascii.Error("Excess data after padding")
    except (binascii.Error, ValueError) as e:
        raise BadRequestError(f"invalid base64: {_base64_error(data_b64, str(e))}") from None
    # Canonical encoding: the bits the padding hides must be zero.
    if data_b64.endswith("=="):
        last = len(data_b64) - 3
        if _B64_VALUES[data_b64[last]] & 0x0F:
            raise BadRequestError(f"invalid base64: Invalid last symbol {ord(data_b64[last])}, offset {last}.")
    elif data_b64.endswith("="):
        last = len(data_b64) - 2
        if _B64_VALUES[data_b64[last]] & 0x03:
            raise BadRequestError(f"invalid base64: Invalid last symbol {ord(data_b64[last])}, offset {last}.")
    return data


def _base64_error(text: str, fallback: str) -> str:
    """Upstream's (Rust C{base64}) description of what is wrong with C{text}."""
    raw = text.encode("utf-8", errors="surrogatepass")
    length = len(raw)
    padding_at = None
    for offset, byte in enumerate(raw):
        if byte in _B64_ALPHABET:
            if padding_at is not None:
                return f"Invalid symbol 61, offset {padding_at}."
            continue
        if byte == 61:  # '='
            if padding_at is None:
                padding_at = offset
            continue
        return f"Invalid symbol {byte}, offset {offset}."
    if padding_at is not None and (length % 4 != 0 or length - padding_at > 2):
        return f"Invalid symbol 61, offset {padding_at}."
    if length % 4 == 1:
        return "Invalid input length."
    if length % 4:
        return "Invalid padding"
    return fallback


def format_created_at(now: float) -> str:
    """C{YYYY-MM-DDTHH:MM:SSZ} (UTC, whole seconds) of a time in seconds since the epoch."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(now)))


def etag_of(data: bytes) -> str:
    """CRC-32 (zlib) of the bytes as 8 lowercase hex digits."""
    return format(zlib.crc32(data) & 0xFFFFFFFF, "08x")


# --- indexed text -----------------------------------------------------------


def searchable_text(content_type: str, data: bytes, metadata: dict[str, str]) -> str:
    """An object's indexed text: extracted content, then metadata values by key."""
    parts = [metadata[name] for name in sorted(metadata)]
    extracted = blobtext.extract_text(content_type, data)
    if extracted is not None:
        parts.insert(0, extracted)
    return " ".join(parts)


@attrs.frozen
class Postings:
    """An object's search postings: its token count and each term's count."""

    ntok: int
    counts: dict[str, int]

    @classmethod
    def of(cls, text: str) -> Postings:
        tokens = textindex.tokenize(text)
        return cls(len(tokens), dict(textindex.term_counts(tokens)))


@attrs.frozen
class PreparedPut:
    """
    The expensive, pure part of a put, computed off the writer thread: the
    decoded bytes, their etag and the search postings.

    @ivar data_b64: the very string object the operation carries; the applier
        uses this preparation only for an operation carrying the same object
        (see L{prepare_put}).
    """

    data_b64: str
    content_type: str
    metadata: dict[str, str]
    data: bytes
    etag: str
    postings: Postings

    def matches(self, data_b64: object, content_type: str, metadata: dict[str, str]) -> bool:
        return data_b64 is self.data_b64 and content_type == self.content_type and metadata == self.metadata


def _prepare(data_b64: object, content_type: str, metadata: dict[str, str]) -> PreparedPut:
    data = decode_base64(data_b64)
    assert isinstance(data_b64, str)
    postings = Postings.of(searchable_text(content_type, data, metadata))
    return PreparedPut(data_b64, content_type, metadata, data, etag_of(data), postings)


#: Bytes (base64 and decoded) an engine's L{PreparedPuts} holds at most.
PREPARED_MAX_BYTES = 64 * 1024 * 1024


class PreparedPuts:
    """
    Puts prepared by request handlers (on the thread pool) and waiting for
    the writer. Keyed by the identity of the operation's base64 string, which
    the entry keeps alive, so a hit is the very same data. Bounded by the
    bytes held (base64 and decoded); an evicted or missing entry only means
    the applier does the work itself. Each engine owns one
    (C{engine.prepared_puts}): identities are only compared with the puts of
    the writer they were prepared for.
    """

    def __init__(self, max_bytes: int = PREPARED_MAX_BYTES) -> None:
        self._max_bytes = max_bytes
        self._bytes = 0
        self._entries: collections.OrderedDict[int, PreparedPut] = collections.OrderedDict()
        self._lock = threading.Lock()

    def add(self, prepared: PreparedPut) -> None:
        size = _footprint(prepared)
        if size > self._max_bytes:
            return
        with self._lock:
            old = self._entries.pop(id(prepared.data_b64), None)
            if old is not None:
                self._bytes -= _footprint(old)
            self._entries[id(prepared.data_b64)] = prepared
            self._bytes += size
            while self._bytes > self._max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= _footprint(evicted)

    def take(self, data_b64: object) -> PreparedPut | None:
        with self._lock:
            entry = self._entries.get(id(data_b64))
            if entry is None or entry.data_b64 is not data_b64:
                return None
            del self._entries[id(data_b64)]
            self._bytes -= _footprint(entry)
            return entry


def _footprint(prepared: PreparedPut) -> int:
    return len(prepared.data) + len(prepared.data_b64)


def prepare_put(
    prepared_puts: PreparedPuts, data_b64: object, content_type: str, metadata: dict[str, str]
) -> PreparedPut:
    """
    Validate and decode a put's data and compute its postings (blocking,
    CPU-heavy for big text: call it on the thread pool). The result is kept
    in C{prepared_puts} (the engine's) for the applier of an operation
    carrying the same C{data_b64} object, so the writer thread does not redo
    the work.

    @raise BadRequestError: bad base64.
    @raise TooLargeError: more than L{MAX_OBJECT_BYTES}.
    """
    prepared = _prepare(data_b64, content_type, metadata)
    prepared_puts.add(prepared)
    return prepared


def put_operation(bucket: str, key: str, data_b64: str, content_type: str, metadata: dict[str, str]) -> PutObject:
    """The C{PutObject} operation."""
    return PutObject(bucket, key, data_b64, content_type, metadata)


# --- schema -----------------------------------------------------------------


def _has_schema(conn: sqlite.Connection) -> bool:
    row = conn.execute("SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'oxi_blob_objects'").fetchone()
    return row is not None


@functools.cache
def text_format() -> str:
    """Fingerprint of the tokenizer and the extractor (see L{ensure_schema})."""
    return f"{textstore.fingerprint()}/x{blobtext.EXTRACTOR_VERSION}"


def ensure_schema(conn: sqlite.Connection) -> None:
    """
    Create the blob tables if missing and rebuild the postings if the
    tokenizer or the extractor changed since they were built. Runs inside the
    writer's open transaction.
    """
    if not _has_schema(conn):
        for statement in _SCHEMA:
            conn.execute(statement)
        store.set_meta(conn, _TEXT_FORMAT_KEY, text_format())
        return
    if store.get_meta(conn, _TEXT_FORMAT_KEY) != text_format():
        _refresh_postings(conn)
        store.set_meta(conn, _TEXT_FORMAT_KEY, text_format())


def _refresh_postings(conn: sqlite.Connection) -> None:
    conn.execute("DELETE FROM oxi_blob_terms")
    conn.execute("DELETE FROM oxi_blob_docs")
    ids = [row[0] for row in conn.execute("SELECT id FROM oxi_blob_objects ORDER BY id")]
    for object_id in ids:
        content_type, metadata, content = conn.execute(
            "SELECT content_type, metadata, content FROM oxi_blob_objects WHERE id = ?", (object_id,)
        ).fetchone()
        text = searchable_text(content_type, bytes(content), orjson.loads(metadata))
        _add_postings(conn, object_id, Postings.of(text))


def _add_postings(conn: sqlite.Connection, object_id: int, postings: Postings) -> None:
    if not postings.ntok:
        return
    conn.execute("INSERT INTO oxi_blob_docs(id, ntok) VALUES (?, ?)", (object_id, postings.ntok))
    conn.executemany(
        "INSERT INTO oxi_blob_terms(term, id, tf) VALUES (?, ?, ?)",
        [(term, object_id, tf) for term, tf in postings.counts.items()],
    )


def _remove_postings(conn: sqlite.Connection, object_id: int) -> None:
    conn.execute("DELETE FROM oxi_blob_terms WHERE id = ?", (object_id,))
    conn.execute("DELETE FROM oxi_blob_docs WHERE id = ?", (object_id,))


# --- writes (writer thread, inside the batch's transaction) ------------------


def create_bucket(conn: sqlite.Connection, bucket: object) -> str:
    """Create a bucket; an existing one is no error (engine.md 7.1)."""
    name = validate_bucket_name(bucket)
    ensure_schema(conn)
    conn.execute("INSERT OR IGNORE INTO oxi_blob_buckets(name) VALUES (?)", (name,))
    return "bucket created"


def delete_bucket(conn: sqlite.Connection, bucket: object) -> str:
    """Delete a bucket, its objects and their search postings."""
    name = validate_bucket_name(bucket)
    ensure_schema(conn)
    if conn.execute("SELECT 1 FROM oxi_blob_buckets WHERE name = ?", (name,)).fetchone() is None:
        raise BucketNotFoundError(name)
    owned = "SELECT id FROM oxi_blob_objects WHERE bucket = ?"
    conn.execute(f"DELETE FROM oxi_blob_terms WHERE id IN ({owned})", (name,))
    conn.execute(f"DELETE FROM oxi_blob_docs WHERE id IN ({owned})", (name,))
    conn.execute("DELETE FROM oxi_blob_objects WHERE bucket = ?", (name,))
    conn.execute("DELETE FROM oxi_blob_buckets WHERE name = ?", (name,))
    return "bucket deleted"


def put_object(
    conn: sqlite.Connection,
    bucket: object,
    key: object,
    data_b64: object,
    content_type: object,
    metadata: object,
    now: float,
    prepared: PreparedPut | None = None,
) -> dict[str, Any]:
    """
    Store an object (creating its bucket), replacing any object under the
    same key with its content, metadata and C{created_at}; index its text.
    The metadata record (engine.md 7.3). C{prepared}: the work
    L{prepare_put} did for this put, if any.
    """
    name = validate_bucket_name(bucket)
    key = validate_key(key)
    kind = content_type if isinstance(content_type, str) else DEFAULT_CONTENT_TYPE
    kept = clean_metadata(metadata)
    if prepared is None or not prepared.matches(data_b64, kind, kept):
        prepared = _prepare(data_b64, kind, kept)
    data = prepared.data
    ensure_schema(conn)
    conn.execute("INSERT OR IGNORE INTO oxi_blob_buckets(name) VALUES (?)", (name,))
    created_at = format_created_at(now)
    metadata_json = orjson.dumps(kept).decode()
    row = conn.execute("SELECT id FROM oxi_blob_objects WHERE bucket = ? AND key = ?", (name, key)).fetchone()
    if row is None:
        conn.execute(
            "INSERT INTO oxi_blob_objects(bucket, key, size, content_type, etag, created_at, metadata, content)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (name, key, len(data), kind, prepared.etag, created_at, metadata_json, data),
        )
        object_id = conn.last_insert_rowid()
    else:
        object_id = row[0]
        _remove_postings(conn, object_id)
        conn.execute(
            "UPDATE oxi_blob_objects SET size = ?, content_type = ?, etag = ?, created_at = ?, metadata = ?,"
            " content = ? WHERE id = ?",
            (len(data), kind, prepared.etag, created_at, metadata_json, data, object_id),
        )
    _add_postings(conn, object_id, prepared.postings)
    return _record(key, name, len(data), kind, prepared.etag, created_at, kept)


def delete_object(conn: sqlite.Connection, bucket: object, key: object) -> str:
    """Delete an object and its search postings."""
    name = validate_bucket_name(bucket)
    key = validate_key(key)
    ensure_schema(conn)
    object_id = _object_id(conn, name, key)
    _remove_postings(conn, object_id)
    conn.execute("DELETE FROM oxi_blob_objects WHERE id = ?", (object_id,))
    return "object deleted"


def _object_id(conn: sqlite.Connection, bucket: str, key: str) -> int:
    row = conn.execute("SELECT id FROM oxi_blob_objects WHERE bucket = ? AND key = ?", (bucket, key)).fetchone()
    if row is not None:
        return int(row[0])
    _check_bucket(conn, bucket)
    raise BlobNotFoundError(bucket, key)


def _check_bucket(conn: sqlite.Connection, bucket: str) -> None:
    if conn.execute("SELECT 1 FROM oxi_blob_buckets WHERE name = ?", (bucket,)).fetchone() is None:
        raise BucketNotFoundError(bucket)


# --- operations -------------------------------------------------------------


def _bucket_field(instance: Any, attribute: Any, value: Any) -> None:
    validate_bucket_name(value)


def _key_field(instance: Any, attribute: Any, value: Any) -> None:
    validate_key(value)


@attrs.frozen
class CreateBucket(Operation):
    """C{{"CreateBucket": {"bucket"}}}: C{"bucket created"} (also when it exists)."""

    KIND: ClassVar[str] = "CreateBucket"

    bucket: str = attrs.field(validator=_bucket_field)

    def apply(self, txn: WriteTxn, now: float) -> Any:
        return create_bucket(txn.conn, self.bucket)


@attrs.frozen
class DeleteBucket(Operation):
    """C{{"DeleteBucket": {"bucket"}}}: its objects go with it."""

    KIND: ClassVar[str] = "DeleteBucket"

    bucket: str = attrs.field(validator=_bucket_field)

    def apply(self, txn: WriteTxn, now: float) -> Any:
        return delete_bucket(txn.conn, self.bucket)


@attrs.frozen
class PutObject(Operation):
    """
    C{{"PutObject": {"bucket", "key", "data_b64", "content_type",
    "metadata"}}}: the object's record. A C{content_type} that is not a
    string is the default one and the metadata keeps its string values
    only, as decoded.
    """

    KIND: ClassVar[str] = "PutObject"

    bucket: str = attrs.field(validator=_bucket_field)
    key: str = attrs.field(validator=_key_field)
    data_b64: str = attrs.field(
        validator=check(lambda value: isinstance(value, str), lambda: BadRequestError("missing 'data' (base64)"))
    )
    content_type: str = attrs.field(default=DEFAULT_CONTENT_TYPE, validator=attrs.validators.instance_of(str))
    metadata: dict[str, str] = attrs.Factory(dict)

    @classmethod
    def from_body(cls, body: dict[str, Any], version: int) -> PutObject:
        content_type = body.get("content_type")
        # Whatever the body holds: the field validators refuse a wrong value.
        return cls(
            body.get("bucket"),  # type: ignore[arg-type]
            body.get("key"),  # type: ignore[arg-type]
            body.get("data_b64"),  # type: ignore[arg-type]
            content_type if isinstance(content_type, str) else DEFAULT_CONTENT_TYPE,
            clean_metadata(body.get("metadata")),
        )

    def apply(self, txn: WriteTxn, now: float) -> Any:
        # Registered with the engine's prepared puts (see register_appliers).
        return put_object(txn.conn, self.bucket, self.key, self.data_b64, self.content_type, self.metadata, now)


@attrs.frozen
class DeleteObject(Operation):
    """C{{"DeleteObject": {"bucket", "key"}}}."""

    KIND: ClassVar[str] = "DeleteObject"

    bucket: str = attrs.field(validator=_bucket_field)
    key: str = attrs.field(validator=_key_field)

    def apply(self, txn: WriteTxn, now: float) -> Any:
        return delete_object(txn.conn, self.bucket, self.key)


#: The blob operation types.
OPERATIONS: tuple[type[Operation], ...] = (CreateBucket, DeleteBucket, PutObject, DeleteObject)


def register_appliers(engine: Any) -> None:
    """Teach an engine the blob operations (before it applies any)."""
    prepared_puts: PreparedPuts = engine.prepared_puts

    def apply_put(txn: WriteTxn, op: PutObject, now: float) -> dict[str, Any]:
        prepared = prepared_puts.take(op.data_b64)
        return put_object(txn.conn, op.bucket, op.key, op.data_b64, op.content_type, op.metadata, now, prepared)

    for op_type in OPERATIONS:
        engine.register_operation(op_type, apply_put if op_type is PutObject else None)


# --- reads (any thread, with C{engine.read(fn, ...)}) -----------------------


def _record(
    key: str, bucket: str, size: int, content_type: str, etag: str, created_at: str, metadata: dict[str, str]
) -> dict[str, Any]:
    return {
        "key": key,
        "bucket": bucket,
        "size": size,
        "content_type": content_type,
        "etag": etag,
        "created_at": created_at,
        "metadata": metadata,
    }


def _row_record(row: tuple[Any, ...]) -> dict[str, Any]:
    key, bucket, size, content_type, etag, created_at, metadata = row
    return _record(key, bucket, size, content_type, etag, created_at, orjson.loads(metadata))


def list_buckets(reader: Any) -> list[str]:
    """Every bucket name, sorted."""
    return bucket_names(reader.conn)


def _existing_bucket(conn: sqlite.Connection, bucket: object) -> str:
    name = validate_bucket_name(bucket)
    if not _has_schema(conn):
        raise BucketNotFoundError(name)
    _check_bucket(conn, name)
    return name


def _object_row(reader: Any, bucket: object, key: object, columns: str) -> tuple[Any, ...]:
    """C{columns} of an object's row; the spec's error for a bad or unknown bucket or key."""
    conn = reader.conn
    name = _existing_bucket(conn, bucket)
    key = validate_key(key)
    row = conn.execute(f"SELECT {columns} FROM oxi_blob_objects WHERE bucket = ? AND key = ?", (name, key)).fetchone()
    if row is None:
        raise BlobNotFoundError(name, key)
    return tuple(row)


def head_object(reader: Any, bucket: object, key: object) -> dict[str, Any]:
    """An object's metadata record."""
    return _row_record(_object_row(reader, bucket, key, _RECORD_COLUMNS))


def read_object(reader: Any, bucket: object, key: object) -> tuple[bytes, dict[str, Any]]:
    """An object's bytes and metadata record."""
    row = _object_row(reader, bucket, key, f"{_RECORD_COLUMNS}, content")
    return bytes(row[-1]), _row_record(row[:-1])


def get_object(reader: Any, bucket: object, key: object) -> dict[str, Any]:
    """C{{"content": <base64>, "metadata": <record>}} (the C{get_object} reply)."""
    data, record = read_object(reader, bucket, key)
    return {"content": base64.b64encode(data).decode("ascii"), "metadata": record}


def extract_object_text(reader: Any, bucket: object, key: object) -> dict[str, str]:
    """
    C{{"text": ...}}: the text extracted from an object's content.

    @raise UnextractableError: its type (or content) has no text.
    """
    data, record = read_object(reader, bucket, key)
    text = blobtext.extract_text(record["content_type"], data)
    if text is None:
        raise UnextractableError()
    return {"text": text}


def list_objects(
    reader: Any,
    bucket: object,
    prefix: str | None = None,
    limit: int | None = None,
    start_after: str | None = None,
) -> list[dict[str, Any]]:
    """
    Metadata records of the bucket's objects whose key starts with
    C{prefix}, ascending by key (code point order), at most C{limit}
    (default 1000). With C{start_after} [N] (S3's name), only keys after it:
    the last key of one page asks for the next page.
    """
    conn = reader.conn
    name = _existing_bucket(conn, bucket)
    limit = DEFAULT_LIST_LIMIT if limit is None else limit
    prefix = prefix or ""
    result: list[dict[str, Any]] = []
    if limit <= 0:
        return result
    deadline = getattr(reader, "deadline", NO_DEADLINE)
    cap = reply_cap(getattr(reader, "limits", DEFAULT_LIMITS), "limit and start_after")
    if start_after is not None and start_after >= prefix:
        rows = _rows_from(conn, name, start_after, inclusive=False)
    else:
        rows = _rows_from(conn, name, prefix)
    for row in rows:
        deadline.check()
        if not row[0].startswith(prefix):
            break
        record = _row_record(row)
        cap.add(approx_size(record) + 1)
        result.append(record)
        if len(result) >= limit:
            break
    return result


def _rows_from(
    conn: sqlite.Connection, bucket: str, start: str, inclusive: bool = True
) -> Iterator[tuple[Any, ...]]:
    """Rows of a bucket with C{key >= start} (C{key > start} unless C{inclusive}), by key, fetched in pages."""
    page = 256
    sql = (
        f"SELECT {_RECORD_COLUMNS} FROM oxi_blob_objects WHERE bucket = ? AND key {{op}} ?"
        " ORDER BY key LIMIT ?"
    )
    rows = conn.execute(sql.format(op=">=" if inclusive else ">"), (bucket, start, page)).fetchall()
    while rows:
        yield from rows
        if len(rows) < page:
            return
        rows = conn.execute(sql.format(op=">"), (bucket, rows[-1][0], page)).fetchall()


def search(
    reader: Any, query: str, bucket: str | None = None, limit: int = textindex.DEFAULT_LIMIT
) -> list[dict[str, Any]]:
    """
    Objects containing query terms, best TF-IDF score first (engine.md 8.2,
    8.4): C{[{"bucket", "key", "score"}]}, at most C{limit}.
    """
    conn = reader.conn
    limits = getattr(reader, "limits", DEFAULT_LIMITS)
    deadline = getattr(reader, "deadline", NO_DEADLINE)
    tokens = textindex.query_terms(query, limits.search_max_query_length, limits.search_max_terms)
    if not tokens or limit <= 0 or not _has_schema(conn):
        return []
    total = conn.execute("SELECT count(*) FROM oxi_blob_docs").fetchone()[0]
    df: dict[str, int] = {}
    counts: dict[int, dict[str, int]] = {}
    for term in tokens:
        deadline.check()
        postings = conn.execute("SELECT id, tf FROM oxi_blob_terms WHERE term = ?", (term,)).fetchall()
        df[term] = len(postings)
        for object_id, tf in postings:
            counts.setdefault(object_id, {})[term] = tf
    if not counts:
        return []
    ids = sorted(counts)
    sql = (
        "SELECT d.id, d.ntok, o.bucket, o.key FROM oxi_blob_docs d JOIN oxi_blob_objects o ON o.id = d.id"
        " WHERE d.id IN ({marks})"
    )
    if bucket is not None:
        sql += " AND o.bucket = ?"
    scored: list[tuple[float, str, str]] = []
    for start in range(0, len(ids), 500):
        deadline.check()
        chunk = ids[start : start + 500]
        params: list[Any] = list(chunk)
        if bucket is not None:
            params.append(bucket)
        for object_id, ntok, owner, key in conn.execute(sql.format(marks=", ".join("?" * len(chunk))), params):
            value = textindex.score(tokens, total, df.__getitem__, counts[object_id], ntok)
            if value > 0:
                scored.append((value, owner, key))
    scored.sort(key=lambda item: (-item[0], item[1], item[2]))
    result = scored[:limit]
    cap = reply_cap(limits)
    for _, owner, key in result:
        cap.add(len(owner) + len(key) + 64)
    return [{"bucket": owner, "key": key, "score": value} for value, owner, key in result]


def bucket_names(conn: sqlite.Connection) -> list[str]:
    """Every bucket name, sorted, read over any connection to the database."""
    if not _has_schema(conn):
        return []
    return [row[0] for row in conn.execute("SELECT name FROM oxi_blob_buckets ORDER BY name")]
