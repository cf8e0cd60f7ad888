"""
The Twisted client: the same protocol core, login, retry rule and leader
discovery as the blocking client, with Deferreds. Methods return Deferreds
(L{TwistedClient.request}, the named commands); transactions are an
C{async with client.transaction():} block and large finds an C{async for}
over L{TwistedClient.iter_find}, inside a coroutine run by
C{Deferred.fromCoroutine}.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred, fail
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure

from oxidb.client.commands import CommandMethods, page_query
from oxidb.client.core import (
    ProtocolCore,
    Reply,
    ScramLogin,
    backoff_delay,
    is_retry_safe,
    last_token,
    not_applied,
    watch_request,
)
from oxidb.client.errors import (
    AuthenticationFailed,
    ClientError,
    ConnectionFailed,
    NoTransaction,
    PermissionDenied,
    ServerError,
    UnknownOutcome,
)
from oxidb.client.url import ConnectOptions, parse_url

__all__ = ["OxiClientConnection", "TwistedClient", "Watch", "endpoint_connector"]


class Lost(Exception):
    """The connection broke; C{sent} says whether the request had been written."""

    def __init__(self, reason: str, sent: bool) -> None:
        super().__init__(reason)
        self.sent = sent


class OxiClientConnection(Protocol):
    """One connection: requests out through the core, replies matched back to their Deferreds."""

    def __init__(self, fmt: str = "json") -> None:
        self.core = ProtocolCore(fmt)
        self._waiting: dict[int, Deferred[Reply]] = {}
        self.connected = False
        self.lost: Deferred[None] = Deferred()
        #: Called with each change stream event; they wait in the core until it is set.
        self.on_event: Callable[[dict[str, Any]], None] | None = None

    def connectionMade(self) -> None:
        self.connected = True

    def request(self, request: dict[str, Any]) -> Deferred[Reply]:
        """The reply to C{request}; fails with L{Lost} if the connection breaks first."""
        if not self.connected:
            return fail(Lost("not connected", sent=False))
        request_id, frame = self.core.send(request)
        d: Deferred[Reply] = Deferred()
        self._waiting[request_id] = d
        self.transport.write(frame)  # type: ignore[union-attr]
        return d

    def dataReceived(self, data: bytes) -> None:
        try:
            replies = self.core.receive(data)
        except ClientError as e:
            self._fail_all(Failure(Lost(str(e), sent=True)))
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        for reply in replies:
            self._waiting.pop(reply.request_id).callback(reply)
        self.deliver_events()

    def deliver_events(self) -> None:
        """Hand the events received to L{on_event} (once it is set)."""
        while self.on_event is not None and self.core.events:
            for event in self.core.take_events():
                self.on_event(event)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.connected = False
        self._fail_all(Failure(Lost(f"connection lost: {reason.getErrorMessage()}", sent=True)))
        self.lost.callback(None)

    def _fail_all(self, failure: Failure) -> None:
        self.core.lose()
        waiting, self._waiting = self._waiting, {}
        for d in waiting.values():
            d.errback(failure)

    def close(self) -> None:
        if self.connected:
            self.transport.loseConnection()  # type: ignore[union-attr]


#: Connects to C{(host, port)}: a Deferred firing with a connected L{OxiClientConnection}.
TwistedConnector = Callable[[str, int, ConnectOptions], "Deferred[OxiClientConnection]"]


def endpoint_connector(reactor: Any) -> TwistedConnector:
    """Real connections through Twisted endpoints, inside TLS (verified against C{options.ca}) when asked."""

    def connector(host: str, port: int, options: ConnectOptions) -> Deferred[OxiClientConnection]:
        endpoint: Any = HostnameEndpoint(reactor, host, port, timeout=options.timeout)
        if options.tls:
            from twisted.internet import ssl

            trust: Any = None
            if options.ca is not None:
                with open(options.ca, "rb") as f:
                    trust = ssl.Certificate.loadPEM(f.read())
            context = ssl.optionsForClientTLS(options.server_name or host, trustRoot=trust)
            endpoint = wrapClientTLS(context, endpoint)
        factory = Factory.forProtocol(lambda: OxiClientConnection(options.format))
        connected: Deferred[OxiClientConnection] = endpoint.connect(factory)
        return connected

    return connector


class TwistedClient(CommandMethods):
    """
    A connection to a server or cluster, with Deferreds.

    @param options: a URL or L{ConnectOptions}.
    @param reactor: for the pauses between attempts (an C{IReactorTime}).
    @param connector: opens connections (default: L{endpoint_connector} on C{reactor}).
    """

    def __init__(
        self,
        options: ConnectOptions | str,
        *,
        reactor: Any,
        connector: TwistedConnector | None = None,
    ) -> None:
        self.options = parse_url(options) if isinstance(options, str) else options
        self._reactor = reactor
        self._connector = connector or endpoint_connector(reactor)
        self._conn: OxiClientConnection | None = None
        self._in_tx = False
        self.address: tuple[str, int] | None = None
        self._preferred: tuple[str, int] | None = None
        self.server_info: dict[str, Any] | None = None

    def connect(self) -> Deferred[TwistedClient]:
        """Open the connection now (otherwise the first request does)."""

        async def run() -> TwistedClient:
            if self._conn is None or not self._conn.connected:
                await self._connect()
            return self

        return Deferred.fromCoroutine(run())

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._in_tx = False

    def _sleep(self, seconds: float) -> Deferred[None]:
        return task.deferLater(self._reactor, seconds, lambda: None)

    def _seed_order(self) -> list[tuple[str, int]]:
        seeds = list(self.options.seeds)
        if self._preferred in seeds:
            seeds.remove(self._preferred)
            seeds.insert(0, self._preferred)
        return seeds

    async def _connect(self) -> None:
        errors: list[str] = []
        for attempt in range(self.options.retries + 1):
            if attempt:
                await self._sleep(backoff_delay(attempt))
            fallback: tuple[OxiClientConnection, tuple[str, int]] | None = None
            for host, port in self._seed_order():
                try:
                    conn = await self._open(host, port)
                except (AuthenticationFailed, PermissionDenied):
                    raise
                except Exception as e:
                    errors.append(f"{host}:{port}: {e}")
                    continue
                if len(self.options.seeds) == 1 or await self._is_leader(conn):
                    if fallback is not None:
                        fallback[0].close()
                    self._conn, self.address = conn, (host, port)
                    return
                if fallback is None:
                    fallback = (conn, (host, port))
                else:
                    conn.close()
            if fallback is not None:
                self._conn, self.address = fallback
                return
        seeds = ",".join(f"{h}:{p}" for h, p in self.options.seeds)
        raise ConnectionFailed(f"cannot connect to {seeds}: {errors[-1] if errors else 'no seeds'}")

    async def _open(self, host: str, port: int) -> OxiClientConnection:
        conn = await self._connector(host, port, self.options)
        try:
            hello = await conn.request({"cmd": "hello", "wire_versions": [1]})
            self.server_info = hello.value if hello.ok else None
            if self.options.user is not None:
                login = ScramLogin(self.options.user, self.options.password or "")
                second = (await conn.request(login.first())).result()
                final = (await conn.request(login.second(second))).result()
                login.finish(final)
        except BaseException:
            conn.close()
            raise
        return conn

    async def _is_leader(self, conn: OxiClientConnection) -> bool:
        try:
            reply = await conn.request({"cmd": "raft_metrics"})
        except Lost:
            return False
        if not reply.ok:
            return True
        return isinstance(reply.value, dict) and reply.value.get("state") == "Leader"

    def request(self, request: dict[str, Any]) -> Deferred[Any]:
        """The data of C{request}'s reply; the same errors as the blocking client's C{request}."""
        return Deferred.fromCoroutine(self._request(request))

    def command(self, cmd: str, **fields: Any) -> Deferred[Any]:
        return self.request({"cmd": cmd, **fields})

    async def _request(self, request: dict[str, Any]) -> Any:
        failures = 0
        while True:
            if self._conn is None or not self._conn.connected:
                self._conn = None
                if self._in_tx:
                    self._in_tx = False
                    raise ConnectionFailed("the connection was lost inside a transaction; it was rolled back")
                await self._connect()
            assert self._conn is not None
            try:
                reply = await self._conn.request(request)
            except Lost as lost:
                self._conn = None
                if self._in_tx:
                    self._in_tx = False
                    if request.get("cmd") == "commit_tx" and lost.sent:
                        raise UnknownOutcome(
                            f"commit_tx: {lost}; the transaction may or may not be committed", request
                        ) from None
                    raise ConnectionFailed(f"{lost}; the transaction was rolled back") from None
                if lost.sent and not is_retry_safe(request):
                    raise UnknownOutcome(
                        f"{request.get('cmd')}: {lost}; it may or may not have been applied", request
                    ) from None
                failures += 1
                if failures > self.options.retries:
                    raise ConnectionFailed(f"{request.get('cmd')}: {lost}") from None
                await self._sleep(backoff_delay(failures))
                continue
            try:
                return reply.result()
            except ServerError as e:
                if self._in_tx or not not_applied(e) or failures >= self.options.retries:
                    raise
                failures += 1
                self._conn.close()
                self._conn = None
                seeds = list(self.options.seeds)
                if self.address in seeds and len(seeds) > 1:
                    self._preferred = seeds[(seeds.index(self.address) + 1) % len(seeds)]
                await self._sleep(backoff_delay(failures))

    # -- change streams ---------------------------------------------------------

    def watch(
        self,
        callback: Callable[[dict[str, Any]], None],
        collection: str | None = None,
        *,
        resume_after: int | None = None,
    ) -> Watch:
        """
        Follow document changes (docs/change-streams.md) on a connection of
        its own: C{callback(event)} for each event as it arrives. When the
        connection breaks it connects again, to any seed, and resumes after
        the last token seen (no change missed or repeated); after
        C{retries} failed attempts in a row L{Watch.done} fails with
        L{ConnectionFailed}, and with the server's error if it refuses the
        watch. L{Watch.stop} ends it.
        """
        follower = TwistedClient(self.options, reactor=self._reactor, connector=self._connector)
        watch = Watch(follower)
        watch.done = Deferred.fromCoroutine(follower._follow(watch, callback, collection, resume_after))
        return watch

    async def _follow(
        self, watch: Watch, callback: Callable[[dict[str, Any]], None], collection: str | None, token: int | None
    ) -> None:
        failures = 0

        def handle(event: dict[str, Any]) -> None:
            nonlocal token
            token = last_token(event, token)
            callback(event)

        try:
            while not watch.is_stopped():
                if self._conn is None or not self._conn.connected:
                    await self._connect()
                conn = self._conn
                assert conn is not None
                try:
                    (await conn.request(watch_request(collection, token))).result()
                except Lost as lost:
                    reason: Exception = lost
                else:
                    failures = 0
                    conn.on_event = handle
                    conn.deliver_events()
                    await conn.lost
                    reason = Lost("connection lost", sent=True)
                self._conn = None
                if watch.is_stopped():
                    return
                failures += 1
                if failures > self.options.retries:
                    raise ConnectionFailed(f"watch: {reason}")
                seeds = list(self.options.seeds)
                if self.address in seeds and len(seeds) > 1:
                    self._preferred = seeds[(seeds.index(self.address) + 1) % len(seeds)]
                await self._sleep(backoff_delay(failures))
        finally:
            self.close()

    def transaction(self) -> _Transaction:
        """C{async with client.transaction():} commit at the end, roll back on an exception."""
        return _Transaction(self)

    async def iter_find(
        self, collection: str, query: dict[str, Any] | None = None, *, page_size: int = 1000
    ) -> AsyncIterator[dict[str, Any]]:
        """Every matching document, C{page_size} at a time, paged by C{_id} (see the blocking client)."""
        if page_size <= 0:
            raise ValueError("page_size must be positive")
        after: Any = None
        while True:
            page = await self.find(collection, page_query(query, after), sort={"_id": 1}, limit=page_size)
            for doc in page:
                yield doc
            if len(page) < page_size:
                return
            after = page[-1].get("_id")


class Watch:
    """
    A change stream followed by L{TwistedClient.watch}.

    @ivar done: fires when it ends (L{stop}), or fails with why it gave up.
    """

    def __init__(self, client: TwistedClient) -> None:
        self._client = client
        self.stopped = False
        self.done: Deferred[None] = Deferred()

    def is_stopped(self) -> bool:
        return self.stopped

    def stop(self) -> None:
        """Stop following: the connection is closed."""
        self.stopped = True
        self._client.close()


class _Transaction:
    def __init__(self, client: TwistedClient) -> None:
        self._client = client

    async def __aenter__(self) -> TwistedClient:
        await self._client.connect()
        await self._client.command("begin_tx")
        self._client._in_tx = True
        return self._client

    async def __aexit__(self, kind: object, exc: object, tb: object) -> None:
        client = self._client
        if exc is not None:
            if client._in_tx:
                client._in_tx = False
                try:
                    await client.command("rollback_tx")
                except (NoTransaction, ConnectionFailed):
                    pass
            return
        try:
            await client.command("commit_tx")
        finally:
            client._in_tx = False
