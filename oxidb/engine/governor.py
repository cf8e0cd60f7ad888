"""
Resource governance of reads (design.md, "Resource governance"): what one
query, aggregation or search may cost.

  - L{QueryLimits}: the engine's rows of L{oxidb.limits} as typed values.
  - L{Deadline}: a time limit over an injected monotonic clock; Python
    loops call L{Deadline.check}, SQLite calls L{Deadline.progress} (its
    progress handler) and stops the statement once the time is up.
  - L{InlineDeadline}: a L{Deadline} that also bounds the calling
    thread's CPU time (the inline budget of a read on the reactor thread).
  - L{ByteCap}: a running total of bytes read that raises once it passes
    a cap (the reply frame, an aggregation budget).
  - L{Budget}: the per-stage memory and document budget of a pipeline.
  - L{approx_size}: the JSON size of a value, the unit of every budget.

Pure and blocking; no Twisted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import orjson

from oxidb.engine.values import I64_MAX, compact_json
from oxidb.errors import AggregationLimitError, BadRequestError, ReplyTooLargeError, TimeLimitError
from oxidb.limits import ENGINE_ROWS, Limits
from oxidb.wire.limits import MAX_FRAME

#: Room left in a reply frame for the envelope around the result.
REPLY_ENVELOPE = 1024

#: The most result bytes one reply may carry.
MAX_REPLY_BYTES = MAX_FRAME - REPLY_ENVELOPE

#: What an aggregation budget charges for each document besides its JSON
#: size (Python's own bookkeeping of a small dict).
DOC_OVERHEAD = 100

Clock = Callable[[], float]


@attrs.frozen
class QueryLimits:
    """The engine's limits (see docs/security.md for each)."""

    max_time_ms: int
    max_regex_length: int
    query_max_array: int
    query_max_depth: int
    sort_max_keys: int
    pipeline_max_stages: int
    pipeline_max_fields: int
    agg_max_bytes: int
    agg_max_docs: int
    search_max_query_length: int
    search_max_terms: int
    vector_max_limit: int
    snapshot_max_secs: int = 300
    snapshot_max_open: int = 8
    max_reply_bytes: int = MAX_REPLY_BYTES

    @classmethod
    def from_limits(cls, limits: Limits) -> QueryLimits:
        """The engine rows of C{limits} (the server's C{config.limits})."""
        return cls(**{row.attr: getattr(limits, row.attr) for row in ENGINE_ROWS})


#: The limits with every row at its default.
DEFAULT_LIMITS = QueryLimits.from_limits(Limits())


# --- time ---------------------------------------------------------------------


class Deadline:
    """
    The end of a read's time. C{clock} is a monotonic function in seconds
    (C{time.monotonic} in the server; tests advance a fake one).

    @ivar overran: the time that passed was an inline budget
        (L{InlineDeadline}), not the read's own limit.
    """

    overran = False

    def __init__(self, limit_ms: int, clock: Clock) -> None:
        self.limit_ms = limit_ms
        self._clock = clock
        self._ends = clock() + limit_ms / 1000.0
        self.expired = False

    def check(self) -> None:
        """Raise L{TimeLimitError} once the time is up."""
        if self._clock() >= self._ends:
            self.expired = True
            raise TimeLimitError(self.limit_ms)

    def progress(self) -> int:
        """SQLite's progress handler: non-zero stops the running statement."""
        if self._clock() >= self._ends:
            self.expired = True
            return 1
        return 0

    def error(self) -> TimeLimitError:
        return TimeLimitError(self.limit_ms)


class InlineDeadline(Deadline):
    """
    A read's wall-clock L{Deadline} of C{limit_ms} plus an inline budget of
    C{budget_ms} of the calling thread's CPU time (C{cpu_clock}:
    C{time.thread_time} in the server). A loaded machine that deschedules
    the thread stretches wall time, not the budget: only work done counts.

    Past C{limit_ms} the read fails as any read does (L{TimeLimitError});
    past the budget it fails the same way with C{overran} set, and the
    engine hands it to a worker. A thread's CPU time never grows faster
    than wall time, so the CPU clock (a system call) is read only once the
    wall clock has passed the point where the budget could be spent.
    """

    def __init__(self, limit_ms: int, clock: Clock, budget_ms: int, cpu_clock: Clock) -> None:
        now = clock()
        self.limit_ms = limit_ms
        self.budget_ms = budget_ms
        self._clock = clock
        self._cpu_clock = cpu_clock
        self._ends = now + limit_ms / 1000.0
        self._cpu_ends = cpu_clock() + budget_ms / 1000.0
        # The wall-clock time before which neither limit can have passed.
        self._next = min(self._ends, now + budget_ms / 1000.0)
        self.expired = False
        self.overran = False

    def check(self) -> None:
        """Raise L{TimeLimitError} once either limit has passed (C{overran}: the budget)."""
        now = self._clock()
        if now >= self._next and self._passed(now):
            raise TimeLimitError(self.limit_ms)

    def progress(self) -> int:
        """SQLite's progress handler: non-zero stops the running statement."""
        now = self._clock()
        return 1 if now >= self._next and self._passed(now) else 0

    def _passed(self, now: float) -> bool:
        if now >= self._ends:
            self.expired = True
            return True
        left = self._cpu_ends - self._cpu_clock()
        if left <= 0:
            self.expired = self.overran = True
            return True
        self._next = min(self._ends, now + left)
        return False


class NotInline(Exception):
    """
    A read tried on the reactor thread (L{oxidb.engine.engine.Engine.find_raw_inline})
    is not small, or ran out of its inline budget (C{overran}): run it on a
    worker instead.
    """

    def __init__(self, overran: bool = False) -> None:
        super().__init__("overran the inline budget" if overran else "not a small read")
        self.overran = overran


class _NoDeadline(Deadline):
    """No time limit (writes on the writer thread, pure reference runs)."""

    def __init__(self) -> None:
        self.limit_ms = 0
        self.expired = False

    def check(self) -> None:
        pass

    def progress(self) -> int:
        return 0


NO_DEADLINE: Deadline = _NoDeadline()


def time_limit_ms(requested: object, default_ms: int) -> int:
    """
    The time limit of one request: C{default_ms}, lowered by a requested
    C{max_time_ms} (C{None} or C{0}: the default). Anything but an integer
    from 0 to 2**63 - 1 is a L{BadRequestError}.
    """
    if requested is None:
        return default_ms
    if type(requested) is not int or not 0 <= requested <= I64_MAX:
        raise BadRequestError("'max_time_ms' must be a non-negative integer")
    return default_ms if requested == 0 else min(requested, default_ms)


# --- sizes ----------------------------------------------------------------------


def approx_size(value: Any) -> int:
    """The length of C{value}'s compact JSON text (in UTF-8 bytes)."""
    try:
        return len(orjson.dumps(value))
    except (TypeError, orjson.JSONEncodeError):
        # Integers beyond 64 bits; the text is as long as the digits.
        return len(compact_json(value).encode("utf-8", "surrogatepass"))


def text_size(text: str) -> int:
    """The UTF-8 length of a stored JSON text (O(1) for ASCII texts)."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


@attrs.define(eq=False)
class ByteCap:
    """
    A running total that raises C{error()} once it passes C{limit}; C{add}
    is called before the bytes it counts are kept.
    """

    limit: int
    _error: Callable[[], Exception]
    total: int = attrs.field(init=False, default=0)

    def add(self, size: int) -> None:
        self.total += size
        if self.total > self.limit:
            raise self._error()


def reply_cap(limits: QueryLimits, paging: str = "limit and skip") -> ByteCap:
    """The cap of one reply's result."""
    return ByteCap(limits.max_reply_bytes, lambda: ReplyTooLargeError(paging))


@attrs.define(eq=False)
class Budget:
    """
    The budget of one aggregation: every stage's output (and a C{$group}'s
    state) holds at most C{max_docs} documents and C{max_bytes} bytes,
    counted as L{approx_size} plus L{DOC_OVERHEAD} per document. A stage
    counts what it is about to build and stops before building past the
    budget.
    """

    max_bytes: int
    max_docs: int
    deadline: Deadline = NO_DEADLINE
    stage: str = attrs.field(init=False, default="input")
    docs: int = attrs.field(init=False, default=0)
    bytes: int = attrs.field(init=False, default=0)

    @classmethod
    def unlimited(cls) -> Budget:
        return cls(2**63, 2**63)

    @classmethod
    def of(cls, limits: QueryLimits, deadline: Deadline) -> Budget:
        return cls(limits.agg_max_bytes, limits.agg_max_docs, deadline)

    def start(self, stage: str) -> None:
        """Start counting a new stage's output."""
        self.stage = stage
        self.docs = 0
        self.bytes = 0

    def add(self, docs: int, nbytes: int) -> None:
        """Count C{docs} more documents of C{nbytes} (overhead not included)."""
        self.docs += docs
        self.bytes += nbytes + docs * DOC_OVERHEAD
        if self.docs > self.max_docs:
            raise AggregationLimitError(self.stage, "document", f"{self.max_docs} documents")
        if self.bytes > self.max_bytes:
            raise AggregationLimitError(self.stage, "memory", f"{self.max_bytes} bytes")

    def cap(self) -> ByteCap:
        """A L{ByteCap} of the whole byte budget, failing as this stage."""
        stage = self.stage
        return ByteCap(
            self.max_bytes, lambda: AggregationLimitError(stage, "memory", f"{self.max_bytes} bytes")
        )
