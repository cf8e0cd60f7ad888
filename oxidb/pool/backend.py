"""
Backend connections: a L{MemberPool} of connections to one server, and a
L{Group} of members that form one Raft group (a shard, or the master
group), which finds the group's leader and follows its changes.

Connections are L{oxidb.client.twisted.OxiClientConnection}s (the client's
protocol core); each one logs in with the pool's own backend credentials.
A connection serves one request at a time; requests beyond the pool's size
wait in a bounded queue (more are refused with C{server busy}), which is the
backpressure a slow shard puts on its clients.

Leader tracking: every C{leader_poll} seconds, and at once after a failure,
the group asks each member for C{raft_metrics} on a control connection of
its own; the member that says it is C{Leader} in the highest term is the
leader. A lone member that is not a cluster node is its own leader.
Requests wait (within their deadline) while the group has no leader.

Failures reach the client as error replies (docs/sharding.md):

 - no leader or no reachable member by the deadline:
   C{oxipool: shard <n> unreachable: ...};
 - a write whose connection broke after it was sent:
   C{oxipool: shard <n> lost the connection with '<cmd>' in flight; its
   outcome is unknown} (never sent again);
 - the request timeout: C{oxipool: shard <n> did not answer '<cmd>' within
   <t>s} (for a write sent, also C{; its outcome is unknown});
 - the queue bound: C{server busy: oxipool: shard <n> has <k> requests waiting}.

Reads whose connection broke, and writes a backend refused because it is
not the leader, has no leader or lost the entry in a leader change (so they
were not applied), are sent again to the new leader within the deadline.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet import task
from twisted.internet.defer import CancelledError, Deferred, DeferredList, fail, succeed
from twisted.python.failure import Failure

from oxidb.client.core import Reply, ScramLogin, is_retry_safe
from oxidb.client.errors import ClientError
from oxidb.client.twisted import Lost, OxiClientConnection, TwistedConnector
from oxidb.client.url import ConnectOptions
from oxidb.config import Address, format_address
from oxidb.logs import Logger

__all__ = ["BackendError", "Group", "MemberPool", "backoff"]

#: Error texts of replies that mean the request was not applied and may go to the new leader.
NOT_APPLIED = (
    "raft error: has to forward request to",
    "raft error: no leader elected",
    "raft error: the write was lost in a leader change",
    "raft error: not the leader",
)


def backoff(failures: int) -> float:
    """Seconds before reconnecting after C{failures} failures in a row: 0.5 doubling, at most 10 (upstream's)."""
    return float(min(10.0, 0.5 * 2 ** max(0, failures - 1)))


class BackendError(Exception):
    """A request could not be served by the backend; C{str()} is the client's error text."""


class _Timeout(Exception):
    pass


def within(clock: Any, d: Deferred[Any], deadline: float) -> Deferred[Any]:
    """C{d}'s result, or a L{_Timeout} failure once the clock passes C{deadline} (C{d} keeps running)."""
    out: Deferred[Any] = Deferred()
    delay = deadline - clock.seconds()
    if delay <= 0:
        return fail(_Timeout())

    def expired() -> None:
        if not out.called:
            out.errback(_Timeout())

    call = clock.callLater(delay, expired)

    def done(result: Any) -> None:
        if call.active():
            call.cancel()
        if not out.called:
            out.callback(result) if not isinstance(result, Failure) else out.errback(result)
        elif isinstance(result, Failure):
            result.trap(Exception)  # reported through the timeout already

    d.addBoth(done)
    return out


@attrs.define(eq=False)
class MemberPool:
    """
    Up to C{size} connections to one server, opened on demand; a reconnect
    after failures waits L{backoff}.
    """

    address: Address
    size: int
    connect: Callable[[Address], Deferred[OxiClientConnection]]
    clock: Any
    max_queued: int
    idle: list[OxiClientConnection] = attrs.field(factory=list)
    busy: int = 0
    opening: int = 0
    waiting: deque[Deferred[OxiClientConnection]] = attrs.field(factory=deque)
    failures: int = 0
    retry_at: float = 0.0
    last_error: str = ""
    control: OxiClientConnection | None = None
    _log = Logger()

    @property
    def name(self) -> str:
        return format_address(self.address)

    def acquire(self) -> Deferred[OxiClientConnection]:
        """A connection for one request; give it back with L{release}."""
        while self.idle:
            conn = self.idle.pop()
            if conn.connected:
                self.busy += 1
                return succeed(conn)
        if len(self.waiting) >= self.max_queued:
            return fail(BackendError(f"server busy: oxipool: {self.name} has {len(self.waiting)} requests waiting"))
        d: Deferred[OxiClientConnection] = Deferred(lambda d: self._forget(d))
        self.waiting.append(d)
        self._grow()
        return d

    def _forget(self, d: Deferred[OxiClientConnection]) -> None:
        if d in self.waiting:
            self.waiting.remove(d)

    def _grow(self) -> None:
        while self.waiting and self.busy + self.opening + len(self.idle) < self.size:
            wait = self.retry_at - self.clock.seconds()
            self.opening += 1
            if wait > 0:
                task.deferLater(self.clock, wait, lambda: None).addCallback(lambda _: self._open())
            else:
                self._open()
            if self.failures:
                break  # one probe at a time while the member is failing

    def _open(self) -> None:
        d = self.connect(self.address)
        d.addCallbacks(self._opened, self._failed)

    def _opened(self, conn: OxiClientConnection) -> None:
        self.opening -= 1
        self.failures = 0
        self.retry_at = 0.0
        self.busy += 1
        self.release(conn)

    def _failed(self, failure: Failure) -> None:
        self.opening -= 1
        self.failures += 1
        self.retry_at = self.clock.seconds() + backoff(self.failures)
        self.last_error = failure.getErrorMessage() or repr(failure.value)
        self._log.info("cannot connect to {member}: {error}", member=self.name, error=self.last_error)
        if self.busy or self.idle:
            return  # the waiters get the connections that are open
        error = BackendError(f"cannot connect to {self.name}: {self.last_error}")
        waiting, self.waiting = self.waiting, deque()
        for d in waiting:
            d.errback(error)

    def release(self, conn: OxiClientConnection) -> None:
        """Give back a connection; a broken one is dropped."""
        self.busy -= 1
        if not conn.connected:
            self._grow()
            return
        if self.waiting:
            self.busy += 1
            self.waiting.popleft().callback(conn)
        else:
            self.idle.append(conn)

    def forget_broken(self) -> None:
        self.idle = [c for c in self.idle if c.connected]

    def metrics(self) -> Deferred[Reply]:
        """C{raft_metrics} from this member, on its control connection."""
        if self.control is not None and self.control.connected:
            return self.control.request({"cmd": "raft_metrics"})
        if self.clock.seconds() < self.retry_at:
            return fail(BackendError(f"cannot connect to {self.name}: {self.last_error}"))

        def opened(conn: OxiClientConnection) -> Deferred[Reply]:
            self.control = conn
            return conn.request({"cmd": "raft_metrics"})

        def failed(failure: Failure) -> Failure:
            self.failures += 1
            self.retry_at = self.clock.seconds() + backoff(self.failures)
            self.last_error = failure.getErrorMessage() or repr(failure.value)
            return failure

        return self.connect(self.address).addCallbacks(opened, failed)

    def close(self) -> None:
        for conn in [*self.idle, *([self.control] if self.control else [])]:
            conn.close()
        self.idle = []
        self.control = None
        waiting, self.waiting = self.waiting, deque()
        for d in waiting:
            d.errback(BackendError("oxipool: shutting down"))


@attrs.define(eq=False)
class GroupState:
    """What the router knows of a group, for C{/metrics} and C{pool_status}."""

    leader: Address | None = None
    term: int = 0
    leader_changes: int = 0
    requests: int = 0
    errors: int = 0
    unknown_outcomes: int = 0
    latency_total: float = 0.0


class Group:
    """
    One Raft group: its members' pools, the leader, and L{request}, which
    sends a request to the leader (or, for follower reads, another member).
    """

    _log = Logger()

    def __init__(
        self,
        index: int,
        members: tuple[Address, ...],
        *,
        connect: Callable[[Address], Deferred[OxiClientConnection]],
        clock: Any,
        size: int,
        replica_size: int,
        max_queued: int,
        request_timeout: float,
        leader_poll: float,
        replicas: tuple[Address, ...] = (),
    ) -> None:
        self.index = index
        self.clock = clock
        self.request_timeout = request_timeout
        self.leader_poll = leader_poll
        self.members = {address: MemberPool(address, size, connect, clock, max_queued) for address in members}
        for address in replicas:
            if address not in self.members:
                self.members[address] = MemberPool(address, replica_size, connect, clock, max_queued)
        self.voters = tuple(members)
        self.state = GroupState()
        self._leader_waiters: list[Deferred[None]] = []
        self._refreshing: Deferred[None] | None = None
        self._loop: task.LoopingCall | None = None
        self._next_follower = 0
        self.last_error = ""
        if len(self.members) == 1 and len(members) == 1:
            self.state.leader = members[0]  # confirmed (or not) by the first poll

    @property
    def name(self) -> str:
        return f"shard {self.index}"

    # -- leader tracking ------------------------------------------------------

    def start(self) -> None:
        loop = self._loop = task.LoopingCall(self.refresh)
        loop.clock = self.clock
        loop.start(self.leader_poll, now=True)

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        for member in self.members.values():
            member.close()
        waiters, self._leader_waiters = self._leader_waiters, []
        for d in waiters:
            d.errback(BackendError("oxipool: shutting down"))

    def refresh(self) -> Deferred[None]:
        """Ask every member who leads (one round at a time)."""
        if self._refreshing is not None:
            return self._refreshing
        members = list(self.members.values())
        asked = [m.metrics() for m in members]
        done = DeferredList(asked, consumeErrors=True)
        self._refreshing = done.addCallback(self._polled, members).addErrback(self._poll_failed)
        return self._refreshing

    def _poll_failed(self, failure: Failure) -> None:
        """A bug in a poll is logged; the next poll runs (the loop must not stop)."""
        self._refreshing = None
        self._log.failure("{shard}: leader poll failed", failure, shard=self.name)

    def _polled(self, results: list[tuple[bool, Any]], members: list[MemberPool]) -> None:
        self._refreshing = None
        best: tuple[int, Address] | None = None
        errors = []
        for member, (ok, result) in zip(members, results, strict=True):
            if not ok:
                errors.append(f"{member.name}: {result.getErrorMessage()}")
                continue
            reply: Reply = result
            if not reply.ok:
                text = str(reply.value)
                if len(self.voters) == 1 and member.address in self.voters and text.startswith("unknown command"):
                    best = (0, member.address)  # a standalone server leads itself
                else:
                    errors.append(f"{member.name}: {text}")
                continue
            metrics = reply.value if isinstance(reply.value, dict) else {}
            if metrics.get("state") == "Leader":
                term = metrics.get("current_term") or 0
                term = term if isinstance(term, int) else 0
                if best is None or term > best[0]:
                    best = (term, member.address)
        if errors:
            self.last_error = "; ".join(errors)
        leader = best[1] if best else None
        if leader != self.state.leader:
            if leader is not None:
                self.state.leader_changes += 1
            self._log.info(
                "{shard}: leader {leader}",
                shard=self.name,
                leader=format_address(leader) if leader else "unknown",
            )
            self.state.leader = leader
            self.state.term = best[0] if best else self.state.term
        if leader is not None:
            waiters, self._leader_waiters = self._leader_waiters, []
            for d in waiters:
                d.callback(None)

    def _suspect(self) -> None:
        """A failure hints at a leader change: poll now."""
        self.refresh()

    def _wait_leader(self, deadline: float) -> Deferred[Any]:
        d: Deferred[None] = Deferred()
        self._leader_waiters.append(d)

        def again(_: Any) -> None:
            if not d.called:
                self.refresh()

        # Poll faster than the loop while somebody waits.
        task.deferLater(self.clock, min(0.1, self.leader_poll), lambda: None).addCallback(again)
        return within(self.clock, d, deadline)

    # -- requests ---------------------------------------------------------------

    def _target(self, follower: bool) -> MemberPool | None:
        leader = self.state.leader
        if follower:
            others = [m for a, m in self.members.items() if a != leader and m.clock.seconds() >= m.retry_at]
            if others:
                self._next_follower = (self._next_follower + 1) % len(others)
                return others[self._next_follower]
        return self.members.get(leader) if leader is not None else None

    def request(self, request: dict[str, Any], *, follower: bool = False) -> Deferred[Reply]:
        """
        The backend's reply to C{request} (an error reply is a reply), or a
        L{BackendError} failure with the client's error text.
        """
        return Deferred.fromCoroutine(self._request(request, follower))

    async def _request(self, request: dict[str, Any], follower: bool) -> Reply:
        started = self.clock.seconds()
        self.state.requests += 1
        try:
            reply = await self._attempts(request, follower, started + self.request_timeout)
        except BackendError:
            self.state.errors += 1
            raise
        self.state.latency_total += self.clock.seconds() - started
        if not reply.ok:
            self.state.errors += 1
        return reply

    async def _attempts(self, request: dict[str, Any], follower: bool, deadline: float) -> Reply:
        cmd = request.get("cmd")
        safe = is_retry_safe(request)
        problem = ""
        attempt = 0
        while True:
            attempt += 1
            if attempt > 1:
                pause = min(backoff(attempt - 1) / 5, deadline - self.clock.seconds())
                if pause > 0:
                    await task.deferLater(self.clock, pause, lambda: None)
            if self.clock.seconds() >= deadline:
                raise BackendError(f"oxipool: {self.name} unreachable: {problem or self.last_error or 'no leader'}")
            member = self._target(follower and safe)
            if member is None:
                try:
                    await self._wait_leader(deadline)
                except _Timeout:
                    raise BackendError(
                        f"oxipool: {self.name} unreachable: no leader among "
                        f"{', '.join(m.name for m in self.members.values())}"
                        + (f" ({self.last_error})" if self.last_error else "")
                    ) from None
                continue
            acquired = member.acquire()
            try:
                conn = await within(self.clock, acquired, deadline)
            except _Timeout:
                acquired.cancel()
                raise BackendError(
                    f"oxipool: {self.name} unreachable: no connection to {member.name} in time"
                ) from None
            except BackendError as e:
                if str(e).startswith("server busy"):
                    raise
                problem = str(e)
                self._suspect()
                continue
            sent = conn.request(request)
            sent.addBoth(lambda result, m=member, c=conn: self._done(m, c, result))
            try:
                reply: Reply = await within(self.clock, sent, deadline)
            except _Timeout:
                unknown = "" if safe else "; its outcome is unknown"
                if not safe:
                    self.state.unknown_outcomes += 1
                raise BackendError(
                    f"oxipool: {self.name} did not answer '{cmd}' within {self.request_timeout:g}s{unknown}"
                ) from None
            except Lost as lost:
                self._suspect()
                if lost.sent and not safe:
                    self.state.unknown_outcomes += 1
                    raise BackendError(
                        f"oxipool: {self.name} lost the connection with '{cmd}' in flight; its outcome is unknown"
                    ) from None
                problem = f"{member.name}: {lost}"
                continue
            if not reply.ok and isinstance(reply.value, str) and reply.value.startswith(NOT_APPLIED):
                problem = f"{member.name}: {reply.value}"
                self._suspect()
                if self.clock.seconds() < deadline:
                    continue
            return reply

    @staticmethod
    def _done(member: MemberPool, conn: OxiClientConnection, result: Any) -> Any:
        member.release(conn)
        return result

    # -- transactions -----------------------------------------------------------

    async def pin(self) -> tuple[MemberPool, OxiClientConnection]:
        """A leader connection kept by one client (a transaction) until L{unpin}."""
        deadline = self.clock.seconds() + self.request_timeout
        while True:
            member = self._target(False)
            if member is None:
                try:
                    await self._wait_leader(deadline)
                except _Timeout:
                    raise BackendError(f"oxipool: {self.name} unreachable: no leader") from None
                continue
            acquired = member.acquire()
            try:
                return member, await within(self.clock, acquired, deadline)
            except _Timeout:
                acquired.cancel()
                raise BackendError(f"oxipool: {self.name} unreachable: no connection in time") from None
            except BackendError as e:
                if str(e).startswith("server busy") or self.clock.seconds() >= deadline:
                    raise
                self._suspect()
                await task.deferLater(self.clock, 0.1, lambda: None)

    def close(self) -> None:
        self.stop()


def backend_connector(
    connector: TwistedConnector,
    options: ConnectOptions,
    clock: Any,
    timeout: float,
) -> Callable[[Address], Deferred[OxiClientConnection]]:
    """
    Opens a backend connection: connect, C{hello}, and the SCRAM login with
    the pool's credentials (C{options.user}), all within C{timeout} seconds.
    """

    def connect(address: Address) -> Deferred[OxiClientConnection]:
        async def run() -> OxiClientConnection:
            host, port = address
            conn = await connector(host, port, options)
            try:
                await conn.request({"cmd": "hello", "wire_versions": [1]})
                if options.user is not None:
                    login = ScramLogin(options.user, options.password or "")
                    second = (await conn.request(login.first())).result()
                    final = (await conn.request(login.second(second))).result()
                    login.finish(final)
            except BaseException:
                conn.close()
                raise
            return conn

        d = Deferred.fromCoroutine(run())
        timer = clock.callLater(timeout, d.cancel)

        def finished(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            if isinstance(result, Failure) and result.check(CancelledError):
                return Failure(BackendError(f"timed out after {timeout:g}s"))
            if isinstance(result, Failure) and result.check(ClientError, Lost):
                return Failure(BackendError(result.getErrorMessage()))
            return result

        return d.addBoth(finished)

    return connect
