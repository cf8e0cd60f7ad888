"""
Per-connection state. No Twisted imports: command handlers read and change it.

A connection's requests run strictly one after another, so at most one thread
touches a session at a time even when a handler's work runs on the pool.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from oxidb.auth.login import Login
from oxidb.auth.rbac import Role
from oxidb.engine.databases import DEFAULT


@attrs.define
class Session:
    """
    @ivar peer: C{host:port} of the client, for logs and audit.
    @ivar user: the authenticated user name (C{anonymous} with auth off).
    @ivar role: the user's role, or C{None} before login.
    @ivar tx: the open transaction (engine object) or C{None}.
    @ivar database: the current database (C{use_db}, server.md 3.7).
    @ivar tls: the connection is encrypted.
    @ivar wire_version: negotiated by C{hello}.
    @ivar failed_logins: failed login attempts on this connection.
    @ivar close_after_reply: a handler asks the server to close the
        connection once the current reply has been written.
    @ivar login: the login sequence (L{oxidb.auth.login}); logged in from
        the start when C{role} is given.
    @ivar on_close: called (on the reactor thread, and must not block) when
        the connection closes: what a handler left open for it, such as a
        snapshot read.
    @ivar watcher: the connection's side of a change stream
        (L{oxidb.server.changefeed.IWatcher}), set by the server.
    @ivar watch: the connection's change stream subscription
        (L{oxidb.server.changefeed.Subscription}) while it watches.
    """

    peer: str = "-"
    user: str | None = None
    role: Role | None = None
    tx: Any = None
    database: str = DEFAULT
    tls: bool = False
    wire_version: int = 1
    failed_logins: int = 0
    close_after_reply: bool = False
    on_close: list[Callable[[], None]] = attrs.field(factory=list, eq=False, repr=False)
    watcher: Any = attrs.field(default=None, eq=False, repr=False)
    watch: Any = attrs.field(default=None, eq=False, repr=False)
    login: Login = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        self.login = Login(self)

    def closed(self) -> None:
        """The connection is gone: run and forget the L{on_close} callbacks."""
        callbacks, self.on_close = self.on_close, []
        for callback in callbacks:
            callback()

    @property
    def auth_state(self) -> Any:
        """The SCRAM exchange in progress, or C{None}."""
        return self.login.machine.exchange()

    @property
    def authenticated(self) -> bool:
        return self.role is not None

    @classmethod
    def anonymous_admin(cls, peer: str = "-", tls: bool = False) -> Session:
        """The session every connection gets when authentication is off."""
        return cls(peer=peer, user="anonymous", role=Role.ADMIN, tls=tls)
