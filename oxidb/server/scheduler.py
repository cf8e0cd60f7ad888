"""
The service that runs due schedules (engine.md 9.6).

Every C{interval} seconds of its clock it reads the enabled schedules from
the C{_schedules} collection, and runs the due ones (L{oxidb.engine.
schedules.is_due}) one after another, each as a procedure call in its own
transaction (L{oxidb.commands.procedures.call}). After each run it records
C{last_run}, C{last_run_epoch}, C{last_status}, C{last_error} and
C{run_count} in the schedule's document with a write operation, so the
state survives restarts and replicates. A failing run is recorded and
logged; nothing a schedule does can stop the service.

Usage, in L{oxidb.service.OxiService} (the engine must have the
L{oxidb.engine.transactions} and L{oxidb.engine.procedures} appliers)::

    Scheduler(reactor, shared.executor, engine, metrics=shared.metrics).setServiceParent(self)

In cluster mode pass C{should_run}, e.g. C{lambda: raft.is_leader()}, so
that only the leader runs schedules; a new leader picks them up from the
replicated run state.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.task import LoopingCall

from oxidb.commands.procedures import call
from oxidb.engine import store
from oxidb.engine.operations import Update
from oxidb.engine.reads import Reader
from oxidb.engine.schedules import SCHEDULES, is_due, run_record
from oxidb.errors import InternalError, OxiError
from oxidb.logs import Logger


def due_schedules(reader: Reader, now: float) -> list[dict[str, Any]]:
    """
    The enabled schedules due at C{now}, by name. A missing C{_schedules}
    collection is not created (ticks never write).
    """
    if store.get_collection(reader.conn, SCHEDULES) is None:
        return []
    enabled = reader.find(SCHEDULES, {"enabled": True}, {"name": 1})
    return [schedule for schedule in enabled if is_due(schedule, now)]


class Scheduler(Service):
    """
    @param clock: an C{IReactorTime}; time for due checks and the tick.
    @param executor: the server's L{oxidb.commands.IExecutor}.
    @param engine: the L{oxidb.engine.engine.Engine} (open once the service
        starts).
    @param should_run: asked at every tick; false skips the tick (cluster
        followers).
    @param metrics: counts procedure commits like C{commit_tx}'s, or None.
    @param interval: seconds between ticks.
    """

    _log = Logger()

    def __init__(
        self,
        clock: Any,
        executor: Any,
        engine: Any,
        *,
        should_run: Callable[[], bool] = lambda: True,
        metrics: Any = None,
        interval: float = 1.0,
    ) -> None:
        self._clock = clock
        self._executor = executor
        self._engine = engine
        self._should_run = should_run
        self._metrics = metrics
        self._interval = interval
        self._loop: LoopingCall | None = None
        self._busy: Deferred[None] | None = None
        self._idle_waiters: list[Deferred[None]] = []

    def startService(self) -> None:
        super().startService()
        self._loop = LoopingCall(self.tick)
        self._loop.clock = self._clock
        self._loop.start(self._interval, now=False)

    def stopService(self) -> Deferred[None]:
        """Stop ticking; fires once a run in progress has finished."""
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
        """Run the schedules due now (if this node should); fires when done."""
        if not self._should_run():
            return None
        now = self._clock.seconds()
        d: Deferred[Any] = self._executor.read(self._engine.read, due_schedules, now)
        d.addCallback(self._run_all, now)
        d.addErrback(lambda failure: self._log.failure("scheduler tick failed", failure))
        self._busy = d
        d.addBoth(self._idle)
        return d

    def _idle(self, _: Any) -> None:
        self._busy = None
        waiters, self._idle_waiters = self._idle_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    @inlineCallbacks
    def _run_all(self, due: list[dict[str, Any]], now: float) -> Generator[Any, Any, None]:
        for schedule in due:
            if not self.running:
                return
            yield self._run_one(schedule, now)

    @inlineCallbacks
    def _run_one(self, schedule: dict[str, Any], now: float) -> Generator[Any, Any, None]:
        name, procedure = schedule.get("name"), schedule.get("procedure")
        params = schedule.get("params")
        error: str | None = None
        try:
            yield call(
                self._executor,
                self._engine,
                self._clock,
                procedure,
                {} if params is None else params,
                self._metrics,
            )
        except OxiError as e:
            error = e.message
        except Exception:
            self._log.failure("schedule {name} failed unexpectedly", name=name)
            error = InternalError().message
        if error is None:
            self._log.debug("schedule {name} ran {procedure}", name=name, procedure=procedure)
        else:
            self._log.warn("schedule {name} failed: {error}", name=name, error=error)
        record = Update(SCHEDULES, {"_id": schedule["_id"]}, run_record(now, error))
        try:
            yield self._executor.write(record)
        except Exception:
            self._log.failure("could not record the run of schedule {name}", name=name)
