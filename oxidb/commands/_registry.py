"""
The command registry: one row per wire command.

A row says how to run the command (its handler), whether it changes state
(C{writes}: it is replicated in cluster mode and forwarded to the leader),
whether it may run before login, and what the audit line records. Which role
may run it is not here: that is the single RBAC table in L{oxidb.auth.rbac}.

Handlers run on the reactor thread and must not block. They take the
L{oxidb.commands.CommandContext} and the decoded request, and return either
the reply's C{data} value or a L{Deferred} that fires with it. Blocking reads
go through C{ctx.read(fn, ...)} (the thread pool); state changes go through
C{ctx.write(op)} (the engine's writer, or Raft in cluster mode). Errors are
raised (or errback) as L{oxidb.errors.OxiError}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

import attrs

if TYPE_CHECKING:
    from oxidb.commands._context import CommandContext

Handler = Callable[["CommandContext", dict[str, Any]], Any]


@attrs.frozen
class Command:
    """
    One registry row.

    @ivar name: the exact, case-sensitive C{cmd} value.
    @ivar handler: see the module docstring.
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
    """

    name: str
    handler: Handler
    writes: bool = False
    pre_auth: bool = False
    audited: bool = True
    audit_collection: str | None = "collection"
    audit_target: tuple[str, ...] = ()


class CommandRegistry:
    """Name -> L{Command}. Registering a name twice is a programming error."""

    def __init__(self, commands: Iterable[Command] = ()) -> None:
        self._commands: dict[str, Command] = {}
        self.extend(commands)

    def add(self, command: Command) -> None:
        if command.name in self._commands:
            raise ValueError(f"command registered twice: {command.name}")
        self._commands[command.name] = command

    def extend(self, commands: Iterable[Command]) -> None:
        for command in commands:
            self.add(command)

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
