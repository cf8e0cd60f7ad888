"""
Logical dump and restore, import and export, all through the client.

A dump is gzip-compressed JSON lines, one record per line, each with a
C{"type"}: C{header}, then per collection a C{collection} record (its
indexes) followed by its C{doc} records: first the default database's, then
for every other database a C{database} record and its collections; then
C{procedure}, C{schedule},
C{bucket} and C{object} records, C{user} records when asked, and an C{end}
record with the counts (a dump without it is truncated).

Consistency: the documents of every collection are read inside one snapshot
(C{snapshot_begin}), so they are the state of one point in time whatever is
written meanwhile; the header says C{"consistency": "snapshot"}. The
snapshot lives at most C{OXIDB_SNAPSHOT_MAX_SECS} on the server: a longer
dump fails and says so. Indexes, procedures, schedules, blobs and users are
read after it, as they are then. A server without snapshot reads is read
collection by collection in C{_id} pages (C{"consistency": "pages"}): every
document that exists for the whole dump is written exactly once; documents
inserted or deleted meanwhile may or may not appear.

A restore loads the default database's collections into the client's
current database and creates the other databases that are missing, then
recreates the collections, their indexes, procedures, schedules and blobs.
Documents keep their C{_id} and C{_version}, and each collection's id
counter is set to the dumped one (C{last_id} of its C{collection} record),
so that the restored server answers the same documents with the same
versions and gives the next insert the same id as the source
(C{restore_documents}, admin only). A server without that command gets the
same C{_id}s through placeholder documents that are deleted again, and
C{_version} starts again at 1.
"""

from __future__ import annotations

import csv
import datetime
import gzip
import json
import os
import secrets
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import IO, Any

from oxidb.client.blocking import Client
from oxidb.client.commands import page_query
from oxidb.client.errors import PermissionDenied, ServerError, UnknownCommand

__all__ = ["DUMP_VERSION", "dump", "export_docs", "import_docs", "read_docs", "restore"]

DUMP_VERSION = 1
#: The database a session starts in.
DEFAULT_DATABASE = "oxidb"
_BATCH = 500
_OBJECT_PAGE = 1000
_GAP_MARK = "__oxidb_restore_gap__"

#: Called with (what, how many done so far, total or None).
Progress = Callable[[str, int, "int | None"], None]


def _no_progress(what: str, done: int, total: int | None) -> None:
    pass


def _line(record: dict[str, Any]) -> bytes:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


def dump(client: Client, path: str, *, users: bool = False, progress: Progress = _no_progress) -> dict[str, int]:
    """Write a dump of everything the server holds to C{path}; the counts written."""
    counts = {"collections": 0, "documents": 0, "procedures": 0, "schedules": 0, "objects": 0, "users": 0}
    tmp = path + ".partial"
    source = _DocumentSource.open(client)
    with gzip.open(tmp, "wb") as out:
        out.write(
            _line(
                {
                    "type": "header",
                    "version": DUMP_VERSION,
                    "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                    "server": client.server_info,
                    "consistency": source.consistency,
                }
            )
        )
        original = client.options.database
        try:
            with source:
                for database in _databases(client):
                    if database is not None:
                        client.use_database(database)
                        if database != DEFAULT_DATABASE:
                            out.write(_line({"type": "database", "name": database}))
                    _dump_collections(client, source, database, out, counts, progress)
        finally:
            if original != client.options.database:
                client.use_database(original or DEFAULT_DATABASE)
        for name in client.command("list_procedures"):
            definition = client.command("get_procedure", name=name)
            out.write(_line({"type": "procedure", "definition": _stored_request(definition)}))
            counts["procedures"] += 1
        for schedule in client.command("list_schedules"):
            out.write(_line({"type": "schedule", "definition": _schedule_request(schedule)}))
            counts["schedules"] += 1
        for bucket in client.command("list_buckets"):
            out.write(_line({"type": "bucket", "name": bucket}))
            for i, meta in enumerate(_objects(client, bucket), 1):
                obj = client.command("get_object", bucket=bucket, key=meta["key"])
                info = obj["metadata"]
                out.write(
                    _line(
                        {
                            "type": "object",
                            "bucket": bucket,
                            "key": meta["key"],
                            "data": obj["content"],
                            "content_type": info.get("content_type"),
                            "metadata": info.get("metadata") or {},
                        }
                    )
                )
                counts["objects"] += 1
                progress(f"bucket {bucket}", i, None)
        if users:
            for user in client.command("list_users"):
                record = {"type": "user", "username": user["username"], "role": user["role"]}
                if user.get("db_roles"):
                    record["db_roles"] = user["db_roles"]
                out.write(_line(record))
                counts["users"] += 1
        out.write(_line({"type": "end", "counts": counts}))
    os.replace(tmp, path)
    return counts


class _DocumentSource:
    """
    Where a dump reads documents: inside one snapshot when the server has
    snapshot reads, else the live collections in C{_id} pages.
    """

    def __init__(self, client: Client, begun: dict[str, Any] | None) -> None:
        self.client = client
        self.begun = begun
        self.consistency = "snapshot" if begun is not None else "pages"

    @classmethod
    def open(cls, client: Client) -> _DocumentSource:
        try:
            return cls(client, client.command("snapshot_begin"))
        except UnknownCommand:
            return cls(client, None)

    def __enter__(self) -> _DocumentSource:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.begun is not None:
            snap, self.begun = self.begun["snap"], None
            try:
                self.client.command("snapshot_end", snap=snap)
            except ServerError:
                pass  # expired or ended with a lost connection: nothing is held

    def collections(self, database: str | None) -> list[str]:
        """The collections of C{database} (C{None}: a server without databases), by their names in it."""
        if self.begun is None:
            return list(self.client.list_collections())
        names = (_in_database(name, database) for name in self.begun["collections"])
        return [name for name in names if name is not None]

    def _snapshot(self, cmd: str, **fields: Any) -> Any:
        assert self.begun is not None
        try:
            return self.client.command(cmd, snap=self.begun["snap"], **fields)
        except ServerError as e:
            if str(e).startswith("snapshot not found"):
                raise ValueError(
                    f"the dump's snapshot ended on the server (after {self.begun.get('expires_in')} s, "
                    "OXIDB_SNAPSHOT_MAX_SECS, or with a lost connection); the dump is incomplete"
                ) from None
            raise

    def last_id(self, database: str | None, name: str) -> int | None:
        """The collection's id high-water mark at the snapshot, if known."""
        if self.begun is None:
            return None
        qualified = name if database in (None, DEFAULT_DATABASE) else f"{database}/{name}"
        value = self.begun.get("last_ids", {}).get(qualified)
        return value if isinstance(value, int) else None

    def count(self, name: str) -> int:
        if self.begun is None:
            return int(self.client.count(name)["count"])
        return int(self._snapshot("snapshot_count", collection=name))

    def documents(self, name: str) -> Iterator[dict[str, Any]]:
        if self.begun is None:
            yield from self.client.iter_find(name, page_size=_BATCH)
            return
        after: Any = None
        while True:
            page = self._snapshot(
                "snapshot_find", collection=name, query=page_query(None, after), sort={"_id": 1}, limit=_BATCH
            )
            yield from page
            if len(page) < _BATCH:
                return
            after = page[-1].get("_id")


def _objects(client: Client, bucket: str) -> Iterator[dict[str, Any]]:
    """The bucket's object records, a page (C{list_objects} with C{start_after}) at a time."""
    after: str | None = None
    while True:
        fields: dict[str, Any] = {"bucket": bucket, "limit": _OBJECT_PAGE}
        if after is not None:
            fields["start_after"] = after
        page = client.command("list_objects", **fields)
        if after is not None and page and page[0]["key"] <= after:
            # A server that ignores start_after: one listing of everything left.
            everything = client.command("list_objects", bucket=bucket, limit=2**31)
            yield from (meta for meta in everything if meta["key"] > after)
            return
        yield from page
        if len(page) < _OBJECT_PAGE:
            return
        after = page[-1]["key"]


def _databases(client: Client) -> list[str | None]:
    """Every database of the server; C{[None]} (the current one) for a server without databases."""
    try:
        names: list[str] = client.list_databases()
    except UnknownCommand:
        return [None]
    return list(names)


def _in_database(qualified: str, database: str | None) -> str | None:
    """
    A snapshot lists every database's collections: the default database's by
    their names, another's as C{<database>/<name>}. The name of C{qualified}
    inside C{database}, or None if it is in another one.
    """
    if database in (None, DEFAULT_DATABASE):
        return None if "/" in qualified else qualified
    prefix = f"{database}/"
    return qualified[len(prefix) :] if qualified.startswith(prefix) else None


def _dump_collections(
    client: Client,
    source: _DocumentSource,
    database: str | None,
    out: gzip.GzipFile,
    counts: dict[str, int],
    progress: Progress,
) -> None:
    """The collections of the client's current database, C{database}, and their documents."""
    for name in source.collections(database):
        total = source.count(name)
        record = {"type": "collection", "name": name, "indexes": client.list_indexes(name)}
        last_id = source.last_id(database, name)
        if last_id is not None:
            record["last_id"] = last_id
        out.write(_line(record))
        counts["collections"] += 1
        done = 0
        for doc in source.documents(name):
            out.write(_line({"type": "doc", "collection": name, "doc": doc}))
            done += 1
            if done % _BATCH == 0:
                progress(name, done, total)
        progress(name, done, max(total, done))
        counts["documents"] += done


def _stored_request(definition: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in definition.items() if k not in ("cmd", "_id", "_version")}


def _schedule_request(schedule: dict[str, Any]) -> dict[str, Any]:
    run_state = {"last_run", "last_run_epoch", "last_status", "last_error", "run_count"}
    return {k: v for k, v in _stored_request(schedule).items() if k not in run_state}


def _records(path: str) -> Iterator[dict[str, Any]]:
    with gzip.open(path, "rb") as f:
        number = 0
        while True:
            try:
                line = f.readline()
            except (gzip.BadGzipFile, EOFError, OSError) as e:
                what = "not an oxidb dump" if number == 0 else f"unreadable after line {number}"
                raise ValueError(f"{path}: {what} ({e})") from None
            if not line:
                return
            number += 1
            try:
                record = json.loads(line)
            except ValueError:
                raise ValueError(f"{path}: line {number} is not JSON") from None
            if not isinstance(record, dict) or "type" not in record:
                raise ValueError(f"{path}: line {number} is not a dump record")
            yield record


def restore(
    client: Client,
    path: str,
    *,
    drop: bool = False,
    users_passwords: str | None = None,
    progress: Progress = _no_progress,
) -> dict[str, int]:
    """
    Load a dump. Collections must be absent or empty unless C{drop} (then
    they are dropped first). With C{users_passwords}, the dump's users are
    created with new random passwords, written to that file (mode 0600).

    @raise ValueError: a truncated or malformed dump, or a collection that is not empty.
    """
    counts = {"collections": 0, "documents": 0, "procedures": 0, "schedules": 0, "objects": 0, "users": 0}
    original = client.options.database
    try:
        return _restore(client, path, counts, drop, users_passwords, progress)
    finally:
        if original != client.options.database:
            client.use_database(original or DEFAULT_DATABASE)


def _restore(
    client: Client,
    path: str,
    counts: dict[str, int],
    drop: bool,
    users_passwords: str | None,
    progress: Progress,
) -> dict[str, int]:
    records = _records(path)
    header = next(records, None)
    if header is None or header.get("type") != "header" or header.get("version") != DUMP_VERSION:
        raise ValueError(f"{path}: not an oxidb dump (version {DUMP_VERSION})")
    passwords: list[str] = []
    known_users: list[str] = []

    def existing_users() -> list[str]:
        if not known_users:
            known_users.extend(u["username"] for u in client.command("list_users"))
        return known_users

    current: dict[str, Any] | None = None
    batch: list[dict[str, Any]] = []
    ended = False
    # Whether the server keeps ids, versions and counters (restore_documents); found out by the first use.
    exact = [True]

    def finish_collection() -> None:
        nonlocal current
        if current is None:
            return
        _flush(client, current, batch, final=True)
        batch.clear()
        if current["gaps"]:
            client.delete(current["name"], {_GAP_MARK: True})
        for index in current["indexes"]:
            _create_index(client, current["name"], index)
        progress(current["name"], current["count"], current["count"])
        current = None

    for record in records:
        kind = record["type"]
        if kind != "doc":
            finish_collection()
        if kind == "database":
            database = record["name"]
            if database not in client.list_databases():
                client.create_database(database)
            client.use_database(database)
        elif kind == "collection":
            name = record["name"]
            exists = name in client.list_collections()
            if exists and drop:
                client.drop_collection(name)
            elif exists and client.count(name)["count"]:
                raise ValueError(f"collection {name} is not empty (use --drop to replace it)")
            if drop or not exists:
                client.create_collection(name)
            current = {
                "name": name,
                "indexes": record.get("indexes", []),
                "next_id": 1,
                "gaps": False,
                "count": 0,
                "last_id": record.get("last_id") or 0,
                "exact": exact,
            }
            counts["collections"] += 1
        elif kind == "doc":
            if current is None or record["collection"] != current["name"]:
                raise ValueError(f"{path}: a document outside its collection")
            batch.append(record["doc"])
            current["count"] += 1
            counts["documents"] += 1
            if len(batch) >= _BATCH:
                _flush(client, current, batch)
                batch.clear()
                progress(current["name"], current["count"], None)
        elif kind == "procedure":
            client.request({"cmd": "create_procedure", **record["definition"]})
            counts["procedures"] += 1
        elif kind == "schedule":
            client.request({"cmd": "create_schedule", **record["definition"]})
            counts["schedules"] += 1
        elif kind == "bucket":
            if record["name"] not in client.command("list_buckets"):
                client.command("create_bucket", bucket=record["name"])
        elif kind == "object":
            fields = {k: record[k] for k in ("bucket", "key", "data", "metadata")}
            if record.get("content_type"):
                fields["content_type"] = record["content_type"]
            client.command("put_object", **fields)
            counts["objects"] += 1
        elif kind == "user":
            if users_passwords is not None and record["username"] not in existing_users():
                password = secrets.token_urlsafe(18)
                client.command("create_user", username=record["username"], password=password, role=record["role"])
                for database, role in (record.get("db_roles") or {}).items():
                    client.grant_db_role(record["username"], database, role)
                passwords.append(f"{record['username']} {password}\n")
                counts["users"] += 1
        elif kind == "end":
            ended = True
        else:
            raise ValueError(f"{path}: unknown record type {kind!r}")
    finish_collection()
    if users_passwords is not None and passwords:
        fd = os.open(users_passwords, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.writelines(passwords)
    if not ended:
        raise ValueError(f"{path}: the dump is truncated (no end record); what it held was restored")
    return counts


def _flush(client: Client, current: dict[str, Any], docs: list[dict[str, Any]], final: bool = False) -> None:
    """
    Store C{docs} keeping their C{_id} and C{_version} and the collection's
    id counter (C{restore_documents}; the last call of a collection also
    when it has no documents left), or, on a server without it, so that
    each keeps its C{_id}: missing ids are taken by placeholders.
    """
    exact: list[bool] = current["exact"]
    if exact[0] and (docs or (final and current["last_id"])):
        exact_docs = [doc if "_version" in doc else {**doc, "_version": 1} for doc in docs]
        try:
            client.command("restore_documents", collection=current["name"], docs=exact_docs, last_id=current["last_id"])
            return
        except (UnknownCommand, PermissionDenied):
            exact[0] = False
    if not docs:
        return
    payload: list[dict[str, Any]] = []
    for doc in docs:
        doc_id = doc.get("_id")
        if isinstance(doc_id, int) and not isinstance(doc_id, bool):
            while current["next_id"] < doc_id:
                payload.append({_GAP_MARK: True})
                current["next_id"] += 1
                current["gaps"] = True
            current["next_id"] = doc_id + 1
        payload.append({k: v for k, v in doc.items() if k not in ("_id", "_version")})
    for start in range(0, len(payload), _BATCH * 4):
        client.insert_many(current["name"], payload[start : start + _BATCH * 4])


def _create_index(client: Client, collection: str, index: dict[str, Any]) -> None:
    kind = index.get("index_type")
    fields = index.get("fields") or []
    if kind == "text":
        client.command("create_text_index", collection=collection, fields=fields)
    elif kind == "composite":
        client.command("create_composite_index", collection=collection, fields=fields)
    elif kind == "unique" or index.get("unique"):
        client.create_unique_index(collection, fields[0])
    else:
        client.create_index(collection, fields[0])


# -- import and export --------------------------------------------------------

FORMATS = ("jsonl", "json", "csv")
_CSV_TYPES = ("str", "int", "float", "bool", "json")


def guess_format(path: str, given: str | None) -> str:
    """The file format: C{given}, else from the extension (C{.csv}, C{.json}), else JSON lines."""
    if given:
        if given not in FORMATS:
            raise ValueError(f"unknown format {given!r}: expected one of {', '.join(FORMATS)}")
        return given
    lower = path.lower().removesuffix(".gz")
    if lower.endswith(".csv"):
        return "csv"
    if lower.endswith(".json"):
        return "json"
    return "jsonl"


@contextmanager
def _open_text(path: str, mode: str) -> Iterator[IO[str]]:
    """The file (gzip when it ends in C{.gz}); C{-} is stdin or stdout, left open."""
    if path == "-":
        stream = sys.stdin if "r" in mode else sys.stdout
        yield stream
        stream.flush() if "w" in mode else None
        return
    if path.endswith(".gz"):
        with gzip.open(path, mode + "t", encoding="utf-8", newline="") as f:
            yield f  # type: ignore[misc]
        return
    with open(path, mode, encoding="utf-8", newline="") as f:
        yield f


def _csv_value(text: str, kind: str | None, where: str) -> Any:
    if kind is None:
        # Inference: integers, floats, booleans, JSON objects/arrays, else text.
        if text == "":
            return None
        for convert in (int, float):
            try:
                return convert(text)
            except ValueError:
                pass
        if text in ("true", "false"):
            return text == "true"
        if text[:1] in "{[":
            try:
                return json.loads(text)
            except ValueError:
                pass
        return text
    if text == "" and kind != "str":
        return None
    try:
        if kind == "str":
            return text
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
        if kind == "bool":
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError(text)
            return text.lower() in ("true", "1")
        return json.loads(text)
    except ValueError:
        raise ValueError(f"{where}: {text[:40]!r} is not {kind}") from None


def read_docs(path: str, fmt: str) -> Iterator[dict[str, Any]]:
    """
    The documents of a file. CSV: the header names the fields; C{name:type}
    (C{str}, C{int}, C{float}, C{bool}, C{json}) fixes a column's type,
    otherwise each value's type is inferred; empty cells are left out.
    """
    with _open_text(path, "r") as f:
        if fmt == "json":
            docs = json.load(f)
            if not isinstance(docs, list):
                raise ValueError(f"{path}: expected a JSON array of documents")
            for i, doc in enumerate(docs):
                if not isinstance(doc, dict):
                    raise ValueError(f"{path}: element {i} is not an object")
                yield doc
        elif fmt == "jsonl":
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    doc = json.loads(line)
                except ValueError:
                    raise ValueError(f"{path}: line {number} is not JSON") from None
                if not isinstance(doc, dict):
                    raise ValueError(f"{path}: line {number} is not an object")
                yield doc
        else:
            reader = csv.reader(f)
            header = next(reader, None)
            if not header:
                return
            columns: list[tuple[str, str | None]] = []
            for cell in header:
                name, _, kind = cell.partition(":")
                if kind and kind not in _CSV_TYPES:
                    raise ValueError(f"{path}: column {cell!r}: unknown type (use {', '.join(_CSV_TYPES)})")
                columns.append((name, kind or None))
            for number, row in enumerate(reader, 2):
                record: dict[str, Any] = {}
                for (column, column_type), text in zip(columns, row, strict=False):
                    value = _csv_value(text, column_type, f"{path}: line {number}, column {column}")
                    if value is not None:
                        record[column] = value
                yield record


def import_docs(
    client: Client, collection: str, docs: Iterable[dict[str, Any]], *, progress: Progress = _no_progress
) -> int:
    """Insert C{docs} in batches (each batch all-or-nothing); how many were inserted."""
    total = 0
    batch: list[dict[str, Any]] = []
    for doc in docs:
        batch.append({k: v for k, v in doc.items() if k not in ("_id", "_version")})
        if len(batch) >= _BATCH:
            client.insert_many(collection, batch)
            total += len(batch)
            batch = []
            progress(collection, total, None)
    if batch:
        client.insert_many(collection, batch)
        total += len(batch)
    progress(collection, total, total)
    return total


def export_docs(
    client: Client,
    collection: str,
    path: str,
    fmt: str,
    *,
    query: dict[str, Any] | None = None,
    fields: list[str] | None = None,
) -> int:
    """Write the matching documents to C{path}; how many. CSV columns: C{fields}, else every field seen."""
    count = 0
    with _open_text(path, "w") as out:
        if fmt == "csv":
            columns = list(fields or [])
            if not columns:
                for doc in client.iter_find(collection, query):
                    columns.extend(k for k in doc if k not in columns)
            writer = csv.writer(out)
            writer.writerow(columns)
            for doc in client.iter_find(collection, query):
                writer.writerow([_csv_cell(doc.get(c)) for c in columns])
                count += 1
        elif fmt == "json":
            out.write("[")
            for doc in client.iter_find(collection, query):
                out.write(("," if count else "") + "\n" + json.dumps(_pick(doc, fields), ensure_ascii=False))
                count += 1
            out.write("\n]\n")
        else:
            for doc in client.iter_find(collection, query):
                out.write(json.dumps(_pick(doc, fields), ensure_ascii=False, separators=(",", ":")) + "\n")
                count += 1
    return count


def _pick(doc: dict[str, Any], fields: list[str] | None) -> dict[str, Any]:
    return doc if not fields else {k: doc[k] for k in fields if k in doc}


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
