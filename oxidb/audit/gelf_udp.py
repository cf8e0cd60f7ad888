"""
The Twisted side of GELF: a connected UDP socket that sends what
L{oxidb.audit.gelf.GelfEncoder} produces, as an audit sink and as a
C{twisted.logger} observer.

Sending never blocks and send errors are ignored (a collector that is down
must not slow the server). Log events can come from any thread; they are
encoded and sent on the reactor thread.
"""

from __future__ import annotations

import socket
from typing import Any

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorUDP
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import ILogObserver
from zope.interface import implementer

from oxidb._threads import ReactorQueue
from oxidb.audit.events import AuditEvent, IAuditSink
from oxidb.audit.gelf import MAX_CHUNKS, GelfEncoder, GelfSettings, audit_event_fields, log_event_fields
from oxidb.errors import ConfigError
from oxidb.logs import Logger


def resolve_gelf_address(settings: GelfSettings) -> tuple[str, int]:
    """
    The collector's IP address and port (blocking DNS lookup: startup only).

    @raise ConfigError: C{failed to create GELF logger: <reason>}.
    """
    try:
        infos = socket.getaddrinfo(settings.host, settings.port, type=socket.SOCK_DGRAM)
    except OSError as e:
        raise ConfigError(f"failed to create GELF logger: cannot resolve {settings.host}: {e}") from None
    address = infos[0][4]
    return str(address[0]), int(address[1])


class _GelfProtocol(DatagramProtocol):
    noisy = False

    def connectionRefused(self) -> None:
        """Nobody listens (yet): ignore, as every other send error."""


@implementer(IAuditSink)
@attrs.define(eq=False)
class GelfSender:
    """
    Sends GELF messages to one collector. Also the GELF audit sink; its
    L{observer} forwards server log events.

    @param address: the collector's resolved IP and port
        (L{resolve_gelf_address}).
    """

    _log = Logger()

    reactor: Any
    settings: GelfSettings
    address: tuple[str, int]
    encoder: GelfEncoder
    _protocol: _GelfProtocol = attrs.field(init=False, factory=_GelfProtocol)
    _port: Any = attrs.field(init=False, default=None)

    def start(self) -> None:
        """Bind to an ephemeral port and connect it to the collector."""
        udp: IReactorUDP = self.reactor
        interface = "::" if ":" in self.address[0] else "0.0.0.0"
        try:
            self._port = udp.listenUDP(0, self._protocol, interface=interface, maxPacketSize=8192)
            self._port.connect(*self.address)
        except Exception as e:
            raise ConfigError(f"failed to create GELF logger: {e}") from None

    def stop(self) -> Deferred[None]:
        if self._port is None:
            return succeed(None)
        port, self._port = self._port, None
        return port.stopListening() or succeed(None)

    def send(self, message: dict[str, Any]) -> None:
        """Encode and send one message (reactor thread only)."""
        if self._port is None:
            return
        truncated, dropped = self.encoder.truncated, self.encoder.dropped
        for datagram in self.encoder.encode(message):
            try:
                self._port.write(datagram)
            except OSError:
                pass
        if self.encoder.dropped != dropped:
            self._log.warn(
                "GELF message dropped: larger than {max_chunks} chunks even when truncated ({count} so far)",
                max_chunks=MAX_CHUNKS,
                count=self.encoder.dropped,
            )
        elif self.encoder.truncated != truncated:
            self._log.warn("GELF message truncated to fit ({count} so far)", count=self.encoder.truncated)

    def record(self, event: AuditEvent) -> None:
        self.send(audit_event_fields(event, self.settings.source))

    def observer(self) -> ILogObserver:
        """A log observer forwarding server log events to this collector."""
        return GelfLogObserver(self)


@implementer(ILogObserver)
@attrs.define(eq=False)
class GelfLogObserver:
    """
    Forwards C{twisted.logger} events to a L{GelfSender}, except stdio text
    (see L{log_event_fields}) and the sender's own warnings (no loops).
    Events logged on any thread are sent on the reactor thread, in order.
    """

    sender: GelfSender
    _to_reactor: ReactorQueue = attrs.field(init=False)

    @_to_reactor.default
    def _reactor_queue(self) -> ReactorQueue:
        return ReactorQueue(self.sender.reactor)

    def __call__(self, event: dict[str, Any]) -> None:
        if event.get("log_namespace") == _SENDER_NAMESPACE:
            return
        fields = log_event_fields(event, self.sender.settings.source)
        if fields is not None:
            self._to_reactor.call(self.sender.send, fields)


#: The namespace of L{GelfSender}'s own warnings, which are not forwarded.
_SENDER_NAMESPACE = GelfSender._log.namespace
