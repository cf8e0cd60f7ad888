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

A forward may carry C{"user"}: the name of the client whose write it is, for
the leader's audit trail.

L{Forwarder} is the node's side of both: it sends a follower's writes to the
leader and waits (bounded) for the answers, and proposes the writes a
follower forwarded to this node while it leads.

L{MemberGate} sits between the peer transport and the node: it accepts
forwarded writes (and their results) only from peers in this node's current
cluster configuration (voters and learners) and audits each forwarded write
(as the originating user when the forward names one). Authentication proves
that a peer holds the cluster key, not that it is still a member: a removed
node, or one that was never added, keeps the key.

Raft's own messages are not filtered by membership, on purpose: a node whose
configuration is behind (it was down while a node was added, and that node
now leads) must accept the new leader's entries to learn the configuration
at all (Raft dissertation, 4.1). Terms, log matching, pre-vote and
check-quorum govern them.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import count
from typing import TYPE_CHECKING, Any

import attrs
import orjson
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.python.failure import Failure
from zope.interface import implementer

from oxidb.audit.events import DENIED, OK, AuditEvent
from oxidb.errors import InternalError, NotAMemberError, OxiError, RaftError
from oxidb.logs import Logger
from oxidb.raft.messages import MessageDecodeError
from oxidb.raft.transport import IPeerChannel, IPeerHandler

if TYPE_CHECKING:
    from oxidb.raft.core import RaftCore

FORWARD = "forward"
FORWARD_RESULT = "forward_result"


@attrs.frozen
class ForwardRequest:
    """C{user}: the originating client's user name, when the sender gives it."""

    request_id: int
    term: int
    op: dict[str, Any]
    user: str | None = None

    def encode(self) -> bytes:
        out: dict[str, Any] = {"type": FORWARD, "id": self.request_id, "term": self.term, "op": self.op}
        if self.user is not None:
            out["user"] = self.user
        return orjson.dumps(out)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> ForwardRequest:
        op = obj.get("op")
        if not isinstance(op, dict) or len(op) != 1:
            raise MessageDecodeError("a forwarded op must be an object with one key")
        term = obj.get("term")
        if type(term) is not int or term < 0:
            raise MessageDecodeError("'term' must be a non-negative integer")
        user = obj.get("user")
        if user is not None and (not isinstance(user, str) or len(user) > 1024):
            raise MessageDecodeError("'user' must be a short string")
        return cls(_request_id(obj), term, op, user)


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
    def from_json(cls, obj: dict[str, Any]) -> ForwardResult:
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


@attrs.define(eq=False)
class _Forward:
    """A write forwarded to C{leader}, the leader of C{term}."""

    leader: int
    term: int
    deferred: Deferred[ForwardResult]
    timer: IDelayedCall


class Forwarder:
    """
    A node's forwarded writes: those it sent to a leader (L{forward}) and
    those a follower sent it (L{received}).

    @param clock: an C{IReactorTime} (the forwards' timeouts).
    @param core: the node's L{RaftCore}, or C{None} before it starts.
    @param send_frame: C{send_frame(peer, payload)} sends a frame to a peer.
    @param propose: proposes an operation on this node (the leader) and
        fires with its apply result.
    """

    _log = Logger()

    def __init__(
        self,
        clock: Any,
        core: Callable[[], RaftCore | None],
        send_frame: Callable[[int, bytes], None],
        propose: Callable[[dict[str, Any]], Deferred[Any]],
    ) -> None:
        self._clock = clock
        self._core = core
        self._send_frame = send_frame
        self._propose = propose
        self._forwards: dict[int, _Forward] = {}
        self._ids = count(1)

    def forward(self, leader: int, term: int, op: dict[str, Any], timeout: float) -> Deferred[ForwardResult]:
        """
        Send C{op} to C{leader}, bound to its C{term}: a node that does not
        lead in that term (a restarted old leader, say) refuses it. Fails
        after C{timeout} seconds without an answer.
        """
        request_id = next(self._ids)
        d: Deferred[ForwardResult] = Deferred()
        timer = self._clock.callLater(timeout, self._expired, request_id, leader, timeout)
        self._forwards[request_id] = _Forward(leader, term, d, timer)
        self._send_frame(leader, ForwardRequest(request_id, term, op).encode())
        return d

    def check(self) -> None:
        """Fail forwards whose leader this node no longer follows: their outcome is unknown."""
        core = self._core()
        if not self._forwards or core is None:
            return
        for request_id, forward in list(self._forwards.items()):
            if core.leader_id != forward.leader or core.current_term != forward.term:
                del self._forwards[request_id]
                forward.timer.cancel()
                forward.deferred.errback(
                    RaftError(
                        f"the leader (node {forward.leader}) changed before it answered a forwarded write; "
                        "its outcome is unknown"
                    )
                )

    def fail_all(self, error: OxiError) -> None:
        """The node stops: fail every forward still waiting."""
        forwards, self._forwards = self._forwards, {}
        for forward in forwards.values():
            forward.timer.cancel()
            forward.deferred.errback(error)

    def _expired(self, request_id: int, leader: int, timeout: float) -> None:
        forward = self._forwards.pop(request_id, None)
        if forward is not None:
            forward.deferred.errback(
                RaftError(
                    f"the leader (node {leader}) did not answer a forwarded write within "
                    f"{timeout:g}s; its outcome is unknown"
                )
            )

    def answered(self, answer: ForwardResult) -> None:
        """The leader answered one of this node's forwards."""
        forward = self._forwards.pop(answer.request_id, None)
        if forward is not None:
            forward.timer.cancel()
            forward.deferred.callback(answer)

    def received(self, request: ForwardRequest, channel: IPeerChannel) -> None:
        """A follower forwarded a write: propose it if this node leads in its term, and answer."""
        core = self._core()
        assert core is not None
        if not core.is_leader or core.current_term != request.term:
            channel.send(
                ForwardResult(request.request_id, False, error="not the leader of that term", redirect=True).encode()
            )
            return
        try:
            d = self._propose(request.op)
        except RaftError as e:
            # Not the leader any more, or handing leadership over.
            channel.send(ForwardResult(request.request_id, False, error=str(e), redirect=True).encode())
            return

        def done(data: Any) -> None:
            try:
                channel.send(ForwardResult(request.request_id, True, data).encode())
            except TypeError:
                self._log.failure("raft: a forwarded write's result is not JSON")
                channel.send(ForwardResult(request.request_id, False, error=InternalError().message).encode())

        def failed(failure: Failure) -> None:
            error = failure.value
            if not isinstance(error, OxiError):
                self._log.failure("raft: a forwarded write failed unexpectedly", failure)
                error = InternalError()
            channel.send(ForwardResult(request.request_id, False, error=error.message).encode())

        d.addCallbacks(done, failed)


#: The audit trail's command name for a forwarded write received from a peer.
AUDIT_CMD = "raft_forward"


@implementer(IPeerHandler)
class MemberGate:
    """
    Wraps the node's L{IPeerHandler}. A forwarded write from a peer outside
    the current configuration is answered with L{NotAMemberError}
    (C{redirect: false}: nothing was proposed); a forward result from such a
    peer is dropped (it could only answer a forward this node never sent
    it). Raft messages pass (see the module docstring). A node that knows no
    configuration yet accepts forwards from every authenticated peer.

    @param inner: the node.
    @param members: the current configuration's node ids (voters and
        learners), or C{None} when this node has none yet.
    @param audit: the L{oxidb.audit.events.Auditor}, or C{None} (auditing off).
    @param clock: timestamps of audit events.
    """

    _log = Logger()

    def __init__(
        self,
        inner: Any,
        members: Callable[[], frozenset[int] | None],
        audit: Callable[[], Any],
        clock: Any,
    ) -> None:
        self._inner = inner
        self._members = members
        self._audit = audit
        self._clock = clock
        self.refused = 0

    def frame_received(self, peer: int, frame: dict[str, Any], channel: IPeerChannel) -> None:
        members = self._members()
        member = members is None or peer in members
        if frame.get("type") == FORWARD:
            request = ForwardRequest.from_json(frame)
            if not member:
                self.refused += 1
                error = NotAMemberError(peer)
                self._log.warn(
                    "raft: refusing a forwarded write from node {peer}: not a member of the configuration", peer=peer
                )
                self._record(peer, request, DENIED, error.message)
                channel.send(ForwardResult(request.request_id, False, error=error.message, redirect=False).encode())
                return
            self._record(peer, request, OK, "")
        elif frame.get("type") == FORWARD_RESULT and not member:
            self.refused += 1
            self._log.warn(
                "raft: ignoring a forward result from node {peer}: not a member of the configuration", peer=peer
            )
            return
        self._inner.frame_received(peer, frame, channel)

    def _record(self, peer: int, request: ForwardRequest, result: str, detail: str) -> None:
        auditor = self._audit()
        if auditor is None:
            return
        [kind] = request.op
        user = request.user if request.user is not None else f"raft node {peer}"
        auditor.record(
            AuditEvent(
                ts=self._clock.seconds(),
                user=user,
                role=None,
                cmd=AUDIT_CMD,
                collection=str(kind),
                result=result,
                detail=detail,
                peer=f"raft node {peer}",
            )
        )
