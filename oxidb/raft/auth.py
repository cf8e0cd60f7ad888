"""
The handshake that opens every connection between two Raft peers (sans-IO).

The dialling node (the I{initiator}) and the listening node (the
I{responder}) exchange four JSON frames before anything else::

    initiator -> responder  {"type":"hello","protocol":"oxidb-raft/1","from":I,"to":R,"nonce":Ni}
    responder -> initiator  {"type":"challenge","from":R,"nonce":Nr,"proof":P_r}
    initiator -> responder  {"type":"proof","proof":P_i}
    responder -> initiator  {"type":"welcome"}

C{Ni} and C{Nr} are fresh 32-byte random nonces (base64). With a cluster key
the proofs are C{HMAC-SHA256(key, transcript)} over
C{"oxidb-raft/1" NUL label NUL Ni Nr I R} with the label C{responder} or
C{initiator}: each side proves it knows the key for I{this} pair of nonces,
so a recorded handshake cannot be replayed (the other side's nonce is new)
or reflected (the labels differ), and the key never travels. Proofs are
compared in constant time. Under mutual TLS (or on loopback without a key)
the transport has already decided who may connect and the proofs are empty
strings (L{TransportTrust}).

Neither side sends anything else before the handshake ends: the initiator
waits for C{welcome}, the responder for a valid C{proof}. A frame that is
out of turn, malformed or wrong raises L{HandshakeError} and the caller drops
the connection.
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
from zope.interface import Interface, implementer

PROTOCOL = "oxidb-raft/1"
NONCE_BYTES = 32
#: Largest frame accepted before the handshake has finished.
MAX_HANDSHAKE_FRAME = 4096

_U64 = 2**64


class HandshakeError(Exception):
    """The peer did not authenticate (or broke the handshake protocol)."""


class IPeerAuthenticator(Interface):
    """How a node proves itself to a peer and checks the peer's proof."""

    def prove(transcript: bytes) -> str:
        """The proof for C{transcript} (a string; empty when none is needed)."""

    def verify(transcript: bytes, proof: str) -> bool:
        """Whether C{proof} is the peer's valid proof for C{transcript}."""


@implementer(IPeerAuthenticator)
@attrs.frozen(repr=False)
class ClusterKeyAuthenticator:
    """Proofs are HMAC-SHA256 under the shared cluster key."""

    key: bytes

    def __repr__(self) -> str:
        return "ClusterKeyAuthenticator(<key>)"

    def prove(self, transcript: bytes) -> str:
        digest = hmac.new(self.key, transcript, hashlib.sha256).digest()
        return base64.b64encode(digest).decode("ascii")

    def verify(self, transcript: bytes, proof: str) -> bool:
        return hmac.compare_digest(self.prove(transcript).encode("ascii"), proof.encode("utf-8", "replace"))


@implementer(IPeerAuthenticator)
@attrs.frozen
class TransportTrust:
    """
    No proof: the transport authenticates peers (mutual TLS), or the Raft
    port is on loopback and every local process is trusted.
    """

    def prove(self, transcript: bytes) -> str:
        return ""

    def verify(self, transcript: bytes, proof: str) -> bool:
        return proof == ""


def transcript(label: str, initiator_nonce: bytes, responder_nonce: bytes, initiator: int, responder: int) -> bytes:
    """The bytes a proof covers (nonces have a fixed length)."""
    return b"".join(
        [
            PROTOCOL.encode("ascii"),
            b"\0",
            label.encode("ascii"),
            b"\0",
            initiator_nonce,
            responder_nonce,
            struct.pack(">QQ", initiator, responder),
        ]
    )


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
        self._nonce = rng.randbytes(NONCE_BYTES)
        self._step = _Step.START

    @property
    def done(self) -> bool:
        return self._step is _Step.DONE

    def hello(self) -> dict[str, Any]:
        if self._step is not _Step.START:
            raise RuntimeError("hello() is called once, first")
        self._step = _Step.HELLO_SENT
        return {
            "type": "hello",
            "protocol": PROTOCOL,
            "from": self.node_id,
            "to": self.peer_id,
            "nonce": _b64(self._nonce),
        }

    def frame_received(self, frame: Any) -> list[dict[str, Any]]:
        """The frames to send in answer; raises L{HandshakeError}."""
        step, self._step = self._step, _Step.FAILED
        if step is _Step.HELLO_SENT:
            obj = _expect(frame, "challenge")
            responder = _node(obj, "from")
            if responder != self.peer_id:
                raise HandshakeError(f"the peer is node {responder}, not node {self.peer_id}")
            nonce = _nonce(obj)
            mine = transcript("responder", self._nonce, nonce, self.node_id, responder)
            if not self._auth.verify(mine, _proof(obj)):
                raise HandshakeError(f"node {responder} failed to prove the cluster key")
            proof = self._auth.prove(transcript("initiator", self._nonce, nonce, self.node_id, responder))
            self._step = _Step.PROOF_SENT
            return [{"type": "proof", "proof": proof}]
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
        self._nonce = rng.randbytes(NONCE_BYTES)
        self._step = _Step.START
        self._peer_nonce = b""
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
                raise HandshakeError(f"unsupported peer protocol {obj.get('protocol')!r}")
            initiator, target = _node(obj, "from"), _node(obj, "to")
            if target != self.node_id:
                raise HandshakeError(f"the peer wants node {target}; this is node {self.node_id}")
            if initiator == self.node_id:
                raise HandshakeError("a node does not connect to itself")
            self._peer_nonce = _nonce(obj)
            self.peer_id = initiator
            proof = self._auth.prove(
                transcript("responder", self._peer_nonce, self._nonce, initiator, self.node_id)
            )
            self._step = _Step.CHALLENGE_SENT
            return [{"type": "challenge", "from": self.node_id, "nonce": _b64(self._nonce), "proof": proof}]
        if step is _Step.CHALLENGE_SENT:
            obj = _expect(frame, "proof")
            assert self.peer_id is not None
            theirs = transcript("initiator", self._peer_nonce, self._nonce, self.peer_id, self.node_id)
            if not self._auth.verify(theirs, _proof(obj)):
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


def _nonce(obj: dict[str, Any]) -> bytes:
    value = obj.get("nonce")
    try:
        nonce = base64.b64decode(value, validate=True) if isinstance(value, str) else b""
    except binascii.Error:
        nonce = b""
    if len(nonce) != NONCE_BYTES:
        raise HandshakeError(f"the nonce must be {NONCE_BYTES} bytes of base64")
    return nonce


def _proof(obj: dict[str, Any]) -> str:
    value = obj.get("proof")
    if not isinstance(value, str) or len(value) > 128:
        raise HandshakeError("the proof must be a short string")
    return value
