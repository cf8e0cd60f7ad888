"""
SCRAM-SHA-256 server side (RFC 5802, RFC 7677), sans-IO.

C{scramp} does the message parsing and the cryptography; this module adds
what a server needs around it: verifiers in the stored shape of server.md
4.2, a stable fake verifier for unknown users (so that an unknown user and a
wrong password fail at the same step with the same error), size limits, and
the mapping of C{scramp}'s errors to wire errors.

Differences from upstream, on purpose: usernames are SASLprep'd and unescaped
(C{=2C}, C{=3D}) as the RFC says, messages are parsed strictly, and an
unknown user is never revealed (upstream answers C{user 'x' not found}).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable

import attrs
from scramp import ScramException, ScramMechanism
from scramp.utils import ServerError

from oxidb.errors import AuthenticationFailedError, ScramProtocolError

MECHANISM = ScramMechanism("SCRAM-SHA-256")

#: RFC 7677 asks for at least 4096; C{scramp} refuses more than 10 million.
MIN_ITERATIONS = 4096
MAX_ITERATIONS = 10_000_000
DEFAULT_ITERATIONS = 4096

#: Longest client message accepted. Real ones are well under 300 bytes; the
#: limit keeps a hostile client from making us parse megabytes.
MAX_MESSAGE_LENGTH = 4096

_GS2_HEADERS = ("n,,", "y,,")


@attrs.frozen
class ScramVerifier:
    """
    What the server keeps to check a SCRAM-SHA-256 login: never the password.

    @ivar salt: the per-user salt (16 random bytes).
    @ivar iterations: the PBKDF2 iteration count.
    @ivar stored_key: SHA-256(ClientKey).
    @ivar server_key: HMAC(SaltedPassword, "Server Key").
    """

    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes

    @classmethod
    def derive(cls, password: str, salt: bytes, iterations: int) -> ScramVerifier:
        """
        Derive a verifier from a password (PBKDF2: CPU work, keep it off the
        reactor). The password is SASLprep'd, as a client does.
        """
        salt, stored_key, server_key, iterations = MECHANISM.make_auth_info(
            password, iteration_count=iterations, salt=salt
        )
        return cls(salt, iterations, stored_key, server_key)

    @classmethod
    def mock(cls, secret: bytes, username: str, iterations: int) -> ScramVerifier:
        """
        A verifier for a user that does not exist: the salt is stable per
        username (derived from C{secret}) so that asking twice shows nothing,
        and no proof can match the keys without knowing C{secret}.
        """
        name = username.encode("utf-8", "surrogatepass")
        salt = hmac.new(secret, b"salt\0" + name, hashlib.sha256).digest()[:16]
        stored_key = hmac.new(secret, b"stored\0" + name, hashlib.sha256).digest()
        server_key = hmac.new(secret, b"server\0" + name, hashlib.sha256).digest()
        return cls(salt, iterations, stored_key, server_key)

    def to_fields(self) -> dict[str, object]:
        """The four C{scram_*} fields of a C{users.json} record."""
        return {
            "scram_salt": _b64(self.salt),
            "scram_iter_count": self.iterations,
            "scram_stored_key": _b64(self.stored_key),
            "scram_server_key": _b64(self.server_key),
        }

    @classmethod
    def from_fields(cls, fields: dict[str, object]) -> ScramVerifier | None:
        """
        The verifier stored in a record, or None when the fields are absent,
        partial or unusable (such a user can still use C{auth_simple}).
        """
        salt = _unb64(fields.get("scram_salt"))
        stored_key = _unb64(fields.get("scram_stored_key"))
        server_key = _unb64(fields.get("scram_server_key"))
        iterations = fields.get("scram_iter_count")
        if salt is None or stored_key is None or server_key is None:
            return None
        if type(iterations) is not int or not MIN_ITERATIONS <= iterations <= MAX_ITERATIONS:
            return None
        if len(salt) < 12 or len(stored_key) != 32 or len(server_key) != 32:
            return None
        return cls(salt, iterations, stored_key, server_key)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(value: object) -> bytes | None:
    if not isinstance(value, str):
        return None
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        return None


@attrs.define
class ScramExchange:
    """
    One server conversation, between the client-first and client-final
    messages. Create it with L{start_exchange}; call L{finish} once.

    @ivar username: the (SASLprep'd) user name the client asked for.
    @ivar known: the user exists (False: a mock verifier was used). Never
        shown to the client; the outcome of L{finish} does not depend on it.
    @ivar server_first: the reply to the client-first message.
    @ivar server_final: the C{v=...} reply, set when L{finish} succeeded.
    """

    username: str
    known: bool
    server_first: str
    _server: object = attrs.field(repr=False)
    server_final: str | None = None

    def finish(self, client_final: object) -> str:
        """
        Check the client-final message and return the server-final one.

        @raise AuthenticationFailedError: the proof is wrong (wrong password
            or unknown user; the two are indistinguishable).
        @raise ScramProtocolError: the message is malformed, the nonce or
            channel binding does not match, or the exchange already finished.
        """
        if self.server_final is not None:
            raise ScramProtocolError("SCRAM exchange already finished")
        message = _checked_message(client_final, "client-final")
        server = self._server
        try:
            # scramp's server object, stored as object: scramp has no type hints.
            server.set_client_final(message)  # type: ignore[attr-defined]
            final: str = server.get_server_final()  # type: ignore[attr-defined]
        except ScramException as e:
            if e.server_error is ServerError.INVALID_PROOF:
                raise AuthenticationFailedError() from None
            raise ScramProtocolError(f"invalid client-final: {e.args[0]}") from None
        if not self.known:
            # Unreachable without the server secret; belt and braces.
            raise AuthenticationFailedError()
        self.server_final = final
        return final


def start_exchange(
    client_first: object,
    lookup: Callable[[str], ScramVerifier | None],
    mock: Callable[[str], ScramVerifier],
    server_nonce: str,
) -> ScramExchange:
    """
    Process a client-first message.

    @param lookup: user name -> its verifier, or None if there is no usable one.
    @param mock: user name -> the fake verifier used when C{lookup} has none.
    @param server_nonce: the server's part of the nonce (printable ASCII, no
        comma), fresh for every exchange.
    @raise ScramProtocolError: the message is malformed.
    """
    message = _checked_message(client_first, "client-first")
    if not message.startswith(_GS2_HEADERS):
        raise ScramProtocolError("invalid client-first: must start with 'n,,' or 'y,,'")
    found: list[tuple[str, bool]] = []

    def auth_fn(username: str) -> tuple[bytes, bytes, bytes, int]:
        # The same work for every name: the store lookup and the mock
        # verifier (three HMACs) both run whether or not the user exists, so
        # the first step's timing does not tell unknown users apart.
        verifier = lookup(username)
        fake = mock(username)
        found.append((username, verifier is not None))
        chosen = fake if verifier is None else verifier
        return chosen.salt, chosen.stored_key, chosen.server_key, chosen.iterations

    server = MECHANISM.make_server(auth_fn, s_nonce=server_nonce)
    try:
        server.set_client_first(message)
        server_first = server.get_server_first()
    except ScramException as e:
        raise ScramProtocolError(f"invalid client-first: {e.args[0]}") from None
    username, known = found[0]
    return ScramExchange(username, known, server_first, server)


def _checked_message(message: object, what: str) -> str:
    if not isinstance(message, str):
        message = ""
    if len(message) > MAX_MESSAGE_LENGTH:
        raise ScramProtocolError(f"invalid {what}: longer than {MAX_MESSAGE_LENGTH} characters")
    return message
