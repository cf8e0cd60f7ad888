"""
Keeps the slow metrics fresh: a service that periodically measures storage on
the thread pool and samples the Raft status on the reactor thread.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from oxidb.logs import Logger

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from oxidb.metrics._server import ServerMetrics


class MetricsRefresher(Service):
    """
    Runs C{metrics.measure_storage} through C{read} every C{storage_interval}
    seconds (never two at once) and C{metrics.sample_raft} every
    C{raft_interval} seconds, both starting immediately. A failed pass is
    logged and the previous values stay exported. Stopping waits for a
    measurement in progress, so the engine may be closed afterwards.
    """

    _log = Logger()

    def __init__(
        self,
        metrics: ServerMetrics,
        clock: IReactorTime,
        read: Callable[..., Deferred[Any]],
        storage_interval: float = 15.0,
        raft_interval: float = 1.0,
    ) -> None:
        """
        @param read: runs a blocking callable off the reactor thread, e.g. the
            executor's C{read}.
        """
        self._metrics = metrics
        self._read = read
        self._storage = LoopingCall(self._refresh_storage)
        self._storage.clock = clock
        self._raft = LoopingCall(self._refresh_raft)
        self._raft.clock = clock
        self._storage_interval = storage_interval
        self._raft_interval = raft_interval
        self._running: list[Deferred[Any]] = []

    def startService(self) -> None:
        super().startService()
        self._running = [self._storage.start(self._storage_interval, now=True)]
        if self._metrics.raft_source is not None:
            self._running.append(self._raft.start(self._raft_interval, now=True))

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        for loop in (self._storage, self._raft):
            if loop.running:
                loop.stop()
        running, self._running = self._running, []
        return gatherResults(running)

    def _refresh_storage(self) -> Deferred[Any]:
        d = maybeDeferred(self._read, self._metrics.measure_storage)
        d.addCallbacks(self._metrics.storage_measured, self._failed, errbackArgs=("storage",))
        return d

    def _refresh_raft(self) -> None:
        try:
            self._metrics.sample_raft()
        except Exception:
            self._failed(Failure(), "raft")

    def _failed(self, failure: Failure, what: str) -> None:
        self._log.failure("refreshing {what} metrics failed", failure, what=what)
