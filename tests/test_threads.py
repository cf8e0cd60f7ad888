"""The thread-to-reactor hand-off (L{oxidb._threads}): nothing fires off the reactor thread."""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.logger import capturedLogs
from twisted.python.failure import Failure

from oxidb._threads import ReactorQueue, deferred_from_future, fire_from_thread
from oxidb.testing import QueuedReactor, result_of


def in_thread(fn: Any, *args: Any) -> None:
    thread = threading.Thread(target=fn, args=args)
    thread.start()
    thread.join()


def test_fire_from_thread_waits_for_the_reactor() -> None:
    reactor = QueuedReactor()
    ok: Deferred[int] = Deferred()
    bad: Deferred[int] = Deferred()
    in_thread(fire_from_thread, reactor, ok, 5)
    in_thread(fire_from_thread, reactor, bad, Failure(ZeroDivisionError()))
    assert not ok.called and not bad.called
    assert reactor.run_pending() == 2
    assert result_of(ok) == 5
    with pytest.raises(ZeroDivisionError):
        result_of(bad)


def test_a_future_result_arrives_on_the_reactor() -> None:
    reactor = QueuedReactor()
    future: Future[int] = Future()
    d = deferred_from_future(reactor, future)
    in_thread(future.set_result, 7)
    assert not d.called
    reactor.run_pending()
    assert result_of(d) == 7


def test_a_future_error_or_cancellation_errbacks() -> None:
    reactor = QueuedReactor()
    failed: Future[int] = Future()
    cancelled: Future[int] = Future()
    d1 = deferred_from_future(reactor, failed)
    d2 = deferred_from_future(reactor, cancelled)
    in_thread(failed.set_exception, KeyError("k"))
    cancelled.cancel()
    reactor.run_pending()
    with pytest.raises(KeyError):
        result_of(d1)
    with pytest.raises(Exception) as info:
        result_of(d2)
    assert type(info.value).__name__ == "CancelledError"


def test_an_already_done_future_still_fires_on_the_reactor() -> None:
    reactor = QueuedReactor()
    future: Future[str] = Future()
    future.set_result("done")
    d = deferred_from_future(reactor, future)
    assert not d.called
    reactor.run_pending()
    assert result_of(d) == "done"


def test_queued_calls_share_one_wakeup_and_keep_their_order() -> None:
    reactor = QueuedReactor()
    queue = ReactorQueue(reactor)
    seen: list[int] = []
    ds = [Deferred[int]() for _ in range(50)]

    def work() -> None:
        for i, d in enumerate(ds):
            queue.fire(d, i)
            queue.call(seen.append, i)

    in_thread(work)
    in_thread(work)  # a second thread while the first delivery is pending
    assert not any(d.called for d in ds)
    assert reactor.run_pending() == 1
    assert seen == list(range(50)) * 2
    assert [result_of(d) for d in ds] == list(range(50))


def test_a_call_made_during_delivery_gets_a_new_wakeup() -> None:
    reactor = QueuedReactor()
    queue = ReactorQueue(reactor)
    seen: list[str] = []
    queue.call(lambda: queue.call(seen.append, "later"))
    assert reactor.run_pending() == 1
    assert seen == []
    assert reactor.run_pending() == 1
    assert seen == ["later"]
    assert reactor.run_pending() == 0


def test_a_failing_call_is_logged_and_the_rest_still_run() -> None:
    reactor = QueuedReactor()
    queue = ReactorQueue(reactor)
    seen: list[int] = []
    queue.call(lambda: 1 / 0)
    queue.call(seen.append, 1)
    with capturedLogs() as events:
        reactor.run_pending()
    assert seen == [1]
    [failure] = [e["log_failure"] for e in events if "log_failure" in e]
    assert failure.check(ZeroDivisionError)
