"""
Login throttling: each failed login is answered after a delay that doubles
with the failures on the connection and for the user name tried, and a
connection that fails too often is closed.

Nothing blocks: the failure reply is held back with C{deferLater} on the
injected clock, so the reactor keeps serving everyone else. Only the failing
connection waits (its requests run in order). A name is never locked: the
delay is capped, and the per-name count fades after a quiet window.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater

if TYPE_CHECKING:
    from oxidb.server.session import Session


@attrs.frozen
class ThrottlePolicy:
    """
    @ivar base_delay: seconds before the reply to a first failure.
    @ivar max_delay: the delay never grows beyond this.
    @ivar max_failures: close a connection after this many failed logins.
    @ivar window: seconds without failures after which a name's count resets.
    @ivar max_names: how many names are tracked (oldest dropped first).
    """

    base_delay: float = 0.1
    max_delay: float = 5.0
    max_failures: int = 5
    window: float = 300.0
    max_names: int = 10_000

    def delay(self, failures: int) -> float:
        """The delay after the C{failures}-th failure (1-based)."""
        if failures <= 0 or self.base_delay <= 0:
            return 0.0
        return min(self.max_delay, self.base_delay * 2.0 ** min(failures - 1, 64))


class LoginThrottle:
    """Counts failed logins per connection (in the L{Session}) and per name."""

    def __init__(self, clock: IReactorTime, policy: ThrottlePolicy = ThrottlePolicy()) -> None:
        self.clock = clock
        self.policy = policy
        #: name -> (failures, time of the last failure); oldest first.
        self._names: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def name_failures(self, username: str) -> int:
        """Recent failures for C{username} (0 after a quiet window)."""
        entry = self._names.get(username)
        if entry is None or self.clock.seconds() - entry[1] >= self.policy.window:
            return 0
        return entry[0]

    def failed(self, session: "Session", username: str) -> "Deferred[None]":
        """
        Count a failed login; the Deferred fires when the failure may be
        answered. Once the connection has failed C{max_failures} times,
        C{session.close_after_reply} is set.
        """
        session.failed_logins += 1
        count = self.name_failures(username) + 1
        self._names.pop(username, None)
        self._names[username] = (count, self.clock.seconds())
        while len(self._names) > self.policy.max_names:
            self._names.popitem(last=False)
        if session.failed_logins >= self.policy.max_failures:
            session.close_after_reply = True
        delay = self.policy.delay(max(session.failed_logins, count))
        if delay <= 0:
            return succeed(None)
        return deferLater(self.clock, delay, lambda: None)

    def succeeded(self, username: str) -> None:
        """A login for C{username} succeeded: forget its failures."""
        self._names.pop(username, None)
