"""
What a command handler sees: the connection's session, the server's shared
parts, and the two ways to do blocking work.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import attrs
from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from oxidb.engine.operations import Operation

    from oxidb.server.session import Session


class IExecutor(Interface):
    """
    Where blocking work runs. The standalone executor uses the thread pool for
    reads and the engine's writer thread for writes; the cluster executor sends
    writes through Raft and applies them on commit. Tests use a synchronous one.
    """

    def read(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> "Deferred[Any]":
        """Run C{fn(*args, **kwargs)} off the reactor thread."""

    def write(op: "Operation") -> "Deferred[Any]":
        """
        Apply one state change and fire with its result (the reply's data).

        C{op} is an L{oxidb.engine.operations.Operation}, e.g.
        C{Insert(collection="c", document={...})}; its C{to_json()} is what
        the Raft log carries (server.md 8.6), and applying it is
        deterministic given the same prior state and C{now}.
        """


class IServices(Interface):
    """The server-wide parts a handler may use (see L{oxidb.service})."""

    config = Attribute("the L{oxidb.config.Config}")
    clock = Attribute("an IReactorTime")
    engine = Attribute("the L{oxidb.engine.Engine}, or None before it opens")
    executor = Attribute("the L{IExecutor}")
    registry = Attribute("the L{oxidb.commands.CommandRegistry}")


@attrs.define
class CommandContext:
    """
    Per-request context handed to every handler.

    @ivar session: the connection's L{Session} (user, role, open transaction).
    @ivar services: the server-wide L{IServices}.
    """

    session: "Session"
    services: Any

    def read(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> "Deferred[Any]":
        return self.services.executor.read(fn, *args, **kwargs)

    def write(self, op: "Operation") -> "Deferred[Any]":
        return self.services.executor.write(op)

    @property
    def engine(self) -> Any:
        return self.services.engine
