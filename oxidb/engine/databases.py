"""
Databases: named namespaces of collections inside the one SQLite file
(server.md 3.7).

A collection of database C{d} is known to the engine under its qualified
name C{d/<collection>}; a collection of the default database L{DEFAULT}
keeps its bare name. A client's collection name may not contain C{/}
(L{oxidb.engine.store.validate_collection_name}), so a qualified name is
never ambiguous, and a data directory written before databases existed
opens with every collection in L{DEFAULT}, unchanged. Everything keyed by
the collection name (tables, field/text/vector indexes, TTL indexes,
transactions' write sets) is therefore per database without knowing it.

Databases other than L{DEFAULT} are rows of C{oxi_databases(name)}. Names
follow L{NAME_RULE}; they are only ever SQL parameters, never part of a
statement's text.
"""

from __future__ import annotations

import re

from oxidb.engine import sqlite
from oxidb.errors import DatabaseNotFoundError, InvalidDatabaseNameError

#: The database every session starts in, and where a data directory written
#: before databases existed keeps its collections. It always exists.
DEFAULT = "oxidb"

#: Between the database and the collection in a qualified name.
SEPARATOR = "/"

#: The longest database name, in characters (all ASCII).
MAX_NAME_LENGTH = 64

#: The rule for a database name, for the docs.
NAME_RULE = (
    f"1 to {MAX_NAME_LENGTH} characters: ASCII letters, digits, `_` and `-`, starting with a letter or digit"
)

_NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_-]{{0,{MAX_NAME_LENGTH - 1}}}")

#: The catalog table of the databases other than L{DEFAULT}.
SCHEMA = "CREATE TABLE IF NOT EXISTS oxi_databases(name TEXT PRIMARY KEY) WITHOUT ROWID"


def _shown(name: object) -> str:
    """A name for an error text, cut short when a client sent a huge one."""
    text = name if isinstance(name, str) else repr(name)
    return text if len(text) <= MAX_NAME_LENGTH else text[:MAX_NAME_LENGTH] + "..."


def is_valid_name(name: object) -> bool:
    """Does C{name} follow L{NAME_RULE}?"""
    if name == DEFAULT:  # most requests: no pattern match
        return True
    return isinstance(name, str) and _NAME.fullmatch(name) is not None


def validate_name(name: object) -> str:
    """C{name} if it follows L{NAME_RULE}, else L{InvalidDatabaseNameError}."""
    if not is_valid_name(name):
        raise InvalidDatabaseNameError(_shown(name))
    assert isinstance(name, str)
    return name


def qualify(database: str, collection: str) -> str:
    """The engine's name of C{collection} in C{database}."""
    if database == DEFAULT:
        return collection
    return f"{database}{SEPARATOR}{collection}"


def split(name: str) -> tuple[str, str]:
    """C{(database, collection)} of a qualified name."""
    database, sep, collection = name.partition(SEPARATOR)
    if not sep:
        return DEFAULT, name
    return database, collection


def database_of(name: str) -> str:
    """The database of a qualified collection name."""
    return split(name)[0]


def bare(name: str) -> str:
    """The collection part of a qualified name (what a client calls it)."""
    return split(name)[1]


# --- catalog ----------------------------------------------------------------------


def exists(conn: sqlite.Connection, database: str) -> bool:
    if database == DEFAULT:
        return True
    row = conn.execute("SELECT 1 FROM oxi_databases WHERE name = ?", (database,)).fetchone()
    return row is not None


def check_exists(conn: sqlite.Connection, database: str) -> None:
    """L{DatabaseNotFoundError} unless C{database} exists."""
    if not exists(conn, database):
        raise DatabaseNotFoundError(_shown(database))


def list_names(conn: sqlite.Connection) -> list[str]:
    """Every database, L{DEFAULT} first, then by name."""
    rows = conn.execute("SELECT name FROM oxi_databases ORDER BY name").fetchall()
    return [DEFAULT, *(row[0] for row in rows)]


def add(conn: sqlite.Connection, database: str) -> None:
    conn.execute("INSERT INTO oxi_databases(name) VALUES (?)", (database,))


def remove(conn: sqlite.Connection, database: str) -> None:
    conn.execute("DELETE FROM oxi_databases WHERE name = ?", (database,))


def collection_names(conn: sqlite.Connection, database: str) -> list[str]:
    """The qualified names of C{database}'s collections, sorted."""
    if database == DEFAULT:
        rows = conn.execute("SELECT name FROM oxi_collections WHERE instr(name, ?) = 0 ORDER BY name", (SEPARATOR,))
    else:
        # Every qualified name of the database sorts between "d/" and "d0"
        # ("0" follows "/" in ASCII).
        low = database + SEPARATOR
        high = database + chr(ord(SEPARATOR) + 1)
        rows = conn.execute(
            "SELECT name FROM oxi_collections WHERE name >= ? AND name < ? ORDER BY name", (low, high)
        )
    return [row[0] for row in rows]
