"""
Handing results from other threads to the reactor thread.

Twisted objects (Deferreds, transports) belong to the reactor thread; a
worker, writer or logging thread must not touch them. Everything in the
server that crosses back goes through here:

 - L{fire_from_thread}: fire one Deferred on the reactor thread.
 - L{deferred_from_future}: a Deferred for a C{concurrent.futures.Future}
   (the engine's writer thread resolves those).
 - L{ReactorQueue}: calls from threads run on the reactor thread in order,
   as many per reactor wakeup as have arrived. Each C{callFromThread} costs
   a wakeup of the reactor (a write to its waker pipe); under load a thread
   only wakes the reactor when no delivery is pending, and results arriving
   meanwhile ride along with it. The worker pool delivers its results
   through one (L{oxidb.server.workers}).

A result is a value or a L{Failure}: a Failure errbacks, anything else
calls back.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import CancelledError, Future
from typing import Any, TypeVar

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.python.failure import Failure

from oxidb.logs import Logger

T = TypeVar("T")


def _fire(d: Deferred[Any], result: Any) -> None:
    if isinstance(result, Failure):
        d.errback(result)
    else:
        d.callback(result)


def fire_from_thread(reactor: IReactorFromThreads, d: Deferred[Any], result: Any) -> None:
    """
    From any thread: fire C{d} with C{result} (a value, or a L{Failure} to
    errback) on the reactor thread.
    """
    reactor.callFromThread(_fire, d, result)


def _outcome(future: Future[Any]) -> Any:
    """A completed future's result, or a L{Failure} of its error."""
    try:
        error = future.exception()
    except CancelledError as e:
        return Failure(e)
    return future.result() if error is None else Failure(error)


def deferred_from_future(reactor: IReactorFromThreads, future: Future[T]) -> Deferred[T]:
    """A Deferred firing on the reactor thread with C{future}'s outcome once it completes."""
    d: Deferred[T] = Deferred()
    future.add_done_callback(lambda done: fire_from_thread(reactor, d, _outcome(done)))
    return d


@attrs.define(eq=False)
class ReactorQueue:
    """
    Calls made from any thread, run on the reactor thread in the order they
    were made, many per reactor wakeup (see the module docstring).

    @param reactor: whose thread runs the calls.
    """

    _log = Logger()

    _reactor: IReactorFromThreads
    _calls: deque[tuple[Callable[..., Any], tuple[Any, ...]]] = attrs.field(init=False, factory=deque)
    _lock: threading.Lock = attrs.field(init=False, factory=threading.Lock)
    _delivery_pending: bool = attrs.field(init=False, default=False)

    def call(self, fn: Callable[..., Any], *args: Any) -> None:
        """From any thread: run C{fn(*args)} on the reactor thread."""
        with self._lock:
            self._calls.append((fn, args))
            if self._delivery_pending:
                return
            self._delivery_pending = True
        self._reactor.callFromThread(self._deliver)

    def fire(self, d: Deferred[Any], result: Any) -> None:
        """From any thread: fire C{d} with C{result} (a L{Failure} errbacks) on the reactor thread."""
        self.call(_fire, d, result)

    def deferred(self, future: Future[T]) -> Deferred[T]:
        """A Deferred firing on the reactor thread, through this queue, with C{future}'s outcome."""
        d: Deferred[T] = Deferred()
        future.add_done_callback(lambda done: self.fire(d, _outcome(done)))
        return d

    def _deliver(self) -> None:
        """On the reactor thread: run every call that has arrived."""
        with self._lock:
            calls = list(self._calls)
            self._calls.clear()
            self._delivery_pending = False
        for fn, args in calls:
            try:
                fn(*args)
            except BaseException:
                # As after a failing callFromThread: logged, and the other
                # calls still run.
                self._log.failure("a call handed to the reactor thread failed")
