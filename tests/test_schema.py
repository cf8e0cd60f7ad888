"""
Request schemas (oxidb.commands._schema): the dispatcher checks them before
the handler, with exactly the texts the handlers give (server.md 3.2).

Handlers that no longer check the fields their schema validates are held to
the texts their checks gave, recorded in C{fixtures/schema_texts.json}.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import maybeDeferred
from twisted.python.failure import Failure

from oxidb.commands import Command, CommandContext, all_commands
from oxidb.commands._schema import Field, JsonType, Schema, fields
from oxidb.errors import BadRequestError, OxiError
from oxidb.server.session import Session
from oxidb.testing import MemoryServer, fake_services

#: A valid value of each type, for the fields before the one broken.
VALID: dict[JsonType, Any] = {
    JsonType.STRING: "c",
    JsonType.INTEGER: 1,
    JsonType.UINT: 1,
    JsonType.BOOLEAN: True,
    JsonType.OBJECT: {},
    JsonType.ARRAY: [],
    JsonType.ANY: {},
}

#: Wrong values of each type (absent is tried too).
WRONG: dict[JsonType, list[Any]] = {
    JsonType.STRING: [None, 5, ["c"], ""],
    JsonType.INTEGER: [None, "1", 1.0, True],
    JsonType.UINT: [None, -1, "1", 1.5, True, 2**64],
    JsonType.BOOLEAN: [None, 1, "true"],
    JsonType.OBJECT: [None, [], "x"],
    JsonType.ARRAY: [None, {}, "x", [None], ["x"], [-1], [True]],
    JsonType.ANY: [None],
}


#: (command, request, text or None when the schema accepts it), recorded from
#: the handlers' own checks before they were left to the schema.
RECORDED: list[tuple[str, dict[str, Any], str | None]] = [
    (name, request, text)
    for name, request, text in json.loads(
        (Path(__file__).parent / "fixtures" / "schema_texts.json").read_text(encoding="utf-8")
    )["cases"]
]


def _key(name: str, request: dict[str, Any]) -> str:
    return name + json.dumps(request, sort_keys=True)


_RECORDED_KEYS = {_key(name, request) for name, request, _ in RECORDED}


def _valid(field: Field) -> Any:
    if field.type is JsonType.ARRAY and field.items is not None:
        return [VALID[field.items]]
    if field.collection:
        return "c"
    return VALID[field.type]


def cases() -> list[tuple[str, dict[str, Any]]]:
    """For every validated field of every row: requests that break it and only it."""
    out = []
    for command in all_commands():
        before: dict[str, Any] = {"cmd": command.name}
        for field in command.schema.validated:
            for wrong in [*WRONG[field.type], "absent", "_reserved"]:
                if wrong == "_reserved" and not field.collection:
                    continue
                request = dict(before)
                if wrong != "absent":
                    request[field.name] = wrong
                out.append((command.name, request))
            before[field.name] = _valid(field)
    return out


class AnyEngine:
    """An engine stand-in: handlers only name its methods before they validate."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args: None


def outcome(command: Command, request: dict[str, Any]) -> str | None:
    """The handler's own error text for C{request}, or None if it did not fail at once."""
    services = fake_services(
        config=None, clock=None, engine=AnyEngine(), executor=None, raft=None, auth=None, metrics=None
    )
    ctx = CommandContext(Session.anonymous_admin(), services)
    failures: list[Failure] = []
    maybeDeferred(command.handler, ctx, request).addErrback(failures.append)
    if not failures or not isinstance(failures[0].value, OxiError):
        return None
    return failures[0].value.message


@pytest.mark.parametrize(
    "name, request_",
    [(name, request) for name, request in cases() if _key(name, request) not in _RECORDED_KEYS],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_schema_gives_the_handlers_own_text(name: str, request_: dict[str, Any]) -> None:
    command = all_commands().get(name)
    assert command is not None
    try:
        command.schema.validate(request_)
    except OxiError as e:
        assert e.message == outcome(command, request_)
    # Accepted by the schema: the handler runs and checks the rest.


@pytest.mark.parametrize("name, request_, text", RECORDED, ids=lambda v: v if isinstance(v, str) else None)
def test_schema_gives_the_recorded_text(name: str, request_: dict[str, Any], text: str | None) -> None:
    command = all_commands().get(name)
    assert command is not None
    if text is None:
        command.schema.validate(request_)
    else:
        with pytest.raises(OxiError) as raised:
            command.schema.validate(request_)
        assert raised.value.message == text


def test_validation_stops_at_the_first_handler_field() -> None:
    schema = fields(
        Field("a", JsonType.STRING, required=True),
        Field("b", JsonType.STRING, required=True, handler=True),
        Field("c", JsonType.STRING, required=True),
    )
    assert [f.name for f in schema.validated] == ["a"]
    with pytest.raises(BadRequestError, match="^missing 'a'$"):
        schema.validate({})
    schema.validate({"a": "x"})


def test_optional_fields() -> None:
    schema = fields(
        Field("limit", JsonType.UINT, invalid="'limit' must be a non-negative integer"),
        Field("sort", JsonType.OBJECT),
        Field("v", JsonType.ARRAY, items=JsonType.INTEGER, invalid="'v' must be an array of integers"),
    )
    schema.validate({"sort": "ignored", "limit": None})
    with pytest.raises(BadRequestError, match="^'limit' must be a non-negative integer$"):
        schema.validate({"limit": -1})
    with pytest.raises(BadRequestError, match="^'v' must be an array of integers$"):
        schema.validate({"v": [1, "2"]})


def test_a_field_is_listed_once() -> None:
    with pytest.raises(ValueError):
        Schema((Field("a", JsonType.STRING), Field("a", JsonType.ANY)))


def test_every_row_documents_itself() -> None:
    for command in all_commands():
        assert command.summary, command.name
        for field in command.schema:
            assert field.describe()


def test_the_dispatcher_checks_before_the_handler(tmp_path: Any) -> None:
    calls: list[Any] = []
    row = Command(
        "needs_x",
        lambda ctx, request: calls.append(request) or "ran",
        schema=fields(Field("x", JsonType.STRING, required=True, message="give me an x")),
    )
    server = MemoryServer(data_dir=str(tmp_path), commands=[row])
    assert server.request({"cmd": "needs_x"}) == {"ok": False, "error": "give me an x"}
    assert calls == []
    assert server.request({"cmd": "needs_x", "x": "1"}) == {"ok": True, "data": "ran"}
