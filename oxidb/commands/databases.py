"""
Database commands (server.md 3.4, 3.7): C{use_db}, C{create_database},
C{drop_database}, C{list_databases}, and how a request is put into its
database before its handler runs (L{scope_request}).

A request's target database is its C{db} field, else the session's current
one (C{use_db}; C{oxidb} at first). The dispatcher scopes every command
whose row says so (L{oxidb.commands._registry.Command.scoped}): the open
transaction must be bound to the target, the collection fields are
qualified with it (L{oxidb.engine.databases.qualify}) and C{db} is set to
it, so the handlers and the engine need not know about databases. A
database that does not exist is reported by the engine when a collection
of it is read or written (C{database not found: <n>}).

C{create_database}, C{drop_database} and C{use_db} without a string C{name}
are not recognised (C{unknown command: <cmd>}, server.md 12.32).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from oxidb.auth.rbac import Role
from oxidb.commands._args import require_str
from oxidb.commands._registry import Command
from oxidb.commands._schema import Field, JsonType, fields
from oxidb.commands.collections import engine_of
from oxidb.engine import databases, store
from oxidb.engine.operations import CreateDatabase, DropDatabase
from oxidb.engine.reads import Reader
from oxidb.errors import TransactionDatabaseError

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from oxidb.commands._context import CommandContext
    from oxidb.server.session import Session


def requested_database(session: Session, request: Any) -> str:
    """
    The database a request names (C{db}, unchecked) or else the session's;
    what the per-database role is looked up for.
    """
    db = request.get("db") if type(request) is dict else None
    return db if isinstance(db, str) else session.database


#: Commands that act on the open transaction: its database decides the
#: per-database role (a transaction begun with a request-level C{db} is
#: committed without one).
TRANSACTION_COMMANDS = frozenset({"commit_tx", "rollback_tx"})


def role_database(command: Command, session: Session, request: Any) -> str | None:
    """
    The database whose granted role RBAC checks for C{command} (server.md
    5), or None when only the global role applies.
    """
    if command.scoped:
        return requested_database(session, request)
    if command.name in TRANSACTION_COMMANDS and session.tx is not None:
        bound: str = getattr(session.tx, "database", databases.DEFAULT)
        return bound
    return None


def target_database(session: Session, request: dict[str, Any]) -> str:
    """The request's target database: its valid C{db}, else the session's current one."""
    db = request.get("db")
    if db is None:
        return session.database
    return databases.validate_name(db)


def check_binding(session: Session, target: str) -> None:
    """L{TransactionDatabaseError} if the open transaction is bound to another database."""
    tx = session.tx
    if tx is not None:
        bound: str = getattr(tx, "database", databases.DEFAULT)
        if bound != target:
            raise TransactionDatabaseError(bound, target)


def scope_request(command: Command, session: Session, request: dict[str, Any]) -> dict[str, Any]:
    """
    The request as the handler of a scoped command sees it: C{db} set to
    the target, every collection field qualified with it. A client's
    collection name may not contain the separator (C{invalid collection
    name}).
    """
    target = target_database(session, request)
    check_binding(session, target)
    scoped = dict(request)
    scoped["db"] = target
    for name in command.schema.collections:
        value = request.get(name)
        if isinstance(value, str):
            store.validate_collection_name(value)
            scoped[name] = databases.qualify(target, value)
    return scoped


def _require_name(request: dict[str, Any], command: str) -> str:
    """C{name}; without it the command is not recognised (server.md 12.32)."""
    return require_str(request, "name", f"unknown command: {command}")


def _check_exists(reader: Reader, name: str) -> None:
    databases.check_exists(reader.conn, name)


def use_db(ctx: CommandContext, request: dict[str, Any]) -> Deferred[str]:
    """C{"switched to database '<n>'"}; C{database not found: <n>} if it does not exist."""
    name = databases.validate_name(_require_name(request, "use_db"))
    check_binding(ctx.session, name)
    session = ctx.session

    def switched(_: Any) -> str:
        session.database = name
        return f"switched to database '{name}'"

    return ctx.read(engine_of(ctx).read, _check_exists, name).addCallback(switched)


def create_database(ctx: CommandContext, request: dict[str, Any]) -> Deferred[Any]:
    """C{"database '<n>' created"}; C{database already exists: <n>} if it does."""
    return ctx.write(CreateDatabase(_require_name(request, "create_database")))


def drop_database(ctx: CommandContext, request: dict[str, Any]) -> Deferred[Any]:
    """C{"database '<n>' dropped"} with all its collections; the default one cannot be."""
    return ctx.write(DropDatabase(_require_name(request, "drop_database")))


def list_databases(ctx: CommandContext, request: dict[str, Any]) -> Deferred[Any]:
    """Every database name: C{oxidb} first, then sorted."""
    return ctx.read(engine_of(ctx).list_databases)


def _name(command: str) -> Field:
    return Field(
        "name",
        JsonType.STRING,
        required=True,
        message=f"unknown command: {command}",
        doc=f"the database: {databases.NAME_RULE}; without it the command is not recognised",
    )


COMMANDS = [
    Command(
        "use_db",
        use_db,
        role=Role.READ,
        audit_collection=None,
        audit_target=("name",),
        schema=fields(_name("use_db")),
        summary="Makes `name` the connection's current database: `\"switched to database '<n>'\"`.",
    ),
    Command(
        "create_database",
        create_database,
        writes=True,
        audit_collection=None,
        audit_target=("name",),
        schema=fields(_name("create_database")),
        summary="`\"database '<n>' created\"`; `database already exists: <n>` if it does.",
    ),
    Command(
        "drop_database",
        drop_database,
        writes=True,
        audit_collection=None,
        audit_target=("name",),
        schema=fields(_name("drop_database")),
        summary="`\"database '<n>' dropped\"`, with every collection and index of it; not `oxidb`.",
    ),
    Command(
        "list_databases",
        list_databases,
        role=Role.READ,
        audit_collection=None,
        summary="Every database name, the default `oxidb` first.",
    ),
]
