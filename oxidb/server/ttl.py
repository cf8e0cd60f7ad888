"""
The service deleting documents expired by TTL indexes (L{oxidb.engine.ttl}).

Every C{interval} seconds of its clock, if this node should (standalone: the
server; cluster: the leader, through C{should_run}), it finds expired
documents on a reader thread and deletes them with ordinary C{Delete}
writes of at most C{batch_size} documents each, one write at a time, so
other writers interleave between them. A pass writes at most
C{max_batches} deletes per index and stops early once a batch comes back
short; what is left waits for the next pass. A failing pass is logged and
the next one runs as usual.

Usage, in L{oxidb.service.OxiService}::

    TtlSweeper(reactor, shared.executor, engine, should_run=...).setServiceParent(self)
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.task import LoopingCall

from oxidb.engine.ttl import expired_batches, sweep_operation
from oxidb.logs import Logger


class TtlSweeper(Service):
    """
    @param clock: an C{IReactorTime}: the pass interval and the expiry time.
    @param executor: the server's L{oxidb.commands.IExecutor}.
    @param engine: the L{oxidb.engine.engine.Engine}.
    @param should_run: asked at every tick; false skips it (followers).
    @ivar deleted: documents deleted since the service started.
    @ivar passes: passes run (ticks that were not skipped).
    """

    _log = Logger()

    def __init__(
        self,
        clock: Any,
        executor: Any,
        engine: Any,
        *,
        should_run: Callable[[], bool] = lambda: True,
        interval: float = 60.0,
        batch_size: int = 1000,
        max_batches: int = 10,
    ) -> None:
        self._clock = clock
        self._executor = executor
        self._engine = engine
        self._should_run = should_run
        self._interval = interval
        self.batch_size = batch_size
        self.max_batches = max_batches
        self._loop: LoopingCall | None = None
        self._busy: Deferred[None] | None = None
        self._idle_waiters: list[Deferred[None]] = []
        self.deleted = 0
        self.passes = 0

    def startService(self) -> None:
        super().startService()
        self._loop = LoopingCall(self.tick)
        self._loop.clock = self._clock
        self._loop.start(self._interval, now=False)

    def stopService(self) -> Deferred[None]:
        """Stop ticking; fires once a pass in progress has finished its current write."""
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
        self.passes += 1
        d = self._sweep(self._clock.seconds())
        d.addErrback(lambda failure: self._log.failure("TTL pass failed", failure))
        self._busy = d
        d.addBoth(self._idle)
        return d

    def _idle(self, _: Any) -> None:
        self._busy = None
        waiters, self._idle_waiters = self._idle_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    @inlineCallbacks
    def _sweep(self, now: float) -> Generator[Any, Any, None]:
        rounds: dict[tuple[str, str], int] = {}
        deleted = 0
        while True:
            found = yield self._executor.read(self._engine.read, expired_batches, now, self.batch_size)
            batches = [b for b in found if rounds.get((b[0], b[1]), 0) < self.max_batches]
            if not batches:
                break
            more = False
            for collection, field, query, count in batches:
                if not self.running or not self._should_run():
                    return
                result = yield self._executor.write(sweep_operation(collection, query))
                deleted += result["deleted"]
                self.deleted += result["deleted"]
                rounds[(collection, field)] = rounds.get((collection, field), 0) + 1
                more = more or count >= self.batch_size
            if not more:
                break
        if deleted:
            self._log.info("TTL: deleted {n} expired documents", n=deleted)
