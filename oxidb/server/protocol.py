"""
The client-port protocol: frames in, requests run strictly in order, replies
out in the request's format.

Flow control: when the client pipelines faster than we answer, queued frames
pile up; above L{QUEUE_HIGH_FRAMES} or L{QUEUE_HIGH_BYTES} the protocol stops
reading from the socket until the queue drains. When the client does not read
its replies, the transport pauses us (we are its push producer) and no further
request runs until it resumes, so neither direction buffers without bound.

Timeouts (C{OXIDB_IDLE_TIMEOUT}, 0 = off): the idle timer runs only while no
request of this connection is executing and restarts on every byte received;
the frame timer runs from the first byte of a frame until its last, so a frame
trickled in slowly is cut too. Either closes the connection without a reply.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IPushProducer, ISSLTransport
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from oxidb.commands._context import CommandContext
from oxidb.logs import Logger
from oxidb.server.dispatch import Reply
from oxidb.server.session import Session
from oxidb.wire.codec import WireFormat, decode_request, encode_error, encode_json_top, encode_ok
from oxidb.wire.framing import FrameDecoder, FrameTooLargeError, encode_frame
from oxidb.errors import DecodeError

#: stop reading from a client with this many requests queued ...
QUEUE_HIGH_FRAMES = 256
#: ... or this many bytes of queued request payloads.
QUEUE_HIGH_BYTES = 4 * 1024 * 1024


def format_peer(address: Any) -> str:
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is None:
        return str(address)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@implementer(IPushProducer)
class OxiServerProtocol(Protocol):
    """One client connection. See the module docstring."""

    _log = Logger()
    #: an ITCPTransport (or TLS) that is also an IPushProducer, once connected.
    transport: Any

    def __init__(self, factory: "OxiServerFactory") -> None:
        self.factory = factory
        self._decoder = FrameDecoder()
        self._queue: deque[bytes] = deque()
        self._queued_bytes = 0
        self._busy = False
        self._running = False
        self._reading_paused = False
        self._writing_paused = False
        self._closed = False
        self._close_when_answered = False
        self._draining = False
        self._drained: list[Any] = []
        self._timer: IDelayedCall | None = None
        self._last_activity = 0.0
        self._frame_started: float | None = None
        self.session: Session
        self.ctx: CommandContext

    # --- connection lifecycle ------------------------------------------------

    def connectionMade(self) -> None:
        factory = self.factory
        peer = format_peer(self.transport.getPeer())
        tls = ISSLTransport.providedBy(self.transport)
        if factory.services.auth_enabled:
            self.session = Session(peer=peer, tls=tls)
        else:
            self.session = Session.anonymous_admin(peer, tls=tls)
        self.ctx = CommandContext(self.session, factory.services)
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            try:
                set_no_delay(True)
            except OSError:
                pass
        self.transport.registerProducer(self, True)
        factory.connection_opened(self)
        self._log.debug("client connected: {peer}", peer=peer)
        self._last_activity = factory.clock.seconds()
        self._arm_timer()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._closed = True
        self._cancel_timer()
        self._queue.clear()
        # An open transaction dies with its connection (server.md 1.7).
        self.session.tx = None
        self.session.auth_state = None
        self.factory.connection_closed(self)
        self._log.debug("client disconnected: {peer}", peer=self.session.peer)
        self._fire_drained()

    def drain(self) -> Any:
        """
        Stop taking new requests; fire when the one executing (if any) has
        been answered. Used by a clean shutdown.
        """
        self._draining = True
        self._queue.clear()
        if not self._busy or self._closed:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._drained.append(d)
        return d

    def _fire_drained(self) -> None:
        waiting, self._drained = self._drained, []
        for d in waiting:
            d.callback(None)

    # --- input -----------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._closed:
            return
        metrics = self.factory.services.metrics
        if metrics is not None:
            metrics.bytes_received(len(data))
        if self._close_when_answered:
            return
        try:
            frames = self._decoder.feed(data)
        except FrameTooLargeError as e:
            self._log.warn(
                "read error from {peer}: message too large (>16 MiB): declared {length} bytes",
                peer=self.session.peer,
                length=e.length,
            )
            if not e.frames or self._draining:
                self._abort()
                return
            # Answer the requests that arrived before the oversized one, then close.
            self._close_when_answered = True
            self.transport.pauseProducing()
            self._reading_paused = True
            frames = e.frames
        now = self.factory.clock.seconds()
        self._last_activity = now
        if self._decoder.in_frame:
            if self._frame_started is None:
                self._frame_started = now
        else:
            self._frame_started = None
        if frames:
            if self._draining:
                return
            self._queue.extend(frames)
            self._queued_bytes += sum(len(f) for f in frames)
            self._run()
        self._update_reading()

    def _run(self) -> None:
        """Run queued requests one at a time, looping while they finish synchronously."""
        if self._running:
            return
        self._running = True
        try:
            while self._queue and not self._busy and not self._writing_paused and not self._closed:
                payload = self._queue.popleft()
                self._queued_bytes -= len(payload)
                self._busy = True
                self._handle(payload)
        finally:
            self._running = False
        self._update_reading()

    def _handle(self, payload: bytes) -> None:
        try:
            fmt, request = decode_request(payload)
        except DecodeError as e:
            self._send(encode_error(WireFormat.JSON, e.message))
            return
        try:
            outcome = self.factory.dispatcher.dispatch(self.ctx, request)
        except Exception:
            self._log.failure("dispatch failed for {peer}", peer=self.session.peer)
            self._send(encode_error(fmt, "internal error"))
            return
        if type(outcome) is Reply:
            self._send(self._encode(fmt, outcome))
        else:
            outcome.addCallback(lambda reply: self._send(self._encode(fmt, reply)))
            outcome.addErrback(self._unexpected, fmt)

    def _unexpected(self, failure: Failure, fmt: WireFormat) -> None:
        self._log.failure("reply failed for {peer}", failure, peer=self.session.peer)
        self._send(encode_error(fmt, "internal error"))

    @staticmethod
    def _encode(fmt: WireFormat, reply: Reply) -> bytes:
        if reply.top_level:
            return encode_json_top(reply.value)
        if reply.ok:
            return encode_ok(fmt, reply.value)
        return encode_error(fmt, reply.value)

    def _send(self, payload: bytes) -> None:
        """Write one reply and move on to the next request."""
        self._busy = False
        if self._closed:
            self._fire_drained()
            return
        frame = encode_frame(payload)
        metrics = self.factory.services.metrics
        if metrics is not None:
            metrics.bytes_sent(len(frame))
        self.transport.write(frame)
        if self.session.close_after_reply or self._draining:
            self._fire_drained()
            if self.session.close_after_reply:
                self.transport.loseConnection()
                self._closed = True
            return
        # The idle clock did not run while the request executed.
        self._last_activity = self.factory.clock.seconds()
        if not self._running:
            self._run()
        if self._close_when_answered and not self._busy and not self._queue and not self._closed:
            self._closed = True
            self._cancel_timer()
            self.transport.loseConnection()

    # --- flow control ----------------------------------------------------

    def _update_reading(self) -> None:
        if self._closed or self._close_when_answered:
            return
        full = len(self._queue) >= QUEUE_HIGH_FRAMES or self._queued_bytes >= QUEUE_HIGH_BYTES
        if full and not self._reading_paused:
            self._reading_paused = True
            self.transport.pauseProducing()
        elif not full and self._reading_paused:
            self._reading_paused = False
            self.transport.resumeProducing()
            if self._frame_started is not None:
                # The frame could not arrive while we were not reading.
                self._frame_started = self.factory.clock.seconds()

    def pauseProducing(self) -> None:
        """The client is not reading its replies: run nothing more for now."""
        self._writing_paused = True

    def resumeProducing(self) -> None:
        self._writing_paused = False
        self._run()

    def stopProducing(self) -> None:
        self._writing_paused = True

    # --- timers ------------------------------------------------------------
    #
    # One timer per connection, re-armed lazily: the hot path only records
    # timestamps, and the timer works out on expiry whether a deadline passed.

    def _arm_timer(self) -> None:
        timeout = self.factory.services.config.idle_timeout
        if timeout and not self._closed:
            self._timer = self.factory.clock.callLater(timeout, self._check_timeouts)

    def _check_timeouts(self) -> None:
        self._timer = None
        if self._closed:
            return
        timeout = self.factory.services.config.idle_timeout
        now = self.factory.clock.seconds()
        deadline = now + timeout
        if self._frame_started is not None and not self._reading_paused:
            if now - self._frame_started >= timeout:
                return self._timed_out("frame arriving too slowly")
            deadline = min(deadline, self._frame_started + timeout)
        if not self._busy:
            if now - self._last_activity >= timeout:
                return self._timed_out("silent")
            deadline = min(deadline, self._last_activity + timeout)
        self._timer = self.factory.clock.callLater(max(deadline - now, 0.001), self._check_timeouts)

    def _timed_out(self, why: str) -> None:
        self._log.info("idle timeout for {peer}, disconnecting ({why})", peer=self.session.peer, why=why)
        self._abort()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None

    def _abort(self) -> None:
        self._closed = True
        self._cancel_timer()
        self._queue.clear()
        self.transport.abortConnection()


class OxiServerFactory(Factory):
    """
    Builds L{OxiServerProtocol}s and keeps the set of live connections.

    @ivar services: the service's shared parts.
    @ivar dispatcher: the L{oxidb.server.dispatch.Dispatcher}.
    @ivar clock: an IReactorTime for the timeouts.
    """

    def __init__(self, services: Any, dispatcher: Any, clock: Any) -> None:
        self.services = services
        self.dispatcher = dispatcher
        self.clock = clock
        self.connections: set[OxiServerProtocol] = set()
        self.connections_total = 0

    def buildProtocol(self, addr: Any) -> OxiServerProtocol:
        return OxiServerProtocol(self)

    def connection_opened(self, protocol: OxiServerProtocol) -> None:
        self.connections.add(protocol)
        self.connections_total += 1
        metrics = self.services.metrics
        if metrics is not None:
            metrics.connection_opened()

    def connection_closed(self, protocol: OxiServerProtocol) -> None:
        if protocol in self.connections:
            self.connections.discard(protocol)
            metrics = self.services.metrics
            if metrics is not None:
                metrics.connection_closed()
