"""
The Raft peer transport: persistent, authenticated connections between
cluster members over the client protocol's framing (u32 little-endian length,
then a compact JSON object; frames over 16 MiB are refused).

* L{PeerTransport} listens on the Raft address and keeps one outbound
  L{PeerLink} per peer it sends to. Messages for a peer leave on that link
  while it is connected, else on an authenticated connection the peer opened
  to this node (a new learner does not know the leader's address before the
  leader's first messages reach it), else they wait in the link's queue.
  Replies to a request may also go back on the connection the request came
  in on (L{IPeerChannel}).
* L{PeerLink} dials the peer, reconnects with exponential backoff on the
  injected clock and keeps a bounded queue of outgoing frames across
  reconnects; its life is a typed automat machine built like Twisted's
  C{ClientService} (see L{PeerLink} for why it is not one).
* L{PeerProtocol} is one connection: the handshake of L{oxidb.raft.auth}
  first (frames of at most 4 KiB, a deadline: C{OXIDB_RAFT_HANDSHAKE_SECS}),
  then frames in both
  directions. It is a push producer of its transport: when the peer reads too
  slowly, writing stops and frames wait in the bounded L{SendQueue}; when that
  is full the oldest frame is dropped (Raft retransmits). One slow peer never
  holds up another, and nothing is buffered without bound.

Inbound connections are limited before any byte is read: at most
L{MAX_INBOUND} at once, and at most C{OXIDB_RAFT_INBOUND_PER_ADDRESS} from
one source address (authenticated or not), so that one host cannot take
every slot with sockets that never finish the handshake.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from typing import Any
from typing import Protocol as TypingProtocol

import orjson
from automat import TypeMachine, TypeMachineBuilder, pep614
from twisted.application.internet import backoffPolicy
from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail
from twisted.internet.endpoints import SSL4ClientEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import IDelayedCall, IProtocolFactory, IPushProducer
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from oxidb.config import parse_peer_address
from oxidb.logs import Logger
from oxidb.raft.auth import MAX_HANDSHAKE_FRAME, HandshakeError, Initiator, IPeerAuthenticator, Responder
from oxidb.raft.messages import MessageDecodeError
from oxidb.wire.framing import MAX_FRAME, FrameDecoder, FrameTooLargeError, encode_frame

#: Seconds a connection may take to finish the handshake.
HANDSHAKE_TIMEOUT = 5.0
#: Seconds a TCP connect may take.
CONNECT_TIMEOUT = 5.0
#: Bounds of one connection's (or link's) queue of unsent frames.
QUEUE_MESSAGES = 4096
QUEUE_BYTES = 64 << 20
#: Inbound connections accepted at once (authenticated or not).
MAX_INBOUND = 256
#: Inbound connections accepted at once from one source address.
INBOUND_PER_ADDRESS = 16

#: C{connect(host, port, factory)}: dial and fire with the connected protocol.
Connector = Callable[[str, int, IProtocolFactory], "Deferred[Any]"]


class PeerProtocolError(Exception):
    """A peer sent something it must not; its connection is dropped."""


class IPeerChannel(Interface):
    """A connection to one authenticated peer."""

    def send(payload: bytes) -> None:
        """Queue one frame payload (a JSON object's bytes) for the peer."""


class IPeerHandler(Interface):
    """Gets the frames authenticated peers send."""

    def frame_received(peer: int, frame: dict[str, Any], channel: IPeerChannel) -> None:
        """
        C{peer} sent C{frame} (a decoded JSON object) on C{channel}. Raise
        L{PeerProtocolError} or L{MessageDecodeError} to drop the connection.
        """


class IRaftTransport(Interface):
    """Sends frames to peers by node id."""

    def send(peer: int, payload: bytes) -> None:
        """Queue C{payload} for C{peer}; dropped if it cannot be delivered."""

    def retain(peers: set[int]) -> None:
        """Keep links to C{peers} only; close the others."""


class SendQueue:
    """
    Frames waiting to be written, bounded in count and bytes. Pushing onto a
    full queue drops the oldest frames; C{dropped} counts them.
    """

    _log = Logger()

    def __init__(self, max_messages: int = QUEUE_MESSAGES, max_bytes: int = QUEUE_BYTES) -> None:
        self._frames: deque[bytes] = deque()
        self._bytes = 0
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def size(self) -> int:
        """Bytes queued."""
        return self._bytes

    def push_payload(self, payload: bytes, peer: int | None) -> bool:
        """Frame C{payload} and queue it; False (logged) when it is over the frame limit."""
        if len(payload) > MAX_FRAME:
            self._log.error(
                "raft: not sending a {size}-byte frame to node {peer}: over the frame limit",
                size=len(payload),
                peer=peer,
            )
            return False
        self.push(encode_frame(payload))
        return True

    def push(self, frame: bytes) -> None:
        self._frames.append(frame)
        self._bytes += len(frame)
        while len(self._frames) > 1 and (
            len(self._frames) > self._max_messages or self._bytes > self._max_bytes
        ):
            self._bytes -= len(self._frames.popleft())
            self.dropped += 1

    def pop(self) -> bytes:
        frame = self._frames.popleft()
        self._bytes -= len(frame)
        return frame

    def clear(self) -> None:
        self._frames.clear()
        self._bytes = 0


class _Owner(Interface):
    def peer_authenticated(protocol: PeerProtocol) -> None:
        """The handshake of C{protocol} succeeded."""

    def peer_lost(protocol: PeerProtocol) -> None:
        """C{protocol}'s connection is gone (at any stage)."""


@implementer(IPushProducer, IPeerChannel)
class PeerProtocol(Protocol):
    """
    One peer connection, either side. The handshake runs first; afterwards
    frames go to the handler and L{send} writes to the peer while the
    transport accepts data.

    @ivar peer_id: the peer's node id once known (the initiator knows whom it
        dials; the responder learns it from the handshake).
    """

    _log = Logger()
    transport: Any

    def __init__(
        self,
        handshake: Initiator | Responder,
        owner: Any,
        handler: IPeerHandler,
        clock: Any,
        outbox: SendQueue,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
    ) -> None:
        self._handshake = handshake
        self._owner = owner
        self._handler = handler
        self._clock = clock
        self.outbox = outbox
        self._handshake_timeout = handshake_timeout
        self._decoder = FrameDecoder(MAX_HANDSHAKE_FRAME)
        self._deadline: IDelayedCall | None = None
        self.peer_id: int | None = handshake.peer_id if isinstance(handshake, Initiator) else None
        self.authenticated = False
        self.closed = False
        self._paused = False

    # --- connection events ----------------------------------------------------

    def connectionMade(self) -> None:
        # Small frames (heartbeats, acknowledgements) must not wait for Nagle.
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)
        self.transport.registerProducer(self, True)
        self._deadline = self._clock.callLater(self._handshake_timeout, self._drop, "handshake timed out")
        if isinstance(self._handshake, Initiator):
            self._write(orjson.dumps(self._handshake.hello()))

    def dataReceived(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            frames = self._decoder.feed(data)
        except FrameTooLargeError as e:
            self._drop(str(e))
            return
        for position, payload in enumerate(frames):
            if not self._deliver(payload, last=position == len(frames) - 1):
                return

    def _deliver(self, payload: bytes, last: bool) -> bool:
        """Handle one frame; whether to go on with the next."""
        if self.closed:
            return False
        if self.authenticated:
            self._frame(payload)
            return True
        return self._handshake_frame(payload, last)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closed = True
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._owner.peer_lost(self)

    # --- the handshake ---------------------------------------------------------

    def _handshake_frame(self, payload: bytes, last: bool) -> bool:
        try:
            replies = self._handshake.frame_received(orjson.loads(payload))
        except orjson.JSONDecodeError:
            self._drop("handshake frame is not JSON")
            return False
        except HandshakeError as e:
            self._drop(f"authentication failed: {e}")
            return False
        if self._handshake.done and (not last or self._decoder.in_frame):
            # Neither side sends anything else before the handshake ends.
            self._drop("frames before the handshake ended")
            return False
        for reply in replies:
            self._write(orjson.dumps(reply))
        if not self._handshake.done:
            return True
        # Full-size frames from now on (nothing is buffered).
        self._decoder = FrameDecoder(MAX_FRAME)
        self.peer_id = self._handshake.peer_id
        self.authenticated = True
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._owner.peer_authenticated(self)
        self.flush()
        return True

    # --- after the handshake -----------------------------------------------------

    def _frame(self, payload: bytes) -> None:
        try:
            frame = orjson.loads(payload)
            if not isinstance(frame, dict):
                raise PeerProtocolError("a frame must be a JSON object")
            assert self.peer_id is not None
            self._handler.frame_received(self.peer_id, frame, self)
        except orjson.JSONDecodeError:
            self._drop("a frame is not JSON")
        except (PeerProtocolError, MessageDecodeError) as e:
            self._drop(f"bad frame: {e}")

    def send(self, payload: bytes) -> None:
        if not self.closed and self.outbox.push_payload(payload, self.peer_id):
            self.flush()

    def flush(self) -> None:
        """Write queued frames while the peer keeps up."""
        outbox = self.outbox
        while outbox and self.authenticated and not self._paused and not self.closed:
            self.transport.write(outbox.pop())

    def _write(self, payload: bytes) -> None:
        self.transport.write(encode_frame(payload))

    def _drop(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        peer = self.transport.getPeer()
        self._log.warn(
            "raft: dropping connection with {addr} (node {peer}): {reason}",
            addr=f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}",
            peer=self.peer_id,
            reason=reason,
        )
        self.transport.abortConnection()

    def close(self) -> None:
        """Close the connection (a clean close; queued frames are discarded)."""
        self.closed = True
        self.transport.loseConnection()

    # --- IPushProducer --------------------------------------------------------------

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self.flush()

    def stopProducing(self) -> None:
        self.closed = True


class _LinkFactory(Factory):
    noisy = False

    def __init__(self, link: PeerLink) -> None:
        self._link = link

    def buildProtocol(self, addr: Any) -> PeerProtocol:
        return self._link.build_protocol()


class _LinkInputs(TypingProtocol):
    """The events of one outbound peer link."""

    def start(self) -> None:
        """Dial the peer."""

    def stop(self) -> None:
        """Stop dialling and close any connection."""

    def _built(self, protocol: PeerProtocol) -> None:
        """The dial connected; C{protocol} runs the handshake."""

    def _connect_done(self) -> None:
        """The connector's Deferred fired (after L{_built})."""

    def _connect_failed(self, failure: Failure) -> None:
        """The dial failed (or no address is known)."""

    def _authenticated(self, protocol: PeerProtocol) -> None:
        """C{protocol}'s handshake succeeded."""

    def _lost(self, protocol: PeerProtocol) -> None:
        """C{protocol}'s connection is gone (at any stage)."""

    def _retry(self) -> None:
        """The wait between two dials is over."""


class _LinkCore(TypingProtocol):
    """What the link machine needs from L{PeerLink}."""

    protocol: PeerProtocol | None
    attempts: int
    outbox: SendQueue

    def dial(self) -> Deferred[Any]:
        """Dial the peer's current address; the Deferred fails if there is none."""

    def schedule_retry(self) -> None:
        """Count a failed attempt and call L{PeerLink._attempt} after the backoff."""

    def cancel_retry(self) -> None:
        """Cancel the scheduled retry."""

    def connected_to(self, protocol: PeerProtocol) -> None:
        """C{protocol} is authenticated: frames leave on it."""

    def disconnected(self) -> None:
        """The authenticated connection is gone."""


def _build_link_machine() -> TypeMachine[_LinkInputs, _LinkCore]:
    # The core is a typing.Protocol (its implementation imports this module).
    machine = TypeMachineBuilder(_LinkInputs, _LinkCore)  # type: ignore[type-abstract]
    I = _LinkInputs  # noqa: E741

    def dial(m: _LinkInputs, c: _LinkCore) -> Deferred[Any]:
        d = c.dial()
        d.addCallbacks(lambda _: m._connect_done(), m._connect_failed)
        return d

    def hold(m: _LinkInputs, c: _LinkCore, protocol: PeerProtocol) -> PeerProtocol:
        return protocol

    idle = machine.state("idle")
    connecting = machine.state("connecting", dial)
    handshaking = machine.state("handshaking", hold)
    connected = machine.state("connected", hold)
    waiting = machine.state("waiting")
    stopped = machine.state("stopped")

    idle.upon(I.start).to(connecting).returns(None)
    waiting.upon(I._retry).to(connecting).returns(None)
    connecting.upon(I._built, nodata=True).to(handshaking).returns(None)
    handshaking.upon(I._connect_done).loop().returns(None)
    connected.upon(I._connect_done).loop().returns(None)
    waiting.upon(I._connect_done).loop().returns(None)

    # (A transition to a state without data gets the old state's data.)
    @pep614(connecting.upon(I._connect_failed).to(waiting))
    def failed(m: _LinkInputs, c: _LinkCore, attempt: Deferred[Any], failure: Failure) -> None:
        c.schedule_retry()

    @pep614(handshaking.upon(I._authenticated, nodata=True).to(connected))
    def authenticated(m: _LinkInputs, c: _LinkCore, protocol: PeerProtocol) -> None:
        c.connected_to(protocol)

    @pep614(handshaking.upon(I._connect_failed).to(waiting))
    def failed_after_building(m: _LinkInputs, c: _LinkCore, candidate: PeerProtocol, failure: Failure) -> None:
        # The connector gave up on a connection it had built a protocol for.
        if candidate.transport is not None:
            candidate.close()
        c.schedule_retry()

    # A connection given up on is lost.
    waiting.upon(I._lost).loop().returns(None)

    @pep614(handshaking.upon(I._lost).to(waiting))
    def handshake_lost(m: _LinkInputs, c: _LinkCore, candidate: PeerProtocol, protocol: PeerProtocol) -> None:
        c.schedule_retry()

    @pep614(connected.upon(I._lost).to(waiting))
    def connection_lost(m: _LinkInputs, c: _LinkCore, current: PeerProtocol, protocol: PeerProtocol) -> None:
        c.disconnected()
        c.schedule_retry()

    # --- stopping ---------------------------------------------------------------

    @pep614(idle.upon(I.stop).to(stopped))
    @pep614(stopped.upon(I.stop).loop())
    def stop_idle(m: _LinkInputs, c: _LinkCore) -> None:
        c.outbox.clear()

    @pep614(connecting.upon(I.stop).to(stopped))
    def stop_dialling(m: _LinkInputs, c: _LinkCore, attempt: Deferred[Any]) -> None:
        attempt.cancel()
        c.outbox.clear()

    @pep614(handshaking.upon(I.stop).to(stopped))
    @pep614(connected.upon(I.stop).to(stopped))
    def stop_connection(m: _LinkInputs, c: _LinkCore, protocol: PeerProtocol) -> None:
        c.protocol = None
        protocol.close()
        c.outbox.clear()

    @pep614(waiting.upon(I.stop).to(stopped))
    def stop_waiting(m: _LinkInputs, c: _LinkCore) -> None:
        c.cancel_retry()
        c.outbox.clear()

    # What was under way when the link stopped ends here.
    stopped.upon(I._connect_done).loop().returns(None)
    stopped.upon(I._connect_failed).loop().returns(None)
    stopped.upon(I._lost).loop().returns(None)
    stopped.upon(I._retry).loop().returns(None)

    @pep614(stopped.upon(I._built).loop())
    @pep614(stopped.upon(I._authenticated).loop())
    def close_late(m: _LinkInputs, c: _LinkCore, protocol: PeerProtocol) -> None:
        if protocol.transport is not None:
            protocol.close()

    return machine.build()


#: Builds the machine of one link: C{LinkMachine(link)}.
LinkMachine = _build_link_machine()


@implementer(_Owner)
class PeerLink:
    """
    The outbound connection to one peer: dials, authenticates, reconnects
    after a failure or loss with exponential backoff (0.1 s doubling up to
    2 s, plus jitter), and queues frames meanwhile (bounded).

    Its life is a typed automat machine built the way Twisted's
    C{ClientService} is (idle, connecting, handshaking, connected, waiting,
    stopped; docs/state-machines/peer-link.dot), not a C{ClientService}: the
    peer's address is looked up at every dial (membership changes), the
    SPAKE2 handshake is part of connecting, and a connection that fails
    its handshake is dropped and retried (C{ClientService}'s
    C{prepareConnection} leaves a rejected connection open, and has no
    transition for its loss while waiting to retry).

    @ivar protocol: the authenticated connection, while there is one.
    @ivar attempts: failed attempts since the last success.
    """

    _log = Logger()

    def __init__(self, transport: PeerTransport, peer_id: int) -> None:
        self._transport = transport
        self.peer_id = peer_id
        self.outbox = transport.new_queue()
        self.protocol: PeerProtocol | None = None
        self._retry: IDelayedCall | None = None
        self._policy = backoffPolicy(
            initialDelay=0.1, maxDelay=2.0, factor=2.0, jitter=lambda: transport.rng.uniform(0, 0.1)
        )
        self.attempts = 0
        self._warned_address: str | None = None
        self._machine: _LinkInputs = LinkMachine(self)

    def start(self) -> None:
        self._machine.start()

    def send(self, payload: bytes) -> None:
        if self.outbox.push_payload(payload, self.peer_id) and self.protocol is not None:
            self.protocol.flush()

    def stop(self) -> None:
        self._machine.stop()

    # --- connecting (_LinkCore) -----------------------------------------------------

    def build_protocol(self) -> PeerProtocol:
        transport = self._transport
        handshake = Initiator(transport.node_id, self.peer_id, transport.authenticator, transport.rng)
        protocol = PeerProtocol(
            handshake, self, transport.handler, transport.clock, self.outbox, transport.handshake_timeout
        )
        self._machine._built(protocol)
        return protocol

    def dial(self) -> Deferred[Any]:
        address = self._transport.address_of(self.peer_id)
        try:
            if address is None:
                raise ValueError("no address known")
            host, port = parse_peer_address(address)
        except ValueError as e:
            if address != self._warned_address:
                self._warned_address = address
                self._log.warn(
                    "raft: cannot dial node {peer} ({addr!r}): {reason}", peer=self.peer_id, addr=address, reason=e
                )
            return fail(e)
        return self._transport.connector(host, port, _LinkFactory(self))

    def _attempt(self) -> None:
        self._retry = None
        self._machine._retry()

    def schedule_retry(self) -> None:
        self.attempts += 1
        self._retry = self._transport.clock.callLater(self._policy(self.attempts - 1), self._attempt)

    def cancel_retry(self) -> None:
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None

    def connected_to(self, protocol: PeerProtocol) -> None:
        self.protocol = protocol
        self.attempts = 0
        self._warned_address = None
        self._log.info("raft: connected to node {peer}", peer=self.peer_id)

    def disconnected(self) -> None:
        self.protocol = None
        self._log.info("raft: connection to node {peer} lost", peer=self.peer_id)

    # --- _Owner -------------------------------------------------------------------

    def peer_authenticated(self, protocol: PeerProtocol) -> None:
        self._machine._authenticated(protocol)

    def peer_lost(self, protocol: PeerProtocol) -> None:
        self._machine._lost(protocol)


class _InboundFactory(Factory):
    noisy = False

    def __init__(self, transport: PeerTransport) -> None:
        self._transport = transport

    def buildProtocol(self, addr: Any) -> PeerProtocol | None:
        return self._transport.build_inbound(addr)


@implementer(IRaftTransport, _Owner)
class PeerTransport(Service):
    """
    The Raft port and the links to peers.

    @param node_id: this node.
    @param clock: an C{IReactorTime} (reconnect backoff, handshake deadlines).
    @param authenticator: proves this node and checks peers
        (L{oxidb.raft.auth}).
    @param handler: gets every frame from an authenticated peer.
    @param address_of: the Raft address (C{host:port}) of a node id, or
        C{None}; asked at every dial, so membership changes take effect.
    @param rng: nonces and backoff jitter.
    @param listen: C{(reactor, host, port, tls_options)} to listen with at
        start, or C{None} (tests); C{tls_options} is C{None} for plain TCP.
    @param connector: dials a peer (default: TCP or TLS endpoints on the
        listen reactor).
    """

    _log = Logger()

    def __init__(
        self,
        node_id: int,
        *,
        clock: Any,
        authenticator: IPeerAuthenticator,
        handler: IPeerHandler,
        address_of: Callable[[int], str | None],
        rng: random.Random,
        listen: tuple[Any, str, int, Any] | None = None,
        connector: Connector | None = None,
        queue_messages: int = QUEUE_MESSAGES,
        queue_bytes: int = QUEUE_BYTES,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        inbound_per_address: int = INBOUND_PER_ADDRESS,
    ) -> None:
        self.node_id = node_id
        self.clock = clock
        self.authenticator = authenticator
        self.handler = handler
        self.address_of = address_of
        self.rng = rng
        self._listen = listen
        self.connector: Connector = connector if connector is not None else self._default_connector
        self._queue_limits = (queue_messages, queue_bytes)
        self.links: dict[int, PeerLink] = {}
        self.inbound: set[PeerProtocol] = set()
        #: The latest authenticated inbound connection of each peer.
        self.inbound_from: dict[int, PeerProtocol] = {}
        self.handshake_timeout = handshake_timeout
        self.inbound_per_address = inbound_per_address
        #: Open inbound connections per source host.
        self.inbound_by_address: dict[str, int] = {}
        self._address_of_protocol: dict[PeerProtocol, str] = {}
        self.port: Any = None

    def new_queue(self) -> SendQueue:
        return SendQueue(*self._queue_limits)

    # --- the service ------------------------------------------------------------------

    def privilegedStartService(self) -> None:
        """Bind the Raft port (a bind error stops startup)."""
        if self._listen is not None and self.port is None:
            reactor, host, port, tls = self._listen
            factory = _InboundFactory(self)
            if tls is not None:
                self.port = reactor.listenSSL(port, factory, tls, interface=host)
            else:
                self.port = reactor.listenTCP(port, factory, interface=host)
        super().privilegedStartService()

    def startService(self) -> None:
        if self.port is None:
            self.privilegedStartService()
        super().startService()

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        for link in self.links.values():
            link.stop()
        self.links.clear()
        for protocol in list(self.inbound):
            protocol.close()
        if self.port is not None:
            port, self.port = self.port, None
            result: Deferred[None] | None = port.stopListening()
            return result
        return None

    # --- IRaftTransport ---------------------------------------------------------------

    def send(self, peer: int, payload: bytes) -> None:
        if peer == self.node_id or not self.running:
            return
        link = self.links.get(peer)
        if link is None or link.protocol is None:
            inbound = self.inbound_from.get(peer)
            if inbound is not None and (link is not None or self.address_of(peer) is None):
                inbound.send(payload)
                return
        if link is None:
            link = self.links[peer] = PeerLink(self, peer)
            link.start()
        link.send(payload)

    def retain(self, peers: set[int]) -> None:
        for peer in set(self.links) - peers:
            self.links.pop(peer).stop()

    # --- inbound connections ------------------------------------------------------------

    def build_inbound(self, addr: Any = None) -> PeerProtocol | None:
        """
        The protocol for a new inbound connection from C{addr} (an
        C{IAddress}; C{None} in in-memory tests, which skips the
        per-address count), or C{None} to refuse it.
        """
        if len(self.inbound) >= MAX_INBOUND:
            self._log.warn("raft: refusing a connection: {n} peer connections are open", n=len(self.inbound))
            return None
        host = getattr(addr, "host", None)
        if host is not None:
            open_from = self.inbound_by_address.get(host, 0)
            if open_from >= self.inbound_per_address:
                self._log.warn(
                    "raft: refusing a connection from {host}: {n} connections from that address are open "
                    "(OXIDB_RAFT_INBOUND_PER_ADDRESS)",
                    host=host,
                    n=open_from,
                )
                return None
        protocol = PeerProtocol(
            Responder(self.node_id, self.authenticator, self.rng),
            self,
            self.handler,
            self.clock,
            self.new_queue(),
            handshake_timeout=self.handshake_timeout,
        )
        self.inbound.add(protocol)
        if host is not None:
            self.inbound_by_address[host] = self.inbound_by_address.get(host, 0) + 1
            self._address_of_protocol[protocol] = host
        return protocol

    def peer_authenticated(self, protocol: PeerProtocol) -> None:
        assert protocol.peer_id is not None
        self.inbound_from[protocol.peer_id] = protocol
        self._log.info("raft: node {peer} connected", peer=protocol.peer_id)

    def peer_lost(self, protocol: PeerProtocol) -> None:
        self.inbound.discard(protocol)
        host = self._address_of_protocol.pop(protocol, None)
        if host is not None:
            left = self.inbound_by_address.get(host, 1) - 1
            if left > 0:
                self.inbound_by_address[host] = left
            else:
                self.inbound_by_address.pop(host, None)
        if protocol.peer_id is not None and self.inbound_from.get(protocol.peer_id) is protocol:
            del self.inbound_from[protocol.peer_id]

    def _default_connector(self, host: str, port: int, factory: IProtocolFactory) -> Deferred[Any]:
        if self._listen is None:
            raise RuntimeError("no reactor to dial with")
        reactor, _host, _port, tls = self._listen
        if tls is not None:
            endpoint: Any = SSL4ClientEndpoint(reactor, host, port, tls, timeout=CONNECT_TIMEOUT)
        elif ":" in host:
            endpoint = TCP6ClientEndpoint(reactor, host, port, timeout=CONNECT_TIMEOUT)
        else:
            endpoint = TCP4ClientEndpoint(reactor, host, port, timeout=CONNECT_TIMEOUT)
        result: Deferred[Any] = endpoint.connect(factory)
        return result
