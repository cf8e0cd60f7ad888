"""
Typed, versioned write operations: every replicated state change.

A state change is an L{Operation}: a frozen attrs value with typed fields,
built by a command handler (C{ctx.write(Insert(collection="c",
document={...}))}), applied by the engine's writer thread and, in cluster
mode, carried by a Raft log entry as its JSON form. Design choices:

  - B{One class per kind, with its own C{apply}.} The engine dispatches on
    the operation's I{type} (L{oxidb.engine.engine.Engine.register_operation}
    maps a type to how it is applied; by default its C{apply(txn, now)}).
    Operations that need state outside the database (the user store) are
    registered with an applier bound to it; unregistered ones fail with
    C{unknown operation: <kind>} as before.
  - B{The JSON form is the Raft log's request shape} (server.md 8.6), a
    single-key object C{{KIND: body}}, so that logs written before
    operations had types still decode. The body carries the operation's
    version as C{"v"}; a body without it (every entry written before this
    module existed) is version 1. The version sits inside the body rather
    than beside the kind because peers (forwarded writes) and older nodes
    require the single-key shape, and older nodes ignore unknown body keys,
    so a log written from now on is still readable by them.
  - B{Decoding is the only place a body is checked.} L{OperationCodec}
    turns a payload into an operation or raises L{BadRequestError}
    (C{malformed operation}, C{unknown operation: <kind>}, or a field's own
    text); field types are checked by attrs validators when an operation is
    built, be it by a handler or by decoding, never in C{apply}. Checks that
    depend on the database state (names that must exist, documents that must
    be objects after the collection was auto-created) stay in the engine's
    write primitives, so their errors and side effects are unchanged.
  - B{Versions move forward only.} C{from_body(body, version)} receives the
    version found, so a type whose shape changes bumps C{VERSION} and keeps
    reading the older bodies; a version above the type's C{VERSION} (written
    by a newer server) is refused with a clear error instead of being half
    understood.

Adding a write command therefore touches the module that defines its
operation (a class with its fields and C{apply}, listed in that module's
operations), the command module (handler and registry row), and a test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, cast

import attrs

from oxidb.engine import databases, store
from oxidb.errors import BadRequestError, OxiError

if TYPE_CHECKING:
    from oxidb.engine.writes import WriteTxn

#: The body key holding an operation's version.
VERSION_KEY = "v"

#: A JSON value as decoded (dict, list, str, int, float, bool or None).
JSON = Any

Op = TypeVar("Op", bound="Operation")


def malformed() -> BadRequestError:
    """The error of a payload or body that does not have its documented shape."""
    return BadRequestError("malformed operation")


class Operation:
    """
    Base of every write operation. Subclasses are C{@attrs.frozen} and set
    L{KIND}; their JSON body is their fields by name (fields whose value is
    C{None} and whose default is C{None} are left out) unless they override
    L{to_body} and L{from_body}.

    @cvar KIND: the name in the Raft log, e.g. C{"Insert"}.
    @cvar VERSION: the version written, and the highest one read.
    """

    KIND: ClassVar[str] = ""
    VERSION: ClassVar[int] = 1

    def to_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {}
        for field in attrs.fields(cast(Any, type(self))):
            value = getattr(self, field.name)
            if value is None and field.default is None:
                continue
            body[field.name] = value
        return body

    def to_json(self) -> dict[str, Any]:
        """The log form: C{{KIND: {**body, "v": VERSION}}}."""
        return {self.KIND: {**self.to_body(), VERSION_KEY: self.VERSION}}

    @classmethod
    def from_body(cls: type[Op], body: dict[str, Any], version: int) -> Op:
        """
        Build from a decoded body of C{version} (at most L{VERSION}). An
        absent field is C{None} unless it has a default; the validators then
        reject what does not fit. Unknown keys are ignored.
        """
        values = {}
        for field in attrs.fields(cast(Any, cls)):
            if field.name in body:
                values[field.name] = body[field.name]
            elif field.default is attrs.NOTHING:
                values[field.name] = None
        return cls(**values)

    def auto_create(self) -> str | None:
        """
        The collection the engine creates before applying this operation,
        and keeps even when it then fails (engine.md 1.6), or C{None}.
        """
        return None

    def apply(self, txn: WriteTxn, now: float) -> Any:
        """
        Apply on the writer thread inside the batch's transaction and the
        operation's savepoint; the reply data. Deterministic given the
        database state, the operation and C{now}.
        """
        raise BadRequestError(f"unknown operation: {self.KIND}")


class OperationCodec:
    """Kind -> operation type: decodes log payloads (and forwarded writes)."""

    def __init__(self, types: Iterable[type[Operation]] = ()) -> None:
        self._types: dict[str, type[Operation]] = {}
        for op_type in types:
            self.register(op_type)

    def register(self, op_type: type[Operation]) -> None:
        kind = op_type.KIND
        if not kind or kind in self._types:
            raise ValueError(f"operation kind registered twice: {kind}")
        self._types[kind] = op_type

    def __contains__(self, kind: object) -> bool:
        return kind in self._types

    def type_of(self, kind: str) -> type[Operation] | None:
        return self._types.get(kind)

    def decode(self, payload: object) -> Operation:
        """
        The operation of a log payload C{{kind: body}}.

        @raise BadRequestError: C{malformed operation} (not a single-key
            object, a body that is not an object, a field of the wrong type,
            a bad version), C{unknown operation: <kind>}, or a field's own
            error text.
        """
        if type(payload) is not dict or len(payload) != 1:
            raise malformed()
        ((kind, body),) = payload.items()
        op_type = self._types.get(kind)
        if op_type is None:
            raise BadRequestError(f"unknown operation: {kind}")
        if type(body) is not dict:
            raise malformed()
        version = body.get(VERSION_KEY, 1)
        if type(version) is not int or version < 1:
            raise malformed()
        if version > op_type.VERSION:
            raise BadRequestError(
                f"unsupported operation version: {kind} v{version} (this server applies up to v{op_type.VERSION})"
            )
        try:
            return op_type.from_body(body, version)
        except OxiError:
            raise
        except (TypeError, ValueError):
            raise malformed() from None


@attrs.frozen
class Rejected(Operation):
    """
    A payload that did not decode, still submitted so that its Raft index is
    recorded like any failing entry's: applying it raises L{error} (every
    replica rejects it alike). Never encoded.
    """

    KIND: ClassVar[str] = "Rejected"

    error: OxiError

    def to_json(self) -> dict[str, Any]:
        raise TypeError("a rejected payload is not an operation to replicate")

    def apply(self, txn: WriteTxn, now: float) -> Any:
        raise self.error


# --- field validators --------------------------------------------------------


def check(test: Callable[[Any], bool], error: Callable[[], OxiError]) -> Callable[[Any, Any, Any], None]:
    """An attrs validator raising C{error()} when C{test(value)} is false."""

    def validate(instance: Any, attribute: Any, value: Any) -> None:
        if not test(value):
            raise error()

    return validate


def collection_name(instance: Any, attribute: Any, value: Any) -> None:
    """Validator of a collection name: a string (the engine checks the rest when applying)."""
    if not isinstance(value, str):
        # The engine's own text for a name that is not a string.
        store.validate_collection_name(value)
        raise malformed()


def text(message: str) -> Callable[[Any, Any, Any], None]:
    """Validator: a string, else C{BadRequestError(message)}."""
    return check(lambda value: isinstance(value, str), lambda: BadRequestError(message))


def present(message: str) -> Callable[[Any, Any, Any], None]:
    """Validator: any value but C{None}, else C{BadRequestError(message)}."""
    return check(lambda value: value is not None, lambda: BadRequestError(message))


def _is_list(value: Any) -> bool:
    return type(value) is list


def _field_names(instance: Any, attribute: Any, value: Any) -> None:
    if type(value) is not list:
        raise BadRequestError(f"missing '{attribute.name}' array")
    if not all(isinstance(field, str) for field in value):
        raise BadRequestError(f"'{attribute.name}' must be an array of strings")


#: The largest C{limit} a write takes (SQLite's integers are 64-bit signed).
MAX_LIMIT = 2**63 - 1


def is_uint(value: Any) -> bool:
    return type(value) is int and value >= 0


# --- document operations ------------------------------------------------------


@attrs.frozen
class _OnCollection(Operation):
    """An operation naming a collection, which it creates if missing (engine.md 1.6)."""

    collection: str = attrs.field(validator=collection_name)

    def auto_create(self) -> str | None:
        return self.collection


@attrs.frozen
class Insert(_OnCollection):
    """Insert one document: C{{"id": n}}. C{document} is checked by the engine (an object)."""

    KIND: ClassVar[str] = "Insert"

    document: JSON = attrs.field()

    def apply(self, txn: WriteTxn, now: float) -> Any:
        return {"id": txn.insert(self.collection, self.document)}


@attrs.frozen
class InsertMany(_OnCollection):
    """Insert documents all-or-nothing: their consecutive ids."""

    KIND: ClassVar[str] = "InsertMany"

    documents: list[JSON] = attrs.field(
        validator=check(_is_list, lambda: BadRequestError("missing or invalid 'docs' array"))
    )

    def apply(self, txn: WriteTxn, now: float) -> Any:
        return txn.insert_many(self.collection, self.documents)


@attrs.frozen
class RestoreDocuments(_OnCollection):
    """
    A restore's documents, keeping their C{_id} and C{_version}, and the
    collection's id high-water mark (C{last_id}): C{{"restored": n,
    "last_id": m}} (L{WriteTxn.restore_documents}). Admin only; replicated
    like any write, so every replica holds the same ids and versions.
    """

    KIND: ClassVar[str] = "RestoreDocuments"

    documents: list[JSON] = attrs.field(
        validator=check(_is_list, lambda: BadRequestError("missing or invalid 'docs' array"))
    )
    last_id: int = attrs.field(
        default=0,
        validator=check(
            lambda v: is_uint(v) and v <= MAX_LIMIT,
            lambda: BadRequestError("'last_id' must be an integer from 0 to 2^63-1"),
        ),
    )

    def apply(self, txn: WriteTxn, now: float) -> Any:
        return txn.restore_documents(self.collection, self.documents, self.last_id)


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool)


@attrs.frozen
class _Updating(_OnCollection):
    """
    An update with MongoDB's options: C{upsert} (insert a document built
    from the query and the update when nothing matches; the reply adds
    C{upserted_id}) and C{array_filters} (for C{$[<id>]} paths).

    B{Replication.} The upserted document and its C{_id} are not decided by
    the node that accepts the write: C{apply} computes them (L{WriteTxn.upsert}:
    the query's equality fields, the update applied with C{$setOnInsert},
    the collection's next id), which depends only on the database state,
    the operation and the entry's C{now}, so every replica applying the log
    in order inserts the same document with the same id. Carrying the
    leader's choice instead would add nothing but a second source of truth.

    B{Versions.} A body using an option is written as version 2; without
    options it stays version 1, which every node applies alike. A node
    that only knows version 1 therefore refuses an upsert or an
    C{array_filters} update (C{unsupported operation version}) instead of
    silently applying it without the option, as upstream's log does.
    """

    VERSION: ClassVar[int] = 2

    query: JSON = attrs.field(validator=present("missing 'query'"))
    update: JSON = attrs.field(validator=present("missing 'update'"))
    upsert: bool = attrs.field(
        default=False, validator=check(_is_bool, lambda: BadRequestError("'upsert' must be a boolean"))
    )
    array_filters: list[JSON] | None = attrs.field(
        default=None,
        validator=check(
            lambda value: value is None or type(value) is list,
            lambda: BadRequestError("'array_filters' must be an array of objects"),
        ),
    )

    def to_body(self) -> dict[str, Any]:
        body = super().to_body()
        if not self.upsert:
            body.pop("upsert", None)
        return body

    def to_json(self) -> dict[str, Any]:
        version = 2 if self.upsert or self.array_filters is not None else 1
        return {self.KIND: {**self.to_body(), VERSION_KEY: version}}

    def _apply(self, txn: WriteTxn, one: bool) -> dict[str, Any]:
        modified = txn.update(self.collection, self.query, self.update, one=one, array_filters=self.array_filters)
        if modified == 0 and self.upsert:
            upserted = txn.upsert(self.collection, self.query, self.update, self.array_filters)
            return {"modified": 0, "upserted_id": upserted}
        return {"modified": modified}


@attrs.frozen
class Update(_Updating):
    """Update every matching document: C{{"modified": n}} (an upsert adds C{upserted_id})."""

    KIND: ClassVar[str] = "Update"

    def apply(self, txn: WriteTxn, now: float) -> Any:
        return self._apply(txn, False)


@attrs.frozen
class UpdateOne(_Updating):
    """Update the matching document with the lowest C{_id}: C{{"modified": 0 | 1}} (an upsert adds C{upserted_id})."""

    KIND: ClassVar[str] = "UpdateOne"

    def apply(self, txn: WriteTxn, now: float) -> Any:
        return self._apply(txn, True)


@attrs.frozen
class Delete(_OnCollection):
    """Delete the matching documents, at most C{limit} (lowest C{_id} first): C{{"deleted": n}}."""

    KIND: ClassVar[str] = "Delete"

    query: JSON = attrs.field(validator=present("missing 'query'"))
    limit: int | None = attrs.field(
        default=None,
        validator=check(
            lambda value: value is None or (is_uint(value) and value <= MAX_LIMIT),
            lambda: BadRequestError("'limit' must be a non-negative integer"),
        ),
    )

    def apply(self, txn: WriteTxn, now: float) -> Any:
        return {"deleted": txn.delete(self.collection, self.query, self.limit)}


@attrs.frozen
class DeleteOne(_OnCollection):
    """Delete the matching document with the lowest C{_id}: C{{"deleted": 0 | 1}}."""

    KIND: ClassVar[str] = "DeleteOne"

    query: JSON = attrs.field(validator=present("missing 'query'"))

    def apply(self, txn: WriteTxn, now: float) -> Any:
        return {"deleted": txn.delete(self.collection, self.query, 1)}


def _optional(kind: type, message: str) -> Callable[[Any, Any, Any], None]:
    return check(lambda value: value is None or type(value) is kind, lambda: BadRequestError(message))


def _flag(name: str) -> Any:
    """An optional boolean field, false by default."""
    message = f"'{name}' must be a boolean"
    return attrs.field(default=False, validator=check(_is_bool, lambda: BadRequestError(message)))


def _update_unless_remove(instance: Any, attribute: Any, value: Any) -> None:
    if instance.remove:
        if value is not None:
            raise BadRequestError("find_and_modify takes 'update' or 'remove', not both")
    elif value is None:
        raise BadRequestError("missing 'update'")


@attrs.frozen
class FindAndModify(_OnCollection):
    """
    Update or remove the first matching document in C{sort} order and
    answer it (before the change, or after it with C{new}), projected by
    C{fields}, or null (L{WriteTxn.find_and_modify}).

    One operation, so the select and the change are one write on the
    writer and, in cluster mode, one log entry that every replica applies
    alike: the document is chosen by the query and sort on each node's
    identical state, and an upsert's document and id are computed in
    C{apply} as for L{Update}. (Upstream runs it on the receiving node
    only.)
    """

    KIND: ClassVar[str] = "FindAndModify"

    query: JSON = attrs.field(validator=present("missing 'query'"))
    update: JSON = attrs.field(default=None, validator=_update_unless_remove)
    remove: bool = _flag("remove")
    new: bool = _flag("new")
    upsert: bool = _flag("upsert")
    sort: dict[str, Any] | None = attrs.field(default=None, validator=_optional(dict, "'sort' must be an object"))
    fields: dict[str, Any] | None = attrs.field(default=None, validator=_optional(dict, "'fields' must be an object"))
    array_filters: list[JSON] | None = attrs.field(
        default=None, validator=_optional(list, "'array_filters' must be an array of objects")
    )

    def __attrs_post_init__(self) -> None:
        if self.remove and self.upsert:
            raise BadRequestError("'upsert' cannot be used with 'remove'")
        if self.remove and self.new:
            raise BadRequestError("'new' cannot be used with 'remove'")

    def apply(self, txn: WriteTxn, now: float) -> Any:
        return txn.find_and_modify(
            self.collection,
            self.query,
            self.update,
            remove=self.remove,
            new=self.new,
            upsert=self.upsert,
            sort=self.sort,
            fields=self.fields,
            array_filters=self.array_filters,
        )


# --- collections ----------------------------------------------------------------


@attrs.frozen
class CreateCollection(Operation):
    KIND: ClassVar[str] = "CreateCollection"

    name: str = attrs.field(validator=collection_name)

    def apply(self, txn: WriteTxn, now: float) -> Any:
        return txn.create_collection(self.name)


@attrs.frozen
class DropCollection(Operation):
    KIND: ClassVar[str] = "DropCollection"

    name: str = attrs.field(validator=collection_name)

    def apply(self, txn: WriteTxn, now: float) -> Any:
        return txn.drop_collection(self.name)


@attrs.frozen
class EnsureCollection(Operation):
    """Create a collection if missing (a read's auto-create); no reply data."""

    KIND: ClassVar[str] = "EnsureCollection"

    name: str = attrs.field(validator=collection_name)

    def apply(self, txn: WriteTxn, now: float) -> Any:
        txn.ensure_collection(self.name)
        return None


@attrs.frozen
class Compact(_OnCollection):
    KIND: ClassVar[str] = "Compact"

    def apply(self, txn: WriteTxn, now: float) -> Any:
        return txn.compact(self.collection)


# --- databases ------------------------------------------------------------------


def _database_name(instance: Any, attribute: Any, value: Any) -> None:
    """Validator of a database name (L{oxidb.engine.databases.NAME_RULE})."""
    databases.validate_name(value)


def _db_flag(instance: Any, attribute: Any, value: Any) -> None:
    if type(value) is not bool:
        raise malformed()


@attrs.frozen
class CreateDatabase(Operation):
    """C{"database '<n>' created"} (server.md 3.7, 8.6's C{CreateDatabase} entry)."""

    KIND: ClassVar[str] = "CreateDatabase"

    name: str = attrs.field(validator=_database_name)
    if_not_exists: bool = attrs.field(default=False, validator=_db_flag)

    def apply(self, txn: WriteTxn, now: float) -> Any:
        return txn.create_database(self.name, self.if_not_exists)


@attrs.frozen
class DropDatabase(Operation):
    """
    C{"database '<n>' dropped"}: the database and all its collections,
    indexes, text and vector tables in one transaction.
    """

    KIND: ClassVar[str] = "DropDatabase"

    name: str = attrs.field(validator=_database_name)
    if_exists: bool = attrs.field(default=False, validator=_db_flag)

    def apply(self, txn: WriteTxn, now: float) -> Any:
        return txn.drop_database(self.name, self.if_exists)


# --- indexes ----------------------------------------------------------------------


@attrs.frozen
class _FieldIndex(_OnCollection):
    field: str = attrs.field(validator=text("missing 'field'"))


@attrs.frozen
class CreateIndex(_FieldIndex):
    KIND: ClassVar[str] = "CreateIndex"

    def apply(self, txn: WriteTxn, now: float) -> Any:
        return txn.create_index(self.collection, self.field)


@attrs.frozen
class CreateUniqueIndex(_FieldIndex):
    KIND: ClassVar[str] = "CreateUniqueIndex"

    def apply(self, txn: WriteTxn, now: float) -> Any:
        return txn.create_unique_index(self.collection, self.field)


@attrs.frozen
class _FieldsIndex(_OnCollection):
    """An index on C{fields}; an empty list is the engine's error (after the auto-create)."""

    fields: list[str] = attrs.field(validator=_field_names)


@attrs.frozen
class CreateCompositeIndex(_FieldsIndex):
    KIND: ClassVar[str] = "CreateCompositeIndex"

    def apply(self, txn: WriteTxn, now: float) -> Any:
        return txn.create_composite_index(self.collection, self.fields)


@attrs.frozen
class CreateTextIndex(_FieldsIndex):
    KIND: ClassVar[str] = "CreateTextIndex"

    def apply(self, txn: WriteTxn, now: float) -> Any:
        return txn.create_text_index(self.collection, self.fields)


def _dimension(instance: Any, attribute: Any, value: Any) -> None:
    if type(value) is not int:
        raise BadRequestError("missing 'dimension'")


@attrs.frozen
class CreateVectorIndex(_FieldIndex):
    """
    The vector index C{_vec_<field>}: C{"vector index created"}. C{metric}
    is the stored name (L{oxidb.engine.vectors.normalize_metric}); the
    engine checks C{dimension}'s range.
    """

    KIND: ClassVar[str] = "CreateVectorIndex"

    dimension: int = attrs.field(validator=_dimension)
    metric: str = attrs.field(default="cosine", validator=text("malformed operation"))

    def apply(self, txn: WriteTxn, now: float) -> Any:
        return txn.create_vector_index(self.collection, self.field, self.dimension, self.metric)


@attrs.frozen
class DropIndex(_OnCollection):
    KIND: ClassVar[str] = "DropIndex"

    index: str = attrs.field(validator=text("missing 'index'"))

    def apply(self, txn: WriteTxn, now: float) -> Any:
        return txn.drop_index(self.collection, self.index)


#: The operations every engine applies (others are registered by the
#: modules that define them).
BUILTIN: tuple[type[Operation], ...] = (
    Insert,
    InsertMany,
    RestoreDocuments,
    Update,
    UpdateOne,
    Delete,
    DeleteOne,
    FindAndModify,
    CreateCollection,
    DropCollection,
    EnsureCollection,
    Compact,
    CreateIndex,
    CreateUniqueIndex,
    CreateCompositeIndex,
    CreateTextIndex,
    CreateVectorIndex,
    DropIndex,
    CreateDatabase,
    DropDatabase,
)

__all__ = [
    "BUILTIN",
    "JSON",
    "VERSION_KEY",
    "Compact",
    "CreateCollection",
    "CreateCompositeIndex",
    "CreateDatabase",
    "CreateIndex",
    "CreateTextIndex",
    "CreateUniqueIndex",
    "CreateVectorIndex",
    "Delete",
    "DeleteOne",
    "DropCollection",
    "DropDatabase",
    "DropIndex",
    "EnsureCollection",
    "FindAndModify",
    "Insert",
    "InsertMany",
    "Operation",
    "OperationCodec",
    "Rejected",
    "RestoreDocuments",
    "Update",
    "UpdateOne",
    "malformed",
]
