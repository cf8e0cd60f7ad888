"""
Declarative request schemas: the fields a command reads, their JSON types,
whether they are required, and their limits.

A L{Schema} is used twice: the dispatcher validates a request with it before
the handler runs (L{Schema.validate}), and L{oxidb.commands.docs} writes
C{docs/commands.md} from it.

The error texts are the upstream ones (server.md 3.2): a required field that
is absent, null or of the wrong type is C{missing '<field>'} unless the field
names another text (L{Field.message}); an optional field of the wrong type
is ignored (the default applies) unless it names an C{invalid} text.

Fields are checked in order and validation stops at the first field marked
C{handler=True}: that field (and every later one) is checked by the handler,
whose exact text or order a schema cannot reproduce; the schema only
documents it. Checks a handler makes on a validated field after all the
schema's checks (a bucket's naming rules, a key's length) stay in the
handler too and are described in L{Field.doc}.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import attrs

from oxidb.engine.store import check_client_collection
from oxidb.errors import BadRequestError


def _is_uint(value: Any) -> bool:
    return type(value) is int and value >= 0


class JsonType(enum.Enum):
    """A field's JSON type; C{.value} is the docs spelling."""

    STRING = "string"
    INTEGER = "integer"
    UINT = "non-negative integer"
    BOOLEAN = "boolean"
    OBJECT = "object"
    ARRAY = "array"
    ANY = "any"

    def matches(self, value: Any) -> bool:
        """Is C{value} (a decoded JSON value) of this type? C{bool} is never an integer."""
        return _MATCHERS[self](value)


_MATCHERS: Mapping[JsonType, Callable[[Any], bool]] = {
    JsonType.STRING: lambda v: isinstance(v, str),
    JsonType.INTEGER: lambda v: type(v) is int,
    JsonType.UINT: _is_uint,
    JsonType.BOOLEAN: lambda v: isinstance(v, bool),
    JsonType.OBJECT: lambda v: isinstance(v, dict),
    JsonType.ARRAY: lambda v: isinstance(v, list),
    JsonType.ANY: lambda v: v is not None,
}


@attrs.frozen
class Field:
    """
    One request field.

    @ivar name: the request key.
    @ivar type: its JSON type.
    @ivar required: absent, null or of the wrong type is an error
        (L{message}); optional fields of the wrong type are ignored unless
        L{invalid} is set.
    @ivar doc: a short description for the docs (defaults, rules checked
        elsewhere).
    @ivar message: the error text of a missing or mistyped required field;
        default C{missing '<name>'}.
    @ivar invalid: for an optional field: the error text when it is present
        (not null) and of the wrong type (or its items are).
    @ivar items: arrays: the type every element must have.
    @ivar items_message: the error text when an element is not of C{items};
        default L{message} (required) or L{invalid} (optional).
    @ivar nonempty: a required string must not be empty (same text as
        missing).
    @ivar maximum: an integer must not exceed it (same text as missing, or
        as L{invalid} for an optional field).
    @ivar max_bytes: the most UTF-8 bytes a string may have (documented;
        enforced by the handler or engine with its own text).
    @ivar max_items: the most elements an array may have: a number, or the
        setting that bounds it (documented; enforced by the handler).
    @ivar collection: a collection a client names: never a reserved one
        (L{oxidb.engine.store.check_client_collection}).
    @ivar handler: checked by the handler, not here (see the module
        docstring); validation stops at this field.
    """

    name: str
    type: JsonType
    required: bool = False
    doc: str = ""
    message: str | None = None
    invalid: str | None = None
    items: JsonType | None = None
    items_message: str | None = None
    nonempty: bool = False
    maximum: int | None = None
    max_bytes: int | None = None
    max_items: int | str | None = None
    collection: bool = False
    handler: bool = False

    # Worked out once per field (fields are immutable), not per request.
    _matches: Callable[[Any], bool] = attrs.field(init=False, eq=False, repr=False)
    _text: str = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "_matches", _MATCHERS[self.type])
        object.__setattr__(self, "_text", self.message or f"missing '{self.name}'")

    def check(self, request: Mapping[str, Any]) -> None:
        """Raise L{BadRequestError} with the field's text if C{request} breaks it."""
        value: Any = request.get(self.name)
        if self.required:
            text = self._text
            if not self._matches(value):
                raise BadRequestError(text)
            if self.nonempty and not value:
                raise BadRequestError(text)
            if self.maximum is not None and value > self.maximum:
                raise BadRequestError(text)
        else:
            if value is None:
                return
            if self.invalid is None:
                return
            text = self.invalid
            if not self._matches(value):
                raise BadRequestError(text)
            if self.maximum is not None and value > self.maximum:
                raise BadRequestError(text)
        if self.items is not None:
            items = self.items
            if not all(items.matches(item) for item in value):
                raise BadRequestError(self.items_message or text)
        if self.collection:
            check_client_collection(value)

    def describe(self) -> str:
        """The field's type and rules in one line of docs."""
        kind = self.type.value
        if self.items is not None:
            kind = f"array of {self.items.value}s" if self.items is not JsonType.ANY else "array"
        rules = []
        if self.nonempty:
            rules.append("not empty")
        if self.maximum is not None:
            rules.append(f"at most {self.maximum}")
        if self.max_bytes is not None:
            rules.append(f"at most {self.max_bytes} bytes")
        if self.max_items is not None:
            rules.append(f"at most {self.max_items} items")
        if self.collection:
            rules.append("not a reserved (`_`) collection")
        return "; ".join([kind, *rules])


@attrs.frozen
class Schema:
    """The fields of one command's request, in the order they are checked."""

    fields: tuple[Field, ...] = ()

    #: The fields checked here: those before the first C{handler} field.
    validated: tuple[Field, ...] = attrs.field(init=False, eq=False, repr=False)
    #: The names of the collection fields (those a scoped request qualifies).
    collections: tuple[str, ...] = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        names = [f.name for f in self.fields]
        if len(names) != len(set(names)):
            raise ValueError(f"a field is listed twice: {names}")
        checked = []
        for field in self.fields:
            if field.handler:
                break
            checked.append(field)
        object.__setattr__(self, "validated", tuple(checked))
        object.__setattr__(self, "collections", tuple(f.name for f in self.fields if f.collection))

    def validate(self, request: Mapping[str, Any]) -> None:
        """Raise L{BadRequestError} (upstream's text) at the first field C{request} breaks."""
        for field in self.validated:
            field.check(request)

    def __iter__(self) -> Iterator[Field]:
        return iter(self.fields)

    def __len__(self) -> int:
        return len(self.fields)


def fields(*items: Field) -> Schema:
    """A L{Schema} of C{items}, in order."""
    return Schema(tuple(items))


#: No request fields.
NO_FIELDS = Schema()


def collection_field(name: str = "collection", doc: str = "") -> Field:
    """The collection a client names (required string, not reserved)."""
    return Field(name, JsonType.STRING, required=True, collection=True, doc=doc)


#: The optional time limit of a read (C{maxTimeMS} is accepted too).
MAX_TIME_MS = Field(
    "max_time_ms",
    JsonType.UINT,
    doc="lowers the server's time limit (`OXIDB_MAX_TIME_MS`); `maxTimeMS` is accepted too; checked by the engine",
    handler=True,
)
