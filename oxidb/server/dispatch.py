"""
From a decoded request to a reply: command lookup, the authentication gate,
RBAC, the handler, audit and metrics.

Processing order (server.md 3.1, with this project's RBAC table):

 1. the command name is C{cmd} (C{command} accepted as an alias);
 2. authentication gate: before login only C{pre_auth} commands run
    (C{authentication required}); nothing is audited before login;
 3. RBAC (auth on; the roles are the registry rows', and a user's role on
    the target database decides for a command acting in one): a denied
    command is audited as C{denied};
 4. unknown command -> C{unknown command: <cmd>};
 5. the request schema of the command's row (L{oxidb.commands._schema}),
    then, for a command acting in a database, its target and the open
    transaction's binding (L{oxidb.commands.databases.scope_request}),
    then the handler; the outcome is audited as C{ok} or C{error}.

The fast path stays synchronous: a handler that returns a plain value yields a
plain L{Reply}, without allocating Deferreds (C{ping} throughput is a goal),
and so does one whose Deferred has fired already (an inline read). What only
the audit line records (the target database) is worked out only when there
is an audit line to write, or a per-database count to keep.
"""

from __future__ import annotations

from collections.abc import Mapping
from time import perf_counter
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from zope.interface import implementer

from oxidb.audit.events import audit_target
from oxidb.auth.rbac import Role
from oxidb.commands._context import CommandContext, IDispatcher
from oxidb.commands._registry import CommandRegistry
from oxidb.commands._reply import Reply, TopLevel, command_name
from oxidb.commands.databases import requested_database, role_database, scope_request
from oxidb.engine import databases
from oxidb.errors import (
    AuthenticationRequiredError,
    InternalError,
    MissingCommandError,
    OxiError,
    PermissionDeniedError,
    UnknownCommandError,
)
from oxidb.logs import Logger

#: Result types that are never a Deferred.
_PLAIN = frozenset({str, dict, list, int, float, bool, type(None)})

#: A row that is not there: no command, no counters.
_NO_ROW: tuple[Any, Any] = (None, None)

#: Text results up to this many characters have their success L{Reply} made
#: once (C{"pong"}); no L{Reply} is changed once made.
_SHORT_TEXT = 64
#: At most this many of them (the cache starts over when full).
_TEXT_REPLIES_KEPT = 256
_text_replies: dict[str, Reply] = {}


def _text_reply(text: str) -> Reply:
    """C{Reply(True, text)}, made once for a short text."""
    reply = _text_replies.get(text)
    if reply is None:
        reply = Reply(True, text)
        if len(text) <= _SHORT_TEXT:
            if len(_text_replies) >= _TEXT_REPLIES_KEPT:
                _text_replies.clear()
            _text_replies[text] = reply
    return reply


@implementer(IDispatcher)
class Dispatcher:
    """
    Runs requests for sessions. One per service, built by the composition
    root (L{oxidb.compose}) once the registry is complete.

    @ivar registry: the complete, read-only command registry; its rows give
        the roles (C{registry.access}) and the request schemas.
    @ivar auth_enabled: the authentication gate and RBAC apply.
    @ivar health_open: C{OXIDB_HEALTH_OPEN}: the health-check rows are open.
    @ivar metrics: counts every outcome (L{oxidb.metrics.ServerMetrics}), or None.
    @ivar audit: the L{oxidb.audit.events.Auditor}, or None when off.
    """

    _log = Logger()

    def __init__(
        self,
        registry: CommandRegistry,
        *,
        auth_enabled: bool = False,
        health_open: bool = False,
        metrics: Any = None,
        audit: Any = None,
    ) -> None:
        self._metrics = metrics
        self.registry = registry
        self.auth_enabled = auth_enabled
        self.health_open = health_open
        self.audit = audit

    @property
    def registry(self) -> CommandRegistry:
        return self._registry

    @registry.setter
    def registry(self, registry: CommandRegistry) -> None:
        self._registry = registry
        self._index()

    @property
    def metrics(self) -> Any:
        return self._metrics

    @metrics.setter
    def metrics(self, metrics: Any) -> None:
        self._metrics = metrics
        self._index()

    def _index(self) -> None:
        """
        Look up, once, what every request looks up: the rows by name and,
        beside each, its counters (L{oxidb.metrics.IServerMetrics.counter}).
        """
        metrics = self._metrics
        self._rows: Mapping[str, tuple[Any, Any]] = {
            command.name: (command, None if metrics is None else metrics.counter(command.name))
            for command in self._registry
        }

    def dispatch(self, ctx: CommandContext, request: Any) -> Reply | Deferred[Reply]:
        """Run one request; a L{Reply} or a Deferred firing with one."""
        started = perf_counter()
        # command_name, inline: this runs for every request.
        name: Any = ""
        if type(request) is dict:
            name = request.get("cmd")
            if name is None:
                name = request.get("command")
            if not isinstance(name, str):
                name = ""
        command, counter = self._rows.get(name, _NO_ROW)
        session = ctx.session

        if self.auth_enabled:
            access = self.registry.access
            role = session.role
            if role is None:
                if not (command is not None and command.pre_auth):
                    if not (command is not None and access.open_before_login(name, health_open=self.health_open)):
                        # Not audited (server.md 3.1), but counted.
                        self._count(command, "denied", started)
                        return Reply(False, AuthenticationRequiredError().message)
            elif not access.allowed(
                self._effective_role(ctx, command, request, role), name, health_open=self.health_open
            ):
                denied = PermissionDeniedError(role.wire, name)
                self._finished(ctx, name, request, "denied", denied.message, started)
                return Reply(False, denied.message)

        if command is None:
            unknown = UnknownCommandError(name) if name else MissingCommandError()
            self._finished(ctx, name or "", request, "error", unknown.message, started)
            return Reply(False, unknown.message)

        try:
            if command.schema.fields:
                command.schema.validate(request)
            if command.scoped:
                result = command.handler(ctx, scope_request(command, session, request))
            else:
                result = command.handler(ctx, request)
        except Exception:
            return self._failed(Failure(), ctx, command, request, started)
        if type(result) in _PLAIN:
            # The synchronous fast path: no Deferred, no TopLevel check.
            if command.scoped or self.audit is not None:
                self._finished(ctx, name, request, "ok", "", started, command)
            elif counter is not None:  # _finished, when it has only the count to do
                counter.ok(perf_counter() - started)
            if type(result) is str:
                reply = _text_replies.get(result)  # _text_reply, inline
                return _text_reply(result) if reply is None else reply
            return Reply(True, result)
        # Deferred is an Awaitable (an ABC): plain results skip that slow check.
        if isinstance(result, Deferred):
            if result.called and not result.paused:
                # Fired already (an inline read): its value, without running
                # more callbacks through the Deferred for the reply.
                value: Any = result.result
                if not isinstance(value, (Failure, Deferred)):
                    return self._succeeded(value, ctx, command, request, started)
            return result.addCallbacks(
                self._succeeded,
                self._failed,
                callbackArgs=(ctx, command, request, started),
                errbackArgs=(ctx, command, request, started),
            )
        return self._succeeded(result, ctx, command, request, started)

    def _effective_role(self, ctx: CommandContext, command: Any, request: Any, role: Role) -> Role:
        """
        The role RBAC checks: for a command acting in a database (or on
        the transaction bound to one), the user's role on that database if
        one was granted, else the global role (server.md 5).
        """
        auth = ctx.auth
        if command is None or auth is None:
            return role
        database = role_database(command, ctx.session, request)
        if database is None:
            return role
        granted = auth.db_role(ctx.session.user or "", database)
        return role if granted is None else granted

    def _succeeded(self, result: Any, ctx: CommandContext, command: Any, request: Any, started: float) -> Reply:
        self._finished(ctx, command.name, request, "ok", "", started, command)
        if isinstance(result, TopLevel):
            return Reply(True, result.value, top_level=True)
        return Reply(True, result)

    def _failed(self, failure: Failure, ctx: CommandContext, command: Any, request: Any, started: float) -> Reply:
        error = failure.value
        if not isinstance(error, OxiError):
            self._log.failure(
                "command {cmd} failed unexpectedly (peer {peer})",
                failure,
                cmd=command.name,
                peer=ctx.session.peer,
            )
            error = InternalError()
        self._finished(ctx, command.name, request, "error", error.message, started, command)
        return Reply(False, error.message)

    def _count(self, command: Any, result: str, started: float, database: str | None = None) -> None:
        metrics = self.metrics
        if metrics is not None:
            name = command.name if command is not None else ""
            metrics.command_finished(name, result, perf_counter() - started, database)

    def _finished(
        self,
        ctx: CommandContext,
        name: str,
        request: Any,
        result: str,
        detail: str,
        started: float,
        command: Any = None,
    ) -> None:
        """
        Count the outcome and, unless the command audits itself or the
        session has not logged in (server.md 4.4), audit it.
        """
        metrics = self.metrics
        audit = self.audit
        audited = (
            audit is not None and (command is None or command.audited) and ctx.session.role is not None
        )
        database = None
        # The target database is worked out only for what records it: the
        # audit line, and the per-database count of a success when the
        # metrics export data names.
        if (
            command is not None
            and command.scoped
            and (audited or (result == "ok" and metrics is not None and getattr(metrics, "names", True)))
        ):
            database = requested_database(ctx.session, request)
            if not databases.is_valid_name(database):
                database = None
        if metrics is not None:
            metrics.command_finished(
                command.name if command is not None else "", result, perf_counter() - started, database
            )
        if not audited:
            return
        field = command.audit_collection if command is not None else "collection"
        collection = request.get(field) if field and type(request) is dict else None
        audit.record_command(
            ctx.session,
            name,
            collection if isinstance(collection, str) else None,
            result,
            detail,
            audit_target(request, command.audit_target) if command is not None else None,
            database,
        )


__all__ = ["Dispatcher", "Reply", "TopLevel", "command_name"]
