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

from twisted.internet.defer import Deferred, inlineCallbacks

from oxidb.commands.procedures import call
from oxidb.engine import store
from oxidb.engine.operations import Update
from oxidb.engine.reads import Reader
from oxidb.engine.schedules import SCHEDULES, is_due, run_record
from oxidb.errors import InternalError, OxiError
from oxidb.server.periodic import PeriodicPass


def due_schedules(reader: Reader, now: float) -> list[dict[str, Any]]:
    """
    The enabled schedules due at C{now}, by name. A missing C{_schedules}
    collection is not created (ticks never write).
    """
    if store.get_collection(reader.conn, SCHEDULES) is None:
        return []
    enabled = reader.find(SCHEDULES, {"enabled": True}, {"name": 1})
    return [schedule for schedule in enabled if is_due(schedule, now)]


class Scheduler(PeriodicPass):
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

    failure_text = "scheduler tick failed"

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
        super().__init__(clock, should_run, interval)
        self._executor = executor
        self._engine = engine
        self._metrics = metrics

    def run_pass(self, now: float) -> Deferred[Any]:
        """Run the schedules due at C{now}."""
        d: Deferred[Any] = self._executor.read(self._engine.read, due_schedules, now)
        d.addCallback(self._run_all, now)
        return d

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
