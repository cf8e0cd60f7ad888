"""
L{AuthManager}: everything the login and user commands need, built once by
the service when authentication is on and reached by handlers as
C{ctx.auth}.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import IO

import attrs
from twisted.cred.portal import Portal
from twisted.internet.interfaces import IReactorTime

from oxidb.auth.cred import RunBlocking, build_portal
from oxidb.auth.rbac import Role
from oxidb.auth.settings import AuthSettings
from oxidb.auth.store import FirstAdmin, UserStore, ensure_default_admin, ensure_first_admin, load_or_create_secret
from oxidb.auth.throttle import LoginThrottle
from oxidb.limits import Limits


@attrs.define
class AuthManager:
    """
    @ivar store: the users.
    @ivar portal: logs sessions in (SCRAM and C{auth_simple}).
    @ivar throttle: slows down failed logins.
    @ivar iterations: SCRAM iteration count for new passwords.
    @ivar rng: salts and nonces come from here (C{random.SystemRandom} in
        production, a seeded C{random.Random} in tests).
    """

    store: UserStore
    portal: Portal
    throttle: LoginThrottle
    iterations: int
    rng: random.Random

    @classmethod
    def open(
        cls,
        directory: Path,
        settings: AuthSettings,
        clock: IReactorTime,
        run_blocking: RunBlocking,
        rng: random.Random,
        limits: Limits | None = None,
    ) -> AuthManager:
        """
        Load the store and the server secret from C{directory}
        (C{<data>/_auth}), creating the secret on first start. Blocking:
        call at startup. C{limits} (default: the defaults) gives the login
        rows: free attempts per name and address, the Argon2 cap.

        @raise oxidb.errors.ConfigError: the user store is unreadable.
        """
        limits = limits if limits is not None else Limits()
        store = UserStore.open(directory)
        secret = load_or_create_secret(directory, rng)
        portal = build_portal(store, secret, settings.iterations, rng, run_blocking, limits.auth_simple_concurrency)
        throttle = LoginThrottle(
            clock,
            settings.throttle,
            name_free=limits.auth_name_free_attempts,
            address_free=limits.auth_address_free_attempts,
        )
        return cls(store, portal, throttle, settings.iterations, rng)

    def ensure_default_admin(self, stream: IO[str]) -> bool:
        """See L{oxidb.auth.store.ensure_default_admin} (blocking)."""
        return ensure_default_admin(self.store, stream, self.rng, self.iterations)

    def ensure_first_admin(
        self, password: str | None, password_file: Path, stream: IO[str] | None
    ) -> FirstAdmin | None:
        """See L{oxidb.auth.store.ensure_first_admin} (blocking)."""
        return ensure_first_admin(
            self.store, self.rng, self.iterations, password=password, password_file=password_file, stream=stream
        )

    def db_role(self, username: str, database: str) -> Role | None:
        """The role C{username} was granted on C{database} (C{grant_db_role}), or None."""
        return self.store.db_role(username, database)
