"""
The client's exceptions.

L{ServerError} and its subclasses are the server's error replies: each
subclass mirrors one server error type of L{oxidb.errors} (it also inherits
from it, so C{except oxidb.errors.TransactionConflictError} works on either
side of the wire), and its C{str()} is the server's text unchanged.
L{error_from_reply} picks the subclass from the text's stable prefix.

The others are the client's own: L{ConnectionFailed} (no server could be
reached), L{UnknownOutcome} (a write was sent but its reply was lost, so it
may or may not have been applied) and L{ClientProtocolError} (a reply that
makes no sense), and L{InsertStreamFailed} (a bulk load stopped at a
failed batch).
"""

from __future__ import annotations

import re
from typing import Any

from oxidb import errors as server

__all__ = [
    "AuthenticationFailed",
    "AuthenticationRequired",
    "ClientError",
    "ClientProtocolError",
    "CollectionExists",
    "ConnectionFailed",
    "DatabaseNotFound",
    "InsertStreamFailed",
    "InvalidPipeline",
    "InvalidQuery",
    "NoLeader",
    "NoTransaction",
    "NotLeader",
    "PermissionDenied",
    "RaftError",
    "ServerBusy",
    "ServerError",
    "TransactionActive",
    "TransactionConflict",
    "UniqueViolation",
    "UnknownCommand",
    "UnknownOutcome",
    "WriteLost",
    "error_from_reply",
]


class ClientError(Exception):
    """Base class of everything this client raises."""


class ConnectionFailed(ClientError):
    """No server of the seed list could be reached (or logged in to) in the attempts allowed."""


class UnknownOutcome(ClientError):
    """
    A write was sent and the connection broke before its reply: it may have
    been applied or not. The client never retries such a write by itself.

    @ivar request: the request whose outcome is unknown.
    """

    def __init__(self, message: str, request: dict[str, object]) -> None:
        super().__init__(message)
        self.request = request


class ClientProtocolError(ClientError):
    """A reply that could not be decoded or does not fit the request."""


class InsertStreamFailed(ClientError):
    """
    An insert stream (C{Client.insert_stream}) stopped at a batch that did
    not land. The documents of the stream are numbered from 0 in the order
    they were read.

    @ivar inserted: documents C{0 .. inserted - 1} landed (every batch before
        the first failed one).
    @ivar outcomes: the first batch that did not land and every batch sent
        after it (they were already in flight), in order, each with what
        became of it (L{oxidb.client.core.BatchOutcome}).
    @ivar resume_at: the first document never sent: documents from here on
        were not read from the iterable, or read and not sent.
    """

    def __init__(self, message: str, inserted: int, outcomes: list[Any], resume_at: int) -> None:
        super().__init__(message)
        self.inserted = inserted
        self.outcomes = outcomes
        self.resume_at = resume_at


class ServerError(ClientError, server.OxiError):
    """
    An error reply. C{str()} and L{message} are the server's text.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)

    def __str__(self) -> str:
        return str(self.args[0])


class UnknownCommand(ServerError, server.UnknownCommandError):
    pass


class BadRequest(ServerError, server.BadRequestError):
    pass


class ServerBusy(ServerError, server.ServerBusyError):
    """The server refused the request for lack of a resource: it was not run; retry later."""


class InvalidQuery(ServerError, server.InvalidQueryError):
    pass


class InvalidPipeline(ServerError, server.InvalidPipelineError):
    pass


class DatabaseNotFound(ServerError, server.DatabaseNotFoundError):
    """The database a request or the connection's URL names does not exist."""


class UniqueViolation(ServerError, server.UniqueViolationError):
    pass


class CollectionExists(ServerError, server.CollectionExistsError):
    pass


class IndexNotFound(ServerError, server.IndexNotFoundError):
    pass


class TransactionConflict(ServerError, server.TransactionConflictError):
    """The commit's optimistic check failed: nothing was applied; run the transaction again."""


class TransactionActive(ServerError, server.TransactionActiveError):
    pass


class NoTransaction(ServerError, server.NoTransactionError):
    pass


class AuthenticationRequired(ServerError, server.AuthenticationRequiredError):
    pass


class AuthenticationFailed(ServerError, server.AuthenticationFailedError):
    pass


class LoginThrottled(ServerError, server.LoginThrottledError):
    pass


class PermissionDenied(ServerError, server.PermissionDeniedError):
    pass


class RaftError(ServerError, server.RaftError):
    pass


class NotLeader(RaftError, server.NotLeaderError):
    """
    The node is not the leader and does not forward: the write was not
    applied. C{leader_id} is the leader's node id when the node knows it.
    """

    @property
    def leader_id(self) -> int | None:
        match = re.search(r"Some\((\d+)\)", str(self))
        return int(match.group(1)) if match else None


class NoLeader(RaftError):
    """No leader was elected in time: the write was not run; retry it."""


class WriteLost(RaftError):
    """The write's log entry was replaced in a leader change: it was not applied; retry it."""


class ReplyTooLarge(ServerError, server.EncodedReplyTooLargeError):
    pass


class InternalError(ServerError, server.InternalError):
    pass


# Longest prefixes first where one extends another.
_PREFIXES: tuple[tuple[str, type[ServerError]], ...] = (
    ("unknown command: ", UnknownCommand),
    ("missing ", BadRequest),
    ("server busy: ", ServerBusy),
    ("too many failed logins", LoginThrottled),
    ("invalid query: ", InvalidQuery),
    ("invalid pipeline: ", InvalidPipeline),
    ("unique constraint violated: ", UniqueViolation),
    ("collection already exists: ", CollectionExists),
    ("database not found: ", DatabaseNotFound),
    ("index not found: ", IndexNotFound),
    ("transaction conflict ", TransactionConflict),
    ("transaction already active", TransactionActive),
    ("no active transaction", NoTransaction),
    ("authentication required", AuthenticationRequired),
    ("authentication failed", AuthenticationFailed),
    ("permission denied: ", PermissionDenied),
    ("raft error: has to forward request to", NotLeader),
    ("raft error: no leader elected", NoLeader),
    ("raft error: the write was lost in a leader change", WriteLost),
    ("raft error: ", RaftError),
    ("reply too large: ", ReplyTooLarge),
    ("internal error", InternalError),
)


def error_from_reply(message: str) -> ServerError:
    """The exception for an error reply's text (L{ServerError} when no prefix is known)."""
    for prefix, cls in _PREFIXES:
        if message.startswith(prefix):
            return cls(message)
    if "conflict" in message.lower():
        # The contract substring: a conflict reported by a procedure or a leader.
        return TransactionConflict(message)
    return ServerError(message)
