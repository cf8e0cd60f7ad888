"""
The blocking client: sockets (optionally TLS with certificate and
hostname/IP verification) and SCRAM login. Reconnection with backoff,
leader discovery over a seed list and the retry rule (a request is sent
again only when it is known not to have been applied, otherwise
L{UnknownOutcome}) are decided by L{oxidb.client.core.RequestFlow}; this
module performs its actions.
"""

from __future__ import annotations

import select
import socket
import ssl
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

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
    LoginThrottled,
    NoTransaction,
    PermissionDenied,
    UnknownCommand,
)
from oxidb.client.url import ConnectOptions, parse_url
from oxidb.wire.limits import MAX_FRAME

__all__ = ["Client", "Connector", "SocketLike", "connect", "tcp_connector"]


class SocketLike(Protocol):
    """What the client needs of a socket."""

    def sendall(self, data: bytes, /) -> None: ...

    def recv(self, n: int, /) -> bytes: ...

    def close(self) -> None: ...

    def fileno(self) -> int: ...


#: Opens a connection to C{(host, port)} with the options' TLS settings and timeout.
Connector = Callable[[str, int, ConnectOptions], SocketLike]


def tls_context(options: ConnectOptions) -> ssl.SSLContext:
    """A client TLS context verifying the server against C{options.ca} (or the system CAs)."""
    context = ssl.create_default_context(cafile=options.ca)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def tcp_connector(host: str, port: int, options: ConnectOptions) -> SocketLike:
    """A TCP connection, inside TLS when C{options.tls}; the certificate must name C{host} (or C{server_name})."""
    sock = socket.create_connection((host, port), timeout=options.timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if not options.tls:
        return sock
    try:
        return tls_context(options).wrap_socket(sock, server_hostname=options.server_name or host)
    except BaseException:
        sock.close()
        raise


class _Lost(Exception):
    """The connection broke; C{sent} says whether the request had been written."""

    def __init__(self, reason: str, sent: bool) -> None:
        super().__init__(reason)
        self.sent = sent


class Client(CommandMethods):
    """
    A blocking connection to a server or a cluster.

    @param options: a URL or L{ConnectOptions}.
    @param connector: opens sockets (default L{tcp_connector}); tests pass in-memory ones.
    @param sleep: waits between attempts (default C{time.sleep}).
    """

    def __init__(
        self,
        options: ConnectOptions | str = "oxidb://127.0.0.1:4444",
        *,
        connector: Connector = tcp_connector,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.options = parse_url(options) if isinstance(options, str) else options
        self._connector = connector
        self._sleep = sleep
        self._sock: SocketLike | None = None
        self._core = ProtocolCore(self.options.format)
        self._session = core.Session(self.options.seeds, self.options.retries)
        #: the seed the connection is open to (or was last)
        self.address: tuple[str, int] | None = None
        #: the C{hello} reply of the current connection (None if the server has none)
        self.server_info: dict[str, Any] | None = None

    # -- connection ---------------------------------------------------------

    def connect(self) -> Client:
        """Open the connection now (it is otherwise opened by the first request)."""
        self._run(self._session.connect(connected=self._sock is not None))
        return self

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None
                self._core.lose()
                self._session.in_tx = False

    def __enter__(self) -> Client:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, flow: core.RequestFlow) -> Any:
        """Perform C{flow}'s actions (the I/O) and feed it what happened, until it is done."""
        opened: dict[core.Address, SocketLike] = {}
        greeted: dict[core.Address, dict[str, Any] | None] = {}
        actions = flow.start()
        try:
            while True:
                event: core.Event | None = None
                for action in actions:
                    if isinstance(action, core.Open):
                        event = self._open_event(action, opened, greeted)
                    elif isinstance(action, core.Adopt):
                        self._sock, self.address = opened.pop(action.address), action.address
                        self.server_info = greeted.get(action.address)
                    elif isinstance(action, core.Close):
                        opened.pop(action.address).close()
                    elif isinstance(action, core.Drop):
                        self._drop()
                    elif isinstance(action, core.Send):
                        event = self._send_event(action.request)
                    elif isinstance(action, core.Wait):
                        self._sleep(action.seconds)
                        event = core.TimerFired()
                    elif isinstance(action, core.Fail):
                        raise action.error
                    else:
                        return action.value
                assert event is not None
                actions = flow.feed(event)
        finally:
            for sock in opened.values():
                sock.close()

    def _open_event(
        self,
        action: core.Open,
        opened: dict[core.Address, SocketLike],
        greeted: dict[core.Address, dict[str, Any] | None],
    ) -> core.Event:
        """Open, greet and log in to one seed (and probe it when asked)."""
        host, port = action.address
        try:
            sock = self._open(host, port)
        except (OSError, ClientError) as e:
            return core.OpenFailed(action.address, e)
        opened[action.address] = sock
        greeted[action.address] = self.server_info
        if not action.probe:
            return core.Opened(action.address)
        self._sock = sock
        try:
            reply = self._exchange({"cmd": "raft_metrics"})
        except _Lost as e:
            opened.pop(action.address).close()
            return core.OpenFailed(action.address, ConnectionFailed(str(e)))
        finally:
            self._sock = None
        return core.probed(action.address, reply)

    def _send_event(self, request: dict[str, Any]) -> core.Event:
        try:
            return core.Replied(self._exchange(request))
        except _Lost as lost:
            return core.Lost(str(lost), lost.sent)

    def _open(self, host: str, port: int) -> SocketLike:
        """A logged-in connection to one server."""
        sock = self._connector(host, port, self.options)
        self._sock = sock
        self._core = ProtocolCore(self.options.format)
        try:
            hello = self._exchange({"cmd": "hello", "wire_versions": [1]})
            self.server_info = hello.value if hello.ok else None
            if self.options.user is not None:
                login = ScramLogin(self.options.user, self.options.password or "")
                second = self._exchange(login.first()).result()
                final = self._exchange(login.second(second)).result()
                login.finish(final)
            database = self.options.switch_database
            if database is not None:
                self._exchange({"cmd": "use_db", "name": database}).result()
        except _Lost as e:
            sock.close()
            raise ConnectionFailed(str(e)) from None
        except BaseException:
            sock.close()
            raise
        finally:
            self._sock = None
        return sock

    def _alive(self) -> bool:
        """False if the idle connection was closed by the server (it never sends unasked)."""
        sock = self._sock
        assert sock is not None
        peer_closed = getattr(sock, "peer_closed", None)
        if peer_closed is not None:
            return not peer_closed()
        try:
            readable, _, _ = select.select([sock], [], [], 0)
        except (OSError, ValueError):
            return False
        if not readable:
            return True
        # Readable while idle: the end of the connection, or TLS housekeeping
        # (a TLS 1.3 session ticket) that carries no data.
        real: Any = sock
        timeout = real.gettimeout()
        try:
            real.setblocking(False)
            real.recv(1)
        except (ssl.SSLWantReadError, BlockingIOError):
            return True
        except OSError:
            return False
        finally:
            try:
                real.settimeout(timeout)
            except OSError:
                pass
        # b'' is the end; data nobody asked for means the stream is out of step either way.
        return False

    def _exchange(self, request: dict[str, Any]) -> Reply:
        """Send one request on the current socket and read its reply."""
        assert self._sock is not None
        _, frame = self._core.send(request)
        try:
            self._sock.sendall(frame)
        except OSError as e:
            raise _Lost(f"send failed: {e}", sent=False) from None
        while True:
            data = self._recv()
            replies = self._core.receive(data)
            if replies:
                return replies[0]

    def _drop(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
        self._sock = None
        self._core.lose()

    # -- requests -----------------------------------------------------------

    def request(self, request: dict[str, Any]) -> Any:
        """
        Send C{request} (a dict with C{cmd}); its data.

        @raise ServerError: the server's error reply, as its subclass.
        @raise UnknownOutcome: a write whose reply was lost.
        @raise ConnectionFailed: no server could be reached in time.
        """
        if self._sock is not None and not self._session.in_tx and not self._alive():
            self._drop()
        return self._run(self._session.request(request, connected=self._sock is not None))

    # -- bulk loads ------------------------------------------------------------

    def insert_stream(
        self,
        collection: str,
        docs: Iterable[dict[str, Any]],
        *,
        batch_size: int = 500,
        in_flight: int = 2,
        on_batch: Callable[[BatchOutcome], None] | None = None,
    ) -> InsertStreamResult:
        """
        Insert C{docs} in C{insert_many} batches of C{batch_size}, keeping up
        to C{in_flight} batches sent and unanswered on this connection, so
        that the server works on one batch while the next is encoded and on
        its way. C{docs} is read lazily, one batch at a time. C{on_batch} is
        called with each batch's L{BatchOutcome} as its reply arrives.

        A batch is never sent twice. The first one that does not land stops
        the stream (see L{InsertStream}): the batches already in flight are
        still answered, then L{InsertStreamFailed} says which documents
        landed, what became of each batch from the failed one on, and from
        which document nothing was sent.

        @raise ValueError: C{batch_size} or C{in_flight} out of range.
        @raise ConnectionFailed: no server could be reached to start.
        @raise InsertStreamFailed: a batch did not land.
        """
        stream = InsertStream(collection, iter(docs), batch_size, in_flight)
        if self._sock is not None and not self._session.in_tx and not self._alive():
            self._drop()
        self.connect()
        try:
            while not stream.finished:
                self._send_batches(stream, on_batch)
                if stream.waiting:
                    for reply in self._receive_replies():
                        outcome = stream.replied(reply)
                        if on_batch is not None:
                            on_batch(outcome)
        except _Lost as lost:
            self._drop()
            for outcome in stream.lost(str(lost)):
                if on_batch is not None:
                    on_batch(outcome)
        except BaseException:
            # Replies still due would put the connection out of step.
            if stream.waiting:
                self._drop()
            raise
        return stream.result()

    def _send_batches(self, stream: InsertStream, on_batch: Callable[[BatchOutcome], None] | None) -> None:
        """Send what the stream's window allows (a batch that cannot be encoded stops it)."""
        sock = self._sock
        assert sock is not None
        while (request := stream.next_request()) is not None:
            try:
                _, frame = self._core.send(request, limit=MAX_FRAME)
            except (TypeError, ValueError) as e:
                outcome = stream.not_sent(request, e)
                if on_batch is not None:
                    on_batch(outcome)
                return
            try:
                sock.sendall(frame)
            except OSError as e:
                raise _Lost(f"send failed: {e}", sent=True) from None

    def _receive_replies(self) -> list[Reply]:
        """Read until at least one reply is complete."""
        assert self._sock is not None
        while True:
            data = self._recv()
            try:
                replies = self._core.receive(data)
            except ClientError as e:
                raise _Lost(str(e), sent=True) from None
            if replies:
                return replies

    # -- change streams -------------------------------------------------------

    def watch(
        self, collection: str | None = None, *, resume_after: int | None = None
    ) -> Generator[dict[str, Any], None, None]:
        """
        Follow document changes (docs/change-streams.md) on a connection of
        its own, subscribed when this returns: yields each event,
        C{{"event": "change", "data": {...}}} or C{{"event": "overflow",
        "data": {"dropped": n}}}, as it arrives. When the connection breaks
        (its node failed, or restarted) it connects again, to any seed, and
        resumes after the last token seen, so no change is missed or
        repeated; it gives up after C{retries} failed attempts in a row
        (L{ConnectionFailed}). Close the iterator to stop.

        @raise ServerError: the server refused the watch (for instance
            C{resume token too old}), now or when resuming.
        """
        follower = Client(self.options, connector=self._connector, sleep=self._sleep)
        try:
            follower._subscribe(collection, resume_after)
        except BaseException:
            follower.close()
            raise
        return follower._follow(collection, resume_after)

    def _subscribe(self, collection: str | None, token: int | None) -> None:
        """Connect if needed and send C{watch} (raises L{_Lost} or the server's refusal)."""
        if self._sock is None:
            self.connect()
        self._exchange(watch_request(collection, token)).result()
        self._wait_forever()

    def _follow(self, collection: str | None, token: int | None) -> Generator[dict[str, Any], None, None]:
        failures = 0
        try:
            while True:
                try:
                    if self._sock is None:
                        self._subscribe(collection, token)
                        failures = 0
                    while True:
                        for event in self._core.take_events():
                            token = last_token(event, token)
                            yield event
                        self._receive_events()
                except _Lost as lost:
                    self._drop()
                    failures += 1
                    if failures > self.options.retries:
                        raise ConnectionFailed(f"watch: {lost}") from None
                    self._session.prefer_leader(None)
                    self._sleep(backoff_delay(failures))
        finally:
            self.close()

    def _wait_forever(self) -> None:
        """A watching socket waits for events without a timeout; TCP keepalive finds a dead peer."""
        sock: Any = self._sock
        for name, args in (("settimeout", (None,)), ("setsockopt", (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1))):
            method = getattr(sock, name, None)
            if method is not None:
                try:
                    method(*args)
                except OSError:
                    pass

    def _receive_events(self) -> None:
        self._core.receive(self._recv())

    def _recv(self) -> bytes:
        """The next bytes from the server (L{_Lost} if the connection failed or closed)."""
        assert self._sock is not None
        try:
            data = self._sock.recv(65536)
        except OSError as e:
            raise _Lost(f"receive failed: {e}", sent=True) from None
        if not data:
            raise _Lost("connection closed by the server", sent=True)
        return data

    def command(self, cmd: str, **fields: Any) -> Any:
        """C{request({"cmd": cmd, **fields})}."""
        return self.request({"cmd": cmd, **fields})

    def _then(self, result: Any, fn: Callable[[Any], None]) -> Any:
        fn(result)
        return result

    def _database_selected(self, name: str) -> None:
        self.options = self.options.with_changes(database=name)

    # -- transactions and paging ------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[Client]:
        """
        C{with client.transaction():} runs the block in a transaction on this
        connection: committed at the end, rolled back on an exception. A
        conflict at commit raises L{TransactionConflict} (nothing applied).
        """
        self.connect()
        self.command("begin_tx")
        self._session.in_tx = True
        try:
            yield self
        except BaseException:
            if self._session.in_tx and self._sock is not None:
                self._session.in_tx = False
                try:
                    self.command("rollback_tx")
                except (NoTransaction, ConnectionFailed):
                    pass
            self._session.in_tx = False
            raise
        try:
            self.command("commit_tx")
        finally:
            self._session.in_tx = False

    def iter_find(
        self,
        collection: str,
        query: dict[str, Any] | None = None,
        *,
        page_size: int = 1000,
        sort: dict[str, int] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """
        Every matching document, fetched C{page_size} at a time. Without
        C{sort} pages follow C{_id} (each page asks for C{_id} above the last
        one seen, so concurrent inserts and deletes never shift a page); with
        C{sort} they use C{skip}/C{limit}.
        """
        if page_size <= 0:
            raise ValueError("page_size must be positive")
        after: Any = None
        skip = 0
        while True:
            if sort is None:
                page = self.find(collection, page_query(query, after), sort={"_id": 1}, limit=page_size)
            else:
                page = self.find(collection, query, sort=sort, skip=skip, limit=page_size)
            yield from page
            if len(page) < page_size:
                return
            after = page[-1].get("_id")
            skip += len(page)

    def is_cluster(self) -> bool:
        """Whether the server runs in cluster mode."""
        try:
            self.command("raft_metrics")
        except UnknownCommand:
            return False
        except (PermissionDenied, LoginThrottled):
            return True
        return True


def connect(url: str = "oxidb://127.0.0.1:4444", **kwargs: Any) -> Client:
    """A connected L{Client} for C{url}."""
    return Client(url, **kwargs).connect()
