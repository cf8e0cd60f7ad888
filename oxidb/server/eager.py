"""
A TCP transport that sends a write at once when nothing is waiting to be sent.

Twisted's L{tcp.Server} buffers every write and sends it one reactor
iteration later: C{write} registers the socket for writability
(C{epoll_ctl}), the reactor's next C{epoll_wait} reports it, C{doWrite}
sends, and the socket is unregistered again (C{epoll_ctl}). For a server
answering one request at a time that is two extra syscalls and a reactor
iteration per reply.

L{EagerServer} sends the bytes of a write with one C{send} (C{sendmsg} for
L{EagerServer.writeSequence}) when its buffers are empty and it is not
closing, half-closing, aborting or pausing its producer. Whatever the kernel
does not take is buffered the usual way (Twisted's own buffer and offset,
then C{startWriting}), so the order of the bytes, the producer's
pause/resume and C{loseConnection}'s flush-then-close are those of
L{tcp.Server}. A send error other than "would block" is not handled here:
the bytes are buffered and the reactor's C{doWrite} meets the error again
and loses the connection the usual way (C{ConnectionLost}, no traceback).

The caller keeps the coalescing: the client protocol writes the small
replies of one read together, in one C{write}
(L{oxidb.server.protocol.OxiServerProtocol._run}). Bytes that are many
small writes in a burst (a change stream's events) go through
L{EagerServer.write_later}, Twisted's buffered path, so that a burst still
leaves in one send.

TLS: C{listenSSL} keeps L{tcp.Server}; the TLS layer writes each record
separately and the buffered path coalesces them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

from twisted.internet import tcp
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IPushProducer
from twisted.internet.posixbase import PosixReactorBase

#: At most this many buffers go to one C{sendmsg} (Linux's IOV_MAX is 1024).
_MAX_IOVEC = 1024


class EagerServer(tcp.Server):
    """
    L{tcp.Server} whose writes are sent at once while nothing is buffered.
    """

    def _idle(self) -> bool:
        """Nothing is buffered and a write may go straight to the socket."""
        return not (
            self._tempDataLen
            or self.dataBuffer
            or not self.connected
            or self.disconnecting
            or self._writeDisconnecting
            or self._writeDisconnected
            or self._aborting
            or self.producerPaused
            or self.TLS
        )

    def write(self, data: bytes) -> None:
        """
        Send C{data} now, buffering only what the kernel does not take; or
        buffer it all, as L{tcp.Server} does, when something is already
        waiting to be sent.
        """
        if type(data) is not bytes or not data or not self._idle():
            # Twisted's checks (bytes only) and its buffered path.
            tcp.Server.write(self, data)
            return
        try:
            sent = self.socket.send(data)
        except OSError:
            # Would block: all of it waits. Any other error (EPIPE,
            # ECONNRESET): doWrite meets it again and loses the connection
            # the usual way.
            sent = 0
        if sent == len(data):
            return
        # Twisted's own buffer shape: doWrite sends dataBuffer[offset:].
        self.dataBuffer = data
        self.offset = sent
        self._pause_if_full(len(data) - sent)
        self.startWriting()

    def writeSequence(self, iovec: Iterable[bytes]) -> None:
        """
        Send the buffers of C{iovec} now in one C{sendmsg} (no copy to join
        them), buffering only what the kernel does not take; see L{write}.
        """
        parts = list(iovec)
        if not self._idle() or not all(type(p) is bytes for p in parts):
            tcp.Server.writeSequence(self, parts)
            return
        parts = [p for p in parts if p]
        if not parts:
            return
        if len(parts) == 1:
            self.write(parts[0])
            return
        if len(parts) > _MAX_IOVEC:
            self.write(b"".join(parts))
            return
        try:
            sent = self.socket.sendmsg(parts)
        except OSError:
            sent = 0  # as in write
        # The first buffer the kernel did not take in full, and how much of it it took.
        index = 0
        while index < len(parts) and sent >= len(parts[index]):
            sent -= len(parts[index])
            index += 1
        if index == len(parts):
            return
        self.dataBuffer = parts[index]
        self.offset = sent
        later = parts[index + 1 :]
        rest = sum(len(part) for part in later)
        self._tempDataBuffer.extend(later)
        self._tempDataLen += rest
        self._pause_if_full(len(parts[index]) - sent + rest)
        self.startWriting()

    def write_later(self, data: bytes) -> None:
        """
        Buffer C{data} and send it when the reactor finds the socket
        writable, with everything else written until then (L{tcp.Server}'s
        C{write}): for bursts of small writes that should leave together.
        """
        tcp.Server.write(self, data)

    def _pause_if_full(self, unsent: int) -> None:
        """Pause a streaming producer when more than the buffer size is left unsent."""
        if self.producer is not None and self.streamingProducer and unsent > self.bufferSize:
            self.producerPaused = True
            cast(IPushProducer, self.producer).pauseProducing()


class EagerPort(tcp.Port):
    """A TCP port whose connections are L{EagerServer} transports."""

    transport = EagerServer


def listen_tcp(reactor: Any, port: int, factory: IProtocolFactory, interface: str = "") -> IListeningPort:
    """
    Listen on C{interface}:C{port} with L{EagerServer} transports on a
    POSIX reactor (select, poll, epoll); other reactors (the in-memory ones
    of the tests) get their own C{listenTCP}.
    """
    if not isinstance(reactor, PosixReactorBase):
        listening: IListeningPort = reactor.listenTCP(port, factory, interface=interface)
        return listening
    eager = EagerPort(port, factory, interface=interface, reactor=reactor)
    eager.startListening()
    return eager
