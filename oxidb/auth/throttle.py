"""
Login throttling, in two parts.

1. Refusal (L{LoginThrottle.begin}): every login attempt is counted when it
   starts, per user name and per source address (the client's IP, across
   all its connections), whatever becomes of it: dropping the connection
   before the answer gains nothing. After a few free attempts
   (C{OXIDB_AUTH_NAME_FREE_ATTEMPTS}, C{OXIDB_AUTH_ADDRESS_FREE_ATTEMPTS}),
   a name or address is throttled: attempts are refused at once with
   L{LoginThrottledError}, before any credential is looked at, until the
   delay of the policy (doubling per attempt, capped) has passed since its
   last counted attempt. Refused attempts are not counted, so a patient
   user gets in after at most C{max_delay}. A success forgets the name's
   count and gives the address its attempt back; counts fade after a quiet
   window.
2. Delay (L{LoginThrottle.failed}): each failed login is answered after a
   delay that doubles with the failures on the connection and for the user
   name tried, and a connection that fails too often is closed.

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

from oxidb.errors import LoginThrottledError

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


def source_address(peer: str) -> str:
    """The host part of a session's C{host:port} (C{[v6]:port}) peer."""
    if peer.startswith("["):
        return peer[1:].split("]", 1)[0]
    host, sep, _port = peer.rpartition(":")
    return host if sep else peer


class _Ledger:
    """Attempts per key, counted when they start; oldest keys dropped first."""

    def __init__(self, max_keys: int) -> None:
        self.max_keys = max_keys
        #: key -> (attempts, time of the last counted attempt).
        self.entries: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def current(self, key: str, now: float, window: float) -> tuple[int, float]:
        entry = self.entries.get(key)
        if entry is None or now - entry[1] >= window:
            return 0, now
        return entry

    def put(self, key: str, count: int, when: float) -> None:
        self.entries.pop(key, None)
        if count > 0:
            self.entries[key] = (count, when)
        while len(self.entries) > self.max_keys:
            self.entries.popitem(last=False)


class LoginThrottle:
    """
    Counts login attempts per name and per source address (refusals), and
    failed logins per connection (in the L{Session}) and per name (delays).

    @param name_free: attempts per name before the name is throttled.
    @param address_free: attempts per source address before it is throttled.
    """

    def __init__(
        self,
        clock: IReactorTime,
        policy: ThrottlePolicy = ThrottlePolicy(),
        name_free: int = 5,
        address_free: int = 20,
    ) -> None:
        self.clock = clock
        self.policy = policy
        self.name_free = name_free
        self.address_free = address_free
        #: name -> (failures, time of the last failure); oldest first.
        self._names: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self._name_attempts = _Ledger(policy.max_names)
        self._address_attempts = _Ledger(policy.max_names)
        #: attempts refused so far (for tests and metrics).
        self.refused = 0

    def _throttled(self, ledger: _Ledger, key: str, free: int, now: float) -> bool:
        count, last = ledger.current(key, now, self.policy.window)
        if count < free:
            return False
        return now - last < self.policy.delay(count - free + 1)

    def begin(self, session: Session, username: str) -> None:
        """
        A login attempt for C{username} starts on C{session}: count it, or
        refuse it when the name or the session's source address is throttled.

        @raise LoginThrottledError: refused (not counted).
        """
        now = self.clock.seconds()
        address = source_address(session.peer)
        if self._throttled(self._name_attempts, username, self.name_free, now) or self._throttled(
            self._address_attempts, address, self.address_free, now
        ):
            self.refused += 1
            raise LoginThrottledError()
        for ledger, key in ((self._name_attempts, username), (self._address_attempts, address)):
            count, _ = ledger.current(key, now, self.policy.window)
            ledger.put(key, count + 1, now)

    def name_attempts(self, username: str) -> int:
        """Attempts counted for C{username} (0 after a quiet window)."""
        return self._name_attempts.current(username, self.clock.seconds(), self.policy.window)[0]

    def address_attempts(self, address: str) -> int:
        """Attempts counted for the source address C{address}."""
        return self._address_attempts.current(address, self.clock.seconds(), self.policy.window)[0]

    def name_failures(self, username: str) -> int:
        """Recent failures for C{username} (0 after a quiet window)."""
        entry = self._names.get(username)
        if entry is None or self.clock.seconds() - entry[1] >= self.policy.window:
            return 0
        return entry[0]

    def failed(self, session: Session, username: str) -> Deferred[None]:
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

    def succeeded(self, username: str, session: Session | None = None) -> None:
        """
        A login for C{username} succeeded: forget the name's failures and
        attempts, and give C{session}'s source address its attempt back.
        """
        self._names.pop(username, None)
        self._name_attempts.entries.pop(username, None)
        if session is not None:
            address = source_address(session.peer)
            entry = self._address_attempts.entries.get(address)
            if entry is not None:
                self._address_attempts.put(address, entry[0] - 1, entry[1])
