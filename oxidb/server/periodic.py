"""
A service that runs one pass of work every C{interval} seconds of its clock,
when this node should (standalone: always; cluster: the leader, through
C{should_run}), never two passes at once, and whose stop waits for the pass
in progress. The scheduler (L{oxidb.server.scheduler}) and the TTL sweeper
(L{oxidb.server.ttl}) are such services.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall

from oxidb.logs import Logger


class PeriodicPass(Service):
    """
    Subclasses implement L{run_pass}; a failing pass is logged with
    C{failure_text} and the next one runs as usual.

    @param clock: an C{IReactorTime}.
    @param should_run: asked at every tick; false skips it (followers).
    @param interval: seconds between ticks.
    """

    _log = Logger()
    failure_text = "periodic pass failed"

    def __init__(self, clock: Any, should_run: Callable[[], bool], interval: float) -> None:
        self._clock = clock
        self._should_run = should_run
        self._interval = interval
        self._loop: LoopingCall | None = None
        self._busy: Deferred[None] | None = None
        self._idle_waiters: list[Deferred[None]] = []

    def run_pass(self, now: float) -> Deferred[Any]:
        """One pass at clock time C{now}; fires when it is done."""
        raise NotImplementedError

    def startService(self) -> None:
        super().startService()
        self._loop = LoopingCall(self.tick)
        self._loop.clock = self._clock
        self._loop.start(self._interval, now=False)

    def stopService(self) -> Deferred[None]:
        """Stop ticking; fires once a pass in progress has finished."""
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        if self._busy is None:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._idle_waiters.append(waiter)
        return waiter

    def tick(self) -> Deferred[None] | None:
        """Run one pass (unless this node should not, or one is running); fires when done."""
        if self._busy is not None or not self._should_run():
            return None
        d = self.run_pass(self._clock.seconds())
        d.addErrback(lambda failure: self._log.failure(self.failure_text, failure))
        self._busy = d
        d.addBoth(self._idle)
        return d

    def _idle(self, _: Any) -> None:
        self._busy = None
        waiters, self._idle_waiters = self._idle_waiters, []
        for waiter in waiters:
            waiter.callback(None)
