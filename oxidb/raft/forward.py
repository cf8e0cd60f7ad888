"""
The two frames a follower and the leader exchange to forward a client's
write, next to the core's messages on the same authenticated connections:

* C{{"type":"forward","id":<u64>,"term":<u64>,"op":<operation>}}: the
  follower asks the leader of C{term} to propose C{op} (an
  L{oxidb.commands.IExecutor} operation) and answer with its apply result; a
  node that does not lead in that term refuses (so a request queued for a
  leader that crashed is not run if it comes back and wins a later term);
* C{{"type":"forward_result","id":<u64>,"ok":true,"data":<data>}} or
  C{{"type":"forward_result","id":<u64>,"ok":false,"error":"<text>",
  "redirect":<bool>}}: the leader's answer, on the connection the request
  came in on. C{redirect} says that the receiver is not (or no longer) the
  leader and did not propose anything, so the follower may send the write
  elsewhere.
"""

from __future__ import annotations

from typing import Any

import attrs
import orjson

from oxidb.raft.messages import MessageDecodeError

FORWARD = "forward"
FORWARD_RESULT = "forward_result"


@attrs.frozen
class ForwardRequest:
    request_id: int
    term: int
    op: dict[str, Any]

    def encode(self) -> bytes:
        return orjson.dumps({"type": FORWARD, "id": self.request_id, "term": self.term, "op": self.op})

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> "ForwardRequest":
        op = obj.get("op")
        if not isinstance(op, dict) or len(op) != 1:
            raise MessageDecodeError("a forwarded op must be an object with one key")
        term = obj.get("term")
        if type(term) is not int or term < 0:
            raise MessageDecodeError("'term' must be a non-negative integer")
        return cls(_request_id(obj), term, op)


@attrs.frozen
class ForwardResult:
    """C{data} on success; otherwise C{error} (the text) and C{redirect}."""

    request_id: int
    ok: bool
    data: Any = None
    error: str = ""
    redirect: bool = False

    def encode(self) -> bytes:
        out: dict[str, Any] = {"type": FORWARD_RESULT, "id": self.request_id, "ok": self.ok}
        if self.ok:
            out["data"] = self.data
        else:
            out["error"] = self.error
            out["redirect"] = self.redirect
        return orjson.dumps(out)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> "ForwardResult":
        request_id = _request_id(obj)
        ok = obj.get("ok")
        if ok is True:
            return cls(request_id, True, obj.get("data"))
        error, redirect = obj.get("error"), obj.get("redirect")
        if ok is not False or not isinstance(error, str) or not isinstance(redirect, bool):
            raise MessageDecodeError("a failed forward_result needs 'error' and 'redirect'")
        return cls(request_id, False, error=error, redirect=redirect)


def _request_id(obj: dict[str, Any]) -> int:
    value = obj.get("id")
    if type(value) is not int or value < 0:
        raise MessageDecodeError("'id' must be a non-negative integer")
    return value
