"""
L{Waits}: a node's bounded waits for a condition on its state (a leader is
known, a membership change is applied, a learner caught up).

The driver in L{oxidb.raft.node} calls L{Waits.notify} after every change
(a ready handled, an entry applied); each wait fires once its check is true,
or fails with L{WaitTimeout} when its time runs out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import Deferred

from oxidb.errors import OxiError


class WaitTimeout(Exception):
    """A bounded wait ran out."""


@attrs.define(eq=False)
class _Waiter:
    check: Callable[[], bool]
    deferred: Deferred[None]
    timer: Any = None


class Waits:
    """
    The waits of one node.

    @param clock: an C{IReactorTime} (the timeouts).
    """

    def __init__(self, clock: Any) -> None:
        self._clock = clock
        self._waiters: list[_Waiter] = []

    def wait(self, check: Callable[[], bool], timeout: float) -> Deferred[None]:
        """
        Fire when C{check()} is true (checked after every change), or fail
        with L{WaitTimeout} after C{timeout} seconds. C{check} may raise an
        L{OxiError} to fail the wait.
        """
        d: Deferred[None] = Deferred()
        try:
            if check():
                d.callback(None)
                return d
        except OxiError:
            d.errback()
            return d
        waiter = _Waiter(check, d)
        waiter.timer = self._clock.callLater(max(0.0, timeout), self._expired, waiter)
        self._waiters.append(waiter)
        return d

    def _expired(self, waiter: _Waiter) -> None:
        if waiter in self._waiters:
            self._waiters.remove(waiter)
            waiter.deferred.errback(WaitTimeout())

    def notify(self) -> None:
        """Something changed: release the waits whose check is now true (or raises)."""
        if not self._waiters:
            return
        # Releasing a waiter runs its callbacks, which may propose and so
        # notify again (re-entrantly): that inner call may already have
        # released waiters still on this copy of the list.
        for waiter in list(self._waiters):
            if waiter not in self._waiters:
                continue
            try:
                ready = waiter.check()
            except OxiError:
                self._waiters.remove(waiter)
                waiter.timer.cancel()
                waiter.deferred.errback()
                continue
            if ready:
                self._waiters.remove(waiter)
                waiter.timer.cancel()
                waiter.deferred.callback(None)

    def fail_all(self, error: OxiError) -> None:
        """The node stops: fail every wait."""
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.timer.cancel()
            waiter.deferred.errback(error)
