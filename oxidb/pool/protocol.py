"""
The router's client port: the server's framing (u32 little-endian length,
then a JSON, OxiWire or MessagePack payload, detected per frame and answered
in kind), one request served at a time per connection in arrival order
(replies strictly in order, as the server does), and bounds:

 - at most C{max_in_flight} requests of one client read and not answered;
   beyond that the connection stops being read until replies go out;
 - at most C{max_clients} connections; more get one C{server busy} error
   and are closed;
 - C{idle_timeout} seconds of silence with nothing to answer close a
   connection (0 = never).
"""

from __future__ import annotations

from collections import deque
from typing import Any

from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure

from oxidb.errors import DecodeError
from oxidb.logs import Logger
from oxidb.pool.router import Answer, ClientSession, Router
from oxidb.wire.codec import WireFormat, decode_request, encode_error, encode_json_top, encode_ok
from oxidb.wire.framing import FrameDecoder, FrameTooLargeError, encode_frame

__all__ = ["PoolClientProtocol", "PoolFactory"]


class PoolClientProtocol(Protocol):
    _log = Logger()

    def __init__(self, factory: PoolFactory) -> None:
        self.factory = factory
        self.decoder = FrameDecoder()
        self.queue: deque[bytes] = deque()
        self.serving = False
        self.paused = False
        self.closed = False
        self.session: ClientSession = factory.router.new_session()
        self._idle: Any = None
        self._looping = False

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()  # type: ignore[union-attr]
        self.session.peer = f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}"
        self.factory.clients.add(self)
        self._arm_idle()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closed = True
        self.factory.clients.discard(self)
        self.queue.clear()
        self._cancel_idle()
        self.factory.router.client_gone(self.session)

    def dataReceived(self, data: bytes) -> None:
        try:
            frames = self.decoder.feed(data)
        except FrameTooLargeError as e:
            self.queue.extend(e.frames)
            self._log.info("closing {peer}: {error}", peer=self.session.peer, error=str(e))
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        self.queue.extend(frames)
        self._arm_idle()
        self._update_reading()
        self._next()

    def _update_reading(self) -> None:
        waiting = len(self.queue) + (1 if self.serving else 0)
        if waiting >= self.factory.max_in_flight and not self.paused:
            self.paused = True
            self.transport.pauseProducing()  # type: ignore[union-attr]
        elif waiting < self.factory.max_in_flight and self.paused and not self.closed:
            self.paused = False
            self.transport.resumeProducing()  # type: ignore[union-attr]

    def _next(self) -> None:
        """Serve queued requests one after the other (a loop, not a recursion, when answers are immediate)."""
        if self._looping:
            return
        self._looping = True
        try:
            while not self.serving and self.queue and not self.closed:
                payload = self.queue.popleft()
                self.serving = True
                self._cancel_idle()
                try:
                    fmt, request = decode_request(payload)
                except DecodeError as e:
                    self._answered(encode_error(WireFormat.JSON, str(e)))
                    continue
                d = self.factory.router.handle(self.session, request)
                d.addCallback(self._encode, fmt)
                d.addCallback(self._answered)
        finally:
            self._looping = False

    @staticmethod
    def _encode(answer: Answer, fmt: WireFormat) -> bytes:
        try:
            if answer.top and isinstance(answer.value, dict):
                return encode_json_top({"ok": True, **answer.value})
            if answer.ok:
                return encode_ok(fmt, answer.value)
            return encode_error(fmt, str(answer.value))
        except (TypeError, ValueError):
            return encode_error(fmt, "internal error")

    def _answered(self, payload: bytes) -> None:
        self.serving = False
        if self.closed:
            return
        self.transport.write(encode_frame(payload))  # type: ignore[union-attr]
        self._update_reading()
        self._arm_idle()
        self._next()

    def _arm_idle(self) -> None:
        timeout = self.factory.idle_timeout
        if not timeout or self.closed:
            return
        self._cancel_idle()
        if not self.serving and not self.queue:
            self._idle = self.factory.clock.callLater(timeout, self._idle_expired)

    def _cancel_idle(self) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = None

    def _idle_expired(self) -> None:
        self._idle = None
        self.transport.loseConnection()  # type: ignore[union-attr]


class _Refused(Protocol):
    def __init__(self, message: str) -> None:
        self.message = message

    def connectionMade(self) -> None:
        self.transport.write(encode_frame(encode_error(WireFormat.JSON, self.message)))  # type: ignore[union-attr]
        self.transport.loseConnection()  # type: ignore[union-attr]


class PoolFactory(Factory):
    """Client connections of one router."""

    _log = Logger()

    def __init__(self, router: Router, clock: Any, *, max_clients: int, max_in_flight: int, idle_timeout: int) -> None:
        self.router = router
        self.clock = clock
        self.max_clients = max_clients
        self.max_in_flight = max_in_flight
        self.idle_timeout = idle_timeout
        self.clients: set[PoolClientProtocol] = set()

    def buildProtocol(self, addr: Any) -> Protocol:
        if len(self.clients) >= self.max_clients:
            self._log.warn("refusing a client: {n} connections already", n=len(self.clients))
            return _Refused(f"server busy: oxipool: {self.max_clients} clients connected already")
        protocol = PoolClientProtocol(self)
        protocol.factory = self
        return protocol
