"""
Where blocking work runs in a standalone server: reads on the thread pool
(small ones may run on the reactor thread, see L{LocalExecutor.read_inline}),
writes on the engine's writer thread (which commits them in groups).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from oxidb._threads import deferred_from_future
from oxidb.commands._context import IEngineSource, IExecutor, IInlineReads
from oxidb.engine.governor import NotInline
from oxidb.engine.operations import Operation
from oxidb.errors import UnavailableError


@implementer(IExecutor, IInlineReads)
class LocalExecutor:
    """
    @param reactor: the reactor (for C{callFromThread} and C{seconds}).
    @param threadpool: the service's started L{oxidb.server.workers.WorkerPool}.
    @param engines: an L{IEngineSource}, read for C{engines.engine} (the
        opened engine, or None before it opens) at call time.
    """

    def __init__(self, reactor: Any, threadpool: Any, engines: IEngineSource) -> None:
        self._reactor = reactor
        self._threadpool = threadpool
        self._engines = engines

    def read(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
        """
        On the pool, as the work of the connection being served (see
        L{oxidb.server.workers}): may fail at once with C{server busy}, and
        with L{oxidb.errors.RequesterGoneError} if that connection closes
        before a thread picks the work up.
        """
        d: Deferred[Any] = self._threadpool.defer(fn, *args, **kwargs)
        return d

    def read_inline(self, inline: Callable[..., Any], fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """
        C{inline(*args)} on the reactor thread: an engine C{*_inline} read,
        which runs only when the read is small and gives up
        (L{NotInline}) past the engine's inline budget of a few
        milliseconds, so the reactor is never held longer; then C{fn(*args)}
        on the pool as L{read}. An error of the inline attempt is the
        read's answer (the pool would have met the same one).
        """
        try:
            return succeed(inline(*args))
        except NotInline:
            return self.read(fn, *args)
        except Exception:
            return fail()

    def write(self, op: Operation) -> Deferred[Any]:
        engine = self._engines.engine
        if engine is None:
            raise UnavailableError("storage engine is not available")
        return deferred_from_future(self._reactor, engine.submit(op, self._reactor.seconds()))
