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

import apsw

#: A database connection.
Connection = apsw.Connection

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


def open_connection(path: str) -> Connection:
    """A connection to the database file at C{path} (created if missing)."""
    conn = apsw.Connection(path, statementcachesize=STATEMENT_CACHE)
    conn.set_busy_timeout(BUSY_TIMEOUT_MS)
    return conn


def is_fatal(error: BaseException) -> bool:
    """Does this error mean the disk or the file failed (not the statement)?"""
    return isinstance(error, _FATAL)


def copy_database(source: Connection, target: Connection) -> None:
    """
    Copy C{source}'s main database into C{target}'s with SQLite's online
    backup API, in one step (inside C{source}'s read transaction if it has
    one, so the copy is of that snapshot).
    """
    with target.backup("main", source, "main") as backup:
        backup.step(-1)
