"""
The sans-IO SCRAM-SHA-256 server (oxidb.auth.scram): RFC 7677 vectors, a
real client round trip, unknown users, and malformed or out-of-order input.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scramp import ScramClient

from oxidb.auth.scram import MAX_MESSAGE_LENGTH, ScramExchange, ScramVerifier, start_exchange
from oxidb.errors import AuthenticationFailedError, ScramProtocolError

# RFC 7677 section 3 (server.md 4.6, reliability.md 3.1).
SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
CLIENT_FIRST = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
SERVER_NONCE = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
COMBINED = "rOprNGfwEbeRWgbNEkqO" + SERVER_NONCE
SERVER_FIRST = f"r={COMBINED},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
CLIENT_FINAL = f"c=biws,r={COMBINED},p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
SERVER_FINAL = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="

SECRET = b"s" * 32
RFC_VERIFIER = ScramVerifier.derive("pencil", SALT, 4096)


def lookup(username: str) -> ScramVerifier | None:
    return RFC_VERIFIER if username == "user" else None


def mock(username: str) -> ScramVerifier:
    return ScramVerifier.mock(SECRET, username, 4096)


def start(client_first: object, nonce: str = SERVER_NONCE) -> ScramExchange:
    return start_exchange(client_first, lookup, mock, nonce)


def test_rfc7677_verifier() -> None:
    salted = hashlib.pbkdf2_hmac("sha256", b"pencil", SALT, 4096)
    assert salted.hex() == "c4a49510323ab4f952cac1fa99441939e78ea74d6be81ddf7096e87513dc615d"
    assert RFC_VERIFIER.to_fields() == {
        "scram_salt": "W22ZaJ0SNY7soEsUEjb6gQ==",
        "scram_iter_count": 4096,
        "scram_stored_key": "WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=",
        "scram_server_key": "wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=",
    }


def test_rfc7677_exchange() -> None:
    exchange = start(CLIENT_FIRST)
    assert exchange.server_first == SERVER_FIRST
    assert exchange.username == "user" and exchange.known
    assert exchange.finish(CLIENT_FINAL) == SERVER_FINAL
    assert exchange.server_final == SERVER_FINAL


def test_exchange_finishes_only_once() -> None:
    exchange = start(CLIENT_FIRST)
    exchange.finish(CLIENT_FINAL)
    with pytest.raises(ScramProtocolError, match="already finished"):
        exchange.finish(CLIENT_FINAL)


def test_verifier_fields_round_trip() -> None:
    assert ScramVerifier.from_fields(RFC_VERIFIER.to_fields()) == RFC_VERIFIER


@pytest.mark.parametrize(
    "change",
    [
        {"scram_salt": None},
        {"scram_iter_count": None},
        {"scram_stored_key": None},
        {"scram_server_key": None},
        {"scram_iter_count": 100},
        {"scram_iter_count": "4096"},
        {"scram_stored_key": "not base64!"},
        {"scram_server_key": base64.b64encode(b"short").decode()},
    ],
)
def test_partial_or_bad_verifier_is_none(change: dict[str, object]) -> None:
    fields = {**RFC_VERIFIER.to_fields(), **change}
    fields = {k: v for k, v in fields.items() if v is not None}
    assert ScramVerifier.from_fields(fields) is None


@settings(max_examples=15, deadline=None)
@given(password=st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=20))
def test_round_trip_with_a_real_client(password: str) -> None:
    rng = random.Random(password)
    verifier = ScramVerifier.derive(password, rng.randbytes(16), 4096)
    client = ScramClient(["SCRAM-SHA-256"], "alice", password)
    exchange = start_exchange(client.get_client_first(), {"alice": verifier}.get, mock, "serverNonce123")
    client.set_server_first(exchange.server_first)
    server_final = exchange.finish(client.get_client_final())
    client.set_server_final(server_final)  # checks the server signature


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


def test_gs2_header_y_is_accepted() -> None:
    """RFC 5802 by hand: with C{y,,} the AuthMessage carries C{c=eSws}."""
    exchange = start("y,,n=user,r=rOprNGfwEbeRWgbNEkqO")
    auth_message = f"n=user,r=rOprNGfwEbeRWgbNEkqO,{SERVER_FIRST},c=eSws,r={COMBINED}".encode()
    salted = hashlib.pbkdf2_hmac("sha256", b"pencil", SALT, 4096)
    client_key = _hmac(salted, b"Client Key")
    signature = _hmac(hashlib.sha256(client_key).digest(), auth_message)
    proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, signature, strict=True))).decode()
    server_final = exchange.finish(f"c=eSws,r={COMBINED},p={proof}")
    expected = base64.b64encode(_hmac(_hmac(salted, b"Server Key"), auth_message)).decode()
    assert server_final == "v=" + expected


def test_escaped_username_is_unescaped() -> None:
    verifier = RFC_VERIFIER
    seen: list[str] = []

    def record(name: str) -> ScramVerifier:
        seen.append(name)
        return verifier

    start_exchange("n,,n=a=2Cb=3Dc,r=abc", record, mock, "xyz")
    assert seen == ["a,b=c"]


# --- unknown users --------------------------------------------------------------


def test_unknown_user_gets_stable_fake_salt() -> None:
    first = start("n,,n=nobody,r=abc", "n1")
    again = start("n,,n=nobody,r=def", "n2")
    other = start("n,,n=somebody,r=abc", "n3")
    salt = first.server_first.split(",")[1]
    assert salt == again.server_first.split(",")[1]
    assert salt != other.server_first.split(",")[1]
    assert len(base64.b64decode(salt[2:])) == 16
    assert first.server_first.endswith(",i=4096")
    assert not first.known


def test_unknown_user_fails_like_a_wrong_password() -> None:
    """Same step, same error, same code path (the proof check)."""
    # A client that guesses a password for an unknown user...
    unknown = start("n,,n=nobody,r=rOprNGfwEbeRWgbNEkqO")
    client = ScramClient(["SCRAM-SHA-256"], "nobody", "pencil", c_nonce="rOprNGfwEbeRWgbNEkqO")
    client.get_client_first()
    client.set_server_first(unknown.server_first)
    with pytest.raises(AuthenticationFailedError) as unknown_error:
        unknown.finish(client.get_client_final())
    # ... and one with a wrong password for a real user.
    wrong = start(CLIENT_FIRST)
    client = ScramClient(["SCRAM-SHA-256"], "user", "pencil2", c_nonce="rOprNGfwEbeRWgbNEkqO")
    client.get_client_first()
    client.set_server_first(wrong.server_first)
    with pytest.raises(AuthenticationFailedError) as wrong_error:
        wrong.finish(client.get_client_final())
    assert str(unknown_error.value) == str(wrong_error.value) == "authentication failed"


def test_mock_verifier_depends_on_the_secret() -> None:
    assert ScramVerifier.mock(b"a" * 32, "x", 4096) != ScramVerifier.mock(b"b" * 32, "x", 4096)


# --- bad input ------------------------------------------------------------------


@pytest.mark.parametrize("payload", ["", None, 42, "p=tls-unique,,n=user,r=abc", "n,a=admin,n=user,r=abc", "bogus"])
def test_client_first_needs_a_plain_gs2_header(payload: object) -> None:
    with pytest.raises(ScramProtocolError) as e:
        start(payload)
    assert str(e.value) == "invalid client-first: must start with 'n,,' or 'y,,'"


@pytest.mark.parametrize(
    "payload",
    [
        "n,,n=user",  # no nonce
        "n,,r=abc",  # no user
        "n,,n=,r=abc",  # empty user
        "n,,n=user,r=a,b",  # junk attribute
        "n,,m=ext,n=user,r=abc",  # mandatory extension
        "n,,n=us=er,r=abc",  # bad escape
        "n,,n=user,r=ab\x7fc",  # bad nonce character
    ],
)
def test_malformed_client_first(payload: str) -> None:
    with pytest.raises(ScramProtocolError, match=r"^invalid client-first: "):
        start(payload)


def test_huge_messages_are_refused() -> None:
    with pytest.raises(ScramProtocolError, match="longer than"):
        start("n,,n=user,r=" + "a" * MAX_MESSAGE_LENGTH)
    exchange = start(CLIENT_FIRST)
    with pytest.raises(ScramProtocolError, match="longer than"):
        exchange.finish(CLIENT_FINAL + "A" * MAX_MESSAGE_LENGTH)


@pytest.mark.parametrize(
    "final",
    [
        "",
        f"r={COMBINED},p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",  # no c=
        f"c=biws,r={COMBINED}",  # no proof
        f"c=biws,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=,r={COMBINED}",  # wrong order
        f"c=biws,r={COMBINED}x,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",  # wrong nonce
        "c=biws,r=rOprNGfwEbeRWgbNEkqO,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",  # client nonce only
        f"c=eSws,r={COMBINED},p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",  # other GS2 header
        f"c=biws,r={COMBINED},p=!!!!",  # proof not base64
    ],
)
def test_malformed_or_mismatched_client_final(final: str) -> None:
    exchange = start(CLIENT_FIRST)
    with pytest.raises(ScramProtocolError, match=r"^invalid client-final: "):
        exchange.finish(final)
    assert exchange.server_final is None


@pytest.mark.parametrize("proof", ["AAAA", base64.b64encode(b"\0" * 32).decode()])
def test_wrong_proof_fails_authentication(proof: str) -> None:
    exchange = start(CLIENT_FIRST)
    with pytest.raises(AuthenticationFailedError):
        exchange.finish(f"c=biws,r={COMBINED},p={proof}")
