"""
The one place the engine meets its SQLite binding: APSW with its bundled
SQLite (L{apsw}, installed as C{apsw-sqlite3mc}, which also carries the
SQLite3MultipleCiphers codec used for encryption at rest).

APSW differs from the standard library's C{sqlite3} in ways the engine
relies on: there are no implicit transactions (callers issue C{BEGIN} and
C{COMMIT}), rows are tuples, errors are L{apsw.Error} subclasses named
after SQLite's result codes, and a Python exception raised inside an SQL
function reaches the caller as itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

import apsw

from oxidb.atrest import AtRestKey, EncryptedError, NotEncryptedError, WrongKeyError


class Cursor(Protocol):
    """The rows of a statement; a row is a tuple of SQLite values (typed Any, as the engine reads them)."""

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """The part of L{apsw.Connection} the engine uses."""

    in_transaction: bool

    def execute(self, statements: str, bindings: Any = None) -> Cursor: ...

    def executemany(self, statements: str, sequenceofbindings: Iterable[Any]) -> Cursor: ...

    def changes(self) -> int: ...

    def last_insert_rowid(self) -> int: ...

    def limit(self, id: int, newval: int = -1) -> int: ...

    def set_progress_handler(self, callable: Callable[[], bool] | None, nsteps: int = 20) -> None: ...

    def close(self, force: bool = False) -> None: ...

#: Base class of every error SQLite reports.
Error = apsw.Error

#: A statement stopped by the progress handler (a read's time limit).
InterruptError = apsw.InterruptError

#: A string or blob longer than the connection's length limit.
TooBigError = apsw.TooBigError

#: The limit id of the longest string or blob (L{Connection.limit}).
LIMIT_LENGTH: int = apsw.SQLITE_LIMIT_LENGTH

#: Prepared statements each connection keeps.
STATEMENT_CACHE = 512

#: Milliseconds a connection waits for a lock before failing with C{BUSY}.
BUSY_TIMEOUT_MS = 30000

#: Errors an operation's own data causes (the standard library's
#: C{IntegrityError} and C{DataError}): the writer hands them to the caller
#: as they are, any other non-fatal SQLite error as a storage error.
DATA_ERRORS = (apsw.ConstraintError, apsw.TooBigError, apsw.MismatchError, apsw.RangeError)

#: Errors after which the writer gives up on a whole batch: the file or the
#: process is in trouble, not the operation.
_FATAL = (apsw.FullError, apsw.IOError, apsw.CorruptError, apsw.NoMemError)


#: The first bytes of a plain SQLite database file (an encrypted one starts
#: with ciphertext).
PLAIN_HEADER = b"SQLite format 3\x00"


def open_connection(path: str, key: AtRestKey | None = None) -> Connection:
    """
    A connection to the database file at C{path} (created if missing),
    encrypted with C{key}'s database key if given (a new file is created
    encrypted; see L{check_key} for an existing one).
    """
    conn = apsw.Connection(path, statementcachesize=STATEMENT_CACHE)
    if key is not None:
        conn.execute(key.database_pragma)
    conn.set_busy_timeout(BUSY_TIMEOUT_MS)
    return conn


def check_key(path: str, key: AtRestKey | None) -> None:
    """
    Refuse, with a clear L{oxidb.atrest.AtRestKeyError} and without writing
    anything, a database file that C{key} does not open: an encrypted file
    without a key (L{EncryptedError}), a plain file with one
    (L{NotEncryptedError}), or the wrong key (L{WrongKeyError}; SQLite alone
    would say "file is not a database"). A missing or empty file passes (it
    is created encrypted if a key is given).
    """
    try:
        with open(path, "rb") as f:
            head = f.read(len(PLAIN_HEADER))
    except FileNotFoundError:
        return
    if not head:
        return
    plain = head == PLAIN_HEADER
    if key is None:
        if not plain:
            raise EncryptedError(
                f"{path} is encrypted (or is not a database): set OXIDB_ENCRYPTION_KEY to its key file"
            )
        return
    if plain:
        raise NotEncryptedError(
            f"{path} is not encrypted but OXIDB_ENCRYPTION_KEY is set: unset it, or encrypt the data "
            "directory first (python -m oxidb.tools.rekey --data DIR --new KEYFILE)"
        )
    conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READWRITE)
    try:
        conn.execute(key.database_pragma)
        conn.execute("SELECT count(*) FROM sqlite_schema").fetchall()
    except apsw.NotADBError:
        raise WrongKeyError(f"{path} does not open with this encryption key (wrong key file?)") from None
    finally:
        conn.close()


def in_transaction(conn: Connection) -> bool:
    """Is a transaction open on C{conn} (read afresh: SQLite may end one on an error)?"""
    return conn.in_transaction


def is_fatal(error: BaseException) -> bool:
    """Does this error mean the disk or the file failed (not the statement)?"""
    return isinstance(error, _FATAL)


def copy_database(source: Connection, target: Connection) -> None:
    """
    Copy C{source}'s main database into C{target}'s with SQLite's online
    backup API, in one step (inside C{source}'s read transaction if it has
    one, so the copy is of that snapshot). An encrypted copy needs the
    source's page size, which an empty target takes before the first page.
    """
    (page_size,) = source.execute("PRAGMA page_size").fetchone()
    target.execute(f"PRAGMA page_size={int(page_size)}")
    assert isinstance(source, apsw.Connection) and isinstance(target, apsw.Connection)
    with target.backup("main", source, "main") as backup:
        backup.step(-1)


def register_function(conn: Connection, name: str, function: Callable[..., Any], arity: int) -> None:
    """Register a deterministic scalar SQL function on C{conn}."""
    assert isinstance(conn, apsw.Connection)
    conn.create_scalar_function(name, function, arity, deterministic=True)
