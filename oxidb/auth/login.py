"""
The login sequence of one connection as an explicit state machine (automat's
typed builder, in the style of Twisted's C{ClientService}).

With authentication on a connection starts C{anonymous}: pre-login limits
(frame size, queued bytes; L{oxidb.server.protocol}) and a login deadline.
C{authenticate} (SCRAM client-first) moves it to C{scram_started}, holding
the exchange; C{authenticate_continue} consumes the exchange whatever the
outcome; C{auth_simple} checks a password in one step. A success makes the
session C{authenticated} (user and role fixed); once that reply has been
written the connection is C{logged_in} and the pre-login limits are lifted.
The deadline passing first makes it C{expired}: the connection is closed.
Throttling and failure delays are in L{oxidb.auth.throttle}; they hold a
reply back but change no state here.

A login step out of order has no transition and cannot happen: after
login the login commands are unknown (server.md 4.8), a final SCRAM step
without a first one finds no exchange.

Docs: the graph in docs/state-machines/login.dot is generated from this
machine (L{oxidb.machines}).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import attrs
from automat import TypeMachine, TypeMachineBuilder, pep614

from oxidb.auth.rbac import Role
from oxidb.auth.scram import ScramExchange
from oxidb.errors import UnknownCommandError


class SessionFields(Protocol):
    """The fields of L{oxidb.server.session.Session} a login sets."""

    user: str | None
    role: Role | None


def _nothing() -> None:
    pass


@attrs.define
class LoginCore:
    """
    @ivar session: the session whose user and role a login sets.
    @ivar on_logged_in: called once the login's reply has been written.
    @ivar on_expired: called when the deadline passes before a login.
    """

    session: SessionFields
    on_logged_in: Callable[[], None] = _nothing
    on_expired: Callable[[], None] = _nothing


class LoginInputs(Protocol):
    """The steps of a login."""

    def attempt(self, cmd: str) -> None:
        """C{cmd}, a login command, starts (refused once logged in)."""

    def scram_first(self, cmd: str) -> None:
        """C{authenticate} starts: any exchange in progress is dropped."""

    def server_first_sent(self, exchange: ScramExchange) -> None:
        """The SCRAM first step was accepted; the proof is pending."""

    def scram_final(self, cmd: str) -> ScramExchange | None:
        """C{authenticate_continue}: consume the exchange (None if there is none)."""

    def succeeded(self, user: str, role: Role) -> None:
        """The credentials are right: the session logs in."""

    def reply_written(self) -> None:
        """A reply has been written on the connection."""

    def deadline_passed(self) -> None:
        """The login deadline passed."""

    def lost(self) -> None:
        """The connection is gone."""

    def exchange(self) -> ScramExchange | None:
        """The SCRAM exchange in progress, if any."""


def _build() -> TypeMachine[LoginInputs, LoginCore]:
    machine = TypeMachineBuilder(LoginInputs, LoginCore)
    I = LoginInputs  # noqa: E741

    anonymous = machine.state("anonymous")

    def hold(m: LoginInputs, c: LoginCore, exchange: ScramExchange) -> ScramExchange:
        return exchange

    scram_started = machine.state("scram_started", hold)
    authenticated = machine.state("authenticated")
    logged_in = machine.state("logged_in")
    expired = machine.state("expired")
    closed = machine.state("closed")

    # --- before login ------------------------------------------------------------

    anonymous.upon(I.attempt).loop().returns(None)
    anonymous.upon(I.scram_first).loop().returns(None)
    scram_started.upon(I.attempt, nodata=True).loop().returns(None)
    # (A transition to a state without data gets the old state's data.)
    scram_started.upon(I.scram_first).to(anonymous).returns(None)

    @pep614(anonymous.upon(I.server_first_sent).to(scram_started))
    def exchange_started(m: LoginInputs, c: LoginCore, exchange: ScramExchange) -> None:
        pass

    @pep614(scram_started.upon(I.scram_final).to(anonymous))
    def consume(m: LoginInputs, c: LoginCore, exchange: ScramExchange, cmd: str) -> ScramExchange:
        return exchange

    anonymous.upon(I.scram_final).loop().returns(None)

    @pep614(anonymous.upon(I.succeeded).to(authenticated))
    def log_in(m: LoginInputs, c: LoginCore, user: str, role: Role) -> None:
        c.session.user = user
        c.session.role = role

    @pep614(scram_started.upon(I.succeeded).to(authenticated))
    def log_in_dropping_exchange(m: LoginInputs, c: LoginCore, exchange: ScramExchange, user: str, role: Role) -> None:
        log_in(m, c, user, role)

    @pep614(scram_started.upon(I.exchange).loop())
    def current(m: LoginInputs, c: LoginCore, exchange: ScramExchange) -> ScramExchange:
        return exchange

    for state in (anonymous, authenticated, logged_in, expired, closed):
        state.upon(I.exchange).loop().returns(None)

    @pep614(anonymous.upon(I.deadline_passed).to(expired))
    def expire(m: LoginInputs, c: LoginCore) -> None:
        c.on_expired()

    @pep614(scram_started.upon(I.deadline_passed).to(expired))
    def expire_dropping_exchange(m: LoginInputs, c: LoginCore, exchange: ScramExchange) -> None:
        c.on_expired()

    for state in (authenticated, logged_in, expired, closed):
        state.upon(I.deadline_passed).loop().returns(None)

    # --- the login's reply and after ---------------------------------------------------

    @pep614(authenticated.upon(I.reply_written).to(logged_in))
    def lift_limits(m: LoginInputs, c: LoginCore) -> None:
        c.on_logged_in()

    anonymous.upon(I.reply_written).loop().returns(None)
    scram_started.upon(I.reply_written, nodata=True).loop().returns(None)
    logged_in.upon(I.reply_written).loop().returns(None)
    expired.upon(I.reply_written).loop().returns(None)
    closed.upon(I.reply_written).loop().returns(None)

    @pep614(authenticated.upon(I.attempt).loop())
    @pep614(logged_in.upon(I.attempt).loop())
    @pep614(authenticated.upon(I.scram_first).loop())
    @pep614(logged_in.upon(I.scram_first).loop())
    def unknown_after_login(m: LoginInputs, c: LoginCore, cmd: str) -> None:
        """There is no re-login: once logged in these are unknown (4.8)."""
        raise UnknownCommandError(cmd)

    @pep614(authenticated.upon(I.scram_final).loop())
    @pep614(logged_in.upon(I.scram_final).loop())
    def unknown_final_after_login(m: LoginInputs, c: LoginCore, cmd: str) -> ScramExchange | None:
        raise UnknownCommandError(cmd)

    # A connection closed during a step: the step's end changes nothing.
    for state in (expired, closed):
        state.upon(I.attempt).loop().returns(None)
        state.upon(I.scram_first).loop().returns(None)
        state.upon(I.server_first_sent).loop().returns(None)
        state.upon(I.scram_final).loop().returns(None)
        state.upon(I.succeeded).loop().returns(None)

    for state in (anonymous, authenticated, logged_in, expired):
        state.upon(I.lost).to(closed).returns(None)
    scram_started.upon(I.lost).to(closed).returns(None)
    closed.upon(I.lost).loop().returns(None)

    return machine.build()


LoginMachine = _build()


class Login:
    """
    The login sequence of one session (see the module docstring). Command
    handlers drive it; the connection attaches its hooks.
    """

    def __init__(self, session: SessionFields) -> None:
        self._core = LoginCore(session)
        self._machine: LoginInputs = LoginMachine(self._core)
        if session.role is not None:
            # Authentication off, or a session made logged in (tests).
            self._machine.succeeded(session.user or "", session.role)
            self._machine.reply_written()

    def attach(self, on_logged_in: Callable[[], None], on_expired: Callable[[], None]) -> None:
        """Called once the login's reply has been written, or when the deadline passes first."""
        self._core.on_logged_in = on_logged_in
        self._core.on_expired = on_expired

    @property
    def machine(self) -> LoginInputs:
        """The machine: command handlers call its inputs."""
        return self._machine

    def reply_written(self) -> None:
        """A reply has been written on the connection (the connection's hook)."""
        self._machine.reply_written()

    def deadline_passed(self) -> None:
        self._machine.deadline_passed()

    def lost(self) -> None:
        self._machine.lost()
