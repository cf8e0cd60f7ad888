"""
The seams between the metrics package and the server that feeds it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from zope.interface import Interface

if TYPE_CHECKING:
    from oxidb.metrics._values import Probe, Readiness


class IServerMetrics(Interface):
    """
    The request-path hooks of a server's metrics.

    Every hook is called on the reactor thread only (they update plain
    integers without locks) and costs a few hundred nanoseconds at most.
    """

    def connection_opened() -> None:
        """A client connection was accepted."""

    def connection_closed() -> None:
        """A client connection went away (for any reason)."""

    def bytes_received(n: int) -> None:
        """C{n} bytes arrived from a client (frame headers included)."""

    def bytes_sent(n: int) -> None:
        """C{n} bytes were written to a client (frame headers included)."""

    def command_finished(cmd: object, result: str, seconds: float, database: str | None = None) -> None:
        """
        One request was answered.

        @param cmd: the request's C{cmd} value; anything that is not a
            registered command name is counted as C{unknown}.
        @param result: C{ok} (a success reply), C{error} (an error reply) or
            C{denied} (refused by the auth gate or RBAC).
        @param seconds: time from decoded request to encoded reply, from a
            monotonic clock.
        @param database: the database a command acting in one targeted, or
            None.
        """

    def counter(cmd: str) -> ICommandCounter:
        """
        The counters C{command_finished(cmd, ...)} adds to, to be kept by a
        caller that counts many requests of one registered command:
        counting into them is the same as calling C{command_finished}
        without a database.
        """

    def auth_failed() -> None:
        """A login attempt failed."""

    def tx_committed() -> None:
        """A transaction committed."""

    def tx_conflicted() -> None:
        """A transaction failed its commit-time conflict check."""


class ICommandCounter(Interface):
    """The replies of one command (L{IServerMetrics.counter})."""

    def ok(seconds: float) -> None:
        """One success reply, C{seconds} after the request was decoded."""

    def finished(result: str, seconds: float) -> None:
        """One reply with C{result} (C{ok}, C{error} or C{denied})."""


class IHealth(Interface):
    """Answers the load balancer's and the orchestrator's probes."""

    def liveness() -> Probe:
        """Whether the server accepts and serves requests."""

    def readiness() -> Readiness:
        """Whether this node should receive traffic, and whether it leads."""
