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

from twisted.internet.defer import Deferred, inlineCallbacks

from oxidb.engine.ttl import expired_batches, sweep_operation
from oxidb.server.periodic import PeriodicPass


class TtlSweeper(PeriodicPass):
    """
    @param clock: an C{IReactorTime}: the pass interval and the expiry time.
    @param executor: the server's L{oxidb.commands.IExecutor}.
    @param engine: the L{oxidb.engine.engine.Engine}.
    @param should_run: asked at every tick; false skips it (followers).
    @ivar deleted: documents deleted since the service started.
    @ivar passes: passes run (ticks that were not skipped).
    """

    failure_text = "TTL pass failed"

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
        super().__init__(clock, should_run, interval)
        self._executor = executor
        self._engine = engine
        self.batch_size = batch_size
        self.max_batches = max_batches
        self.deleted = 0
        self.passes = 0

    def run_pass(self, now: float) -> Deferred[Any]:
        self.passes += 1
        return self._sweep(now)

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
