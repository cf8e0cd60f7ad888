"""
The fault-injecting Raft link proxy (L{oxidb._faultproxy}), deterministically:
connections are C{StringTransport}s, dials are recorded by a
C{MemoryReactorClock}, time moves only when the test advances it.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest
from twisted.internet.testing import MemoryReactorClock, StringTransport

from oxidb._faultproxy import ControlProtocol, FaultLink, FaultProxy, hello_sender
from oxidb._harness import FaultProxyProcess, partition_links


def frame(obj: Any) -> bytes:
    payload = json.dumps(obj).encode()
    return struct.pack("<I", len(payload)) + payload


HELLO_FROM_1 = frame({"type": "hello", "protocol": "oxidb-raft/1", "from": 1, "to": 2, "nonce": "x"})


class Net:
    """A proxy for nodes 1, 2 and 3 on a memory reactor; connections made by hand."""

    def __init__(self) -> None:
        self.reactor = MemoryReactorClock()
        self.proxy = FaultProxy(self.reactor)
        for node in (1, 2, 3):
            self.proxy.add_node(node, f"127.0.0.1:{1000 + node}")

    def dial(self, link: FaultLink) -> tuple[Any, StringTransport]:
        """Node C{link.src} connects to the link's port: its protocol on the proxy and the transport to it."""
        protocol = link.factory().buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def answer(self) -> tuple[Any, StringTransport]:
        """The proxy's last dial reaches its target: the upstream protocol and transport."""
        host, port, factory, _timeout, _bind = self.reactor.tcpClients[-1]
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def pipe(self, src: int = 1, dst: int = 2) -> tuple[Any, StringTransport, Any, StringTransport]:
        inbound, t_in = self.dial(self.proxy.link(src, dst))
        upstream, t_up = self.answer()
        return inbound, t_in, upstream, t_up


def test_links_and_front_doors_for_every_pair() -> None:
    net = Net()
    assert sorted(net.proxy.links) == [(1, 2), (1, 3), (2, 1), (2, 3), (3, 1), (3, 2)]
    assert sorted(net.proxy.fronts) == [1, 2, 3]
    # Every port listens on loopback.
    assert {interface for _port, _factory, _backlog, interface in net.reactor.tcpServers} == {"127.0.0.1"}
    with pytest.raises(ValueError):
        net.proxy.add_node(2, "127.0.0.1:1")
    with pytest.raises(ValueError):
        net.proxy.link(1, 1)


def test_pass_moves_bytes_and_closes_both_ways() -> None:
    net = Net()
    inbound, t_in, upstream, t_up = net.pipe()
    host, port = net.reactor.tcpClients[-1][:2]
    assert (host, port) == ("127.0.0.1", 1002)
    inbound.dataReceived(b"to two")
    upstream.dataReceived(b"to one")
    assert t_up.value() == b"to two" and t_in.value() == b"to one"
    link = net.proxy.link(1, 2)
    assert link.stats()["bytes_forward"] == 6 and link.stats()["open"] == 1
    # The target closes: the dialler's connection is closed after the bytes.
    upstream.connectionLost()
    assert t_in.disconnecting
    inbound.connectionLost()
    assert link.stats()["open"] == 0


def test_bytes_sent_before_the_target_answers_wait_for_it() -> None:
    net = Net()
    inbound, t_in = net.dial(net.proxy.link(1, 2))
    inbound.dataReceived(b"early")
    upstream, t_up = net.answer()
    assert t_up.value() == b"early"


def test_a_target_that_cannot_be_reached_closes_the_dialler() -> None:
    net = Net()
    inbound, t_in = net.dial(net.proxy.link(1, 2))
    net.reactor.tcpClients[-1][2].clientConnectionFailed(None, None)
    assert t_in.disconnecting


def test_drop_aborts_connections_and_refuses_new_ones() -> None:
    net = Net()
    inbound, t_in, upstream, t_up = net.pipe()
    link = net.proxy.link(1, 2)
    link.set_mode("drop")
    assert t_in.disconnected and t_up.disconnected  # aborted, not closed gracefully
    dials = len(net.reactor.tcpClients)
    _again, t_again = net.dial(link)
    assert t_again.disconnected and len(net.reactor.tcpClients) == dials
    assert link.stats()["refused"] == 1
    link.set_mode("pass")
    _ok, t_ok = net.dial(link)
    assert not t_ok.disconnecting and len(net.reactor.tcpClients) == dials + 1


def test_blackhole_stops_reading_and_holds_bytes_and_closes() -> None:
    net = Net()
    inbound, t_in, upstream, t_up = net.pipe()
    link = net.proxy.link(1, 2)
    link.set_mode("blackhole")
    # Neither side is read any more: the senders' kernel buffers fill up.
    assert t_in.producerState == "paused" and t_up.producerState == "paused"
    # What was already on its way is held.
    inbound.dataReceived(b"append")
    upstream.dataReceived(b"reply")
    assert t_up.value() == b"" and t_in.value() == b""
    # New connections are accepted and held too.
    late, t_late = net.dial(link)
    assert not t_late.disconnecting and t_late.producerState == "paused"
    # Healed: everything arrives, in order.
    link.set_mode("pass")
    assert t_up.value() == b"append" and t_in.value() == b"reply"
    assert t_late.producerState == "producing" and t_in.producerState == "producing"
    # A close is held like bytes.
    link.set_mode("blackhole")
    upstream.connectionLost()
    assert not t_in.disconnecting
    link.set_mode("pass")
    assert t_in.disconnecting


def test_heal_with_reset_aborts_the_held_connections() -> None:
    net = Net()
    inbound, t_in, upstream, t_up = net.pipe()
    other_in, t_other_in, _other_up, t_other_up = net.pipe(2, 1)
    net.proxy.link(1, 2).set_mode("blackhole")
    inbound.dataReceived(b"lost")
    net.proxy.heal(reset=True)
    assert t_in.disconnected and t_up.disconnected and t_up.value() == b""
    # A link that was passing keeps its connections.
    assert not t_other_in.disconnecting and not t_other_up.disconnecting
    # New connections pass.
    again, t_again = net.dial(net.proxy.link(1, 2))
    _up, t_up2 = net.answer()
    again.dataReceived(b"fresh")
    assert t_up2.value() == b"fresh"


def test_one_way_holds_only_dialler_to_listener_bytes() -> None:
    net = Net()
    inbound, t_in, upstream, t_up = net.pipe()
    link = net.proxy.link(1, 2)
    link.set_mode("one-way")
    assert t_in.producerState == "paused" and t_up.producerState == "producing"
    inbound.dataReceived(b"from one")
    upstream.dataReceived(b"from two")
    assert t_up.value() == b"" and t_in.value() == b"from two"
    link.set_mode("pass")
    assert t_up.value() == b"from one"


def test_one_way_back_holds_only_listener_to_dialler_bytes() -> None:
    net = Net()
    inbound, t_in, upstream, t_up = net.pipe()
    link = net.proxy.link(1, 2)
    link.set_mode("one-way-back")
    inbound.dataReceived(b"from one")
    upstream.dataReceived(b"from two")
    assert t_up.value() == b"from one" and t_in.value() == b""
    assert t_up.producerState == "paused"
    link.set_mode("pass")
    assert t_in.value() == b"from two"


def test_delay_delivers_late_and_in_order() -> None:
    net = Net()
    inbound, t_in, upstream, t_up = net.pipe()
    link = net.proxy.link(1, 2)
    link.set_mode("delay", delay_ms=200)
    inbound.dataReceived(b"a")
    net.reactor.advance(0.1)
    inbound.dataReceived(b"b")
    upstream.dataReceived(b"r")
    assert t_up.value() == b"" and t_in.value() == b""
    net.reactor.advance(0.1)
    assert t_up.value() == b"a" and t_in.value() == b""
    net.reactor.advance(0.1)
    assert t_up.value() == b"ab" and t_in.value() == b"r"
    # A close is delayed like the bytes before it.
    inbound.connectionLost()
    assert not t_up.disconnecting
    net.reactor.advance(0.2)
    assert t_up.disconnecting


def test_modes_are_checked() -> None:
    net = Net()
    with pytest.raises(ValueError):
        net.proxy.set_mode(1, 2, "flaky")
    with pytest.raises(ValueError):
        net.proxy.set_mode(1, 2, "delay", delay_ms=-1)


def test_hello_sender() -> None:
    assert hello_sender(HELLO_FROM_1[:3]) is None
    assert hello_sender(HELLO_FROM_1[:-1]) is None
    assert hello_sender(HELLO_FROM_1 + b"more") == 1
    for bad in (frame({"type": "hello"}), frame([1]), frame({"from": True}), struct.pack("<I", 1 << 20)):
        with pytest.raises(ValueError):
            hello_sender(bad)


def test_front_door_hands_the_connection_to_the_senders_link() -> None:
    net = Net()
    front = net.proxy.fronts[2]
    protocol = front.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    dials = len(net.reactor.tcpClients)
    # Byte by byte: nothing is dialled until the hello is complete.
    for i in range(len(HELLO_FROM_1) - 1):
        protocol.dataReceived(HELLO_FROM_1[i : i + 1])
    assert len(net.reactor.tcpClients) == dials
    protocol.dataReceived(HELLO_FROM_1[-1:] + b"next")
    upstream, t_up = net.answer()
    assert net.reactor.tcpClients[-1][:2] == ("127.0.0.1", 1002)
    assert t_up.value() == HELLO_FROM_1 + b"next"
    assert net.proxy.link(1, 2).stats()["accepted"] == 1
    # The link's mode applies.
    net.proxy.set_mode(1, 2, "one-way")
    protocol.dataReceived(b"held")
    assert t_up.value() == HELLO_FROM_1 + b"next"


@pytest.mark.parametrize(
    "first",
    [
        frame({"type": "hello", "from": 9, "to": 2}),  # no such link
        frame({"type": "hello", "from": 2, "to": 2}),  # itself
        frame({"nonsense": 1}),
        b"\xff\xff\xff\xff",
    ],
)
def test_front_door_aborts_unknown_senders(first: bytes) -> None:
    net = Net()
    protocol = net.proxy.fronts[2].buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    dials = len(net.reactor.tcpClients)
    protocol.dataReceived(first)
    assert transport.disconnected and len(net.reactor.tcpClients) == dials


def test_front_door_of_a_dropped_link_refuses() -> None:
    net = Net()
    net.proxy.set_mode(1, 2, "drop")
    protocol = net.proxy.fronts[2].buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(HELLO_FROM_1)
    assert transport.disconnected


def test_control_protocol() -> None:
    reactor = MemoryReactorClock()
    quits: list[bool] = []
    control = ControlProtocol(FaultProxy(reactor), on_quit=lambda: quits.append(True))
    transport = StringTransport()
    control.makeConnection(transport)

    def run(command: Any) -> Any:
        transport.clear()
        control.dataReceived(json.dumps(command).encode() + b"\n")
        return json.loads(transport.value())

    assert run({"op": "add_node", "node": 1, "target": "127.0.0.1:7001"})["ok"]
    ports = run({"op": "add_node", "node": 2, "target": "127.0.0.1:7002"})
    assert ports["ok"] and set(ports["fronts"]) == {"1", "2"} and set(ports["links"]) == {"1-2", "2-1"}
    assert run({"op": "mode", "src": 1, "dst": 2, "mode": "delay", "delay_ms": 50}) == {"ok": True}
    assert run({"op": "modes", "links": [[1, 2, "blackhole", 0], [2, 1, "one-way", 0]]}) == {"ok": True}
    modes = {(s["src"], s["dst"]): s["mode"] for s in run({"op": "stats"})["links"]}
    assert modes == {(1, 2): "blackhole", (2, 1): "one-way"}
    # An unknown link anywhere in a batch changes nothing.
    bad = run({"op": "modes", "links": [[1, 2, "pass", 0], [1, 3, "pass", 0]]})
    assert bad["ok"] is False and "no link from node 1 to node 3" in bad["error"]
    assert run({"op": "stats"})["links"][0]["mode"] == "blackhole"
    assert run({"op": "heal", "reset": True}) == {"ok": True}
    assert {s["mode"] for s in run({"op": "stats"})["links"]} == {"pass"}
    assert run({"op": "bogus"})["ok"] is False
    assert run({"op": "quit"}) == {"ok": True}
    reactor.advance(0)
    assert quits == [True]


def test_partition_links() -> None:
    """Which directed links a partition of the nodes cuts."""
    assert partition_links([[1], [2, 3]], [1, 2, 3]) == [(1, 2), (1, 3), (2, 1), (3, 1)]
    # A bridge: 2 talks to both sides, 1 and 3 do not talk.
    assert partition_links([[1, 2], [2, 3]], [1, 2, 3]) == [(1, 3), (3, 1)]


def test_proxy_process_over_loopback(tmp_path: Any) -> None:
    """The child process: a real echo server behind a link, cut and healed."""
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def echo() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                while data := conn.recv(65536):
                    conn.sendall(data)

    threading.Thread(target=echo, daemon=True).start()
    proxy = FaultProxyProcess().start()
    try:
        proxy.add_node(1, "127.0.0.1:1")
        front = proxy.add_node(2, f"127.0.0.1:{server.getsockname()[1]}")
        with socket.create_connection(("127.0.0.1", front), timeout=10) as conn:
            conn.sendall(HELLO_FROM_1)
            assert _recv_exactly(conn, len(HELLO_FROM_1)) == HELLO_FROM_1
            proxy.set_links([(1, 2)], "blackhole")
            conn.sendall(b"held")
            conn.setblocking(False)
            with pytest.raises(BlockingIOError):
                conn.recv(10)
            conn.settimeout(10)
            proxy.heal()
            assert _recv_exactly(conn, 4) == b"held"
        with socket.create_connection(("127.0.0.1", proxy.link_port(1, 2)), timeout=10) as conn:
            conn.sendall(b"direct")
            assert _recv_exactly(conn, 6) == b"direct"
    finally:
        proxy.stop()
        server.close()


def _recv_exactly(conn: Any, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data
