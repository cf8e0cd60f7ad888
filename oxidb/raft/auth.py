"""
The handshake that opens every connection between two Raft peers (sans-IO).

The dialling node (the I{initiator}) and the listening node (the
I{responder}) exchange four JSON frames before anything else::

    initiator -> responder  {"type":"hello","protocol":"oxidb-raft/2","from":I,"to":R,"nonce":Ni,"pake":X}
    responder -> initiator  {"type":"challenge","from":R,"nonce":Nr,"pake":Y,"confirm":Cr}
    initiator -> responder  {"type":"proof","confirm":Ci}
    responder -> initiator  {"type":"welcome"}

With a cluster key, C{X} and C{Y} are the two SPAKE2 messages (the
C{spake2} package: Ed25519 group, C{X} from side A = the initiator, C{Y}
from side B = the responder, identities C{oxidb-raft/2 node <id>}) keyed by
the cluster key. Both sides derive the same secret C{K} only if they hold
the same key. Each side then confirms C{K} with an HMAC-SHA256 over the
transcript C{T} = protocol version, both node ids, both nonces and both
SPAKE2 messages::

    Cr = HMAC(K, "oxidb-raft/2 confirm responder" NUL T)
    Ci = HMAC(K, "oxidb-raft/2 confirm initiator" NUL T)

Why a PAKE and not an HMAC challenge-response (C{oxidb-raft/1}): there,
whichever side proved first gave anyone who connected (or answered a dial)
an C{HMAC(key, known data)} to test key guesses against offline. A SPAKE2
party that does not know the key learns nothing it can test offline: C{Y} is
a uniformly random group element whatever the key, and C{Cr} is keyed by a
secret that an attacker can compute for at most the one key it guessed when
it sent C{X}. Each connection is therefore one online guess, and connections
are limited (per source address, with a deadline) by the transport.

Under mutual TLS the transport has already authenticated the peer
(L{TransportTrust}): the C{pake} fields are empty and C{K} is empty; the
confirmations still bind the transcript. A node with a key and a node
without one never complete a handshake.

Neither side sends anything else before the handshake ends: the initiator
waits for C{welcome}, the responder for a valid C{proof}. A frame that is
out of turn, malformed or wrong raises L{HandshakeError} and the caller drops
the connection. Confirmations are compared in constant time.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import random
import struct
from typing import Any

import attrs
from spake2 import SPAKE2_A, SPAKE2_B, SPAKEError
from zope.interface import Interface, implementer

PROTOCOL = "oxidb-raft/2"
NONCE_BYTES = 32
#: Largest frame accepted before the handshake has finished.
MAX_HANDSHAKE_FRAME = 4096
#: A SPAKE2 message: one side byte and a 32-byte Ed25519 element.
PAKE_MESSAGE_BYTES = 33

_U64 = 2**64
INITIATOR = "initiator"
RESPONDER = "responder"


class HandshakeError(Exception):
    """The peer did not authenticate (or broke the handshake protocol)."""


class IKeyExchangeSide(Interface):
    """One side of one handshake's key exchange."""

    def outbound() -> bytes:
        """This side's message for the peer (empty when none is needed)."""

    def finish(inbound: bytes) -> bytes:
        """The shared secret given the peer's message; raises L{HandshakeError}."""


class IPeerAuthenticator(Interface):
    """How a node proves itself to a peer and checks the peer's proof."""

    def begin(side: str, initiator: int, responder: int, rng: random.Random) -> IKeyExchangeSide:
        """Start the key exchange of one handshake as C{side} (initiator or responder)."""


def _identity(node: int) -> bytes:
    return f"{PROTOCOL} node {node}".encode("ascii")


@implementer(IKeyExchangeSide)
class _SpakeSide:
    def __init__(self, key: bytes, side: str, initiator: int, responder: int, rng: random.Random) -> None:
        kind = SPAKE2_A if side == INITIATOR else SPAKE2_B
        self._spake = kind(key, idA=_identity(initiator), idB=_identity(responder), entropy_f=rng.randbytes)
        self._message: bytes = self._spake.start()

    def outbound(self) -> bytes:
        return self._message

    def finish(self, inbound: bytes) -> bytes:
        if len(inbound) != PAKE_MESSAGE_BYTES:
            raise HandshakeError(f"the key exchange message must be {PAKE_MESSAGE_BYTES} bytes")
        try:
            secret: bytes = self._spake.finish(inbound)
        except (SPAKEError, ValueError, AssertionError) as e:
            raise HandshakeError(f"invalid key exchange message ({type(e).__name__})") from None
        return secret


@implementer(IPeerAuthenticator)
@attrs.frozen(repr=False)
class ClusterKeyAuthenticator:
    """SPAKE2 keyed by the shared cluster key (see the module docstring)."""

    key: bytes

    def __repr__(self) -> str:
        return "ClusterKeyAuthenticator(<key>)"

    def begin(self, side: str, initiator: int, responder: int, rng: random.Random) -> IKeyExchangeSide:
        return _SpakeSide(self.key, side, initiator, responder, rng)


@implementer(IKeyExchangeSide)
class _NoExchange:
    def outbound(self) -> bytes:
        return b""

    def finish(self, inbound: bytes) -> bytes:
        if inbound:
            raise HandshakeError("the peer uses a cluster key; this node uses mutual TLS")
        return b""


@implementer(IPeerAuthenticator)
@attrs.frozen
class TransportTrust:
    """
    No key exchange: the transport authenticates peers (mutual TLS). Only
    valid with mutual TLS; cluster settings never pick it otherwise.
    """

    def begin(self, side: str, initiator: int, responder: int, rng: random.Random) -> IKeyExchangeSide:
        return _NoExchange()


def transcript(
    initiator: int, responder: int, initiator_nonce: bytes, responder_nonce: bytes, x: bytes, y: bytes
) -> bytes:
    """What the confirmations cover (nonces have a fixed length; messages are length-prefixed)."""
    return b"".join(
        [
            PROTOCOL.encode("ascii"),
            b"\0",
            struct.pack(">QQ", initiator, responder),
            initiator_nonce,
            responder_nonce,
            struct.pack(">H", len(x)),
            x,
            struct.pack(">H", len(y)),
            y,
        ]
    )


def confirmation(secret: bytes, side: str, transcript_bytes: bytes) -> str:
    """The key confirmation C{side} sends (base64 HMAC-SHA256 under the exchanged secret)."""
    label = f"{PROTOCOL} confirm {side}".encode("ascii")
    digest = hmac.new(secret, label + b"\0" + transcript_bytes, hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def _confirmed(secret: bytes, side: str, transcript_bytes: bytes, given: str) -> bool:
    expected = confirmation(secret, side, transcript_bytes).encode("ascii")
    return hmac.compare_digest(expected, given.encode("utf-8", "replace"))


class _Step(enum.Enum):
    START = "start"
    HELLO_SENT = "hello sent"
    PROOF_SENT = "proof sent"
    CHALLENGE_SENT = "challenge sent"
    DONE = "done"
    FAILED = "failed"


class Initiator:
    """
    The dialling side. Call L{hello} once, then feed every frame to
    L{frame_received} until L{done}.

    @param node_id: this node.
    @param peer_id: the node this connection is meant to reach.
    """

    def __init__(self, node_id: int, peer_id: int, authenticator: IPeerAuthenticator, rng: random.Random) -> None:
        self.node_id = node_id
        self.peer_id = peer_id
        self._auth = authenticator
        self._rng = rng
        self._nonce = rng.randbytes(NONCE_BYTES)
        self._exchange: IKeyExchangeSide | None = None
        self._step = _Step.START

    @property
    def done(self) -> bool:
        return self._step is _Step.DONE

    def hello(self) -> dict[str, Any]:
        if self._step is not _Step.START:
            raise RuntimeError("hello() is called once, first")
        self._step = _Step.HELLO_SENT
        self._exchange = self._auth.begin(INITIATOR, self.node_id, self.peer_id, self._rng)
        return {
            "type": "hello",
            "protocol": PROTOCOL,
            "from": self.node_id,
            "to": self.peer_id,
            "nonce": _b64(self._nonce),
            "pake": _b64(self._exchange.outbound()),
        }

    def frame_received(self, frame: Any) -> list[dict[str, Any]]:
        """The frames to send in answer; raises L{HandshakeError}."""
        step, self._step = self._step, _Step.FAILED
        if step is _Step.HELLO_SENT:
            assert self._exchange is not None
            obj = _expect(frame, "challenge")
            responder = _node(obj, "from")
            if responder != self.peer_id:
                raise HandshakeError(f"the peer is node {responder}, not node {self.peer_id}")
            nonce = _nonce(obj)
            theirs = _pake(obj)
            secret = self._exchange.finish(theirs)
            mine = self._exchange.outbound()
            t = transcript(self.node_id, responder, self._nonce, nonce, mine, theirs)
            if not _confirmed(secret, RESPONDER, t, _confirm(obj)):
                raise HandshakeError(f"node {responder} failed to prove the cluster key")
            self._step = _Step.PROOF_SENT
            return [{"type": "proof", "confirm": confirmation(secret, INITIATOR, t)}]
        if step is _Step.PROOF_SENT:
            _expect(frame, "welcome")
            self._step = _Step.DONE
            return []
        raise HandshakeError(f"unexpected frame in handshake step {step.value!r}")


class Responder:
    """
    The listening side: feed every frame to L{frame_received} until L{done};
    L{peer_id} is then the authenticated peer.
    """

    def __init__(self, node_id: int, authenticator: IPeerAuthenticator, rng: random.Random) -> None:
        self.node_id = node_id
        self._auth = authenticator
        self._rng = rng
        self._nonce = rng.randbytes(NONCE_BYTES)
        self._step = _Step.START
        self._secret = b""
        self._transcript = b""
        self.peer_id: int | None = None

    @property
    def done(self) -> bool:
        return self._step is _Step.DONE

    def frame_received(self, frame: Any) -> list[dict[str, Any]]:
        """The frames to send in answer; raises L{HandshakeError}."""
        step, self._step = self._step, _Step.FAILED
        if step is _Step.START:
            obj = _expect(frame, "hello")
            if obj.get("protocol") != PROTOCOL:
                raise HandshakeError(f"unsupported peer protocol {obj.get('protocol')!r}; this node speaks {PROTOCOL}")
            initiator, target = _node(obj, "from"), _node(obj, "to")
            if target != self.node_id:
                raise HandshakeError(f"the peer wants node {target}; this is node {self.node_id}")
            if initiator == self.node_id:
                raise HandshakeError("a node does not connect to itself")
            peer_nonce = _nonce(obj)
            theirs = _pake(obj)
            exchange = self._auth.begin(RESPONDER, initiator, self.node_id, self._rng)
            self._secret = exchange.finish(theirs)
            mine = exchange.outbound()
            self._transcript = transcript(initiator, self.node_id, peer_nonce, self._nonce, theirs, mine)
            self.peer_id = initiator
            self._step = _Step.CHALLENGE_SENT
            return [
                {
                    "type": "challenge",
                    "from": self.node_id,
                    "nonce": _b64(self._nonce),
                    "pake": _b64(mine),
                    "confirm": confirmation(self._secret, RESPONDER, self._transcript),
                }
            ]
        if step is _Step.CHALLENGE_SENT:
            obj = _expect(frame, "proof")
            if not _confirmed(self._secret, INITIATOR, self._transcript, _confirm(obj)):
                raise HandshakeError(f"node {self.peer_id} failed to prove the cluster key")
            self._step = _Step.DONE
            return [{"type": "welcome"}]
        raise HandshakeError(f"unexpected frame in handshake step {step.value!r}")


# --- field checks -----------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _expect(frame: Any, kind: str) -> dict[str, Any]:
    if not isinstance(frame, dict) or frame.get("type") != kind:
        got = frame.get("type") if isinstance(frame, dict) else type(frame).__name__
        raise HandshakeError(f"expected a {kind!r} frame, got {got!r}")
    return frame


def _node(obj: dict[str, Any], key: str) -> int:
    value = obj.get(key)
    if type(value) is not int or not 0 <= value < _U64:
        raise HandshakeError(f"{key!r} must be a node id")
    return value


def _unb64(value: Any) -> bytes | None:
    if not isinstance(value, str) or len(value) > 256:
        return None
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error:
        return None


def _nonce(obj: dict[str, Any]) -> bytes:
    nonce = _unb64(obj.get("nonce"))
    if nonce is None or len(nonce) != NONCE_BYTES:
        raise HandshakeError(f"the nonce must be {NONCE_BYTES} bytes of base64")
    return nonce


def _pake(obj: dict[str, Any]) -> bytes:
    message = _unb64(obj.get("pake"))
    if message is None:
        raise HandshakeError("the key exchange message must be base64")
    return message


def _confirm(obj: dict[str, Any]) -> str:
    value = obj.get("confirm")
    if not isinstance(value, str) or len(value) > 128:
        raise HandshakeError("the key confirmation must be a short string")
    return value
