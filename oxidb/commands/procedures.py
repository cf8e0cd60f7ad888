"""
Stored procedure and schedule commands (server.md 3.3, engine.md 9):
C{create_procedure}, C{call_procedure}, C{list_procedures},
C{get_procedure}, C{delete_procedure}, C{create_schedule},
C{list_schedules}, C{get_schedule}, C{delete_schedule},
C{enable_schedule}, C{disable_schedule}.

Definitions are documents in the C{_procedures} and C{_schedules}
collections, written through write operations (so they replicate): the
C{PutProcedure}/C{PutSchedule} appliers of L{oxidb.engine.procedures}
replace a same-named definition atomically; deleting and switching use the
engine's own C{Delete}/C{Update} operations.

L{call} runs a procedure: its steps run on the thread pool (one leg at a
time, between the id reservations its inserts need), never on the reactor,
and its transaction commits like C{commit_tx}. The scheduler uses it too.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, inlineCallbacks

from oxidb.auth.rbac import Role
from oxidb.commands._args import require_str
from oxidb.commands._registry import Command
from oxidb.commands._schema import Field, JsonType, fields
from oxidb.commands.collections import engine_of
from oxidb.commands.transactions import commit, new_transaction
from oxidb.engine import procedures, schedules
from oxidb.engine.operations import Delete, Update
from oxidb.engine.procedures import PROCEDURES, Finished, PutProcedure, PutSchedule
from oxidb.engine.schedules import SCHEDULES
from oxidb.errors import OxiError, ProcedureNotFoundError, ScheduleError

if TYPE_CHECKING:
    from oxidb.commands._context import CommandContext


@inlineCallbacks
def call(
    executor: Any, engine: Any, clock: Any, name: Any, params: Any, metrics: Any = None
) -> Generator[Any, Any, Any]:
    """
    Call procedure C{name} with C{params} in a transaction of its own; fires
    with its value. C{executor} runs the steps (C{read}) and the id
    reservations and the commit (C{write}); C{clock} gives the time updates
    use; C{metrics} (or None) counts the commit like C{commit_tx}'s.
    """
    tx = new_transaction()
    procedure_run = procedures.run(engine, tx, name, params, clock.seconds())
    try:
        sent = None
        while True:
            outcome = yield executor.read(procedures.advance, procedure_run, sent)
            if isinstance(outcome, Finished):
                break
            sent = yield executor.write(outcome.operation())
    finally:
        procedure_run.close()
    yield commit(executor, tx, metrics)
    return outcome.value


def _found(error: OxiError) -> Any:
    def check(document: Any) -> Any:
        if document is None:
            raise error
        return document

    return check


def _changed(count_key: str, reply: str, error: OxiError) -> Any:
    def check(result: dict[str, int]) -> str:
        if not result[count_key]:
            raise error
        return reply

    return check


def _names(documents: list[dict[str, Any]]) -> list[str]:
    return [doc["name"] for doc in documents if isinstance(doc.get("name"), str)]


# --- procedures ---------------------------------------------------------------------


def create_procedure(ctx: CommandContext, request: dict[str, Any]) -> Deferred[Any]:
    """C{"procedure created"}; the whole request is the stored definition."""
    require_str(request, "name")
    procedures.parse_procedure(request)
    return ctx.write(PutProcedure(request))


def call_procedure(ctx: CommandContext, request: dict[str, Any]) -> Deferred[Any]:
    """The procedure's value (C{return}'s, or C{{"ok": true}})."""
    name = require_str(request, "name")
    params = request.get("params")
    return call(ctx.executor, engine_of(ctx), ctx.clock, name, {} if params is None else params, ctx.metrics)


def list_procedures(ctx: CommandContext, request: dict[str, Any]) -> Deferred[Any]:
    """The procedure names, sorted."""
    d = ctx.read(engine_of(ctx).find, PROCEDURES, {}, {"name": 1})
    return d.addCallback(_names)


def get_procedure(ctx: CommandContext, request: dict[str, Any]) -> Deferred[Any]:
    """The stored definition document."""
    name = require_str(request, "name")
    d = ctx.read(engine_of(ctx).find_one, PROCEDURES, {"name": name})
    return d.addCallback(_found(ProcedureNotFoundError(name)))


def delete_procedure(ctx: CommandContext, request: dict[str, Any]) -> Deferred[Any]:
    """C{"procedure deleted"}. Schedules naming it stay, and record errors."""
    name = require_str(request, "name")
    d = ctx.write(Delete(PROCEDURES, {"name": name}))
    return d.addCallback(_changed("deleted", "procedure deleted", ProcedureNotFoundError(name)))


# --- schedules ----------------------------------------------------------------------


def _not_found(name: str) -> ScheduleError:
    return ScheduleError(f"schedule not found: {name}")


def create_schedule(ctx: CommandContext, request: dict[str, Any]) -> Deferred[Any]:
    """C{"schedule created"} (create or replace, with a fresh run state)."""
    require_str(request, "name")
    return ctx.write(PutSchedule(schedules.new_schedule(request)))


def list_schedules(ctx: CommandContext, request: dict[str, Any]) -> Deferred[Any]:
    """Every schedule document, by name."""
    return ctx.read(engine_of(ctx).find, SCHEDULES, {}, {"name": 1})


def get_schedule(ctx: CommandContext, request: dict[str, Any]) -> Deferred[Any]:
    """One schedule document with its run state."""
    name = require_str(request, "name")
    d = ctx.read(engine_of(ctx).find_one, SCHEDULES, {"name": name})
    return d.addCallback(_found(_not_found(name)))


def delete_schedule(ctx: CommandContext, request: dict[str, Any]) -> Deferred[Any]:
    name = require_str(request, "name")
    d = ctx.write(Delete(SCHEDULES, {"name": name}))
    return d.addCallback(_changed("deleted", "schedule deleted", _not_found(name)))


def _switch(ctx: CommandContext, request: dict[str, Any], enabled: bool) -> Deferred[Any]:
    name = require_str(request, "name")
    update = {"$set": {"enabled": enabled}}
    d = ctx.write(Update(SCHEDULES, {"name": name}, update))
    reply = "schedule enabled" if enabled else "schedule disabled"
    return d.addCallback(_changed("modified", reply, _not_found(name)))


def enable_schedule(ctx: CommandContext, request: dict[str, Any]) -> Deferred[Any]:
    return _switch(ctx, request, True)


def disable_schedule(ctx: CommandContext, request: dict[str, Any]) -> Deferred[Any]:
    return _switch(ctx, request, False)


#: The audited target of the commands naming one procedure or schedule.
_NAME = ("name",)

_PROCEDURE_NAME = fields(Field("name", JsonType.STRING, required=True, doc="the procedure"))
_SCHEDULE_NAME = fields(Field("name", JsonType.STRING, required=True, doc="the schedule"))
_RW = Role.READWRITE

COMMANDS = [
    Command(
        "create_procedure",
        create_procedure,
        writes=True,
        audit_target=_NAME,
        schema=fields(
            Field("name", JsonType.STRING, required=True),
            Field("params", JsonType.ARRAY, items=JsonType.STRING, doc="parameter names", handler=True),
            Field("steps", JsonType.ARRAY, required=True, doc="not empty (checked by the handler)", handler=True),
        ),
        summary='`"procedure created"` (or replaced); the whole request is the stored definition.',
    ),
    Command(
        "call_procedure",
        call_procedure,
        writes=True,
        audit_target=_NAME,
        role=_RW,
        schema=fields(
            Field("name", JsonType.STRING, required=True, doc="the procedure"),
            Field("params", JsonType.OBJECT, doc="parameter values; default `{}`"),
        ),
        summary="Runs a procedure in a transaction of its own: its value.",
    ),
    Command("list_procedures", list_procedures, role=Role.READ, summary="The procedure names, sorted."),
    Command(
        "get_procedure",
        get_procedure,
        audit_target=_NAME,
        role=Role.READ,
        schema=_PROCEDURE_NAME,
        summary="The stored definition.",
    ),
    Command(
        "delete_procedure",
        delete_procedure,
        writes=True,
        audit_target=_NAME,
        schema=_PROCEDURE_NAME,
        summary='`"procedure deleted"`; schedules naming it stay.',
    ),
    Command(
        "create_schedule",
        create_schedule,
        writes=True,
        audit_target=("name", "procedure"),
        schema=fields(
            Field("name", JsonType.STRING, required=True),
            Field("cron", JsonType.STRING, doc="a cron expression; exactly one of `cron` and `every`", handler=True),
            Field("every", JsonType.STRING, doc="an interval such as `30s`", handler=True),
            Field("procedure", JsonType.STRING, required=True, doc="the procedure to run", handler=True),
            Field("params", JsonType.OBJECT, doc="the call's parameters", handler=True),
            Field("enabled", JsonType.BOOLEAN, doc="default true", handler=True),
        ),
        summary='`"schedule created"` (or replaced, with a fresh run state).',
    ),
    Command("list_schedules", list_schedules, role=Role.READ, summary="Every schedule document, by name."),
    Command(
        "get_schedule",
        get_schedule,
        audit_target=_NAME,
        role=Role.READ,
        schema=_SCHEDULE_NAME,
        summary="One schedule with its run state.",
    ),
    Command(
        "delete_schedule",
        delete_schedule,
        writes=True,
        audit_target=_NAME,
        schema=_SCHEDULE_NAME,
        summary='`"schedule deleted"`.',
    ),
    Command(
        "enable_schedule",
        enable_schedule,
        writes=True,
        audit_target=_NAME,
        role=_RW,
        schema=_SCHEDULE_NAME,
        summary='`"schedule enabled"`.',
    ),
    Command(
        "disable_schedule",
        disable_schedule,
        writes=True,
        audit_target=_NAME,
        role=_RW,
        schema=_SCHEDULE_NAME,
        summary='`"schedule disabled"`.',
    ),
]
