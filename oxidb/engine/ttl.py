"""
TTL indexes: documents whose date field is older than the index's
C{expireAfterSeconds} are deleted (MongoDB's meaning).

Definitions. A TTL index is C{(collection, field, expire_after_seconds)},
one per field of a collection, kept in the database's C{oxi_meta} table
under L{META_KEY} (a JSON object C{{collection: {field: seconds}}}), so it
travels with the database file: backups, snapshots and replicas carry it.
C{list_indexes} shows it as C{{"name": "_ttl_<field>", "index_type":
"ttl", "fields": [field], "unique": false, "expireAfterSeconds": n}};
C{drop_index} with that name drops it, and dropping the collection drops
its TTL indexes.

Expiry. A document expires when its field holds a date-time string (the
format C{$currentDate} writes; the C{$type: "date"} test) whose instant is
at or before C{now - expireAfterSeconds}. Documents without the field, or
with any other value (numbers, arrays, non-date strings), never expire.

Deletion. Nothing here reads a clock. The sweeper
(L{oxidb.server.ttl.TtlSweeper}) runs on the standalone server or on the
cluster leader: it finds expired ids on a reader thread
(L{expired_batches}), then writes for each batch an ordinary L{Delete}
whose query names those ids I{and} the expiry condition with the cutoff
fixed as a date string (L{expiry_query}). The delete is an ordinary
replicated operation, so every node deletes the same documents, and a
document updated meanwhile to a later date is not deleted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, TypeGuard

import attrs
import orjson

from oxidb.engine import store
from oxidb.engine.operations import Delete, Operation, _OnCollection, check
from oxidb.engine.values import format_rfc3339
from oxidb.errors import BadRequestError, InvalidQueryError

if TYPE_CHECKING:
    from oxidb.engine.reads import Reader
    from oxidb.engine.writes import WriteTxn

#: The C{oxi_meta} key holding every TTL definition.
META_KEY = "ttl_indexes"
#: A TTL index's name is this prefix and its field.
NAME_PREFIX = "_ttl_"
#: The largest C{expireAfterSeconds} (MongoDB's: a signed 32-bit integer).
MAX_EXPIRE_AFTER_SECONDS = 2**31 - 1
#: Reserved fields a TTL index cannot be on.
_RESERVED = ("_id", "_version")

Definitions = dict[str, dict[str, int]]


def _expire_message() -> BadRequestError:
    return BadRequestError(
        f"'expireAfterSeconds' must be a non-negative integer (at most {MAX_EXPIRE_AFTER_SECONDS})"
    )


def valid_expire_after(value: Any) -> TypeGuard[int]:
    return type(value) is int and 0 <= value <= MAX_EXPIRE_AFTER_SECONDS


def load(conn: Any) -> Definitions:
    """Every TTL definition: collection -> field -> seconds."""
    raw = store.get_meta(conn, META_KEY)
    if raw is None:
        return {}
    defs = orjson.loads(raw)
    return defs if type(defs) is dict else {}


def _save(conn: Any, defs: Definitions) -> None:
    defs = {name: fields for name, fields in defs.items() if fields}
    if defs:
        store.set_meta(conn, META_KEY, orjson.dumps(defs, option=orjson.OPT_SORT_KEYS).decode())
    else:
        store.delete_meta(conn, META_KEY)


def describe(collection_defs: Mapping[str, int]) -> list[dict[str, Any]]:
    """The C{list_indexes} descriptors of one collection's TTL indexes, by field."""
    return [
        {
            "name": NAME_PREFIX + field,
            "index_type": "ttl",
            "fields": [field],
            "unique": False,
            "expireAfterSeconds": seconds,
        }
        for field, seconds in sorted(collection_defs.items())
    ]


def list_for(conn: Any, collection: str) -> list[dict[str, Any]]:
    return describe(load(conn).get(collection, {}))


def drop(conn: Any, collection: str, name: str) -> bool:
    """Drop the TTL index C{name} of C{collection}; whether it existed."""
    if not name.startswith(NAME_PREFIX):
        return False
    defs = load(conn)
    fields = defs.get(collection, {})
    if fields.pop(name[len(NAME_PREFIX) :], None) is None:
        return False
    _save(conn, defs)
    return True


def drop_collection(conn: Any, collection: str) -> None:
    """Forget the TTL indexes of a dropped collection."""
    defs = load(conn)
    if defs.pop(collection, None) is not None:
        _save(conn, defs)


def expiry_query(field: str, cutoff: float) -> dict[str, Any]:
    """The documents of C{field} expired at C{cutoff} (seconds since the epoch)."""
    return {field: {"$type": "date", "$lte": format_rfc3339(cutoff)}}


def expired_batches(reader: Reader, now: float, batch_size: int) -> list[tuple[str, str, dict[str, Any], int]]:
    """
    For every TTL index with expired documents at C{now}: C{(collection,
    field, query, found)} where C{query} selects at most C{batch_size} of
    them by id, with the expiry condition (see the module docstring), and
    C{found} is how many ids it names. Runs on a reader; writes nothing.
    """
    batches = []
    for collection, fields in sorted(load(reader.conn).items()):
        if store.get_collection(reader.conn, collection) is None:
            continue
        for field, seconds in sorted(fields.items()):
            condition = expiry_query(field, now - seconds)
            docs = reader.find(collection, condition, None, None, batch_size, capped=False)
            if docs:
                ids = [doc["_id"] for doc in docs]
                batches.append((collection, field, {"_id": {"$in": ids}, **condition}, len(ids)))
    return batches


def sweep_operation(collection: str, query: dict[str, Any]) -> Delete:
    """The replicated delete of one batch."""
    return Delete(collection, query)


def _ttl_field(instance: Any, attribute: Any, value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise BadRequestError("missing 'field'")
    root = value.split(".", 1)[0]
    if root in _RESERVED:
        raise InvalidQueryError(f"a TTL index cannot be on the reserved field '{value}'")


@attrs.frozen
class CreateTtlIndex(_OnCollection):
    """
    Create (or change the expiry of) the TTL index on C{field}:
    C{"ttl index created"}.
    """

    KIND: ClassVar[str] = "CreateTtlIndex"

    field: str = attrs.field(validator=_ttl_field)
    expire_after_seconds: int = attrs.field(validator=check(valid_expire_after, _expire_message))

    def apply(self, txn: WriteTxn, now: float) -> Any:
        info = txn.ensure_collection(self.collection)
        defs = load(txn.conn)
        defs.setdefault(info.name, {})[self.field] = self.expire_after_seconds
        _save(txn.conn, defs)
        return "ttl index created"


#: The TTL operation types.
OPERATIONS: tuple[type[Operation], ...] = (CreateTtlIndex,)

__all__ = [
    "MAX_EXPIRE_AFTER_SECONDS",
    "META_KEY",
    "NAME_PREFIX",
    "OPERATIONS",
    "CreateTtlIndex",
    "describe",
    "drop",
    "drop_collection",
    "expired_batches",
    "expiry_query",
    "list_for",
    "load",
    "register_appliers",
    "sweep_operation",
    "valid_expire_after",
]


def register_appliers(engine: Any) -> None:
    """Register L{CreateTtlIndex} with an engine."""
    for op_type in OPERATIONS:
        engine.register_operation(op_type)
