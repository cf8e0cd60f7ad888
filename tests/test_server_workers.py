"""The worker pool: blocking work off the reactor, results back on it, in batches."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from twisted.internet.threads import deferToThreadPool

from oxidb.server.workers import WorkerPool
from oxidb.testing import QueuedReactor, result_of


@pytest.fixture
def pool() -> Any:
    reactor = QueuedReactor()
    workers = WorkerPool(reactor, 3, name="test")
    workers.start()
    yield workers, reactor
    workers.stop()


def test_results_and_errors_arrive_through_the_reactor(pool: Any) -> None:
    workers, reactor = pool
    ok = workers.defer(lambda a, b=0: a + b, 2, b=3)
    bad = workers.defer(lambda: 1 / 0)
    workers.stop()  # queued jobs finish first
    assert not ok.called and not bad.called  # nothing fires off the reactor thread
    reactor.run_pending()
    assert result_of(ok) == 5
    with pytest.raises(ZeroDivisionError):
        result_of(bad)


def test_many_results_share_one_wakeup(pool: Any) -> None:
    workers, reactor = pool
    gate = threading.Event()
    first = workers.defer(gate.wait)
    rest = [workers.defer(lambda i=i: i) for i in range(200)]
    gate.set()
    workers.stop()
    wakeups = reactor.run_pending()
    assert [result_of(d) for d in rest] == list(range(200))
    assert result_of(first) is True
    # The reactor did not run while results arrived, so they all rode on the
    # first wakeup: one per batch, not one per result.
    assert wakeups == 1


def test_twisted_threadpool_api_compatibility(pool: Any) -> None:
    workers, reactor = pool
    d = deferToThreadPool(reactor, workers, lambda: "via deferToThreadPool")
    seen: list[Any] = []
    workers.callInThread(seen.append, "callInThread")
    workers.stop()
    reactor.run_pending()
    assert result_of(d) == "via deferToThreadPool"
    assert seen == ["callInThread"]


def test_busy_counts_running_jobs(pool: Any) -> None:
    workers, _ = pool
    started, release = threading.Barrier(3), threading.Event()

    def job() -> None:
        started.wait()
        release.wait()

    workers.defer(job)
    workers.defer(job)
    started.wait()
    assert workers.busy == 2 and workers.size == 3
    release.set()


def test_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        WorkerPool(QueuedReactor(), 0)
