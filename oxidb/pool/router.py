"""
The router: one decoded client request in, one reply out, through the
groups (L{oxidb.pool.backend.Group}) as the routing core says
(L{oxidb.pool.routing}). Master/replica mode is the same router with one
group and no shard map.

Per client it keeps a L{ClientSession}: the logged-in role (auth on), the
transaction's pinned connection, the read preference.

Commands the router answers itself:
 - C{set_read_preference} C{{"mode": "leader" | "follower"}}: where this
   connection's reads go from now on; a read may also carry
   C{"read_preference": "follower"} (the key is removed before it is sent).
 - C{pool_status}: the groups, their members and leaders.

Login (auth on): the SCRAM conversation is relayed to shard 0's leader over
a connection opened for it, so the server checks the password against its
user store and the client proves itself to the server, not to the router;
once it succeeded, the router looks up the user's role with C{list_users}
(as its backend user) and checks every later command against that role
before routing, as the server would. User commands are broadcast, so every
shard has the same users.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import attrs
from twisted.internet.defer import Deferred, DeferredList
from twisted.python.failure import Failure

from oxidb.auth.rbac import AccessTable, Role
from oxidb.client.core import Reply
from oxidb.client.twisted import Lost, OxiClientConnection
from oxidb.commands import all_commands
from oxidb.config import Address, format_address
from oxidb.logs import Logger
from oxidb.pool.aggregate import split_pipeline
from oxidb.pool.backend import BackendError, Group, MemberPool
from oxidb.pool.routing import (
    Broadcast,
    Refused,
    Scatter,
    Sequential,
    ShardMap,
    Split,
    Targeted,
    merge_counts,
    merge_find,
    merge_scored,
    route,
    route_in_tx,
    scatter_find_request,
    split_insert_many,
)
from oxidb.wire.codec import size_at_least

__all__ = ["ROUTER_COMMANDS", "Answer", "ClientSession", "Router"]

#: Largest shard output sent to C{aggregate_docs} (a request frame holds 16 MiB).
MERGE_LIMIT = 15 * 2**20

#: Commands the router answers itself (no server has them).
ROUTER_COMMANDS = frozenset({"set_read_preference", "pool_status"})

PRE_AUTH = frozenset({"ping", "hello", "authenticate", "authenticate_continue", "auth_simple"})
LOGIN = frozenset({"authenticate", "authenticate_continue", "auth_simple"})


@attrs.frozen
class Answer:
    """A reply for the client: C{ok} with C{value} as data (or, C{top}, as the top-level object), or an error text."""

    ok: bool
    value: Any
    top: bool = False

    @classmethod
    def of(cls, reply: Reply) -> Answer:
        top = reply.ok and reply.request.get("cmd") == "hello"
        return cls(reply.ok, reply.value, top)

    @classmethod
    def error(cls, message: str) -> Answer:
        return cls(False, message)


@attrs.define(eq=False)
class Pinned:
    group: Group
    member: MemberPool
    conn: OxiClientConnection
    used: bool = False


@attrs.define(eq=False)
class ClientSession:
    """One client connection's state at the router."""

    peer: str = "?"
    role: Role | None = None
    user: str | None = None
    follower_reads: bool = False
    tx: Pinned | None = None
    login: OxiClientConnection | None = None
    login_user: str | None = None


class Router:
    """
    @param groups: the Raft groups, shard 0 first.
    @param shards: the shard map (C{None}: master/replica mode, one group).
    @param open_login: opens a connection to a member, not logged in, for relaying a client's login.
    """

    _log = Logger()

    def __init__(
        self,
        groups: list[Group],
        shards: ShardMap | None,
        *,
        auth: bool = False,
        follower_reads: bool = False,
        open_login: Callable[[Address], Deferred[OxiClientConnection]] | None = None,
    ) -> None:
        self.groups = groups
        self.shards = shards
        self.auth = auth
        self.follower_default = follower_reads
        self.open_login = open_login
        self.access = AccessTable.from_rows(all_commands().get(n) for n in all_commands().names())

    def new_session(self, peer: str = "?") -> ClientSession:
        return ClientSession(peer=peer, follower_reads=self.follower_default)

    # -- entry points -----------------------------------------------------------

    def handle(self, session: ClientSession, request: Any) -> Deferred[Answer]:
        """The answer to one decoded request (never a failure)."""
        d = Deferred.fromCoroutine(self._handle(session, request))
        return d.addErrback(self._unexpected, request)

    def _unexpected(self, failure: Failure, request: Any) -> Answer:
        if failure.check(BackendError):
            return Answer.error(failure.getErrorMessage())
        cmd = request.get("cmd") if isinstance(request, dict) else None
        self._log.failure("routing {cmd} failed", failure, cmd=cmd)
        return Answer.error("internal error")

    def client_gone(self, session: ClientSession) -> None:
        """The client disconnected: roll back its pinned transaction, close its login relay."""
        if session.login is not None:
            session.login.close()
            session.login = None
        pinned, session.tx = session.tx, None
        if pinned is None:
            return
        if not pinned.conn.connected:
            pinned.member.release(pinned.conn)
            return
        d = pinned.conn.request({"cmd": "rollback_tx"})
        d.addBoth(lambda _: pinned.member.release(pinned.conn))

    # -- dispatch -------------------------------------------------------------

    async def _handle(self, session: ClientSession, request: Any) -> Answer:
        if not isinstance(request, dict):
            return Answer.error("missing 'cmd' field")
        cmd = request.get("cmd")
        if not isinstance(cmd, str):
            return Answer.error("missing 'cmd' field")
        if self.auth:
            if session.role is None:
                if cmd not in PRE_AUTH:
                    return Answer.error("authentication required")
            elif cmd in LOGIN:
                return Answer.error("already authenticated")
            elif not self.access.allowed(session.role, cmd) and cmd not in ROUTER_COMMANDS:
                return Answer.error(f"permission denied: role '{session.role.wire}' cannot execute '{cmd}'")
            if cmd in LOGIN:
                return await self._login(session, request)
        if cmd == "set_read_preference":
            mode = request.get("mode")
            if mode not in ("leader", "follower"):
                return Answer.error("missing 'mode': leader or follower")
            session.follower_reads = mode == "follower"
            return Answer(True, mode)
        if cmd == "pool_status":
            return Answer(True, self.status())
        follower = session.follower_reads
        if "read_preference" in request:
            preference = request.get("read_preference")
            if preference not in ("leader", "follower"):
                return Answer.error("'read_preference' must be leader or follower")
            follower = preference == "follower"
            request = {k: v for k, v in request.items() if k != "read_preference"}
        if cmd in ("begin_tx", "commit_tx", "rollback_tx") or session.tx is not None:
            return await self._in_tx(session, request)
        if self.shards is None:
            return Answer.of(await self.groups[0].request(request, follower=follower))
        if cmd == "pipeline":
            return await self._pipeline(request, follower)
        where = route(self.shards, request)
        return await self._routed(where, request, follower)

    async def _routed(self, where: Any, request: dict[str, Any], follower: bool) -> Answer:
        if isinstance(where, Targeted):
            return Answer.of(await self.groups[where.shard].request(request, follower=follower))
        if isinstance(where, Refused):
            return Answer.error(where.message)
        if isinstance(where, Broadcast):
            replies = await self._all(request, follower=False)
            failed = next((r for r in replies if not r.ok), None)
            return Answer.of(failed or replies[0])
        if isinstance(where, Split):
            return await self._insert_many(request)
        if isinstance(where, Sequential):
            return await self._sequential(request)
        assert isinstance(where, Scatter)
        return await self._scatter(where.merge, request, follower)

    async def _all(self, request: dict[str, Any] | list[dict[str, Any]], *, follower: bool) -> list[Reply]:
        """Each group's reply (one request for all, or one per group); a backend failure fails the whole."""
        requests = request if isinstance(request, list) else [request] * len(self.groups)
        results = await DeferredList(
            [g.request(r, follower=follower) for g, r in zip(self.groups, requests, strict=True)],
            consumeErrors=True,
        )
        replies: list[Reply] = []
        for ok, result in results:
            if not ok:
                failure = cast(Failure, result)
                if failure.check(BackendError):
                    raise BackendError(failure.getErrorMessage())
                failure.raiseException()
            replies.append(result)
        return replies

    async def _scatter(self, merge: str, request: dict[str, Any], follower: bool) -> Answer:
        if merge == "find":
            replies = await self._all(scatter_find_request(request), follower=follower)
        elif merge == "aggregate":
            return await self._aggregate(request, follower)
        else:
            replies = await self._all(request, follower=follower)
        failed = next((r for r in replies if not r.ok), None)
        if failed is not None:
            return Answer.of(failed)
        values = [r.value for r in replies]
        if merge == "count":
            return Answer(True, merge_counts(values))
        if merge == "one":
            return Answer(True, next((v for v in values if v is not None), None))
        if not all(isinstance(v, list) for v in values):
            return Answer.error(f"oxipool: a shard answered '{request.get('cmd')}' with something else than a list")
        if merge == "find":
            return Answer(True, merge_find(request, values))
        return Answer(True, merge_scored(request, values))

    async def _aggregate(self, request: dict[str, Any], follower: bool) -> Answer:
        pipeline = request.get("pipeline")
        if not isinstance(pipeline, list):
            return Answer.of(await self.groups[0].request(request, follower=follower))
        split = split_pipeline(pipeline)
        replies = await self._all({**request, "pipeline": split.shard}, follower=follower)
        failed = next((r for r in replies if not r.ok), None)
        if failed is not None:
            return Answer.of(failed)
        docs = [doc for r in replies for doc in (r.value if isinstance(r.value, list) else [])]
        if not split.merge:
            return Answer(True, docs)
        if size_at_least(docs, MERGE_LIMIT) > MERGE_LIMIT:
            return Answer.error(
                f"oxipool: the shards' aggregation output is too large to merge (over {MERGE_LIMIT // 2**20} MiB): "
                "narrow it with a $match, or group or limit earlier in the pipeline"
            )
        merge: dict[str, Any] = {"cmd": "aggregate_docs", "pipeline": split.merge, "docs": docs}
        if "max_time_ms" in request:
            merge["max_time_ms"] = request["max_time_ms"]
        return Answer.of(await self.groups[0].request(merge, follower=follower))

    async def _insert_many(self, request: dict[str, Any]) -> Answer:
        assert self.shards is not None
        docs = request.get("docs")
        if not isinstance(docs, list) or not docs:
            return Answer.of(await self.groups[0].request(request))
        groups = split_insert_many(self.shards, request)
        order = sorted(groups)
        results = await DeferredList(
            [self.groups[s].request({**request, "docs": [docs[p] for p in groups[s]]}) for s in order],
            consumeErrors=True,
        )
        ids: list[Any] = [None] * len(docs)
        errors = []
        for shard, (ok, result) in zip(order, results, strict=True):
            if not ok:
                errors.append(f"shard {shard}: {cast(Failure, result).getErrorMessage()}")
                continue
            if not result.ok:
                errors.append(f"shard {shard}: {result.value}")
                continue
            if not isinstance(result.value, list) or len(result.value) != len(groups[shard]):
                errors.append(f"shard {shard}: unexpected reply")
                continue
            for position, doc_id in zip(groups[shard], result.value, strict=True):
                ids[position] = doc_id
        if errors:
            done = len(docs) - sum(1 for i in ids if i is None)
            if len(errors) == 1 and len(order) == 1:
                return Answer.error(errors[0].split(": ", 1)[1])
            return Answer.error(
                f"oxipool: insert_many failed on {'; '.join(errors)} ({done} of {len(docs)} documents were inserted "
                "by the other shards)"
            )
        return Answer(True, ids)

    async def _sequential(self, request: dict[str, Any]) -> Answer:
        """C{update_one}/C{delete_one}/C{find_and_modify} without the key: shard by shard until one matches."""
        last: Reply | None = None
        for group in self.groups:
            reply = await group.request(request)
            if not reply.ok:
                return Answer.of(reply)
            last = reply
            value = reply.value
            if isinstance(value, dict) and any(value.get(k) for k in ("modified", "deleted", "matched")):
                return Answer.of(reply)
            if request.get("cmd") == "find_and_modify" and value is not None:
                return Answer.of(reply)
        assert last is not None
        return Answer.of(last)

    async def _pipeline(self, request: dict[str, Any], follower: bool) -> Answer:
        assert self.shards is not None
        commands = request.get("commands")
        if not isinstance(commands, list):
            return Answer.of(await self.groups[0].request(request, follower=follower))
        targets = set()
        for command in commands:
            where = route(self.shards, command) if isinstance(command, dict) else Targeted(0)
            if not isinstance(where, Targeted):
                return Answer.error("oxipool: a pipeline's commands must all go to one shard")
            targets.add(where.shard)
        if len(targets) > 1:
            return Answer.error("oxipool: a pipeline's commands must all go to one shard")
        shard = targets.pop() if targets else 0
        return Answer.of(await self.groups[shard].request(request, follower=follower))

    # -- transactions -----------------------------------------------------------

    async def _in_tx(self, session: ClientSession, request: dict[str, Any]) -> Answer:
        cmd = request["cmd"]
        pinned = session.tx
        if cmd == "begin_tx":
            if pinned is not None:
                return Answer.error("transaction already active")
            member, conn = await self.groups[0].pin()
            pinned = Pinned(self.groups[0], member, conn)
            answer = await self._on_pinned(session, pinned, request)
            if answer.ok:
                session.tx = pinned
            else:
                member.release(conn)
            return answer
        if pinned is None:  # commit_tx/rollback_tx without one: the server's own answer
            return Answer.of(await self.groups[0].request(request))
        if cmd in ("commit_tx", "rollback_tx"):
            session.tx = None
            try:
                return await self._on_pinned(session, pinned, request)
            finally:
                pinned.member.release(pinned.conn)
        if self.shards is None:
            target = 0
        else:
            where = route_in_tx(self.shards, request)
            if isinstance(where, Refused):
                return Answer.error(where.message)
            target = where
        if self.groups.index(pinned.group) != target:
            if pinned.used:
                return Answer.error(
                    "cross-shard transactions not supported; use the same shard key within a transaction"
                )
            # Nothing ran in it yet: move the transaction to the shard it needs.
            await self._on_pinned(session, pinned, {"cmd": "rollback_tx"})
            pinned.member.release(pinned.conn)
            session.tx = None
            member, conn = await self.groups[target].pin()
            pinned = Pinned(self.groups[target], member, conn)
            begun = await self._on_pinned(session, pinned, {"cmd": "begin_tx"})
            if not begun.ok:
                member.release(conn)
                return begun
            session.tx = pinned
        pinned.used = True
        return await self._on_pinned(session, pinned, request)

    async def _on_pinned(self, session: ClientSession, pinned: Pinned, request: dict[str, Any]) -> Answer:
        try:
            reply = await pinned.conn.request(request)
        except Lost as lost:
            session.tx = None
            if request.get("cmd") == "commit_tx" and lost.sent:
                return Answer.error(
                    f"oxipool: {pinned.group.name} lost the connection with 'commit_tx' in flight; "
                    "its outcome is unknown"
                )
            return Answer.error(f"oxipool: {pinned.group.name}: {lost}; the transaction was rolled back")
        return Answer.of(reply)

    # -- login ------------------------------------------------------------------

    async def _login(self, session: ClientSession, request: dict[str, Any]) -> Answer:
        cmd = request["cmd"]
        if self.open_login is None:
            return Answer.error("internal error")
        group = self.groups[0]
        if cmd != "authenticate_continue" or session.login is None or not session.login.connected:
            if session.login is not None:
                session.login.close()
            leader = group.state.leader or group.voters[0]
            try:
                session.login = await self.open_login(leader)
            except Exception as e:
                return Answer.error(f"oxipool: {group.name} unreachable: {e}")
        conn = session.login
        try:
            reply = await conn.request(request)
        except Lost as lost:
            session.login = None
            return Answer.error(f"oxipool: {group.name}: {lost}")
        if cmd == "authenticate" and reply.ok and isinstance(request.get("payload"), str):
            session.login_user = _scram_user(request["payload"])
        done = reply.ok and isinstance(reply.value, dict) and reply.value.get("done") is True
        if not reply.ok or done:
            conn.close()
            session.login = None
        if not done:
            return Answer.of(reply)
        user = request.get("username") if cmd == "auth_simple" else session.login_user
        role = Role.parse(reply.value.get("role")) if cmd == "auth_simple" else await self._role_of(user)
        if role is None or not isinstance(user, str):
            return Answer.error("authentication failed: cannot read the user's role")
        session.role, session.user = role, user
        return Answer.of(reply)

    async def _role_of(self, user: Any) -> Role | None:
        reply = await self.groups[0].request({"cmd": "list_users"})
        if not reply.ok or not isinstance(reply.value, list):
            return None
        for entry in reply.value:
            if isinstance(entry, dict) and entry.get("username") == user:
                return Role.parse(entry.get("role"))
        return None

    # -- status -----------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "mode": "sharded" if self.shards is not None else "master/replica",
            "shards": [
                {
                    "shard": g.index,
                    "members": [format_address(a) for a in g.members],
                    "leader": format_address(g.state.leader) if g.state.leader else None,
                    "term": g.state.term,
                    "requests": g.state.requests,
                    "errors": g.state.errors,
                }
                for g in self.groups
            ],
        }


def _scram_user(client_first: str) -> str | None:
    """The user name of a SCRAM client-first message (C{n,,n=<name>,r=<nonce>})."""
    for part in client_first.split(","):
        if part.startswith("n="):
            return part[2:].replace("=2C", ",").replace("=3D", "=")
    return None
