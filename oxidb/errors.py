"""
The typed error hierarchy of the server.

Every error a client can see is an L{OxiError}; its C{str()} is exactly the
text that goes into the reply's C{error} field, so client libraries that match
on substrings (C{"conflict"}, C{"already active"}, ...) keep working. The one
table that maps error types to wire text is the set of C{template} attributes
below: each class owns its prefix and nothing else formats error text.

Anything that is not an L{OxiError} is a bug: the dispatcher logs the full
failure and answers with L{InternalError}'s generic text, never with the
exception's details.

This module must stay free of Twisted imports: the engine and the sans-IO cores
raise these too.
"""

from __future__ import annotations


class OxiError(Exception):
    """
    Base class of every error with a wire representation.

    Subclasses set C{template}, a C{str.format} pattern over the positional
    arguments given to the constructor (C{{0}}, C{{1}}, ...). A subclass whose
    template is C{"{0}"} carries a complete message.
    """

    template = "{0}"

    def __str__(self) -> str:
        return self.template.format(*self.args)

    @property
    def message(self) -> str:
        """The exact text sent to the client."""
        return str(self)


# --- request shape ----------------------------------------------------------


class BadRequestError(OxiError):
    """
    A request is missing a field or has one of the wrong type.

    The message is complete, e.g. C{"missing 'collection'"}.
    """


class MissingCommandError(BadRequestError):
    template = "missing or invalid 'cmd' field"


class UnknownCommandError(OxiError):
    template = "unknown command: {0}"


class DecodeError(OxiError):
    """
    A frame payload could not be decoded; the message carries the format
    prefix (C{"invalid JSON: ..."}, C{"invalid OxiWire request: ..."},
    C{"invalid MsgPack: ..."}).
    """


class InternalError(OxiError):
    """An unexpected failure; details go to the log only."""

    template = "internal error"


class UnavailableError(OxiError):
    """The server cannot serve the request now (shutting down, no leader, ...)."""


# --- server resources (connections, frames, the worker pool) ---------------


class ServerBusyError(UnavailableError):
    """
    A server-wide resource is exhausted; retrying later may succeed. The
    argument names what is full and the limit's variable, e.g.
    C{"worker queue full (OXIDB_POOL_QUEUE)"}.
    """

    template = "server busy: {0}"


class PipelineTooLongError(BadRequestError):
    """Arguments: the number of commands sent and the limit."""

    template = "pipeline: {0} commands exceed the limit of {1} (OXIDB_MAX_PIPELINE)"


class EncodedReplyTooLargeError(OxiError):
    """
    A reply would exceed the frame limit. Arguments: its encoded size and the
    limit, both in bytes.
    """

    template = (
        "reply too large: {0} bytes exceed the {1}-byte frame limit; "
        "ask for fewer documents with 'limit' and 'skip'"
    )


class RequesterGoneError(OxiError):
    """
    Work dropped because the connection that asked for it has closed; no
    client ever sees it.
    """

    template = "connection closed"


# --- engine -----------------------------------------------------------------


class InvalidQueryError(OxiError):
    template = "invalid query: {0}"


class ReservedCollectionError(InvalidQueryError):
    """
    A client named a collection reserved for the server (a name starting
    with C{_}, such as C{_procedures}); only the server's own commands use
    those. Argument: the name.
    """

    template = "invalid query: collection name is reserved for the server: {0}"


class DatabaseNotFoundError(InvalidQueryError):
    """A request names a database that does not exist (server.md 3.7)."""

    template = "database not found: {0}"


class InvalidDatabaseNameError(InvalidQueryError):
    """A database name breaks L{oxidb.engine.databases.NAME_RULE}."""

    template = "invalid database name: {0}"


class DatabaseExistsError(OxiError):
    template = "database already exists: {0}"


class DefaultDatabaseError(OxiError):
    """The default database cannot be dropped. Argument: its name."""

    template = "cannot drop the default database '{0}'"


class TransactionDatabaseError(OxiError):
    """
    A request targets another database than the one the open transaction
    is bound to (server.md 3.7). Arguments: the bound one, the target.
    """

    template = "active transaction is bound to database '{0}'; commit or roll it back before using '{1}'"


class InvalidPipelineError(OxiError):
    template = "invalid pipeline: {0}"


class DocumentNotObjectError(OxiError):
    template = "document must be a JSON object"


class UniqueViolationError(OxiError):
    template = "unique constraint violated: field '{0}' value already exists"


class CollectionExistsError(OxiError):
    template = "collection already exists: {0}"


class IndexNotFoundError(OxiError):
    template = "index not found: {0}"


class IndexExistsError(OxiError):
    template = "index already exists: {0}"


class TooLargeError(OxiError):
    """A document, query or value exceeds a size or depth limit."""


class SnapshotNotFoundError(OxiError):
    """
    A snapshot read named a snapshot that is not open (never begun, ended,
    expired after C{OXIDB_SNAPSHOT_MAX_SECS}, begun by another connection,
    or its connection closed). Argument: the id.
    """

    template = "snapshot not found: {0} (ended, expired, or not this connection's)"


class TimeLimitError(OxiError):
    """A read ran past its time limit (server default or the request's C{max_time_ms}); argument: the limit in ms."""

    template = "operation exceeded time limit of {0} ms"


class AggregationLimitError(OxiError):
    """
    An aggregation stage would hold more than its budget. Arguments: the
    stage (C{$unwind}, ...), what ran out (C{memory}, C{document}) and the
    limit (with its unit).
    """

    template = "aggregation stage {0} exceeded the {1} limit of {2}; filter or limit earlier in the pipeline"


class ReplyTooLargeError(OxiError):
    """
    A result would not fit in one reply frame. Argument: how to page
    (C{limit and skip}, C{$skip and $limit}).
    """

    template = "result exceeds the 16 MiB reply limit; use {0} to page"


# --- transactions -----------------------------------------------------------


class TransactionConflictError(OxiError):
    """
    OCC validation failed. The word "conflict" is part of the contract: clients
    detect conflicts by that substring, and no other error may contain it.
    """

    template = "transaction conflict on '{0}' doc {1}: expected version {2}, found {3}"


class TransactionActiveError(OxiError):
    template = "transaction already active"


class NoTransactionError(OxiError):
    template = "no active transaction"


class TransactionNotFoundError(OxiError):
    template = "transaction not found: {0}"


# --- blobs, procedures, schedules, backup -----------------------------------


class BucketNotFoundError(OxiError):
    template = "bucket not found: {0}"


class BlobNotFoundError(OxiError):
    template = "blob not found: {0}/{1}"


class UnextractableError(OxiError):
    """C{extract_text} on an object whose type (or content) has no text."""

    template = "could not extract text from this file type"


class ProcedureNotFoundError(OxiError):
    template = "procedure not found: {0}"


class ProcedureError(OxiError):
    template = "procedure error: {0}"


class ScheduleError(OxiError):
    template = "schedule error: {0}"


class BackupError(OxiError):
    template = "backup error: {0}"


class StorageIOError(OxiError):
    template = "io error: {0}"


# --- security ---------------------------------------------------------------


class AuthenticationRequiredError(OxiError):
    template = "authentication required"


class AuthenticationFailedError(OxiError):
    """
    A login failed. The message is the same for an unknown user and a wrong
    password, so that usernames cannot be probed.
    """

    template = "authentication failed"


class LoginThrottledError(OxiError):
    """
    A login attempt refused before any credential is checked: the user name
    or the source address failed too often recently (docs/security.md,
    "Throttling"). Same text whether or not the user exists.
    """

    template = "too many failed logins; retry later"


class LoginBusyError(OxiError):
    """An C{auth_simple} login refused: the Argon2 checks already running are at their cap."""

    template = "server busy: too many password checks in progress; retry later"


class PermissionDeniedError(OxiError):
    template = "permission denied: role '{0}' cannot execute '{1}'"


class ScramProtocolError(OxiError):
    """A malformed or out-of-order SCRAM message; the message is complete."""


class UserExistsError(OxiError):
    template = "user '{0}' already exists"


class UserNotFoundError(OxiError):
    template = "user '{0}' not found"


class NoDbRoleError(OxiError):
    """C{revoke_db_role} of a grant that does not exist. Arguments: user, database."""

    template = "user '{0}' has no role override for database '{1}'"


class InvalidRoleError(OxiError):
    template = "invalid role: {0}"


class LastAdminError(OxiError):
    """Arguments: what was refused (C{drop}, C{demote}) and the user name."""

    template = "refusing to {0} user '{1}': it is the last admin"


# --- cluster ----------------------------------------------------------------


class RaftError(OxiError):
    template = "raft error: {0}"


class NotLeaderError(RaftError):
    """
    This node is not the leader and forwarding is off (upstream's text).
    Arguments: leader id (or None) and the leader's Raft address (or None).
    """

    def __str__(self) -> str:
        leader_id, addr = self.args
        if leader_id is None:
            return "raft error: has to forward request to: None, None"
        return (
            f"raft error: has to forward request to: Some({leader_id}), "
            f'Some(BasicNode {{ addr: "{addr}" }})'
        )


class NotAMemberError(RaftError):
    """A peer that is not in this node's cluster configuration sent a forwarded write."""

    template = "raft error: node {0} is not a member of the cluster configuration"


class LeaderError(OxiError):
    """
    The leader's error for a write a follower forwarded to it; the message is
    the leader's text, unchanged, so that the client sees what the leader said.
    """


# --- configuration (startup only; never on the wire) ------------------------


class ConfigError(Exception):
    """
    A configuration value is invalid. The message names the variable (or
    option) and the offending value; startup stops with it.
    """
