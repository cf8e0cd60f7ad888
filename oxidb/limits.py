"""
Resource limits: what one client may make the server do.

Every limit is one row of L{LIMIT_ROWS}: an C{OXIDB_*} variable, a twistd
option of the same meaning, a safe default and a lower bound.
L{oxidb.config} turns each row into a setting, and L{Limits.from_environ}
builds the frozen value the server's parts read (C{config.limits}).
docs/security.md lists them in its "Limits" table; a test keeps the two in
step.

Rows are grouped by the part of the server that enforces them.
"""

from __future__ import annotations

from typing import Any, Mapping

import attrs


@attrs.frozen
class LimitRow:
    """
    @ivar attr: the L{Limits} attribute.
    @ivar env: the environment variable.
    @ivar option: the twistd long option (without C{--}).
    @ivar default: the value when neither is given.
    @ivar minimum: the smallest accepted value.
    @ivar help: one line for C{--help} and the docs table.
    """

    attr: str
    env: str
    option: str
    default: int
    minimum: int
    help: str


# --- queries, aggregation and search (enforced by the engine) ---------------

ENGINE_ROWS: tuple[LimitRow, ...] = ()


# --- connections, frames and the worker pool (enforced by the server) ------

SERVER_ROWS: tuple[LimitRow, ...] = (
    LimitRow("max_connections", "OXIDB_MAX_CONNECTIONS", "max-connections", 1024, 0,
             "open client connections at most; more are refused at once (0: no limit)"),
    LimitRow("max_connections_per_ip", "OXIDB_MAX_CONNECTIONS_PER_IP", "max-connections-per-ip", 256, 0,
             "open client connections from one address at most (0: no limit)"),
    LimitRow("preauth_max_frame", "OXIDB_PREAUTH_MAX_FRAME", "preauth-max-frame", 65536, 1024,
             "largest frame in bytes a connection may send before it has logged in (auth on)"),
    LimitRow("login_timeout", "OXIDB_LOGIN_TIMEOUT", "login-timeout", 30, 0,
             "seconds a connection has to complete a login before it is closed (auth on; 0: no limit)"),
    LimitRow("max_pipeline", "OXIDB_MAX_PIPELINE", "max-pipeline", 1000, 1,
             "commands in one pipeline request at most"),
    LimitRow("max_queued_requests", "OXIDB_MAX_QUEUED_REQUESTS", "max-queued-requests", 256, 1,
             "requests of one connection waiting or running (a pipeline counts its commands) "
             "before the server stops reading from it"),
    LimitRow("max_queued_bytes", "OXIDB_MAX_QUEUED_BYTES", "max-queued-bytes", 4 * 1024 * 1024, 65536,
             "bytes of request frames one connection may have waiting before the server stops reading from it"),
    LimitRow("pool_queue", "OXIDB_POOL_QUEUE", "pool-queue", 1024, 1,
             "requests waiting for a worker thread at most; past it requests get 'server busy'"),
    LimitRow("max_unsent_bytes", "OXIDB_MAX_UNSENT_BYTES", "max-unsent-bytes", 256 * 1024 * 1024, 1024 * 1024,
             "encoded reply bytes waiting for slow clients to read them, all connections together; "
             "past it large replies get 'server busy'"),
)


# --- login (enforced by the authentication layer) ---------------------------

AUTH_ROWS: tuple[LimitRow, ...] = ()


# --- the Raft port (enforced by the Raft transport) -------------------------

RAFT_ROWS: tuple[LimitRow, ...] = ()


LIMIT_ROWS: tuple[LimitRow, ...] = ENGINE_ROWS + SERVER_ROWS + AUTH_ROWS + RAFT_ROWS


def parse_limit(row: LimitRow, text: str) -> int:
    """
    The integer value of C{text} for C{row}.

    @raise ValueError: not an integer, or below the row's minimum.
    """
    text = text.strip()
    if not text.isdigit():
        raise ValueError("must be a non-negative integer")
    value = int(text)
    if value < row.minimum:
        raise ValueError(f"must be at least {row.minimum}")
    if value >= 2**63:
        raise ValueError("must be below 2**63")
    return value


def _defaults() -> dict[str, int]:
    return {row.attr: row.default for row in LIMIT_ROWS}


@attrs.frozen
class Limits:
    """
    The effective limits. Attributes are named by L{LIMIT_ROWS}; a row's
    attribute not given to the constructor takes the row's default, so
    C{Limits()} is the default configuration and tests can override single
    values with C{Limits.with_values(max_time_ms=50)}.
    """

    values: Mapping[str, int] = attrs.field(factory=_defaults)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        values = object.__getattribute__(self, "values")
        try:
            return values[name]
        except KeyError:
            raise AttributeError(f"no limit named {name!r}") from None

    @classmethod
    def with_values(cls, **overrides: int) -> "Limits":
        """The defaults with C{overrides} applied (each must be a known limit)."""
        values = _defaults()
        for name, value in overrides.items():
            if name not in values:
                raise TypeError(f"no limit named {name!r}")
            values[name] = value
        return cls(values)

    @classmethod
    def from_environ(cls, environ: Mapping[str, Any]) -> "Limits":
        """
        The limits given by C{environ} (values already parsed to integers by
        the config table, or text), defaults for the rest.
        """
        values = _defaults()
        for row in LIMIT_ROWS:
            if row.env in environ:
                given = environ[row.env]
                values[row.attr] = given if isinstance(given, int) else parse_limit(row, given)
        return cls(values)
