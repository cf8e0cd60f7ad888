"""
What one request comes to: L{Reply} (made by the dispatcher), L{TopLevel}
(a handler result sent as a whole object) and L{command_name}.

They live here, beside the handlers, so that the C{pipeline} command can
run sub-requests without importing the server package (the server depends
on the commands, never the reverse). L{oxidb.server.dispatch} re-exports
them.
"""

from __future__ import annotations

from typing import Any

import attrs


class Reply:
    """
    The outcome of one request (a plain slotted class: one is made per
    request, so it must be cheap).

    @ivar ok: success or error.
    @ivar value: the C{data} value, or the error text.
    @ivar top_level: C{value} is a whole top-level JSON object sent as is,
        always as JSON (the C{hello} success reply, server.md 2.5).
    """

    __slots__ = ("ok", "value", "top_level")

    def __init__(self, ok: bool, value: Any, top_level: bool = False) -> None:
        self.ok = ok
        self.value = value
        self.top_level = top_level

    def __eq__(self, other: object) -> bool:
        return (
            type(other) is Reply
            and (self.ok, self.value, self.top_level) == (other.ok, other.value, other.top_level)
        )

    def __repr__(self) -> str:
        return f"Reply(ok={self.ok!r}, value={self.value!r}, top_level={self.top_level!r})"

    def envelope(self) -> dict[str, Any]:
        """The reply as a plain envelope (used inside C{pipeline} replies)."""
        if self.top_level:
            return dict(self.value)
        if self.ok:
            return {"ok": True, "data": self.value}
        return {"ok": False, "error": self.value}


@attrs.frozen
class TopLevel:
    """A handler result to be sent as a top-level object (see L{Reply})."""

    value: dict[str, Any]


def command_name(request: Any) -> str:
    """The request's command, or C{""} when missing or not a string."""
    if type(request) is not dict:
        return ""
    name = request.get("cmd")
    if name is None:
        name = request.get("command")
    return name if isinstance(name, str) else ""
