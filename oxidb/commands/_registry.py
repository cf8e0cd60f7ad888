"""
The command registry: one row per wire command, holding everything about it.

A row says how to run the command (its handler), which role may run it (the
RBAC table of L{oxidb.auth.rbac} is derived from the rows), whether it
changes state (C{writes}: it is replicated in cluster mode and forwarded to
the leader), whether it may run before login, what the audit line records,
and its request schema (L{oxidb.commands._schema}), which the dispatcher
validates before the handler runs and C{docs/commands.md} is generated from.

A L{CommandRegistry} is built once, complete, by the composition root
(L{oxidb.commands.build_registry}) and never changes afterwards.

Handlers run on the reactor thread and must not block. They take the
L{oxidb.commands.CommandContext} and the decoded request, and return either
the reply's C{data} value or a L{Deferred} that fires with it. Blocking reads
go through C{ctx.read(fn, ...)} (the thread pool); state changes go through
C{ctx.write(op)} (the engine's writer, or Raft in cluster mode). Errors are
raised (or errback) as L{oxidb.errors.OxiError}.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import attrs

from oxidb.auth.rbac import AccessTable, Role
from oxidb.commands._schema import NO_FIELDS, Schema

if TYPE_CHECKING:
    from oxidb.commands._context import CommandContext

Handler = Callable[["CommandContext", dict[str, Any]], Any]


@attrs.frozen
class Command:
    """
    One registry row.

    @ivar name: the exact, case-sensitive C{cmd} value.
    @ivar handler: see the module docstring.
    @ivar role: the least role that may run it once logged in (Admin unless
        said otherwise: fail closed).
    @ivar writes: the command changes replicated state.
    @ivar pre_auth: allowed before authentication (C{ping}, C{hello}, the
        authentication commands).
    @ivar audited: an audit line is written for it (not for C{hello}, the
        C{pipeline} wrapper or the authentication steps, which audit
        themselves).
    @ivar audit_collection: the request key whose string value the audit
        line records as C{collection}; C{None} records C{null}.
    @ivar audit_target: request keys whose values the audit line records
        in C{target} (L{oxidb.audit.events.audit_target}): what an admin or
        index operation acted on. Never a secret field.
    @ivar health_check: open to health checkers, before login and for every
        role, when C{OXIDB_HEALTH_OPEN} is on (C{raft_metrics}).
    @ivar database: the command acts in one database, the request's C{db}
        or the session's current one (server.md 3.7): its collection
        fields reach the handler qualified (L{oxidb.engine.databases}) and
        C{db} set to the target, the open transaction's binding and the
        per-database role apply. C{None}: whether its schema names a
        collection (L{scoped}).
    @ivar schema: the request's fields (validated before the handler).
    @ivar summary: one line for C{docs/commands.md}: what it does and
        replies.
    @ivar scoped: does the command act in one database (L{database})?
        Worked out when the row is built: the dispatcher asks for every
        request.
    """

    name: str
    handler: Handler
    writes: bool = False
    pre_auth: bool = False
    audited: bool = True
    audit_collection: str | None = "collection"
    audit_target: tuple[str, ...] = ()
    role: Role = Role.ADMIN
    health_check: bool = False
    schema: Schema = NO_FIELDS
    summary: str = ""
    database: bool | None = None
    scoped: bool = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        scoped = self.database if self.database is not None else bool(self.schema.collections)
        object.__setattr__(self, "scoped", scoped)


@attrs.frozen(init=False)
class CommandRegistry:
    """
    Name -> L{Command}, read-only once built. Registering a name twice is a
    programming error.

    @ivar access: the RBAC table derived from the rows.
    """

    _commands: Mapping[str, Command]
    access: AccessTable

    def __init__(self, commands: Iterable[Command] = ()) -> None:
        table: dict[str, Command] = {}
        for command in commands:
            if command.name in table:
                raise ValueError(f"command registered twice: {command.name}")
            table[command.name] = command
        self.__attrs_init__(MappingProxyType(table), AccessTable.from_rows(table.values()))

    def get(self, name: str) -> Command | None:
        return self._commands.get(name)

    def names(self) -> list[str]:
        return sorted(self._commands)

    def __contains__(self, name: object) -> bool:
        return name in self._commands

    def __iter__(self) -> Iterator[Command]:
        return iter(self._commands.values())

    def __len__(self) -> int:
        return len(self._commands)
