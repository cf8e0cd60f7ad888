"""
What a command handler sees: the connection's session, the server's shared
parts, and the two ways to do blocking work.

The seams are zope interfaces: L{IServices} (the whole, read-only set of
shared parts the composition root L{oxidb.compose} builds), and the narrower
capabilities L{IExecutor}, L{IEngineSource}, L{IDispatcher} and
L{IClusterControl}. Whatever is passed in for one is checked when it is
stored (L{provides}).

Handlers do not reach into L{IServices}: L{CommandContext} hands each the
typed capability it uses (C{ctx.engine}, C{ctx.read}/C{ctx.write},
C{ctx.auth}, C{ctx.cluster}, ...), so mypy checks what a handler does with it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs
from zope.interface import Attribute, Interface
from zope.interface.interface import InterfaceClass

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred
    from twisted.internet.interfaces import IReactorTime

    from oxidb.audit.events import Auditor
    from oxidb.auth.manager import AuthManager
    from oxidb.commands._reply import Reply
    from oxidb.config import Config
    from oxidb.engine.engine import Engine
    from oxidb.engine.operations import Operation
    from oxidb.metrics import ServerMetrics
    from oxidb.server.session import Session


def provides(iface: InterfaceClass) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    """
    An attrs validator: the value must provide C{iface} (declared with
    C{@implementer}), else C{TypeError} naming the field.
    """

    def check(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not iface.providedBy(value):
            raise TypeError(f"{attribute.name} must provide {iface.__name__}, not {value!r}")

    return check


def provides_or_none(iface: InterfaceClass) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    """L{provides}, or C{None} (an optional part that is off)."""
    check = provides(iface)

    def optional(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is not None:
            check(instance, attribute, value)

    return optional


class IExecutor(Interface):
    """
    Where blocking work runs. The standalone executor uses the thread pool for
    reads and the engine's writer thread for writes; the cluster executor sends
    writes through Raft and applies them on commit. Tests use a synchronous one.
    """

    def read(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
        """Run C{fn(*args, **kwargs)} off the reactor thread."""

    def write(op: Operation) -> Deferred[Any]:
        """
        Apply one state change and fire with its result (the reply's data).

        C{op} is an L{oxidb.engine.operations.Operation}, e.g.
        C{Insert(collection="c", document={...})}; its C{to_json()} is what
        the Raft log carries (server.md 8.6), and applying it is
        deterministic given the same prior state and C{now}.
        """


class IInlineReads(Interface):
    """
    An executor that may run a small read on the calling (reactor) thread,
    saving the worker round trip (the standalone one; a cluster's reads
    wait for its read gate, so it does not provide this).
    """

    def read_inline(inline: Callable[..., Any], fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """
        C{inline(*args)} here, within the engine's inline budget; when it
        declines (L{oxidb.engine.governor.NotInline}), C{fn(*args)} as
        L{IExecutor.read} runs it.
        """


class IEngineSource(Interface):
    """Where the engine is found once it has opened (the server's lifecycle)."""

    engine = Attribute("the opened L{oxidb.engine.engine.Engine}, or None before it opens")


class IDispatcher(Interface):
    """Runs requests (C{pipeline} runs its sub-requests through it)."""

    registry = Attribute("the complete L{oxidb.commands.CommandRegistry}")

    def dispatch(ctx: CommandContext, request: Any) -> Reply | Deferred[Reply]:
        """Run one request: a L{Reply}, or a Deferred firing with one."""


class IClusterControl(Interface):
    """
    What the cluster-management commands use of the local Raft node
    (L{oxidb.raft.service.RaftService} provides it). Each action fires with
    the node's answer or fails with L{oxidb.errors.RaftError}.
    """

    published_address = Attribute("the Raft address peers dial, or None before the port is bound")

    def initialize(addr: str) -> Deferred[Any]:
        """C{raft_init}: start a one-node cluster reachable at C{addr}."""

    def add_learner(node_id: int, addr: str) -> Deferred[Any]:
        """Add a non-voting member; fires with C{(log_id, membership)}."""

    def change_membership(voters: set[int]) -> Deferred[Any]:
        """Make C{voters} the voting set; fires with C{(log_id, membership)}."""

    def remove_node(node_id: int) -> Deferred[Any]:
        """Remove a member; fires with C{(log_id, membership)}."""

    def transfer_leadership(to: int) -> Deferred[Any]:
        """Hand leadership to C{to}; fires with C{(leader, term)}."""

    def metrics() -> Any:
        """The node's L{oxidb.raft.node.RaftMetrics} now."""


class IServices(IEngineSource):
    """
    The server-wide parts a handler may use, built once by L{oxidb.compose}
    and read-only afterwards. Optional parts are None when off.
    """

    config = Attribute("the L{oxidb.config.Config}")
    clock = Attribute("an IReactorTime")
    data_dir = Attribute("the data directory")
    registry = Attribute("the complete L{oxidb.commands.CommandRegistry}")
    executor = Attribute("the L{IExecutor}")
    dispatcher = Attribute("the L{IDispatcher}")
    threadpool = Attribute("the L{oxidb.server.workers.WorkerPool}")
    metrics = Attribute("the L{oxidb.metrics.ServerMetrics}")
    audit = Attribute("the L{oxidb.audit.events.Auditor}, or None")
    auth = Attribute("the L{oxidb.auth.manager.AuthManager}, or None")
    raft = Attribute("the L{oxidb.raft.service.RaftService} (an L{IClusterControl}), or None")
    auth_enabled = Attribute("authentication is on")
    health_open = Attribute("C{OXIDB_HEALTH_OPEN} is on (with authentication)")
    tls_enabled = Attribute("the client port speaks TLS")
    changes = Attribute("the L{oxidb.server.changefeed.ChangeFeed}, or None")


@attrs.define
class CommandContext:
    """
    Per-request context handed to every handler.

    @ivar session: the connection's L{Session} (user, role, open transaction).
    @ivar services: the server-wide L{IServices}; handlers use the typed
        capabilities below instead.
    """

    session: Session
    services: IServices = attrs.field(validator=provides(IServices))

    def read(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
        """Run blocking work off the reactor (the executor's read side)."""
        return self.executor.read(fn, *args, **kwargs)

    def read_inline(self, inline: Callable[..., Any], fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """
        A small read (L{IInlineReads}): C{inline(*args)} on this thread if
        the executor allows it and the read stays small, else C{fn(*args)}
        as L{read} runs it.
        """
        executor = self.executor
        if IInlineReads.providedBy(executor):
            d: Deferred[Any] = executor.read_inline(inline, fn, *args)
            return d
        return executor.read(fn, *args)

    def write(self, op: Operation) -> Deferred[Any]:
        """Apply one state change (standalone: the writer; cluster: Raft)."""
        return self.executor.write(op)

    @property
    def executor(self) -> IExecutor:
        executor: IExecutor = self.services.executor
        return executor

    @property
    def engine(self) -> Engine | None:
        """The engine once it has opened, else None."""
        engine: Engine | None = self.services.engine
        return engine

    @property
    def config(self) -> Config:
        config: Config = self.services.config
        return config

    @property
    def clock(self) -> IReactorTime:
        clock: IReactorTime = self.services.clock
        return clock

    @property
    def dispatcher(self) -> IDispatcher:
        """Runs sub-requests (C{pipeline})."""
        dispatcher: IDispatcher = self.services.dispatcher
        return dispatcher

    @property
    def metrics(self) -> ServerMetrics | None:
        metrics: ServerMetrics | None = self.services.metrics
        return metrics

    @property
    def auth(self) -> AuthManager | None:
        """Users, roles and logins; None when authentication is off."""
        auth: AuthManager | None = self.services.auth
        return auth

    @property
    def audit(self) -> Auditor | None:
        """The audit trail; None when auditing is off."""
        audit: Auditor | None = self.services.audit
        return audit

    @property
    def changes(self) -> Any:
        """The node's change feed (L{oxidb.server.changefeed.ChangeFeed}), or None."""
        return getattr(self.services, "changes", None)

    @property
    def cluster(self) -> IClusterControl | None:
        """The local Raft node's management side; None when standalone."""
        cluster: IClusterControl | None = self.services.raft
        return cluster
