"""
The twisted.cred pieces (oxidb.auth.cred): interfaces, and the two-pass
SCRAM login through a real Portal.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from scramp import ScramClient
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import UsernamePassword
from twisted.cred.portal import IRealm
from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from oxidb.auth.cred import (
    Argon2Checker,
    IOxiUser,
    IScramCredentials,
    LoginFailed,
    OxiRealm,
    OxiUser,
    ScramChecker,
    ScramContinue,
    ScramCredentials,
    build_portal,
)
from oxidb.auth.passwords import derive_secrets
from oxidb.auth.rbac import Role
from oxidb.auth.store import UserRecord, UserStore
from oxidb.errors import AuthenticationFailedError, ScramProtocolError

SECRETS = derive_secrets("pencil", b"1" * 16, b"2" * 16, 4096)


def inline(fn: Any, *args: Any) -> Deferred[Any]:
    return succeed(fn(*args))


@pytest.fixture
def store(tmp_path: Path) -> UserStore:
    store = UserStore(tmp_path)
    store.create(UserRecord("user", Role.READWRITE, SECRETS.password_hash, SECRETS.verifier))
    return store


def outcome(d: Deferred[Any]) -> Any:
    box: list[Any] = []
    d.addBoth(box.append)
    assert box
    return box[0]


def test_interfaces(store: UserStore) -> None:
    assert verifyObject(ICredentialsChecker, ScramChecker(store, b"k" * 32, 4096, random.Random(0)))
    assert verifyObject(ICredentialsChecker, Argon2Checker(store, inline))
    assert verifyObject(IRealm, OxiRealm(store))
    assert verifyObject(IScramCredentials, ScramCredentials("n,,n=user,r=x"))
    assert verifyObject(IOxiUser, OxiUser("user", Role.READ))


def test_two_pass_scram_login(store: UserStore) -> None:
    portal = build_portal(store, b"k" * 32, 4096, random.Random(0), inline)
    client = ScramClient(["SCRAM-SHA-256"], "user", "pencil")
    first = outcome(portal.login(ScramCredentials(client.get_client_first()), None, IOxiUser))
    assert isinstance(first, Failure) and first.check(ScramContinue)
    exchange = first.value.exchange
    # The server's nonce part: base64 of 18 random bytes, 24 characters.
    assert len(exchange.server_first.split(",")[0]) == len("r=") + len(client.c_nonce) + 24
    client.set_server_first(exchange.server_first)
    result = outcome(portal.login(ScramCredentials(client.get_client_final(), exchange), None, IOxiUser))
    interface, avatar, logout = result
    assert interface is IOxiUser and avatar == OxiUser("user", Role.READWRITE)
    client.set_server_final(exchange.server_final)
    logout()


def test_failures_carry_the_wire_error(store: UserStore) -> None:
    portal = build_portal(store, b"k" * 32, 4096, random.Random(0), inline)
    bad = outcome(portal.login(ScramCredentials("garbage"), None, IOxiUser))
    assert bad.check(LoginFailed) and isinstance(bad.value.error, ScramProtocolError)
    wrong = outcome(portal.login(UsernamePassword(b"user", b"nope"), None, IOxiUser))
    assert wrong.check(LoginFailed) and isinstance(wrong.value.error, AuthenticationFailedError)
    right = outcome(portal.login(UsernamePassword(b"user", b"pencil"), None, IOxiUser))
    assert right[1] == OxiUser("user", Role.READWRITE)


def test_realm_only_gives_oxi_users(store: UserStore) -> None:
    with pytest.raises(NotImplementedError):
        OxiRealm(store).requestAvatar("user", None, IRealm)
