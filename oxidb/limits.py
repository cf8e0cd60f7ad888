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

from collections.abc import Mapping
from typing import Any

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

ENGINE_ROWS: tuple[LimitRow, ...] = (
    LimitRow("max_time_ms", "OXIDB_MAX_TIME_MS", "max-time-ms", 30_000, 1,
             "most milliseconds one query, aggregation or search may run (a request's max_time_ms may lower it)"),
    LimitRow("max_regex_length", "OXIDB_MAX_REGEX_LENGTH", "max-regex-length", 4096, 1,
             "longest $regex pattern, in characters"),
    LimitRow("query_max_array", "OXIDB_QUERY_MAX_ARRAY", "query-max-array", 10_000, 1,
             "most elements in one $and/$or/$in/$nin/$all array of a query"),
    LimitRow("query_max_depth", "OXIDB_QUERY_MAX_DEPTH", "query-max-depth", 100, 2,
             "deepest nesting of arrays and objects in a query or pipeline"),
    LimitRow("sort_max_keys", "OXIDB_SORT_MAX_KEYS", "sort-max-keys", 32, 1,
             "most keys in a find sort or a $sort stage"),
    LimitRow("pipeline_max_stages", "OXIDB_PIPELINE_MAX_STAGES", "pipeline-max-stages", 1000, 1,
             "most stages in one aggregation pipeline"),
    LimitRow("pipeline_max_fields", "OXIDB_PIPELINE_MAX_FIELDS", "pipeline-max-fields", 1000, 1,
             "most fields in one $project, $addFields or $group stage"),
    LimitRow("agg_max_bytes", "OXIDB_AGG_MAX_BYTES", "agg-max-bytes", 100 * 1024 * 1024, 1024,
             "most bytes (JSON size plus 100 per document) one aggregation stage may hold"),
    LimitRow("agg_max_docs", "OXIDB_AGG_MAX_DOCS", "agg-max-docs", 1_000_000, 1,
             "most documents one aggregation stage may hold or produce"),
    LimitRow("search_max_query_length", "OXIDB_SEARCH_MAX_QUERY_LENGTH", "search-max-query-length", 16_384, 1,
             "longest text_search or search query, in characters"),
    LimitRow("search_max_terms", "OXIDB_SEARCH_MAX_TERMS", "search-max-terms", 64, 1,
             "most distinct terms in a text_search or search query"),
    LimitRow("vector_max_limit", "OXIDB_VECTOR_MAX_LIMIT", "vector-max-limit", 10_000, 1,
             "largest limit and ef_search of one vector_search"),
    LimitRow("snapshot_max_secs", "OXIDB_SNAPSHOT_MAX_SECS", "snapshot-max-secs", 300, 1,
             "most seconds a snapshot (snapshot_begin) stays open; then it is ended and its WAL released"),
    LimitRow("snapshot_max_open", "OXIDB_SNAPSHOT_MAX_OPEN", "snapshot-max-open", 8, 1,
             "most snapshots open at once on a server"),
)


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
    LimitRow("max_watchers", "OXIDB_MAX_WATCHERS", "max-watchers", 256, 0,
             "connections in watch mode (change streams) at most; past it 'watch' gets 'server busy' (0: no limit)"),
)


# --- login (enforced by the authentication layer) ---------------------------

AUTH_ROWS: tuple[LimitRow, ...] = (
    LimitRow(
        "auth_name_free_attempts", "OXIDB_AUTH_NAME_FREE_ATTEMPTS", "auth-name-free-attempts", 5, 1,
        "login attempts per user name, counted when they start, before failures throttle the name",
    ),
    LimitRow(
        "auth_address_free_attempts", "OXIDB_AUTH_ADDRESS_FREE_ATTEMPTS", "auth-address-free-attempts", 20, 1,
        "login attempts per source address, counted when they start, before failures throttle the address",
    ),
    LimitRow(
        "auth_simple_concurrency", "OXIDB_AUTH_SIMPLE_CONCURRENCY", "auth-simple-concurrency", 2, 1,
        "auth_simple (Argon2) checks running at once; more are refused with 'server busy'",
    ),
)


# --- the Raft port (enforced by the Raft transport) -------------------------

RAFT_ROWS: tuple[LimitRow, ...] = (
    LimitRow(
        "raft_handshake_secs", "OXIDB_RAFT_HANDSHAKE_SECS", "raft-handshake-secs", 5, 1,
        "seconds a Raft peer connection may take to finish the authentication handshake",
    ),
    LimitRow(
        "raft_inbound_per_address", "OXIDB_RAFT_INBOUND_PER_ADDRESS", "raft-inbound-per-address", 16, 1,
        "inbound Raft connections (authenticated or not) open at once from one source address",
    ),
)


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
    def with_values(cls, **overrides: int) -> Limits:
        """The defaults with C{overrides} applied (each must be a known limit)."""
        values = _defaults()
        for name, value in overrides.items():
            if name not in values:
                raise TypeError(f"no limit named {name!r}")
            values[name] = value
        return cls(values)

    @classmethod
    def from_environ(cls, environ: Mapping[str, Any]) -> Limits:
        """
        The limits given by C{environ} (values already parsed to integers by
        the config table, or text), defaults for the rest.
        """
        given = {
            row.attr: value if isinstance(value, int) else parse_limit(row, value)
            for row in LIMIT_ROWS
            if (value := environ.get(row.env)) is not None
        }
        return cls.with_values(**given)
