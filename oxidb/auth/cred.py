"""
twisted.cred around the logins: credentials for the SCRAM exchange, checkers
holding the verifiers and hashes, and a realm whose avatar carries the user
and role.

SCRAM takes two round trips, so it logs in through the portal twice, as
C{conch}'s public-key login does: the first pass (the client-first message)
always errs back with L{ScramContinue}, which carries the exchange to keep in
the session and the server-first message to send; the second pass (the
client-final message plus that exchange) yields the avatar or
L{LoginFailed}. Failures carry the wire error to answer with.
"""

from __future__ import annotations

import base64
import random
from collections.abc import Callable
from typing import Any

import attrs
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import ICredentials, IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import Attribute, Interface, implementer

from oxidb.auth.passwords import HASHER, verify_password
from oxidb.auth.rbac import Role
from oxidb.auth.scram import ScramExchange, ScramVerifier, start_exchange
from oxidb.auth.store import UserStore
from oxidb.errors import AuthenticationFailedError, LoginBusyError, OxiError

#: Runs a blocking function off the reactor (the executor's C{read}).
RunBlocking = Callable[..., "Deferred[Any]"]


class IScramCredentials(ICredentials):
    """One client message of a SCRAM-SHA-256 exchange."""

    message = Attribute("the client's message: client-first, then client-final")
    exchange = Attribute("the ScramExchange begun by the first pass; None on the first pass")


@implementer(IScramCredentials)
@attrs.frozen
class ScramCredentials:
    message: object
    exchange: ScramExchange | None = None


class ScramContinue(UnauthorizedLogin):
    """
    Not a failure: the client-first message was accepted. Send
    C{exchange.server_first} and log in again with the client-final message.
    """

    def __init__(self, exchange: ScramExchange) -> None:
        super().__init__("SCRAM exchange continues")
        self.exchange = exchange


class LoginFailed(UnauthorizedLogin):
    """
    A login failed.

    @ivar error: the wire error: L{AuthenticationFailedError} for wrong
        credentials (unknown user or wrong password alike), or a protocol
        error such as L{oxidb.errors.ScramProtocolError}.
    """

    def __init__(self, error: OxiError) -> None:
        super().__init__(str(error))
        self.error = error


class IOxiUser(Interface):
    """The avatar: a logged-in user."""

    username = Attribute("the user name")
    role = Attribute("the user's L{Role}, captured at login")


@implementer(IOxiUser)
@attrs.frozen
class OxiUser:
    username: str
    role: Role


@implementer(ICredentialsChecker)
@attrs.define(eq=False)
class ScramChecker:
    """
    Checks SCRAM-SHA-256 exchanges against the store's verifiers. Unknown
    users (and users without a verifier) get a mock verifier with a salt that
    is stable per name, and fail at the proof exactly like a wrong password.
    Cheap enough (HMACs) to run on the reactor.
    """

    credentialInterfaces = (IScramCredentials,)

    store: UserStore
    secret: bytes
    iterations: int
    rng: random.Random

    def _mock(self, username: str) -> ScramVerifier:
        return ScramVerifier.mock(self.secret, username, self.iterations)

    def _server_nonce(self) -> str:
        return base64.b64encode(self.rng.randbytes(18)).decode("ascii")

    def requestAvatarId(self, credentials: IScramCredentials) -> Deferred[Any]:
        exchange = credentials.exchange
        try:
            if exchange is None:
                started = start_exchange(credentials.message, self.store.verifier, self._mock, self._server_nonce())
                return fail(ScramContinue(started))
            exchange.finish(credentials.message)
        except OxiError as e:
            return fail(LoginFailed(e))
        return succeed(exchange.username)


@implementer(ICredentialsChecker)
@attrs.define(eq=False)
class Argon2Checker:
    """
    Checks user name and password (C{auth_simple}) against the Argon2id
    hashes, on the thread pool. An unknown user costs the same: the password
    is verified against a dummy hash and the login fails.

    At most C{max_running} checks run at once (C{OXIDB_AUTH_SIMPLE_CONCURRENCY}),
    so parallel attempts can never hold more worker threads than that; an
    attempt beyond it fails at once with L{LoginBusyError}, without hashing.
    """

    credentialInterfaces = (IUsernamePassword,)

    store: UserStore
    run_blocking: RunBlocking
    max_running: int = 2
    #: Checks handed to the pool and not finished yet.
    running: int = attrs.field(init=False, default=0)
    _dummy_hash: str | None = attrs.field(init=False, default=None)

    def _verify(self, password_hash: str | None, password: bytes) -> bool:
        if password_hash is not None:
            return verify_password(password_hash, password)
        if self._dummy_hash is None:
            self._dummy_hash = HASHER.hash(b"no such user")
        verify_password(self._dummy_hash, password)
        return False

    def requestAvatarId(self, credentials: IUsernamePassword) -> Deferred[Any]:
        if self.running >= self.max_running:
            return fail(LoginFailed(LoginBusyError()))
        username = credentials.username.decode("utf-8", "surrogatepass")
        record = self.store.get(username)
        self.running += 1
        d = self.run_blocking(self._verify, None if record is None else record.password_hash, credentials.password)

        def release(result: Any) -> Any:
            self.running -= 1
            return result

        def checked(ok: bool) -> str:
            if not ok:
                raise LoginFailed(AuthenticationFailedError())
            return username

        return d.addBoth(release).addCallback(checked)


@implementer(IRealm)
@attrs.define(eq=False)
class OxiRealm:
    """Gives an L{OxiUser} with the user's current role."""

    store: UserStore

    def requestAvatar(self, avatarId: Any, mind: object, *interfaces: Any) -> tuple[Any, OxiUser, Callable[[], None]]:
        if IOxiUser not in interfaces:
            raise NotImplementedError("OxiRealm only provides IOxiUser")
        record = self.store.get(avatarId)
        if record is None:
            # Dropped between the first step and the proof.
            raise LoginFailed(AuthenticationFailedError())
        return IOxiUser, OxiUser(record.username, record.role), lambda: None


def build_portal(
    store: UserStore,
    secret: bytes,
    iterations: int,
    rng: random.Random,
    run_blocking: RunBlocking,
    argon2_concurrency: int = 2,
) -> Portal:
    """The portal with the SCRAM and Argon2 checkers over C{store}."""
    return Portal(
        OxiRealm(store),
        [ScramChecker(store, secret, iterations, rng), Argon2Checker(store, run_blocking, argon2_concurrency)],
    )
