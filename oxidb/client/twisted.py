"""
The Twisted client: the same protocol core, login and request flow
(L{oxidb.client.core.RequestFlow}: retry rule, leader discovery, backoff)
as the blocking client, with Deferreds. Methods return Deferreds
(L{TwistedClient.request}, the named commands); transactions are an
C{async with client.transaction():} block and large finds an C{async for}
over L{TwistedClient.iter_find}, inside a coroutine run by
C{Deferred.fromCoroutine}.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred, fail
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure

from oxidb.client import core
from oxidb.client.commands import CommandMethods, page_query
from oxidb.client.core import (
    BatchOutcome,
    InsertStream,
    InsertStreamResult,
    ProtocolCore,
    Reply,
    ScramLogin,
    backoff_delay,
    last_token,
    watch_request,
)
from oxidb.client.errors import (
    ClientError,
    ConnectionFailed,
    NoTransaction,
)
from oxidb.client.url import ConnectOptions, parse_url
from oxidb.wire.limits import MAX_FRAME

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

    def request(self, request: dict[str, Any], limit: int | None = None) -> Deferred[Reply]:
        """
        The reply to C{request}; fails with L{Lost} if the connection breaks first.

        @param limit: see L{ProtocolCore.send}.
        @raise TypeError: a value that cannot be encoded.
        @raise ValueError: a non-finite float, or a payload above C{limit}.
        """
        if not self.connected:
            return fail(Lost("not connected", sent=False))
        request_id, frame = self.core.send(request, limit)
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
        # One factory per connection attempt: "Starting factory" lines for
        # each would drown an application's log.
        factory.noisy = False
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
        self._session = core.Session(self.options.seeds, self.options.retries)
        self.address: tuple[str, int] | None = None
        self.server_info: dict[str, Any] | None = None

    def connect(self) -> Deferred[TwistedClient]:
        """Open the connection now (otherwise the first request does)."""

        async def run() -> TwistedClient:
            await self._run(self._session.connect(connected=self._connected()))
            return self

        return Deferred.fromCoroutine(run())

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._session.in_tx = False

    def _sleep(self, seconds: float) -> Deferred[None]:
        return task.deferLater(self._reactor, seconds, lambda: None)

    async def _run(self, flow: core.RequestFlow) -> Any:
        """Perform C{flow}'s actions (the I/O) and feed it what happened, until it is done."""
        opened: dict[core.Address, OxiClientConnection] = {}
        greeted: dict[core.Address, dict[str, Any] | None] = {}
        actions = flow.start()
        try:
            while True:
                event: core.Event | None = None
                for action in actions:
                    if isinstance(action, core.Open):
                        event = await self._open_event(action, opened, greeted)
                    elif isinstance(action, core.Adopt):
                        self._conn, self.address = opened.pop(action.address), action.address
                        self.server_info = greeted.get(action.address)
                    elif isinstance(action, core.Close):
                        opened.pop(action.address).close()
                    elif isinstance(action, core.Drop):
                        if self._conn is not None:
                            self._conn.close()
                        self._conn = None
                    elif isinstance(action, core.Send):
                        assert self._conn is not None
                        try:
                            event = core.Replied(await self._conn.request(action.request))
                        except Lost as lost:
                            event = core.Lost(str(lost), lost.sent)
                    elif isinstance(action, core.Wait):
                        await self._sleep(action.seconds)
                        event = core.TimerFired()
                    elif isinstance(action, core.Fail):
                        raise action.error
                    else:
                        return action.value
                assert event is not None
                actions = flow.feed(event)
        finally:
            for conn in opened.values():
                conn.close()

    async def _open_event(
        self,
        action: core.Open,
        opened: dict[core.Address, OxiClientConnection],
        greeted: dict[core.Address, dict[str, Any] | None],
    ) -> core.Event:
        """Open, greet and log in to one seed (and probe it when asked)."""
        host, port = action.address
        try:
            conn = await self._open(host, port)
        except Exception as e:
            return core.OpenFailed(action.address, e)
        opened[action.address] = conn
        greeted[action.address] = self.server_info
        if not action.probe:
            return core.Opened(action.address)
        try:
            reply = await conn.request({"cmd": "raft_metrics"})
        except Lost as e:
            opened.pop(action.address).close()
            return core.OpenFailed(action.address, ConnectionFailed(str(e)))
        return core.probed(action.address, reply)

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
            database = self.options.switch_database
            if database is not None:
                (await conn.request({"cmd": "use_db", "name": database})).result()
        except BaseException:
            conn.close()
            raise
        return conn

    def _connected(self) -> bool:
        if self._conn is not None and not self._conn.connected:
            self._conn = None
        return self._conn is not None

    def request(self, request: dict[str, Any]) -> Deferred[Any]:
        """The data of C{request}'s reply; the same errors as the blocking client's C{request}."""
        return Deferred.fromCoroutine(self._run(self._session.request(request, connected=self._connected())))

    def command(self, cmd: str, **fields: Any) -> Deferred[Any]:
        return self.request({"cmd": cmd, **fields})

    def _then(self, result: Any, fn: Callable[[Any], None]) -> Any:
        def call(data: Any) -> Any:
            fn(data)
            return data

        return result.addCallback(call)

    def _database_selected(self, name: str) -> None:
        self.options = self.options.with_changes(database=name)

    # -- bulk loads ---------------------------------------------------------------

    def insert_stream(
        self,
        collection: str,
        docs: Iterable[dict[str, Any]],
        *,
        batch_size: int = 500,
        in_flight: int = 2,
        on_batch: Callable[[BatchOutcome], None] | None = None,
    ) -> Deferred[InsertStreamResult]:
        """
        The blocking client's C{insert_stream}, with a Deferred: firing with
        the L{InsertStreamResult}, or failing with L{InsertStreamFailed}.

        @raise ValueError: C{batch_size} or C{in_flight} out of range (at once).
        """
        stream = InsertStream(collection, iter(docs), batch_size, in_flight)
        return Deferred.fromCoroutine(self._insert_stream(stream, on_batch))

    async def _insert_stream(
        self, stream: InsertStream, on_batch: Callable[[BatchOutcome], None] | None
    ) -> InsertStreamResult:
        await self.connect()
        conn = self._conn
        assert conn is not None
        waiting: deque[Deferred[Reply]] = deque()
        try:
            while not stream.finished:
                while (request := stream.next_request()) is not None:
                    try:
                        waiting.append(conn.request(request, MAX_FRAME))
                    except (TypeError, ValueError) as e:
                        outcome = stream.not_sent(request, e)
                        if on_batch is not None:
                            on_batch(outcome)
                if not waiting:
                    continue
                try:
                    reply = await waiting.popleft()
                except Lost as lost:
                    for outcome in stream.lost(str(lost)):
                        if on_batch is not None:
                            on_batch(outcome)
                    break
                outcome = stream.replied(reply)
                if on_batch is not None:
                    on_batch(outcome)
        finally:
            if waiting:
                # Lost, or on_batch raised: replies still due would put the connection out of step.
                for d in waiting:
                    d.addErrback(lambda _: None)
                if self._conn is conn:
                    self._conn = None
                conn.close()
        return stream.result()

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
                if not self._connected():
                    await self._run(self._session.connect(connected=False))
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
                self._session.prefer_leader(None)
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
        self._client._session.in_tx = True
        return self._client

    async def __aexit__(self, kind: object, exc: object, tb: object) -> None:
        client = self._client
        if exc is not None:
            if client._session.in_tx:
                client._session.in_tx = False
                try:
                    await client.command("rollback_tx")
                except (NoTransaction, ConnectionFailed):
                    pass
            return
        try:
            await client.command("commit_tx")
        finally:
            client._session.in_tx = False
