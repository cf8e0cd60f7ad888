"""
The SQLite layout of the engine and the low-level access to it.

One database file, C{oxidb.sqlite3}, in the data directory, in WAL mode with
incremental auto-vacuum (so that C{compact} can give pages back to the file
system). Catalog tables:

  - C{oxi_meta(key, value)}: C{last_applied} (Raft), C{next_table} (the
    counter naming collection tables, never reused), C{key_format} and
    C{text_format} (fingerprints of the key encoding and the tokenizer; when
    they change, indexes are rebuilt on open).
  - C{oxi_collections(name, tbl, last_id)}: one row per collection; C{tbl} is
    the SQL table holding its documents, C{last_id} the persisted high-water
    mark of its ids (deleting a collection deletes the row, so a re-created
    collection starts at 1 again).
  - C{oxi_indexes(collection, kind, name, fields, is_unique, seq)}: index
    definitions. C{kind} is C{field} (also unique indexes), C{composite},
    C{text} or C{vector}; C{seq} orders them by creation.
  - C{oxi_vector_specs(seq, dimension, metric)}: the parameters of the
    vector index C{seq}.
  - C{oxi_databases(name)}: the databases besides the default one
    (L{oxidb.engine.databases}); a collection's C{name} here is its
    qualified name C{<database>/<collection>}, or its bare name in the
    default database.

A collection's table is C{<tbl>(_id INTEGER PRIMARY KEY, _version INTEGER,
doc BLOB, doc_size INTEGER, k<seq>_<n> BLOB...)} with the whole document
(including C{_id} and C{_version}) in SQLite's binary JSONB form in C{doc}:
written with L{doc_values}, read back as compact JSON text with L{DOC_TEXT},
and read field by field with C{doc -> '$.path'} without parsing the rest of
the document. C{doc_size} is the UTF-8 length of that text, stored when the
row is written so that the aggregation budget needs no C{json(doc)} per row
(L{TEXT_SIZE}); it is NULL in rows written before the column existed (tables
of older files get the column on open, L{add_size_columns}), and by such
code, whose rows are measured instead. A field or composite index C{seq}
adds one key column C{k<seq>_<n>} per indexed path, holding the
L{oxidb.engine.keys} key of the document at that path (computed in Python on
every write, from the document the writer already holds), and a plain SQL
index C{<tbl>_i<seq>} over those columns. A text index is two posting tables
C{<tbl>_tt(term, id, tf)} and C{<tbl>_td(id, ntok)}. A vector index C{seq}
is two tables, C{<tbl>_v<seq>(id, rev, vec)} (the document's vector as
little-endian float32) and C{<tbl>_v<seq>_gone(id, rev)} (documents whose
vector went away); C{rev} orders the changes for the in-memory HNSW cache
(L{oxidb.engine.vectors}).

C{oxi_meta.layout} is L{LAYOUT}; older databases are migrated on open:
layout 1 had expression indexes over the key functions instead of key
columns, layouts 1 and 2 stored documents as JSON text.

Everything here takes a connection and runs inside whatever transaction the
caller opened; nothing commits on its own.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any

import attrs

from oxidb.atrest import AtRestKey
from oxidb.engine import databases, keys, sqlite
from oxidb.errors import InvalidQueryError, ReservedCollectionError

#: The database file's name inside the data directory.
DB_FILENAME = "oxidb.sqlite3"

SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")

#: Page size of a new database file (an existing file keeps its own). Larger
#: than SQLite's 4096 because every commit writes each page it dirtied to
#: the WAL as one frame: a batch of inserts touches fewer, fuller index
#: pages (a 500-document batch with four field indexes commits about 40%
#: faster), at the cost of larger frames for single-document writes.
PAGE_SIZE = 16384

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS oxi_meta(key TEXT PRIMARY KEY, value) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS oxi_collections("
    " name TEXT PRIMARY KEY, tbl TEXT NOT NULL UNIQUE, last_id INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS oxi_indexes("
    " collection TEXT NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL,"
    " fields TEXT NOT NULL, is_unique INTEGER NOT NULL, seq INTEGER NOT NULL,"
    " PRIMARY KEY (collection, kind, name))",
    "CREATE TABLE IF NOT EXISTS oxi_vector_specs("
    " seq INTEGER PRIMARY KEY, dimension INTEGER NOT NULL, metric TEXT NOT NULL)",
    databases.SCHEMA,
)

#: The table layout this code writes (see the module docstring).
LAYOUT = 3

#: The column holding the UTF-8 length of a document's JSON text.
DOC_SIZE = "doc_size"

#: The SQL expression of a row's JSON text length: stored, or measured for
#: a row written without it.
TEXT_SIZE = f"coalesce({DOC_SIZE}, octet_length(json(doc)))"


def doc_values(slot: int) -> str:
    """
    The SQL values of the C{doc} and L{DOC_SIZE} columns from the document's
    JSON text, the statement's parameter C{slot} (1-based; later plain C{?}
    parameters number on from it).
    """
    return f"jsonb(?{slot}), octet_length(?{slot})"


def doc_assignments(slot: int) -> str:
    """The C{SET} assignments of L{doc_values}."""
    return f"doc = jsonb(?{slot}), {DOC_SIZE} = octet_length(?{slot})"

#: The SQL expression reading a stored document back as compact JSON text
#: (the text it was stored from).
DOC_TEXT = "json(doc)"

INDEX_FIELD = "field"
INDEX_COMPOSITE = "composite"
INDEX_TEXT = "text"
INDEX_VECTOR = "vector"

#: The index kinds backed by key columns of the collection's table.
KEYED_KINDS = (INDEX_FIELD, INDEX_COMPOSITE)

#: The name of a collection's text index (engine.md 4.4).
TEXT_INDEX_NAME = "_text"


def validate_collection_name(name: object) -> str:
    """
    The name if it is a safe collection name (engine.md 1.6 REC: non-empty,
    no C{/}, C{\\} or NUL, no leading C{.}), else L{InvalidQueryError}.
    """
    if (
        not isinstance(name, str)
        or not name
        or name[0] == "."
        or "/" in name
        or "\\" in name
        or "\x00" in name
    ):
        raise InvalidQueryError(f"invalid collection name: {name}")
    return name


def validate_qualified_name(name: object) -> str:
    """
    The name if it is a collection's qualified name (L{oxidb.engine.databases}):
    a valid collection name, optionally after C{<database>/} with a valid
    database name; else L{InvalidQueryError}.
    """
    if isinstance(name, str) and databases.SEPARATOR in name:
        database, collection = databases.split(name)
        if not databases.is_valid_name(database) or databases.SEPARATOR in collection:
            raise InvalidQueryError(f"invalid collection name: {name}")
        validate_collection_name(collection)
        return name
    return validate_collection_name(name)


#: Collection names starting with this are the server's own (C{_procedures},
#: C{_schedules} and any future internal collection). Clients may not name
#: them in generic commands (CRUD, indexes, aggregation, transactions,
#: search, collection admin); only the commands that own them touch them.
#: Upstream allows such names (engine.md 1.4, 1.6); we reserve the prefix
#: so that an internal collection is never reachable by accident.
RESERVED_PREFIX = "_"


def is_reserved_collection(name: object) -> bool:
    """Is C{name} a collection name reserved for the server?"""
    return isinstance(name, str) and name.startswith(RESERVED_PREFIX)


def check_client_collection(name: object) -> None:
    """L{ReservedCollectionError} if a client may not name this collection."""
    if is_reserved_collection(name):
        raise ReservedCollectionError(name)


@attrs.frozen
class IndexDef:
    """
    One index definition.

    @ivar kind: L{INDEX_FIELD}, L{INDEX_COMPOSITE}, L{INDEX_TEXT} or
        L{INDEX_VECTOR}.
    @ivar name: the wire name (field path, joined composite name, C{_text},
        C{_vec_<field>}).
    @ivar fields: the indexed paths.
    @ivar unique: a unique field index.
    @ivar seq: creation order; also names the SQL index C{<tbl>_i<seq>}.
    """

    kind: str
    name: str
    fields: tuple[str, ...]
    unique: bool
    seq: int

    def sql_name(self, tbl: str) -> str:
        return f"{tbl}_i{self.seq}"

    @property
    def columns(self) -> tuple[str, ...]:
        """The key columns of a field or composite index, one per field."""
        return tuple(f"k{self.seq}_{n}" for n in range(len(self.fields)))

    def describe(self) -> dict[str, Any]:
        """The C{list_indexes} descriptor (engine.md 4.6)."""
        if self.kind == INDEX_FIELD:
            index_type = "unique" if self.unique else "field"
        else:
            index_type = self.kind
        return {"name": self.name, "index_type": index_type, "fields": list(self.fields), "unique": self.unique}


@attrs.frozen
class CollectionInfo:
    """A collection's catalog row."""

    name: str
    tbl: str
    last_id: int


def connect(path: str, *, writer: bool, synchronous: str = "FULL", key: AtRestKey | None = None) -> sqlite.Connection:
    """
    Open a connection with the engine's SQL functions registered (encrypted
    with C{key} if given).

    Callers issue C{BEGIN}/C{COMMIT} themselves (APSW has no implicit
    transactions). Reader connections are C{query_only}.
    """
    if synchronous not in SYNCHRONOUS_MODES:
        raise ValueError(f"synchronous must be one of {', '.join(SYNCHRONOUS_MODES)}: {synchronous!r}")
    conn = sqlite.open_connection(path, key)
    keys.register_functions(conn)
    conn.execute("PRAGMA temp_store=MEMORY")
    if writer:
        # page_size and auto_vacuum only take effect on a new, empty file.
        conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            conn.close()
            raise OSError(f"cannot switch {path} to WAL mode (got {mode})")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.execute("PRAGMA cache_size=-65536")
    else:
        conn.execute("PRAGMA query_only=1")
        # Each reader thread caches its own pages, so five readers held up
        # to 160 MiB of copies of one file: 16 MiB each, with the OS page
        # cache behind them, kept a 100k-document server at 239 MiB (was
        # 317) with no read slower (bench/engine_bench.py).
        conn.execute("PRAGMA cache_size=-16384")
    return conn


def init_schema(conn: sqlite.Connection) -> None:
    """Create the catalog tables if missing (inside the caller's transaction)."""
    for statement in _SCHEMA:
        conn.execute(statement)


# --- meta -------------------------------------------------------------------


def get_meta(conn: sqlite.Connection, key: str, default: Any = None) -> Any:
    row = conn.execute("SELECT value FROM oxi_meta WHERE key = ?", (key,)).fetchone()
    return default if row is None else row[0]


def set_meta(conn: sqlite.Connection, key: str, value: Any) -> None:
    conn.execute(
        "INSERT INTO oxi_meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        (key, value),
    )


def delete_meta(conn: sqlite.Connection, key: str) -> None:
    conn.execute("DELETE FROM oxi_meta WHERE key = ?", (key,))


def new_table_name(conn: sqlite.Connection) -> str:
    """A fresh, never reused SQL table name for a collection."""
    n = int(get_meta(conn, "next_table", 1))
    set_meta(conn, "next_table", n + 1)
    return f"c{n}"


# --- collections ------------------------------------------------------------


def get_collection(conn: sqlite.Connection, name: str) -> CollectionInfo | None:
    row = conn.execute("SELECT tbl, last_id FROM oxi_collections WHERE name = ?", (name,)).fetchone()
    if row is None:
        return None
    return CollectionInfo(name, row[0], row[1])


def list_collections(conn: sqlite.Connection) -> list[CollectionInfo]:
    rows = conn.execute("SELECT name, tbl, last_id FROM oxi_collections ORDER BY name").fetchall()
    return [CollectionInfo(*row) for row in rows]


def create_table(conn: sqlite.Connection, tbl: str, key_columns: Iterable[str] = ()) -> None:
    """Create a collection table (with these key columns)."""
    columns = "".join(f", {column} BLOB" for column in key_columns)
    conn.execute(
        f"CREATE TABLE {tbl}(_id INTEGER PRIMARY KEY, _version INTEGER NOT NULL, doc BLOB NOT NULL,"
        f" {DOC_SIZE} INTEGER{columns})"
    )


def create_collection(conn: sqlite.Connection, name: str) -> CollectionInfo:
    """Create the table and catalog row of a new collection."""
    tbl = new_table_name(conn)
    create_table(conn, tbl)
    conn.execute("INSERT INTO oxi_collections(name, tbl, last_id) VALUES (?, ?, 0)", (name, tbl))
    set_meta(conn, _INCARNATION + name, tbl)
    return CollectionInfo(name, tbl, 0)


#: Meta key prefix of a collection's incarnation (see L{incarnation}).
_INCARNATION = "incarnation:"


def incarnation(conn: sqlite.Connection, name: str) -> str | None:
    """
    What tells this life of a collection from an earlier one of the same
    name (ids and versions start again at 1 when a dropped name is created
    anew, engine.md 1.6): the table name it was created with, which
    L{compact} does not change. C{""} for a collection created before
    incarnations were recorded; None if the collection does not exist.
    """
    if get_collection(conn, name) is None:
        return None
    return str(get_meta(conn, _INCARNATION + name, ""))


def drop_collection(conn: sqlite.Connection, info: CollectionInfo) -> None:
    """Drop a collection's tables, indexes and catalog rows."""
    conn.execute(f"DROP TABLE IF EXISTS {info.tbl}")
    drop_text_tables(conn, info.tbl)
    for index in list_index_defs(conn, info.name):
        if index.kind == INDEX_VECTOR:
            drop_vector_tables(conn, info.tbl, index)
            conn.execute("DELETE FROM oxi_vector_specs WHERE seq = ?", (index.seq,))
    conn.execute("DELETE FROM oxi_indexes WHERE collection = ?", (info.name,))
    conn.execute("DELETE FROM oxi_collections WHERE name = ?", (info.name,))
    delete_meta(conn, _INCARNATION + info.name)


def set_last_id(conn: sqlite.Connection, name: str, last_id: int) -> None:
    conn.execute("UPDATE oxi_collections SET last_id = ? WHERE name = ?", (last_id, name))


def set_table(conn: sqlite.Connection, name: str, tbl: str) -> None:
    conn.execute("UPDATE oxi_collections SET tbl = ? WHERE name = ?", (tbl, name))


# --- index catalog ----------------------------------------------------------


def list_index_defs(conn: sqlite.Connection, collection: str) -> list[IndexDef]:
    """A collection's indexes in creation order."""
    rows = conn.execute(
        "SELECT kind, name, fields, is_unique, seq FROM oxi_indexes WHERE collection = ? ORDER BY seq",
        (collection,),
    ).fetchall()
    return [IndexDef(kind, name, tuple(json.loads(fields)), bool(uniq), seq) for kind, name, fields, uniq, seq in rows]


def add_index_def(
    conn: sqlite.Connection, collection: str, kind: str, name: str, fields: Iterable[str], unique: bool
) -> IndexDef:
    seq = int(get_meta(conn, "next_index", 1))
    set_meta(conn, "next_index", seq + 1)
    fields = tuple(fields)
    conn.execute(
        "INSERT INTO oxi_indexes(collection, kind, name, fields, is_unique, seq) VALUES (?, ?, ?, ?, ?, ?)",
        (collection, kind, name, json.dumps(list(fields), ensure_ascii=False), int(unique), seq),
    )
    return IndexDef(kind, name, fields, unique, seq)


def set_index_unique(conn: sqlite.Connection, collection: str, index: IndexDef) -> IndexDef:
    conn.execute(
        "UPDATE oxi_indexes SET is_unique = 1 WHERE collection = ? AND kind = ? AND name = ?",
        (collection, index.kind, index.name),
    )
    return attrs.evolve(index, unique=True)


def remove_index_def(conn: sqlite.Connection, collection: str, index: IndexDef) -> None:
    conn.execute(
        "DELETE FROM oxi_indexes WHERE collection = ? AND kind = ? AND name = ?",
        (collection, index.kind, index.name),
    )


def key_columns(defs: Iterable[IndexDef]) -> list[tuple[str, str]]:
    """C{(column, path)} of every key column of these indexes, in order."""
    return [
        (column, path)
        for index in defs
        if index.kind in KEYED_KINDS
        for column, path in zip(index.columns, index.fields, strict=True)
    ]


def column_map(defs: Iterable[IndexDef]) -> dict[str, str]:
    """The key column to read each indexed path from (the oldest index's)."""
    columns: dict[str, str] = {}
    for column, path in key_columns(defs):
        columns.setdefault(path, column)
    return columns


def fill_key_columns(conn: sqlite.Connection, tbl: str, index: IndexDef) -> None:
    """Compute an index's key columns of every row from the stored texts."""
    assignments = ", ".join(
        f"{column} = {keys.key_sql(path)}" for column, path in zip(index.columns, index.fields, strict=True)
    )
    conn.execute(f"UPDATE {tbl} SET {assignments}")


def create_sql_index(conn: sqlite.Connection, tbl: str, index: IndexDef, *, add_columns: bool = True) -> None:
    """
    Back a field or composite index: add and fill its key columns (unless
    C{add_columns} is false: the table already has them, filled) and index
    them.
    """
    if add_columns:
        for column in index.columns:
            conn.execute(f"ALTER TABLE {tbl} ADD COLUMN {column} BLOB")
        fill_key_columns(conn, tbl, index)
    conn.execute(f"CREATE INDEX {index.sql_name(tbl)} ON {tbl}({', '.join(index.columns)})")


def drop_sql_index(conn: sqlite.Connection, tbl: str, index: IndexDef) -> None:
    """Drop a field or composite index and its key columns."""
    conn.execute(f"DROP INDEX IF EXISTS {index.sql_name(tbl)}")
    for column in index.columns:
        conn.execute(f"ALTER TABLE {tbl} DROP COLUMN {column}")


def migrate_layout(conn: sqlite.Connection) -> None:
    """
    Bring a database to L{LAYOUT} (inside the caller's transaction): layout 1
    expression indexes become key columns with plain indexes, the JSON text
    documents of layouts 1 and 2 become JSONB. A database without
    collections is simply marked.
    """
    layout = get_meta(conn, "layout")
    if layout is None:
        layout = 1 if list_collections(conn) else LAYOUT
    if layout == 1:
        for info in list_collections(conn):
            for index in list_index_defs(conn, info.name):
                if index.kind in KEYED_KINDS:
                    conn.execute(f"DROP INDEX IF EXISTS {index.sql_name(info.tbl)}")
                    create_sql_index(conn, info.tbl, index)
        layout = 2
    if layout == 2:
        for info in list_collections(conn):
            conn.execute(f"UPDATE {info.tbl} SET doc = jsonb(doc) WHERE typeof(doc) = 'text'")
        layout = LAYOUT
    if layout != LAYOUT:
        raise OSError(f"database layout {layout} is newer than this server understands ({LAYOUT})")
    set_meta(conn, "layout", LAYOUT)
    add_size_columns(conn)


def add_size_columns(conn: sqlite.Connection) -> None:
    """
    Give every collection table without a L{DOC_SIZE} column one (NULL in its
    rows: they are measured when needed). The layout number stays: older code
    opens the file and writes rows without sizes, which read as such.
    """
    for info in list_collections(conn):
        present = conn.execute("SELECT 1 FROM pragma_table_info(?) WHERE name = ?", (info.tbl, DOC_SIZE)).fetchone()
        if present is None:
            conn.execute(f"ALTER TABLE {info.tbl} ADD COLUMN {DOC_SIZE} INTEGER")


# --- text postings ----------------------------------------------------------


def create_text_tables(conn: sqlite.Connection, tbl: str) -> None:
    conn.execute(
        f"CREATE TABLE {tbl}_tt(term TEXT NOT NULL, id INTEGER NOT NULL, tf INTEGER NOT NULL,"
        " PRIMARY KEY (term, id)) WITHOUT ROWID"
    )
    conn.execute(f"CREATE INDEX {tbl}_tt_id ON {tbl}_tt(id)")
    conn.execute(f"CREATE TABLE {tbl}_td(id INTEGER PRIMARY KEY, ntok INTEGER NOT NULL)")


def drop_text_tables(conn: sqlite.Connection, tbl: str) -> None:
    conn.execute(f"DROP TABLE IF EXISTS {tbl}_tt")
    conn.execute(f"DROP TABLE IF EXISTS {tbl}_td")


# --- vector tables ----------------------------------------------------------


def vector_table(tbl: str, index: IndexDef) -> str:
    """The table of a vector index's vectors (C{<tbl>_v<seq>})."""
    return f"{tbl}_v{index.seq}"


def create_vector_tables(conn: sqlite.Connection, tbl: str, index: IndexDef) -> None:
    vt = vector_table(tbl, index)
    conn.execute(f"CREATE TABLE {vt}(id INTEGER PRIMARY KEY, rev INTEGER NOT NULL, vec BLOB NOT NULL)")
    conn.execute(f"CREATE INDEX {vt}_rev ON {vt}(rev)")
    conn.execute(f"CREATE TABLE {vt}_gone(id INTEGER PRIMARY KEY, rev INTEGER NOT NULL)")
    conn.execute(f"CREATE INDEX {vt}_gone_rev ON {vt}_gone(rev)")


def drop_vector_tables(conn: sqlite.Connection, tbl: str, index: IndexDef) -> None:
    vt = vector_table(tbl, index)
    conn.execute(f"DROP TABLE IF EXISTS {vt}")
    conn.execute(f"DROP TABLE IF EXISTS {vt}_gone")


def get_vector_spec(conn: sqlite.Connection, index: IndexDef) -> tuple[int, str]:
    """C{(dimension, metric)} of a vector index."""
    row = conn.execute("SELECT dimension, metric FROM oxi_vector_specs WHERE seq = ?", (index.seq,)).fetchone()
    if row is None:
        raise OSError(f"vector index {index.name} has no parameters (damaged catalog)")
    return int(row[0]), str(row[1])


def set_vector_spec(conn: sqlite.Connection, index: IndexDef, dimension: int, metric: str) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO oxi_vector_specs(seq, dimension, metric) VALUES (?, ?, ?)",
        (index.seq, dimension, metric),
    )


def remove_vector_spec(conn: sqlite.Connection, index: IndexDef) -> None:
    conn.execute("DELETE FROM oxi_vector_specs WHERE seq = ?", (index.seq,))


# --- sizes ------------------------------------------------------------------


def storage_bytes(conn: sqlite.Connection, tbl: str) -> int:
    """
    Bytes of database pages used by a collection: its table, its expression
    indexes, its text posting tables and its vector tables (measured with the C{dbstat} virtual
    table, so this counts whole pages including their free space).
    """
    names = [
        row[0]
        for row in conn.execute(
            "SELECT name FROM sqlite_schema WHERE tbl_name IN (?, ?, ?) OR tbl_name GLOB ?",
            (tbl, f"{tbl}_tt", f"{tbl}_td", f"{tbl}_v[0-9]*"),
        )
    ]
    total = 0
    for name in names:
        row = conn.execute("SELECT sum(pgsize) FROM dbstat WHERE name = ?", (name,)).fetchone()
        total += row[0] or 0
    return total


def db_path(data_dir: str) -> str:
    return os.path.join(data_dir, DB_FILENAME)
