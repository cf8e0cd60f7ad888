"""
The Raft peer transport: the handshake (sans-IO), then real protocols and
links over iosim on a MemoryReactorClock (authentication, bad input, frame
limits, reconnect backoff, a slow peer).
"""

from __future__ import annotations

import base64
import random
import struct
from typing import Any

import orjson
import pytest
from raft_wire import MemoryWire
from spake2 import SPAKE2_A
from spake2.spake2 import DefaultParams, finalize_SPAKE2
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs

from oxidb.raft.auth import (
    MAX_HANDSHAKE_FRAME,
    PROTOCOL,
    ClusterKeyAuthenticator,
    HandshakeError,
    Initiator,
    Responder,
    TransportTrust,
    confirmation,
    transcript,
)
from oxidb.raft.transport import PeerProtocol, PeerTransport, SendQueue
from oxidb.wire.framing import MAX_FRAME, FrameDecoder, encode_frame

KEY = ClusterKeyAuthenticator(b"correct horse battery staple, long enough")
OTHER_KEY = ClusterKeyAuthenticator(b"another cluster's secret, also long enough")


def run_handshake(initiator: Initiator, responder: Responder) -> list[dict[str, Any]]:
    """Drive both sides to the end; the transcript of frames."""
    frames = [initiator.hello()]
    answer = responder.frame_received(frames[-1])
    while answer:
        frames.extend(answer)
        (frame,) = answer
        answer = (initiator if frame["type"] in ("challenge", "welcome") else responder).frame_received(frame)
    return frames


# --- the handshake ------------------------------------------------------------


@pytest.mark.parametrize("auth", [KEY, TransportTrust()])
def test_handshake_authenticates_both_sides(auth: Any) -> None:
    initiator = Initiator(1, 2, auth, random.Random(1))
    responder = Responder(2, auth, random.Random(2))
    frames = run_handshake(initiator, responder)
    assert [f["type"] for f in frames] == ["hello", "challenge", "proof", "welcome"]
    assert initiator.done and responder.done
    assert responder.peer_id == 1


def test_the_key_never_travels_and_nonces_are_fresh() -> None:
    key = KEY.key
    first = run_handshake(Initiator(1, 2, KEY, random.Random(1)), Responder(2, KEY, random.Random(2)))
    second = run_handshake(Initiator(1, 2, KEY, random.Random(3)), Responder(2, KEY, random.Random(4)))
    wire = orjson.dumps(first + second)
    assert key not in wire and base64.b64encode(key) not in wire
    for field in ("nonce", "pake"):
        assert first[0][field] != second[0][field] and first[1][field] != second[1][field]
    assert first[1]["confirm"] != second[1]["confirm"] and first[2]["confirm"] != second[2]["confirm"]
    assert first[0]["protocol"] == PROTOCOL == "oxidb-raft/2"


def test_wrong_key_fails_on_both_sides() -> None:
    # The initiator detects a responder with another key...
    initiator = Initiator(1, 2, KEY, random.Random(1))
    responder = Responder(2, OTHER_KEY, random.Random(2))
    challenge = responder.frame_received(initiator.hello())[0]
    with pytest.raises(HandshakeError, match="failed to prove the cluster key"):
        initiator.frame_received(challenge)
    # ...and the responder an initiator with another key that ignores that.
    liar = Initiator(1, 2, OTHER_KEY, random.Random(1))
    honest = Responder(2, KEY, random.Random(2))
    challenge = honest.frame_received(liar.hello())[0]
    forged = {"type": "proof", "confirm": challenge["confirm"]}
    with pytest.raises(HandshakeError, match="node 1 failed to prove the cluster key"):
        honest.frame_received(forged)
    assert not honest.done


def test_a_key_and_no_key_do_not_mix() -> None:
    initiator = Initiator(1, 2, TransportTrust(), random.Random(1))
    responder = Responder(2, KEY, random.Random(2))
    with pytest.raises(HandshakeError):
        initiator.frame_received(responder.frame_received(initiator.hello())[0])
    initiator = Initiator(1, 2, KEY, random.Random(1))
    responder = Responder(2, TransportTrust(), random.Random(2))
    with pytest.raises(HandshakeError, match="uses a cluster key"):
        responder.frame_received(initiator.hello())


def test_a_replayed_handshake_is_refused() -> None:
    recorded = run_handshake(Initiator(1, 2, KEY, random.Random(1)), Responder(2, KEY, random.Random(2)))
    hello, _challenge, proof, _welcome = recorded
    # An eavesdropper replays the initiator's frames to a fresh responder.
    responder = Responder(2, KEY, random.Random(99))
    responder.frame_received(hello)
    with pytest.raises(HandshakeError, match="failed to prove"):
        responder.frame_received(proof)
    assert not responder.done


def test_a_reflected_confirmation_is_refused() -> None:
    # An attacker dials node 2 and sends node 2's own confirmation back.
    responder = Responder(2, KEY, random.Random(2))
    challenge = responder.frame_received(Initiator(1, 2, OTHER_KEY, random.Random(5)).hello())[0]
    with pytest.raises(HandshakeError):
        responder.frame_received({"type": "proof", "confirm": challenge["confirm"]})


def test_the_confirmations_bind_both_node_ids() -> None:
    # A man in the middle rewrites who is calling: the key exchange no
    # longer agrees, so the initiator refuses the responder's confirmation.
    initiator = Initiator(1, 2, KEY, random.Random(1))
    responder = Responder(2, KEY, random.Random(2))
    challenge = responder.frame_received(dict(initiator.hello(), **{"from": 3}))[0]
    assert responder.peer_id == 3
    with pytest.raises(HandshakeError, match="failed to prove"):
        initiator.frame_received(challenge)


def test_the_initiator_checks_who_answers() -> None:
    initiator = Initiator(1, 2, KEY, random.Random(1))
    impostor = Responder(3, KEY, random.Random(3))
    hello = dict(initiator.hello(), to=3)
    with pytest.raises(HandshakeError, match="the peer is node 3, not node 2"):
        initiator.frame_received(impostor.frame_received(hello)[0])


# --- what a party without the key can learn ------------------------------------------


def offline_check(key_guess: bytes, candidates: list[bytes]) -> list[bytes]:
    """
    Play an attacker that dials node 2 with a SPAKE2 message made from
    C{key_guess} and stops after the challenge (everything node 2 sends
    before the attacker has proved anything). Then try every candidate key
    offline the best way there is: knowing its own secret scalar, recompute
    the secret node 2 would hold under the candidate and test node 2's
    confirmation. Returns the candidates that pass.
    """
    params = DefaultParams
    group = params.group
    id_a, id_b = b"oxidb-raft/2 node 1", b"oxidb-raft/2 node 2"
    attacker = SPAKE2_A(key_guess, idA=id_a, idB=id_b, entropy_f=random.Random(7).randbytes)
    x_message = attacker.start()
    nonce = b"\7" * 32
    hello = {"type": "hello", "protocol": PROTOCOL, "from": 1, "to": 2,
             "nonce": base64.b64encode(nonce).decode(), "pake": base64.b64encode(x_message).decode()}
    [challenge] = Responder(2, KEY, random.Random(2)).frame_received(hello)
    # Everything in the challenge is the node id, a nonce, the SPAKE2 message
    # and a confirmation: no MAC under the key itself.
    assert set(challenge) == {"type", "from", "nonce", "pake", "confirm"}
    y_message = base64.b64decode(challenge["pake"])
    t = transcript(1, 2, nonce, base64.b64decode(challenge["nonce"]), x_message, y_message)
    y_element = group.bytes_to_element(y_message[1:])
    passed = []
    for candidate in candidates:
        unblinded = y_element.add(params.N.scalarmult(-group.password_to_scalar(candidate)))
        k_bytes = unblinded.scalarmult(attacker.xy_scalar).to_bytes()
        secret = finalize_SPAKE2(id_a, id_b, x_message[1:], y_message[1:], k_bytes, candidate)
        if confirmation(secret, "responder", t) == challenge["confirm"]:
            passed.append(candidate)
    return passed


def test_an_attacker_without_the_key_has_nothing_to_test_offline() -> None:
    real = KEY.key
    dictionary = [b"password", b"cluster key", OTHER_KEY.key, b"a guessed key", real]
    # The attacker's one online guess was wrong: no candidate, not even the
    # right key, matches what node 2 sent. Its dictionary is useless.
    assert offline_check(b"a guessed key", dictionary) == []
    # (The same computation does work when the online guess was right: the
    # check above is a real attack, and each connection is one guess.)
    assert offline_check(real, dictionary) == [real]


@pytest.mark.parametrize(
    "hello, message",
    [
        ({"type": "hello", "protocol": PROTOCOL, "from": 1, "to": 5, "nonce": "AA=="}, "wants node 5"),
        ({"type": "hello", "protocol": PROTOCOL, "from": 2, "to": 2,
          "nonce": base64.b64encode(bytes(32)).decode()}, "itself"),
        ({"type": "hello", "protocol": "oxidb-raft/9", "from": 1, "to": 2}, "unsupported"),
        ({"type": "hello", "protocol": "oxidb-raft/1", "from": 1, "to": 2}, "unsupported"),
        ({"type": "hello", "protocol": PROTOCOL, "from": "1", "to": 2}, "'from' must be a node id"),
        ({"type": "hello", "protocol": PROTOCOL, "from": -1, "to": 2}, "'from' must be a node id"),
        ({"type": "hello", "protocol": PROTOCOL, "from": 1, "to": 2, "nonce": "AA=="}, "nonce must be 32"),
        ({"type": "hello", "protocol": PROTOCOL, "from": 1, "to": 2, "nonce": "!!"}, "nonce must be 32"),
        ({"type": "hello", "protocol": PROTOCOL, "from": 1, "to": 2,
          "nonce": base64.b64encode(bytes(32)).decode()}, "must be base64"),
        ({"type": "hello", "protocol": PROTOCOL, "from": 1, "to": 2,
          "nonce": base64.b64encode(bytes(32)).decode(), "pake": "AAAA"}, "must be 33 bytes"),
        ({"type": "hello", "protocol": PROTOCOL, "from": 1, "to": 2,
          "nonce": base64.b64encode(bytes(32)).decode(), "pake": base64.b64encode(b"B" + bytes(32)).decode()},
         "invalid key exchange message"),
        ({"type": "proof", "confirm": ""}, "expected a 'hello' frame"),
        ([1, 2], "expected a 'hello' frame"),
    ],
)
def test_malformed_hellos(hello: Any, message: str) -> None:
    with pytest.raises(HandshakeError, match=message):
        Responder(2, KEY, random.Random(2)).frame_received(hello)


def test_out_of_turn_frames_fail() -> None:
    initiator = Initiator(1, 2, KEY, random.Random(1))
    with pytest.raises(HandshakeError):
        initiator.frame_received({"type": "welcome"})  # before hello was even sent
    responder = Responder(2, KEY, random.Random(2))
    responder.frame_received(Initiator(1, 2, KEY, random.Random(1)).hello())
    with pytest.raises(HandshakeError):
        responder.frame_received({"type": "hello"})
    with pytest.raises(HandshakeError):
        responder.frame_received({"type": "proof", "confirm": "x"})  # failed: stays failed


def test_confirmations_are_short_strings() -> None:
    responder = Responder(2, KEY, random.Random(2))
    responder.frame_received(Initiator(1, 2, KEY, random.Random(1)).hello())
    with pytest.raises(HandshakeError, match="short string"):
        responder.frame_received({"type": "proof", "confirm": "A" * 4096})


# --- connections ------------------------------------------------------------------


class Recorder:
    """A frame handler that keeps what it gets and can answer."""

    def __init__(self) -> None:
        self.frames: list[tuple[int, dict[str, Any]]] = []
        self.reply_with: bytes | None = None

    def frame_received(self, peer: int, frame: dict[str, Any], channel: Any) -> None:
        if frame.get("type") == "boom":
            from oxidb.raft.transport import PeerProtocolError

            raise PeerProtocolError("boom")
        self.frames.append((peer, frame))
        if self.reply_with is not None:
            channel.send(self.reply_with)


class Cluster:
    """PeerTransports for nodes 1..n on one MemoryWire."""

    def __init__(self, n: int = 2, auth: Any = KEY, **kwargs: Any) -> None:
        self.clock = MemoryReactorClock()
        self.wire = MemoryWire(self.clock)
        self.handlers = {i: Recorder() for i in range(1, n + 1)}
        self.transports: dict[int, PeerTransport] = {}
        self.addresses = {i: f"10.0.0.{i}:4445" for i in range(1, n + 1)}
        for i in range(1, n + 1):
            self.add(i, auth, **kwargs)

    def add(self, i: int, auth: Any, **kwargs: Any) -> PeerTransport:
        transport = PeerTransport(
            i,
            clock=self.clock,
            authenticator=auth,
            handler=self.handlers.setdefault(i, Recorder()),
            address_of=self.addresses.get,
            rng=random.Random(i),
            connector=self.wire.connector,
            **kwargs,
        )
        transport.startService()
        self.transports[i] = transport
        self.wire.listen(self.addresses.setdefault(i, f"10.0.0.{i}:4445"), transport)
        return transport


def frame(n: int, **extra: Any) -> bytes:
    return orjson.dumps({"type": "test", "n": n, **extra})


def test_frames_reach_the_peer_in_order_over_one_connection() -> None:
    cluster = Cluster(2)
    for n in range(5):
        cluster.transports[1].send(2, frame(n))
    cluster.wire.flush()
    assert cluster.handlers[2].frames == [(1, {"type": "test", "n": n}) for n in range(5)]
    assert cluster.wire.dials == ["10.0.0.2:4445"]
    link = cluster.transports[1].links[2]
    assert link.protocol is not None and link.protocol.authenticated
    # Messages to oneself go nowhere.
    cluster.transports[1].send(1, frame(9))
    assert 1 not in cluster.transports[1].links


def test_a_reply_goes_back_on_the_same_connection() -> None:
    cluster = Cluster(2)
    cluster.handlers[2].reply_with = frame(100)
    cluster.transports[1].send(2, frame(1))
    cluster.wire.flush()
    assert cluster.handlers[1].frames == [(2, {"type": "test", "n": 100})]
    assert cluster.wire.dials == ["10.0.0.2:4445"]  # node 2 did not dial node 1


def test_a_peer_without_a_known_address_is_answered_on_its_own_connection() -> None:
    # A new learner does not know the leader's address yet.
    cluster = Cluster(2)
    del cluster.addresses[1]
    cluster.transports[1].send(2, frame(1))
    cluster.wire.flush()
    cluster.transports[2].send(1, frame(2))
    cluster.wire.flush()
    assert cluster.handlers[1].frames == [(2, {"type": "test", "n": 2})]
    assert cluster.wire.dials == ["10.0.0.2:4445"] and 1 not in cluster.transports[2].links
    # With the address known, an unconnected link gives way to the inbound
    # connection too.
    cluster.addresses[1] = "10.0.0.1:4445"
    cluster.wire.refused.add("10.0.0.1:4445")
    cluster.transports[2].send(1, frame(3))
    cluster.transports[2].send(1, frame(4))
    cluster.wire.flush()
    assert [f["n"] for _, f in cluster.handlers[1].frames] == [2, 4]
    assert len(cluster.transports[2].links[1].outbox) == 1  # the first waited for the link


def test_a_peer_with_the_wrong_key_is_dropped_and_retried_with_backoff() -> None:
    cluster = Cluster(2)
    intruder = cluster.add(3, OTHER_KEY)
    with capturedLogs() as events:
        intruder.send(2, frame(1))
        cluster.wire.flush()
    assert cluster.handlers[2].frames == []
    link = intruder.links[2]
    assert link.protocol is None and link.attempts == 1
    assert not cluster.transports[2].inbound
    assert any("failed to prove the cluster key" in str(e.get("reason", "")) for e in events)
    # The link dials again after its backoff, and fails again.
    cluster.clock.advance(0.25)
    cluster.wire.flush()
    assert cluster.wire.dials.count("10.0.0.2:4445") == 2
    assert cluster.handlers[2].frames == []


def test_backoff_grows_to_its_cap_and_resets_after_a_success() -> None:
    cluster = Cluster(2)
    cluster.wire.refused.add("10.0.0.2:4445")
    cluster.transports[1].send(2, frame(1))
    link = cluster.transports[1].links[2]
    delays = []
    for _ in range(8):
        (call,) = [c for c in cluster.clock.getDelayedCalls() if c.func == link._attempt]
        delays.append(call.getTime() - cluster.clock.seconds())
        cluster.clock.advance(delays[-1])
    bases = [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0]
    assert all(base <= d <= base + 0.1 for d, base in zip(delays, bases, strict=True)), delays
    assert len(cluster.wire.dials) == 9
    # The frame queued meanwhile arrives once the peer accepts.
    cluster.wire.refused.clear()
    cluster.clock.advance(2.1)
    cluster.wire.flush()
    assert cluster.handlers[2].frames == [(1, {"type": "test", "n": 1})]
    assert link.attempts == 0


def test_a_lost_connection_is_redialled_and_queued_frames_delivered() -> None:
    cluster = Cluster(2)
    cluster.transports[1].send(2, frame(1))
    cluster.wire.flush()
    link = cluster.transports[1].links[2]
    assert link.protocol is not None
    link.protocol.transport.loseConnection()
    cluster.wire.flush()
    assert link.protocol is None
    cluster.transports[1].send(2, frame(2))
    cluster.clock.advance(0.2)
    cluster.wire.flush()
    assert [f["n"] for _, f in cluster.handlers[2].frames] == [1, 2]


def test_an_unknown_address_is_retried() -> None:
    cluster = Cluster(2)
    cluster.transports[1].send(7, frame(1))
    assert cluster.wire.dials == []
    cluster.addresses[7] = "not an address"
    cluster.clock.advance(0.2)
    cluster.addresses[7] = "10.0.0.2:4445"  # node 2 answers: not node 7
    with capturedLogs() as events:
        cluster.clock.advance(0.5)
        cluster.wire.flush()
    assert cluster.handlers[2].frames == []
    assert any("wants node 7" in str(e.get("reason", "")) for e in events)


def connect_raw(cluster: Cluster, node: int) -> tuple[PeerProtocol, StringTransport]:
    """A raw byte-level connection to C{node}'s listener."""
    protocol = cluster.transports[node].build_inbound()
    assert protocol is not None
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def raw_hello(frm: int = 1, to: int = 2) -> bytes:
    return encode_frame(orjson.dumps(Initiator(frm, to, KEY, random.Random(frm)).hello()))


def test_garbage_before_authentication_is_dropped() -> None:
    cluster = Cluster(2)
    protocol, transport = connect_raw(cluster, 2)
    protocol.dataReceived(encode_frame(b"\x00\x01garbage"))
    assert protocol.closed and transport.disconnecting
    assert cluster.handlers[2].frames == []


def test_an_oversize_frame_before_authentication_is_dropped_early() -> None:
    cluster = Cluster(2)
    protocol, transport = connect_raw(cluster, 2)
    protocol.dataReceived(struct.pack("<I", MAX_HANDSHAKE_FRAME + 1))
    assert protocol.closed and transport.disconnecting


def test_a_silent_connection_is_dropped_after_the_handshake_timeout() -> None:
    cluster = Cluster(2)
    protocol, transport = connect_raw(cluster, 2)
    cluster.clock.advance(4.9)
    assert not protocol.closed
    cluster.clock.advance(0.2)
    assert protocol.closed and transport.disconnecting


def authenticated_pair(cluster: Cluster) -> tuple[PeerProtocol, Any]:
    cluster.transports[1].send(2, frame(0))
    cluster.wire.flush()
    (inbound,) = cluster.transports[2].inbound
    return inbound, cluster.wire.pumps[0]


def test_garbage_after_authentication_drops_the_connection() -> None:
    cluster = Cluster(2)
    for bad in (b"not json", b"[1,2]", orjson.dumps({"type": "boom"})):
        inbound, _ = authenticated_pair(cluster)
        with capturedLogs():
            inbound.dataReceived(encode_frame(bad))
        assert inbound.closed, bad
        cluster.wire.flush()
        cluster.clock.advance(0.3)


def test_an_oversize_frame_after_authentication_drops_the_connection() -> None:
    cluster = Cluster(2)
    inbound, _ = authenticated_pair(cluster)
    # The prefix of a 16 MiB frame is fine (its payload would follow)...
    inbound.dataReceived(struct.pack("<I", MAX_FRAME))
    assert not inbound.closed
    # ...one byte more is refused as soon as its length prefix arrives.
    cluster = Cluster(2)
    inbound, _ = authenticated_pair(cluster)
    with capturedLogs():
        inbound.dataReceived(struct.pack("<I", MAX_FRAME + 1))
    assert inbound.closed
    # The sender never writes an oversize frame.
    with capturedLogs() as events:
        cluster.transports[1].send(2, b"x" * (MAX_FRAME + 1))
    assert any("over the frame limit" in e["log_format"] for e in events)


def test_frames_pipelined_before_the_welcome_are_refused() -> None:
    cluster = Cluster(2)
    protocol, transport = connect_raw(cluster, 2)
    initiator = Initiator(1, 2, KEY, random.Random(1))
    protocol.dataReceived(encode_frame(orjson.dumps(initiator.hello())))
    challenge = orjson.loads(FrameDecoder().feed(transport.value())[0])
    [proof] = initiator.frame_received(challenge)
    protocol.dataReceived(encode_frame(orjson.dumps(proof)) + encode_frame(frame(1)))
    assert protocol.closed
    assert cluster.handlers[2].frames == []


def test_a_slow_peer_does_not_hold_up_the_others() -> None:
    cluster = Cluster(3, queue_messages=10)
    sender = cluster.transports[1]
    sender.send(2, frame(0))
    sender.send(3, frame(0))
    cluster.wire.flush()
    # Node 2 stops reading: its connection stops taking data.
    slow = sender.links[2].protocol
    assert slow is not None
    slow.pauseProducing()
    for n in range(1, 101):
        sender.send(2, frame(n))
        sender.send(3, frame(n))
    cluster.wire.flush()
    assert [f["n"] for _, f in cluster.handlers[3].frames] == list(range(101))
    # Node 2's queue stayed bounded, keeping the newest frames.
    link = sender.links[2]
    assert len(link.outbox) == 10 and link.outbox.dropped == 90
    slow.resumeProducing()
    cluster.wire.flush()
    assert [f["n"] for _, f in cluster.handlers[2].frames] == [0] + list(range(91, 101))


def test_send_queue_bounds_bytes_and_keeps_one_frame() -> None:
    queue = SendQueue(max_messages=100, max_bytes=10)
    queue.push(b"12345")
    queue.push(b"67890")
    queue.push(b"abc")
    assert len(queue) == 2 and queue.size == 8 and queue.dropped == 1
    queue.push(b"a frame larger than the whole limit")
    assert len(queue) == 1 and queue.dropped == 3
    assert queue.pop() == b"a frame larger than the whole limit" and queue.size == 0


def test_retain_closes_links_to_removed_peers() -> None:
    cluster = Cluster(3)
    cluster.transports[1].send(2, frame(1))
    cluster.transports[1].send(3, frame(1))
    cluster.wire.flush()
    cluster.transports[1].retain({3})
    cluster.wire.flush()
    assert set(cluster.transports[1].links) == {3}
    assert len(cluster.transports[2].inbound) == 0
    cluster.clock.advance(5)
    cluster.wire.flush()
    assert cluster.wire.dials.count("10.0.0.2:4445") == 1


def test_stopping_closes_everything() -> None:
    cluster = Cluster(2)
    cluster.transports[1].send(2, frame(1))
    cluster.wire.flush()
    cluster.transports[1].stopService()
    cluster.wire.flush()
    assert not cluster.transports[2].inbound and not cluster.transports[1].links
    cluster.transports[1].send(2, frame(2))  # not running: dropped
    assert not cluster.transports[1].links
    assert not cluster.clock.getDelayedCalls()


# --- inbound slots and the handshake deadline -----------------------------------------


def inbound_from(transport: PeerTransport, host: str, port: int) -> tuple[PeerProtocol | None, StringTransport]:
    """An inbound connection as the listening port builds it (with the source address)."""
    protocol = transport.build_inbound(IPv4Address("TCP", host, port))
    string = StringTransport(peerAddress=IPv4Address("TCP", host, port))
    if protocol is not None:
        protocol.makeConnection(string)
    return protocol, string


def test_one_address_cannot_take_every_inbound_slot() -> None:
    cluster = Cluster(2, inbound_per_address=3)
    node = cluster.transports[2]
    held = [inbound_from(node, "192.0.2.7", 1000 + i) for i in range(3)]
    assert all(p is not None for p, _ in held)
    with capturedLogs() as events:
        refused, _ = inbound_from(node, "192.0.2.7", 2000)
    assert refused is None
    assert any("OXIDB_RAFT_INBOUND_PER_ADDRESS" in e["log_format"] for e in events)
    # Other addresses, and real peers, still get in.
    other, _ = inbound_from(node, "192.0.2.8", 1000)
    assert other is not None
    cluster.transports[1].send(2, frame(1))
    cluster.wire.flush()
    assert cluster.handlers[2].frames == [(1, {"type": "test", "n": 1})]
    # A slot is given back when its connection goes (here: the deadline).
    first, first_transport = held[0]
    assert first is not None
    first.connectionLost()
    assert node.inbound_by_address["192.0.2.7"] == 2
    again, _ = inbound_from(node, "192.0.2.7", 3000)
    assert again is not None and node.inbound_by_address["192.0.2.7"] == 3


def test_the_handshake_deadline_is_a_setting() -> None:
    cluster = Cluster(2, handshake_timeout=2.0)
    protocol, transport = inbound_from(cluster.transports[2], "192.0.2.7", 1000)
    assert protocol is not None
    with capturedLogs():
        cluster.clock.advance(1.9)
        assert not protocol.closed
        cluster.clock.advance(0.2)
    assert protocol.closed and transport.disconnecting
    # Connections that finish the handshake in time are not touched.
    cluster.transports[1].send(2, frame(1))
    cluster.wire.flush()
    cluster.clock.advance(10)
    cluster.wire.flush()
    link = cluster.transports[1].links[2]
    assert link.protocol is not None and link.protocol.authenticated and not link.protocol.closed


# --- the link's machine: stopping at each stage ---------------------------------------


def test_stopping_a_link_while_it_waits_to_redial() -> None:
    cluster = Cluster(2)
    cluster.wire.refused.add("10.0.0.2:4445")
    cluster.transports[1].send(2, frame(1))
    link = cluster.transports[1].links[2]
    assert [c for c in cluster.clock.getDelayedCalls() if c.func == link._attempt]
    cluster.transports[1].retain(set())
    assert not [c for c in cluster.clock.getDelayedCalls() if c.func == link._attempt]
    assert len(link.outbox) == 0
    cluster.wire.refused.clear()
    cluster.clock.advance(10)
    cluster.wire.flush()
    assert cluster.wire.dials == ["10.0.0.2:4445"]


def test_stopping_a_link_during_its_handshake_closes_the_connection() -> None:
    cluster = Cluster(2)
    cluster.transports[1].send(2, frame(1))  # dialled; the handshake has not run
    link = cluster.transports[1].links[2]
    assert link.protocol is None
    cluster.transports[1].retain(set())
    cluster.wire.flush()
    assert link.protocol is None and cluster.handlers[2].frames == []
    assert not cluster.transports[2].inbound
    cluster.clock.advance(10)
    cluster.wire.flush()
    assert cluster.wire.dials == ["10.0.0.2:4445"]


def test_stopping_a_connected_link_does_not_redial() -> None:
    cluster = Cluster(2)
    cluster.transports[1].send(2, frame(1))
    cluster.wire.flush()
    link = cluster.transports[1].links[2]
    assert link.protocol is not None
    cluster.transports[1].retain(set())
    cluster.wire.flush()
    assert link.protocol is None and not cluster.transports[2].inbound
    cluster.clock.advance(10)
    cluster.wire.flush()
    assert cluster.wire.dials == ["10.0.0.2:4445"]


def test_a_connector_that_fails_after_building_its_protocol_is_retried() -> None:
    from twisted.internet.defer import fail

    cluster = Cluster(2)
    wire_connector = cluster.wire.connector

    def flaky(host: str, port: int, factory: Any) -> Any:
        wire_connector(host, port, factory)
        return fail(ConnectionRefusedError("gave up"))

    cluster.transports[1].connector = flaky
    cluster.transports[1].send(2, frame(1))
    link = cluster.transports[1].links[2]
    cluster.wire.flush()
    assert link.protocol is None and link.attempts == 1
    cluster.transports[1].connector = wire_connector
    cluster.clock.advance(0.25)
    cluster.wire.flush()
    assert link.protocol is not None and link.attempts == 0
    assert cluster.handlers[2].frames == [(1, {"type": "test", "n": 1})]
