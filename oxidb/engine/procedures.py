"""
Stored procedures (engine.md 9.1-9.5): definitions, variables, conditions and
the step interpreter; and the appliers storing procedure and schedule
definitions.

A procedure call runs in its own L{Transaction}: reads see the committed
state overlaid with the call's own writes and record versions, writes are
buffered, and the caller commits the transaction with the same
C{CommitTransaction} operation as C{commit_tx}.

The interpreter is a generator (L{run}), so that it needs no Twisted: it
runs its steps with blocking engine calls, and when an C{insert} step needs
ids it yields a L{Reserve} and waits to be sent the first reserved id (the
caller writes the reservation: through Raft in cluster mode). L{advance}
drives it one leg at a time; the caller runs each leg on the thread pool.

Bounds, so that a hostile definition cannot tie up a thread for long: at
most L{MAX_STEPS} executed steps, C{if} branches nested at most
L{MAX_NESTING} deep, values nested at most L{MAX_VALUE_DEPTH} deep, and a
work budget of L{MAX_WORK} units per call, where a unit is one JSON value
copied out of a variable or parameter or one document returned by a read
step. (Without loops or calls, a definition cannot run a step twice; the
budget stops values that double in size at every step.)

Conditions (engine.md 9.4): an object with C{$expr} is evaluated; so is, on
purpose, a bare single-operator object such as C{{"$lt": [a, b]}} (the REC:
v0.15 treats it as an always-true object, which no one can usefully rely on).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Generator
from typing import Any, ClassVar

import attrs

from oxidb.engine.operations import Operation, check, malformed
from oxidb.engine.schedules import SCHEDULES
from oxidb.engine.store import check_client_collection
from oxidb.engine.transactions import ReserveIds, Transaction, reserve_operation
from oxidb.engine.writes import WriteTxn
from oxidb.errors import (
    DocumentNotObjectError,
    ProcedureError,
    ProcedureNotFoundError,
)

#: The collection holding procedure definitions.
PROCEDURES = "_procedures"


MAX_STEPS = 10_000
MAX_NESTING = 32
MAX_VALUE_DEPTH = 128
MAX_WORK = 10_000_000


@attrs.frozen
class Procedure:
    """A validated definition."""

    name: str
    params: tuple[str, ...]
    steps: tuple[Any, ...]


def parse_procedure(definition: Any) -> Procedure:
    """Validate a definition (engine.md 9.1); its steps are checked as they run."""
    if type(definition) is not dict:
        raise ProcedureError("definition must be an object")
    name = definition.get("name")
    if not isinstance(name, str):
        raise ProcedureError("missing 'name'")
    params = definition.get("params", [])
    if type(params) is not list:
        raise ProcedureError("'params' must be an array")
    if not all(isinstance(param, str) for param in params):
        raise ProcedureError("params must be strings")
    if "steps" not in definition:
        raise ProcedureError("missing 'steps'")
    steps = definition["steps"]
    if type(steps) is not list:
        raise ProcedureError("'steps' must be an array")
    if not steps:
        raise ProcedureError("'steps' must not be empty")
    return Procedure(name, tuple(params), tuple(steps))


def bind_params(procedure: Procedure, params: Any) -> dict[str, Any]:
    """
    The declared parameters' values: by name from an object, by position from
    an array, C{null} when not supplied. Undeclared ones are not bound.
    """
    if type(params) is dict:
        return {name: params.get(name) for name in procedure.params}
    if type(params) is list:
        return {name: params[i] if i < len(params) else None for i, name in enumerate(procedure.params)}
    if procedure.params:
        raise ProcedureError("params must be an object or array")
    return {}


# --- conditions ----------------------------------------------------------------


def truthy(value: Any) -> bool:
    """C{null}, C{false}, C{0}, C{""} and C{[]} are false; everything else is true."""
    if value is None or value is False:
        return False
    if type(value) in (int, float, str, list):
        return bool(value)
    return True


def _text(value: Any) -> str:
    if value is None:
        return ""
    if value is True or value is False:
        return "true" if value else "false"
    if type(value) is str:
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def compare(a: Any, b: Any) -> int:
    """Two numbers compare numerically; anything else compares as text (engine.md 9.4)."""
    if type(a) in (int, float) and type(b) in (int, float):
        left: Any = a
        right: Any = b
    else:
        left, right = _text(a), _text(b)
    order: int = (left > right) - (left < right)
    return order


_COMPARISONS: dict[str, Callable[[int], bool]] = {
    "$eq": lambda c: c == 0,
    "$ne": lambda c: c != 0,
    "$gt": lambda c: c > 0,
    "$gte": lambda c: c >= 0,
    "$lt": lambda c: c < 0,
    "$lte": lambda c: c <= 0,
}
_OPERATORS = frozenset(_COMPARISONS) | {"$and", "$or", "$not"}


def _expression(expr: Any) -> bool:
    if type(expr) is not dict:
        return truthy(expr)
    if len(expr) != 1:
        raise ProcedureError("$expr must have exactly one operator")
    ((op, args),) = expr.items()
    test = _COMPARISONS.get(op)
    if test is not None:
        if type(args) is not list or len(args) != 2:
            raise ProcedureError(f"{op} requires exactly 2 arguments")
        return test(compare(args[0], args[1]))
    if op in ("$and", "$or"):
        if type(args) is not list:
            raise ProcedureError(f"{op} requires an array")
        if op == "$and":
            return all(_expression(item) for item in args)
        return any(_expression(item) for item in args)
    if op == "$not":
        return not _expression(args)
    raise ProcedureError(f"unknown condition operator: {op}")


def evaluate_condition(condition: Any) -> bool:
    """A resolved C{if} condition (see the module docstring)."""
    if type(condition) is dict:
        if "$expr" in condition:
            return _expression(condition["$expr"])
        if len(condition) == 1 and next(iter(condition)) in _OPERATORS:
            return _expression(condition)
    return truthy(condition)


# --- execution -----------------------------------------------------------------


@attrs.frozen
class Reserve:
    """A running procedure needs C{count} new ids in C{collection}: send it the first one."""

    collection: str
    count: int

    def operation(self) -> ReserveIds:
        return reserve_operation(self.collection, self.count)


@attrs.frozen
class Finished:
    """A procedure ran to its end (or a C{return}) with this value."""

    value: Any


@attrs.frozen
class _Return:
    value: Any


_Steps = Generator[Reserve, int, "_Return | None"]


@attrs.define(eq=False)
class _Run:
    """The state of one call: parameters, variables, counters."""

    engine: Any
    tx: Transaction
    params: dict[str, Any]
    now: float
    max_steps: int
    max_nesting: int
    max_work: int
    work_left: int = attrs.field(init=False)
    executed: int = attrs.field(init=False, default=0)
    vars: dict[str, Any] = attrs.field(init=False, factory=dict)

    @work_left.default
    def _all_work(self) -> int:
        return self.max_work

    # --- values -----------------------------------------------------------

    def _spend(self, units: int) -> None:
        self.work_left -= units
        if self.work_left < 0:
            raise ProcedureError(f"work limit exceeded ({self.max_work} units)")

    def _copy(self, value: Any, depth: int) -> Any:
        """A charged deep copy of a stored value, placed at nesting C{depth}."""
        self._spend(1)
        kind = type(value)
        if kind is not dict and kind is not list:
            return value
        if depth >= MAX_VALUE_DEPTH:
            raise ProcedureError(f"value nested deeper than {MAX_VALUE_DEPTH}")
        if kind is dict:
            return {key: self._copy(item, depth + 1) for key, item in value.items()}
        return [self._copy(item, depth + 1) for item in value]

    def _lookup(self, reference: str) -> Any:
        """C{param.p.a.b} or C{v.a.b}; unknown names and paths are C{null}."""
        if reference.startswith("param."):
            root, dot, path = reference[len("param.") :].partition(".")
            value = self.params.get(root)
        else:
            root, dot, path = reference.partition(".")
            value = self.vars.get(root)
        if dot:
            for part in path.split("."):
                if type(value) is dict:
                    value = value.get(part)
                elif type(value) is list and part.isascii() and part.isdigit() and int(part) < len(value):
                    value = value[int(part)]
                else:
                    value = None
        return value

    def resolve(self, value: Any, depth: int = 0) -> Any:
        """Replace every string starting with C{$} (keys untouched), recursively."""
        kind = type(value)
        if kind is str:
            return self._copy(self._lookup(value[1:]), depth) if value.startswith("$") else value
        if kind is not dict and kind is not list:
            return value
        if depth >= MAX_VALUE_DEPTH:
            raise ProcedureError(f"value nested deeper than {MAX_VALUE_DEPTH}")
        if kind is dict:
            return {key: self.resolve(item, depth + 1) for key, item in value.items()}
        return [self.resolve(item, depth + 1) for item in value]

    # --- steps ------------------------------------------------------------

    def block(self, steps: Any, depth: int) -> _Steps:
        for step in steps:
            outcome = yield from self.step(step, depth)
            if outcome is not None:
                return outcome
        return None

    def step(self, step: Any, depth: int) -> _Steps:
        self.executed += 1
        if self.executed > self.max_steps:
            raise ProcedureError(f"step limit exceeded ({self.max_steps} steps)")
        kind = step.get("step") if type(step) is dict else None
        if not isinstance(kind, str):
            raise ProcedureError("step missing 'step' field")
        if kind == "insert":
            yield from self._insert(step)
            return None
        if kind == "if":
            return (yield from self._if(step, depth))
        run = _PLAIN_STEPS.get(kind)
        if run is None:
            raise ProcedureError(f"unknown step type: {kind}")
        return run(self, step)

    def _collection(self, step: dict[str, Any]) -> str:
        collection = self.resolve(step.get("collection"))
        if not isinstance(collection, str):
            raise ProcedureError("step missing 'collection'")
        # A step is a generic command: the server's own collections (this
        # very _procedures among them) are out of its reach.
        check_client_collection(collection)
        return collection

    def _query(self, step: dict[str, Any]) -> Any:
        return self.resolve(step["query"]) if "query" in step else {}

    def _store(self, step: dict[str, Any], value: Any) -> None:
        name = step.get("as")
        if isinstance(name, str):
            self.vars[name] = value

    def _read(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.engine.read(fn, *args)

    def _find(self, step: dict[str, Any]) -> None:
        collection = self._collection(step)
        docs = self._read(self.tx.find, collection, self._query(step))
        self._spend(len(docs))
        self._store(step, docs)

    def _find_one(self, step: dict[str, Any]) -> None:
        collection = self._collection(step)
        doc = self._read(self.tx.find_one, collection, self._query(step))
        self._spend(1)
        self._store(step, doc)

    def _count(self, step: dict[str, Any]) -> None:
        collection = self._collection(step)
        count = self._read(self.tx.count, collection, self._query(step))
        self._spend(count)
        self._store(step, count)

    def _insert(self, step: dict[str, Any]) -> Generator[Reserve, int, None]:
        collection = self._collection(step)
        if "document" not in step:
            raise ProcedureError("insert step missing 'document'")
        document = self.resolve(step["document"])
        if type(document) is not dict:
            raise DocumentNotObjectError()
        first_id = yield Reserve(collection, 1)
        self.tx.stage_insert(collection, first_id, [document])
        self._store(step, {"inserted": True, "id": first_id})

    def _update(self, step: dict[str, Any]) -> None:
        collection = self._collection(step)
        query = self._query(step)
        if "update" not in step:
            raise ProcedureError("update step missing 'update'")
        update = self.resolve(step["update"])
        self._read(self.tx.stage_update, collection, query, update, self.now)
        self._store(step, {"modified": True})

    def _delete(self, step: dict[str, Any]) -> None:
        collection = self._collection(step)
        self._read(self.tx.stage_delete, collection, self._query(step))
        self._store(step, {"deleted": True})

    def _aggregate(self, step: dict[str, Any]) -> None:
        collection = self._collection(step)
        if "pipeline" not in step:
            raise ProcedureError("aggregate step missing 'pipeline'")
        docs = self.engine.aggregate(collection, self.resolve(step["pipeline"]))
        self._spend(len(docs))
        self._store(step, docs)

    def _set(self, step: dict[str, Any]) -> None:
        name = step.get("name")
        if not isinstance(name, str):
            raise ProcedureError("set step missing 'name'")
        if "value" not in step:
            raise ProcedureError("set step missing 'value'")
        self.vars[name] = self.resolve(step["value"])

    def _if(self, step: dict[str, Any], depth: int) -> _Steps:
        if "condition" not in step:
            raise ProcedureError("if step missing 'condition'")
        branch = step.get("then" if evaluate_condition(self.resolve(step["condition"])) else "else")
        if type(branch) is not list:
            return None
        if depth >= self.max_nesting:
            raise ProcedureError(f"steps nested deeper than {self.max_nesting}")
        return (yield from self.block(branch, depth + 1))

    def _abort(self, step: dict[str, Any]) -> None:
        message = self.resolve(step["message"]) if "message" in step else "procedure aborted"
        if not isinstance(message, str):
            message = json.dumps(message, separators=(",", ":"), ensure_ascii=False)
        raise ProcedureError(message)

    def _return(self, step: dict[str, Any]) -> _Return:
        return _Return(self.resolve(step["value"]) if "value" in step else {"ok": True})


_PLAIN_STEPS: dict[str, Callable[[_Run, dict[str, Any]], _Return | None]] = {
    "find": _Run._find,
    "find_one": _Run._find_one,
    "count": _Run._count,
    "update": _Run._update,
    "delete": _Run._delete,
    "aggregate": _Run._aggregate,
    "set": _Run._set,
    "abort": _Run._abort,
    "return": _Run._return,
}


def run(
    engine: Any,
    tx: Transaction,
    name: str,
    params: Any,
    now: float,
    *,
    max_steps: int = MAX_STEPS,
    max_nesting: int = MAX_NESTING,
    max_work: int = MAX_WORK,
) -> Generator[Reserve, int, Any]:
    """
    Call procedure C{name} with C{params} inside C{tx}, with blocking calls
    on C{engine}; yields L{Reserve} requests and returns the procedure's
    value. C{now} is the time updates use (C{$currentDate}). The caller
    commits C{tx} afterwards; an exception (an C{abort} included) means
    nothing is committed.
    """
    definition = engine.find_one(PROCEDURES, {"name": name})
    if definition is None:
        raise ProcedureNotFoundError(name)
    procedure = parse_procedure(definition)
    state = _Run(engine, tx, bind_params(procedure, params), now, max_steps, max_nesting, max_work)
    outcome = yield from state.block(procedure.steps, 0)
    return {"ok": True} if outcome is None else outcome.value


def advance(procedure_run: Generator[Reserve, int, Any], value: Any) -> Reserve | Finished:
    """Run one leg: send C{value} (C{None} to start); the next request or the result."""
    try:
        return procedure_run.send(value)
    except StopIteration as stop:
        return Finished(stop.value)


# --- definition storage (writer thread) ----------------------------------------


def _is_named_document(value: object) -> bool:
    return type(value) is dict and isinstance(value.get("name"), str)


def _replace(txn: WriteTxn, collection: str, document: dict[str, Any]) -> None:
    """Store C{document}, replacing the one with its name (unique index on C{name})."""
    txn.delete(collection, {"name": document["name"]})
    txn.create_unique_index(collection, "name")
    txn.insert(collection, document)


@attrs.frozen
class PutProcedure(Operation):
    """Create or replace a procedure definition (C{document}, with its C{name}): C{"procedure created"}."""

    KIND: ClassVar[str] = "PutProcedure"

    document: dict[str, Any] = attrs.field(validator=check(_is_named_document, malformed))

    def apply(self, txn: WriteTxn, now: float) -> str:
        parse_procedure(self.document)
        _replace(txn, PROCEDURES, self.document)
        return "procedure created"


@attrs.frozen
class PutSchedule(Operation):
    """
    Create or replace a schedule (C{document}, with its C{name} and
    C{procedure}): C{"schedule created"}. Its procedure must exist.
    """

    KIND: ClassVar[str] = "PutSchedule"

    document: dict[str, Any] = attrs.field(
        validator=check(lambda d: _is_named_document(d) and isinstance(d.get("procedure"), str), malformed)
    )

    def apply(self, txn: WriteTxn, now: float) -> str:
        procedure = self.document["procedure"]
        if txn.find_one(PROCEDURES, {"name": procedure}) is None:
            raise ProcedureNotFoundError(procedure)
        _replace(txn, SCHEDULES, self.document)
        return "schedule created"


#: The procedure operation types.
OPERATIONS: tuple[type[Operation], ...] = (PutProcedure, PutSchedule)


def register_appliers(engine: Any) -> None:
    """Register L{PutProcedure} and L{PutSchedule} with an engine."""
    for op_type in OPERATIONS:
        engine.register_operation(op_type)
