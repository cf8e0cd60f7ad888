"""
The eager TCP transport (L{oxidb.server.eager}) on real loopback sockets,
driven by hand: a L{MemoryReactorClock} records what the transport asks of
the reactor (startWriting), and the test calls C{doRead}/C{doWrite} where
the reactor would. Partial sends come from tiny socket buffers.
"""

from __future__ import annotations

import json
import select
import socket
import struct
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet import main
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.selectreactor import SelectReactor
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from zope.interface import implementer

from oxidb.config import Config
from oxidb.server.eager import EagerPort, EagerServer, listen_tcp
from oxidb.testing import MemoryServer
from oxidb.wire.framing import FrameDecoder, encode_frame


class CountingSocket:
    """A socket that counts its C{send} and C{sendmsg} calls."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sends: list[int] = []

    def send(self, data: Any) -> int:
        sent = self.sock.send(data)
        self.sends.append(sent)
        return sent

    def sendmsg(self, buffers: Any) -> int:
        sent = self.sock.sendmsg(buffers)
        self.sends.append(sent)
        return sent

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


@implementer(IPushProducer)
class Recorder(Protocol):
    """Records what reaches it and, as a push producer, its pauses."""

    def __init__(self) -> None:
        self.received = b""
        self.lost: list[Failure] = []
        self.events: list[str] = []

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = main.CONNECTION_DONE) -> None:  # type: ignore[assignment]
        self.lost.append(reason)

    def pauseProducing(self) -> None:
        self.events.append("pause")

    def resumeProducing(self) -> None:
        self.events.append("resume")

    def stopProducing(self) -> None:
        self.events.append("stop")


def tcp_pair(small: bool = False) -> tuple[socket.socket, socket.socket]:
    """A connected loopback pair (server side, client side); C{small}: tiny buffers both ways."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = socket.socket()
    if small:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect(listener.getsockname())
    server, _ = listener.accept()
    listener.close()
    if small:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    client.settimeout(5)
    return server, client


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    server, client = tcp_pair()
    yield server, client
    client.close()
    server.close()


def transport_for(
    sock: socket.socket, protocol: Protocol | None = None, reactor: Any = None
) -> tuple[EagerServer, Recorder, CountingSocket, MemoryReactorClock]:
    """An L{EagerServer} on C{sock} whose socket counts sends."""
    reactor = reactor or MemoryReactorClock()
    recorder = Recorder()
    protocol = protocol or recorder
    transport = EagerServer(sock, protocol, ("127.0.0.1", 1), None, 0, reactor)  # type: ignore[arg-type]
    counting = CountingSocket(sock)
    transport.socket = counting  # type: ignore[assignment]
    protocol.makeConnection(transport)
    return transport, recorder, counting, reactor


def read_exactly(client: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = client.recv(n - len(data))
        assert chunk, "the connection closed early"
        data += chunk
    return data


def drain(transport: EagerServer, reactor: MemoryReactorClock, client: socket.socket, n: int) -> bytes:
    """Read C{n} bytes on the client while running the transport's C{doWrite} as the reactor would."""
    data = b""
    while len(data) < n:
        if transport in reactor.getWriters():
            assert transport.doWrite() is None
        ready, _, _ = select.select([client], [], [], 5)
        assert ready, "no bytes arrived"
        data += client.recv(1 << 20)
    return data


def test_a_write_is_sent_at_once_in_one_send(pair: tuple[socket.socket, socket.socket]) -> None:
    server, client = pair
    transport, _, counting, reactor = transport_for(server)
    transport.write(b"hello")
    transport.writeSequence([b"one ", b"", b"two"])
    assert read_exactly(client, 12) == b"helloone two"
    assert counting.sends == [5, 7]
    assert reactor.getWriters() == []  # no startWriting, no reactor iteration
    assert not transport.dataBuffer and not transport._tempDataBuffer


def test_non_bytes_are_refused_as_twisted_refuses_them(pair: tuple[socket.socket, socket.socket]) -> None:
    transport, _, counting, _ = transport_for(pair[0])
    with pytest.raises(TypeError):
        transport.write("text")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        transport.writeSequence([b"ok", "text"])  # type: ignore[list-item]
    transport.write(b"")
    transport.writeSequence([])
    assert counting.sends == []


def test_what_the_kernel_does_not_take_is_buffered_in_order_and_pauses_the_producer() -> None:
    server, client = tcp_pair(small=True)
    transport, recorder, counting, reactor = transport_for(server)
    transport.registerProducer(recorder, True)
    big = bytes(range(256)) * 4096  # 1 MiB
    transport.write(big)
    assert 0 < counting.sends[0] < len(big)  # a partial send
    assert reactor.getWriters() == [transport]
    assert recorder.events == ["pause"]  # more than the buffer size is left
    # Later writes queue behind the unsent bytes, not ahead of them.
    transport.write(b"tail")
    transport.writeSequence([b"-", b"end"])
    assert len(counting.sends) == 1
    total = len(big) + 8
    assert drain(transport, reactor, client, total) == big + b"tail-end"
    # Sent in full: the transport stops writing and resumes its producer.
    assert transport.doWrite() is None
    assert reactor.getWriters() == []
    # Paused at the partial send (and again by Twisted at each write while full), resumed once sent.
    assert recorder.events[0] == "pause" and recorder.events[-1] == "resume"
    assert recorder.events.count("resume") == 1
    # Empty again: the next write is eager.
    transport.write(b"again")
    assert read_exactly(client, 5) == b"again" and reactor.getWriters() == []
    client.close()
    server.close()


def test_a_partial_writesequence_buffers_the_rest_of_every_part() -> None:
    server, client = tcp_pair(small=True)
    transport, _, counting, reactor = transport_for(server)
    payload = b"p" * 300_000
    parts = [struct.pack("<I", len(payload)), payload, b"after"]
    transport.writeSequence(parts)
    assert len(counting.sends) == 1 and 4 < counting.sends[0] < len(payload)
    assert reactor.getWriters() == [transport]
    assert drain(transport, reactor, client, 300_009) == b"".join(parts)
    client.close()
    server.close()


def test_a_small_unsent_rest_does_not_pause_the_producer() -> None:
    server, client = tcp_pair(small=True)
    transport, recorder, counting, reactor = transport_for(server)
    transport.registerProducer(recorder, True)
    data = b"x" * 40_000
    transport.write(data)
    assert counting.sends[0] < len(data)  # partial, but less than 64 KiB waits
    assert recorder.events == []
    assert drain(transport, reactor, client, len(data)) == data
    client.close()
    server.close()


def test_a_reset_connection_is_lost_the_usual_way() -> None:
    server, client = tcp_pair()
    transport, recorder, _, reactor = transport_for(server)
    # The peer closes with unread bytes and no linger: the kernel resets.
    transport.write(b"unread")
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()
    for _ in range(10):  # the reset may take a send or two to be seen
        transport.write(b"more")  # no exception reaches the writer
        if reactor.getWriters():
            break
    assert reactor.getWriters() == [transport]
    why = transport.doWrite()  # the reactor's next iteration
    assert isinstance(why, ConnectionLost)
    transport.connectionLost(Failure(why))  # as the reactor does with it
    assert len(recorder.lost) == 1 and recorder.lost[0].check(ConnectionLost)
    transport.write(b"late")  # after the loss: nothing, no error


def test_a_write_to_a_closed_peer_fails_with_epipe_not_a_traceback() -> None:
    server, client = tcp_pair()
    transport, recorder, _, reactor = transport_for(server)
    client.close()  # orderly: the first send is answered with a reset
    for _ in range(10):
        transport.write(b"x" * 1000)
        if reactor.getWriters():
            break
    assert reactor.getWriters() == [transport]
    why = transport.doWrite()
    assert isinstance(why, ConnectionLost)
    transport.connectionLost(Failure(why))
    assert recorder.lost[0].check(ConnectionLost)


def test_lose_connection_after_a_write_flushes_first(pair: tuple[socket.socket, socket.socket]) -> None:
    server, client = pair
    transport, recorder, counting, reactor = transport_for(server)
    transport.write(b"reply")
    transport.loseConnection()
    transport.write(b" late")  # while closing: buffered, as Twisted does
    assert counting.sends == [5]
    assert reactor.getWriters() == [transport]
    why = transport.doWrite()
    assert isinstance(why, ConnectionDone)
    transport.connectionLost(Failure(why))
    data = b""
    while chunk := client.recv(100):
        data += chunk
    assert data == b"reply late"
    assert recorder.lost[0].check(ConnectionDone)


def test_half_close_sends_what_was_written_then_eof(pair: tuple[socket.socket, socket.socket]) -> None:
    server, client = pair
    transport, _, counting, reactor = transport_for(server)
    transport.write(b"first")
    transport.loseWriteConnection()
    transport.write(b" second")  # buffered behind the half-close
    assert counting.sends == [5]
    assert transport.doWrite() is None
    data = b""
    while chunk := client.recv(100):
        data += chunk
    assert data == b"first second"
    transport.write(b"after")  # the write side is closed: dropped
    assert counting.sends == [5, 7]
    # Reading still works.
    client.sendall(b"ping")
    transport.doRead()


def test_an_aborted_connection_sends_nothing_more(pair: tuple[socket.socket, socket.socket]) -> None:
    server, client = pair
    transport, _, counting, reactor = transport_for(server)
    transport.abortConnection()
    transport.write(b"never")
    transport.writeSequence([b"nor", b"this"])
    assert counting.sends == []
    reactor.advance(0)  # the abort's connectionLost: a reset, no data
    try:
        assert client.recv(100) == b""
    except ConnectionResetError:
        pass


def test_pipelined_pings_are_answered_in_one_send(tmp_path: Any, pair: tuple[socket.socket, socket.socket]) -> None:
    """The replies of one read leave together: one send, no reactor iteration."""
    server_sock, client = pair
    server = MemoryServer(Config(data_dir=str(tmp_path)))
    protocol = server.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
    assert protocol is not None
    transport, _, counting, _ = transport_for(server_sock, protocol, server.clock)
    client.sendall(encode_frame(json.dumps({"cmd": "ping"}).encode()) * 32)
    for _ in range(100):  # bounded: a broken server fails the test instead of hanging it
        if counting.sends:
            break
        assert select.select([server_sock], [], [], 5)[0], "the requests did not arrive"
        transport.doRead()
    assert len(counting.sends) == 1
    decoder = FrameDecoder()
    replies = decoder.feed(read_exactly(client, counting.sends[0]))
    assert [json.loads(r) for r in replies] == [{"ok": True, "data": "pong"}] * 32
    assert transport not in server.clock.getWriters()
    transport.loseConnection()


def test_listen_tcp_uses_the_eager_port_on_a_posix_reactor() -> None:
    factory = Factory.forProtocol(Protocol)
    memory = MemoryReactorClock()
    listen_tcp(memory, 0, factory, interface="127.0.0.1")
    assert [(port, interface) for port, _, _, interface in memory.tcpServers] == [(0, "127.0.0.1")]
    reactor = SelectReactor()
    port = listen_tcp(reactor, 0, factory, interface="127.0.0.1")
    try:
        assert isinstance(port, EagerPort) and port.transport is EagerServer
        assert port.getHost().port != 0
    finally:
        port.connectionLost(Failure(main.CONNECTION_DONE))  # type: ignore[attr-defined]
        if reactor.waker is not None:
            reactor.waker.connectionLost(Failure(main.CONNECTION_DONE))
