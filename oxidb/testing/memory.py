"""
The server in memory: its protocol stack on a C{MemoryReactorClock}, a
client connected to it through iosim, and an executor that runs work inline.
Nothing here opens a socket, starts a thread or reads the wall clock.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Callable, Iterable
from types import SimpleNamespace
from typing import Any

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.test import iosim
from zope.interface import directlyProvides, implementer

from oxidb.commands._context import IExecutor, IServices
from oxidb.config import Config
from oxidb.engine.operations import Operation
from oxidb.wire.framing import FrameDecoder, encode_frame


@implementer(IExecutor)
@attrs.define(eq=False)
class SynchronousExecutor:
    """
    Runs everything inline on the calling thread; results are already-fired
    Deferreds.

    @param services: read for C{engine} (and C{clock}, unless given) at call
        time: the service's L{oxidb.compose.Services}, or its
        L{oxidb.compose.Lifecycle} with C{clock} given.
    @param clock: the time writes are applied at (default C{services.clock}).
    """

    _services: Any
    _clock: Any = None

    def read(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
        try:
            return succeed(fn(*args, **kwargs))
        except Exception as e:
            return fail(e)

    def write(self, op: Operation) -> Deferred[Any]:
        try:
            clock = self._services.clock if self._clock is None else self._clock
            return succeed(self._services.engine.apply(op, clock.seconds()))
        except Exception as e:
            return fail(e)


def fake_services(**parts: Any) -> Any:
    """
    A stand-in for L{IServices} holding only C{parts}, for handler unit
    tests (a L{oxidb.commands.CommandContext} accepts only an C{IServices}).
    """
    services = SimpleNamespace(**parts)
    directlyProvides(services, IServices)
    return services


class OxiClientProtocol(Protocol):
    """
    Sends requests and matches replies in order.

    C{request(obj)} encodes C{obj} as JSON (or sends raw payload bytes with
    C{request_raw}) and returns a Deferred firing with the decoded reply
    payload: a dict for JSON replies, or C{("binary", payload)} for binary
    replies (decode them with the wire codec). Replies that arrive with no
    request waiting are kept in C{unsolicited}.
    """

    transport: Any

    def __init__(self) -> None:
        self._decoder = FrameDecoder()
        self._waiting: deque[Deferred[Any]] = deque()
        self.connected_d: Deferred[OxiClientProtocol] = Deferred()
        self.lost_d: Deferred[None] = Deferred()
        self.unsolicited: list[bytes] = []

    def connectionMade(self) -> None:
        self.connected_d.callback(self)

    def request(self, obj: Any) -> Deferred[Any]:
        return self.request_raw(json.dumps(obj).encode("utf-8"))

    def request_raw(self, payload: bytes) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self._waiting.append(d)
        self.transport.write(encode_frame(payload))
        return d

    def dataReceived(self, data: bytes) -> None:
        for payload in self._decoder.feed(data):
            if not self._waiting:
                self.unsolicited.append(payload)
                continue
            d = self._waiting.popleft()
            if payload[:1] == b"{":
                d.callback(json.loads(payload))
            else:
                d.callback(("binary", payload))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        waiting, self._waiting = self._waiting, deque()
        for d in waiting:
            d.errback(reason)
        self.lost_d.callback(None)


class MemoryServer:
    """
    An L{OxiService} (its object graph, L{oxidb.compose.compose}) on a
    L{MemoryReactorClock}, not listening on any socket: L{connect} makes
    in-memory connections with iosim. Work runs inline through
    L{SynchronousExecutor}; C{clock.advance()} drives timeouts.

    The graph is read-only once built, as in a real server: L{rebuild}
    builds it again with more commands, another executor or an auditor
    (before any connection is made).

    @param config: the server's settings (default: all defaults, on
        C{data_dir}).
    @param engine: an opened engine (or C{None} for protocol-only tests).
    @param commands: rows added to the registry.
    @param executor: builds the executor from the L{oxidb.compose.Lifecycle}
        (default: a L{SynchronousExecutor}).
    @param audit: the auditor (default: as configured).
    """

    def __init__(
        self,
        config: Config | None = None,
        *,
        engine: Any = None,
        data_dir: str | None = None,
        commands: Iterable[Any] = (),
        executor: Callable[[Any], Any] | None = None,
        audit: Any = None,
    ) -> None:
        if config is None:
            config = Config(data_dir=data_dir or "./oxidb_data")
        self.config = config
        self.clock = MemoryReactorClock()
        self._engine = engine
        self._commands = tuple(commands)
        self._executor = executor
        self._audit = audit
        self._build()

    def _build(self) -> None:
        from oxidb.service import OxiService

        clock = self.clock
        self.service = OxiService(
            self.config,
            reactor=clock,
            engine=self._engine,
            executor=self._executor or (lambda lifecycle: SynchronousExecutor(lifecycle, clock)),
            extra_commands=self._commands,
            audit=self._audit,
        )
        self.services = self.service.shared
        self.factory = self.service.factory

    def rebuild(self, *, commands: Iterable[Any] = (), executor: Any = None, audit: Any = None) -> None:
        """
        Build the graph again, adding C{commands} and replacing the executor
        factory or the auditor when given. Connections made before keep the
        old graph.
        """
        self._commands += tuple(commands)
        if executor is not None:
            self._executor = executor
        if audit is not None:
            self._audit = audit
        self._build()

    def add_command(self, command: Any) -> None:
        """L{rebuild} with one more registry row."""
        self.rebuild(commands=[command])

    def connect(self) -> tuple[OxiClientProtocol, iosim.IOPump]:
        """A connected client and the pump that moves bytes between the two."""
        client = OxiClientProtocol()
        server_protocol = self.factory.buildProtocol(None)
        _, _, pump = iosim.connectedServerAndClient(
            lambda: server_protocol, lambda: client, greet=True, clock=self.clock
        )
        return client, pump

    def request(self, obj: Any) -> Any:
        """One request on a fresh connection; the decoded reply."""
        client, pump = self.connect()
        d = client.request(obj)
        pump.flush()
        return result_of(d)


@attrs.define(eq=False)
class QueuedReactor:
    """
    A reactor stand-in for thread hand-off tests (the worker pool,
    L{oxidb._threads}): C{callFromThread} only records the call (from any
    thread); the test runs the recorded calls on its own thread with
    L{run_pending}, as the reactor would.
    """

    calls: list[tuple[Callable[..., Any], tuple[Any, ...]]] = attrs.Factory(list)
    lock: threading.Lock = attrs.Factory(threading.Lock)

    def callFromThread(self, fn: Callable[..., Any], *args: Any) -> None:
        with self.lock:
            self.calls.append((fn, args))

    def run_pending(self) -> int:
        """Run the calls recorded so far; how many ran."""
        with self.lock:
            calls, self.calls = self.calls, []
        for fn, args in calls:
            fn(*args)
        return len(calls)

    def seconds(self) -> float:
        return 0.0


def result_of(d: Deferred[Any]) -> Any:
    """
    The result of an already-fired Deferred; raises its failure, and
    C{AssertionError} if it has not fired.
    """
    results: list[Any] = []
    d.addBoth(results.append)
    if not results:
        raise AssertionError("request did not complete")
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]
