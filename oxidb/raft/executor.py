"""
How a cluster node runs requests.

* L{ClusterExecutor} is the server's L{IExecutor} in cluster mode: reads run
  on the thread pool against the local engine (through the state machine's
  L{ReadGate}, so no read sees a snapshot being installed); writes go through
  Raft as their operation's JSON form (L{RaftNode.write}: proposed on the
  leader, forwarded from a follower) and fire with the leader's apply
  result.
* L{LinearizableDispatcher} is the seam for linearizable reads. Handlers call
  C{ctx.read(fn, ...)} without the request, so the decision is made one step
  earlier: a read request carrying C{"consistency": "linearizable"} first
  waits for a ReadIndex barrier (L{RaftNode.read_barrier}: the leader confirms
  its leadership with a quorum and this node applies everything committed
  until then) and only then runs through the ordinary dispatcher, whose
  handler reads the local engine. Other requests pass straight through.
"""

from __future__ import annotations

from collections.abc import Callable
from time import perf_counter
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from zope.interface import implementer

from oxidb.commands._context import CommandContext, IDispatcher, IExecutor
from oxidb.commands._reply import Reply, command_name
from oxidb.engine.operations import Operation
from oxidb.errors import InternalError, OxiError
from oxidb.logs import Logger
from oxidb.raft.node import RaftNode
from oxidb.raft.statemachine import ReadGate

#: The request field, and its value, that ask for a linearizable read.
CONSISTENCY = "consistency"
LINEARIZABLE = "linearizable"


@implementer(IExecutor)
class ClusterExecutor:
    """
    @param reactor: the reactor.
    @param threadpool: the server's started thread pool (reads).
    @param node: the L{RaftNode} (writes).
    @param gate: the state machine's L{ReadGate}.
    """

    def __init__(self, reactor: Any, threadpool: Any, node: RaftNode, gate: ReadGate) -> None:
        self._reactor = reactor
        self._threadpool = threadpool
        self._node = node
        self._gate = gate

    def read(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
        return self._gate.run(lambda: self._threadpool.defer(fn, *args, **kwargs))

    def write(self, op: Operation) -> Deferred[Any]:
        """Replicate C{op.to_json()}; every node decodes and applies it (L{EngineStateMachine})."""
        result: Deferred[Any] = self._node.write(op.to_json())
        return result


@implementer(IDispatcher)
class LinearizableDispatcher:
    """
    Wraps the server's L{oxidb.server.dispatch.Dispatcher}: a read request
    with C{"consistency": "linearizable"} runs after a ReadIndex barrier.
    Only registered, non-write commands of a session that may run commands
    (logged in, when authentication is on) wait for the barrier; when the
    barrier fails the request is answered with its error and counted.
    """

    _log = Logger()

    def __init__(self, inner: Any, node: RaftNode) -> None:
        self._inner: IDispatcher = inner
        self._node = node
        self.registry = inner.registry
        self.auth_enabled = inner.auth_enabled
        self.metrics = inner.metrics

    def dispatch(self, ctx: CommandContext, request: Any) -> Reply | Deferred[Reply]:
        if type(request) is not dict or request.get(CONSISTENCY) != LINEARIZABLE:
            return self._inner.dispatch(ctx, request)
        name = command_name(request)
        command = self.registry.get(name)
        if command is None or command.writes:
            return self._inner.dispatch(ctx, request)
        if self.auth_enabled and not ctx.session.authenticated:
            return self._inner.dispatch(ctx, request)
        started = perf_counter()
        barrier: Deferred[Any] = self._node.read_barrier()
        return barrier.addCallbacks(
            lambda _: self._inner.dispatch(ctx, request),
            self._barrier_failed,
            errbackArgs=(name, started),
        )

    def _barrier_failed(self, failure: Failure, name: str, started: float) -> Reply:
        if isinstance(failure.value, OxiError):
            error = failure.value
        else:
            self._log.failure("linearizable read barrier for {cmd} failed unexpectedly", failure, cmd=name)
            error = InternalError()
        metrics = self.metrics
        if metrics is not None:
            metrics.command_finished(name, "error", perf_counter() - started)
        return Reply(False, error.message)
