"""
The change feed: the node's recent document changes and the watchers
following them (change streams, server.md 3.6 and docs/change-streams.md).

The engine's writer hands every commit's changes over (L{ReactorListener},
which moves them to the reactor thread); L{ChangeFeed.publish} appends them
to the replay buffer and lets every watcher catch up. Everything here runs
on the reactor thread.

B{One buffer, a cursor per watcher.} The buffer holds the last
C{capacity} changes (at least L{REPLAY_EVENTS}), fewer only when their
documents together pass C{max_bytes}. Its entries are whole operations
(L{OperationChanges}, one per committed operation); a change's L{Change}
is built only when a watcher is written it, so publishing costs the same
for one document or thousands, and nothing per document while nobody
watches. A watcher is a cursor into it: the
token of the last change it has passed. While its connection takes what is
written (the transport has not paused us), it is written the changes after
its cursor at once; while the client does not read, its cursor stays where
it is and nothing is copied or queued for it, so a slow watcher holds no
memory of its own and never slows a writer. When the buffer drops changes
its cursor has not passed yet, they are counted, and once the client reads
again it gets C{{"event": "overflow", "data": {"dropped": n}}} before the
next change (and at the latest when it has caught up).

B{Resuming.} C{resume_after} picks the cursor: changes with a larger token
are replayed from the buffer. A token below what the buffer still holds is
C{resume token too old}. The buffer starts empty whenever the engine opens
(the server starts, a snapshot was installed): its base is the database's
last token, so a client that has seen everything up to it resumes without a
gap, and any older token is too old. In cluster mode a token ahead of this
node (a client coming from a node further along) is accepted: the changes up
to it are skipped as this node applies them; standalone such a token cannot
be from this history and is refused.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from operator import attrgetter
from typing import Any

from zope.interface import Attribute, Interface, implementer

from oxidb._threads import ReactorQueue
from oxidb.engine import databases
from oxidb.engine.changes import MAX_TOKEN, Change, IChangeListener, OperationChanges
from oxidb.engine.store import is_reserved_collection
from oxidb.errors import BadRequestError, ServerBusyError
from oxidb.logs import Logger

#: Changes the replay buffer holds (server.md 3.6: 4096).
REPLAY_EVENTS = 4096

#: Document bytes the replay buffer holds at most.
REPLAY_BYTES = 64 * 1024 * 1024

_last = attrgetter("last")


class ResumeTokenTooOldError(BadRequestError):
    """The replay buffer no longer holds the changes after the token (server.md 3.6)."""

    template = "resume token too old"


class IWatcher(Interface):
    """The connection side of a subscription."""

    paused = Attribute("the client does not read: write nothing now")

    def send_change(change: Change) -> None:
        """Write one C{change} event."""

    def send_overflow(dropped: int) -> None:
        """Write one C{overflow} event."""

    def feed_reset() -> None:
        """The feed lost its history (the engine's database was replaced): end the watch."""


class Subscription:
    """
    One watcher's place in the feed.

    @ivar collection: only changes of this collection (its engine name,
        qualified), or None for every collection of L{database}.
    @ivar database: the database watched.
    @ivar cursor: the token of the last change passed.
    @ivar dropped: changes this watcher missed, not yet reported.
    @ivar started: changes are written (after the C{watching} reply).
    """

    def __init__(
        self, feed: ChangeFeed, watcher: Any, collection: str | None, cursor: int, database: str = databases.DEFAULT
    ) -> None:
        self.feed = feed
        self.watcher = watcher
        self.collection = collection
        self.database = database
        self.cursor = cursor
        self.dropped = 0
        self.started = False
        self.active = True

    def start(self) -> None:
        """The C{watching} reply has been written: replay and follow."""
        self.started = True
        self.feed.catch_up(self)

    def resume(self) -> None:
        """The client reads again."""
        self.feed.catch_up(self)

    def cancel(self) -> None:
        """Stop watching (unwatch, connection lost)."""
        if self.active:
            self.active = False
            self.feed.unsubscribe(self)

    def matches(self, change: Change) -> bool:
        """Its collection's changes; without one, those of every collection of its database clients may name."""
        return self.matches_collection(change.collection)

    def matches_collection(self, name: str) -> bool:
        """It follows the changes of the collection C{name} (qualified)."""
        if self.collection is None:
            database, collection = databases.split(name)
            return database == self.database and not is_reserved_collection(collection)
        return name == self.collection


class ChangeFeed:
    """
    See the module docstring.

    @param accept_ahead: accept resume tokens beyond the last change seen
        (cluster mode).
    @param max_watchers: subscriptions at most (0: no limit).
    @ivar last_token: the token of the last change published (or the base).
    @ivar floor: the highest token the buffer cannot replay.
    @ivar published: changes published since start.
    """

    _log = Logger()

    def __init__(
        self,
        *,
        capacity: int = REPLAY_EVENTS,
        max_bytes: int = REPLAY_BYTES,
        max_watchers: int = 0,
        accept_ahead: bool = False,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.max_watchers = max_watchers
        self.accept_ahead = accept_ahead
        # The operations in the buffer: from index _head on, without the
        # first _skip changes of that one; _count changes, _bytes bytes.
        self._ops: list[OperationChanges] = []
        self._head = 0
        self._skip = 0
        self._count = 0
        self._bytes = 0
        self.last_token = 0
        self.floor = 0
        self.published = 0
        self.subscriptions: set[Subscription] = set()

    # --- the engine's side ------------------------------------------------------

    def reset(self, last_token: int) -> None:
        """
        The engine opened a database whose last token is C{last_token}. The
        same token as ours: nothing was missed. Otherwise the history
        changed under us: the buffer restarts there and every watcher ends.
        """
        if last_token == self.last_token:
            return
        self._ops, self._head, self._skip, self._count, self._bytes = [], 0, 0, 0, 0
        self.last_token = self.floor = last_token
        for subscription in list(self.subscriptions):
            subscription.cancel()
            subscription.watcher.feed_reset()

    def publish(self, operations: list[OperationChanges]) -> None:
        """
        Append committed operations (in token order) and let the watchers
        follow: constant work per operation, whatever its documents, while
        nobody watches.
        """
        if not operations:
            return
        last = self.last_token
        if operations[0].first <= last:
            operations = self._unseen(operations, last)
            if not operations:
                return
        ops = self._ops
        count = 0
        for op in operations:
            ops.append(op)
            count += op.count
            self._bytes += op.size
        self._count += count
        self.published += count
        self.last_token = operations[-1].last
        # Watchers that read get everything before the buffer drops any.
        for subscription in list(self.subscriptions):
            self.catch_up(subscription)
        if self._count > self.capacity or self._bytes > self.max_bytes:
            self._evict()

    @staticmethod
    def _unseen(operations: list[OperationChanges], last: int) -> list[OperationChanges]:
        """The changes of C{operations} after token C{last} (some were published already)."""
        fresh = []
        for op in operations:
            if op.last <= last:
                continue
            if op.first <= last:
                op = _after(op, last + 1 - op.first)
            fresh.append(op)
        return fresh

    def _evict(self) -> None:
        """
        Drop the oldest changes past C{capacity}, and the oldest operations
        while their documents pass C{max_bytes} (all but the newest one):
        whole operations, or the first changes of the oldest one when the
        count cap falls inside it. Its documents stay counted until all of
        its changes are gone, since they are freed together.
        """
        ops = self._ops
        head = old_head = self._head
        skip = old_skip = self._skip
        count, nbytes = self._count, self._bytes
        newest = len(ops) - 1
        while True:
            op = ops[head]
            live = op.count - skip
            over = count - self.capacity
            if over >= live or (nbytes > self.max_bytes and head < newest):
                count -= live
                nbytes -= op.size
                head += 1
                skip = 0
            else:
                if over > 0:
                    skip += over
                    count -= over
                break
        if head == old_head and skip == old_skip:
            return
        floor = ops[head].first + skip - 1 if skip else ops[head - 1].last
        for subscription in self.subscriptions:
            if subscription.cursor < floor:
                # Changes it had not passed yet are gone: count them.
                subscription.dropped += self._missed(subscription, old_head, floor)
                subscription.cursor = floor
        self.floor = floor
        self._count, self._bytes, self._skip = count, nbytes, skip
        if head > 64 and 2 * head > len(ops):
            del ops[:head]
            head = 0
        self._head = head

    def _missed(self, subscription: Subscription, head: int, floor: int) -> int:
        """
        The changes C{subscription} is to see after its cursor (at or past
        the old floor) up to C{floor}, looked for from the operation at
        C{head} on, with those its operations did not record.
        """
        ops = self._ops
        cursor = subscription.cursor
        i = bisect.bisect_right(ops, cursor, lo=head, key=_last)
        missed = 0
        while i < len(ops):
            op = ops[i]
            if op.first > floor:
                break
            n = op.count
            lo = max(cursor + 1 - op.first, 0)
            hi = min(floor - op.first, n - 1)
            i += 1
            matches = subscription.matches_collection
            for _, collection, start, ids, _ in op.runs:
                end = start + len(ids) - 1
                if end >= lo and start <= hi and matches(collection):
                    missed += min(end, hi) - max(start, lo) + 1
            if hi == n - 1 and matches(op.runs[-1][1]):
                missed += op.lost
        return missed

    # --- the watchers' side -----------------------------------------------------

    def check_token(self, resume_after: int | None) -> int:
        """
        The cursor a watch resuming after C{resume_after} starts at (None:
        from now on).

        @raise ResumeTokenTooOldError: the buffer no longer holds the
            changes after it.
        @raise BadRequestError: standalone, a token this server never issued.
        """
        if resume_after is None:
            return self.last_token
        if not 0 <= resume_after <= MAX_TOKEN:
            raise BadRequestError("'resume_after' must be an unsigned 64-bit integer")
        if resume_after < self.floor:
            raise ResumeTokenTooOldError()
        if resume_after > self.last_token and not self.accept_ahead:
            raise BadRequestError("resume token is ahead of this server's last change")
        return resume_after

    def subscribe(
        self,
        watcher: Any,
        collection: str | None = None,
        resume_after: int | None = None,
        database: str = databases.DEFAULT,
    ) -> Subscription:
        """
        A subscription for C{watcher} to C{collection} (qualified), or to
        every collection of C{database}; not started yet
        (L{Subscription.start} once the C{watching} reply is written).

        @raise ServerBusyError: C{max_watchers} watchers already.
        """
        cursor = self.check_token(resume_after)
        if self.max_watchers and len(self.subscriptions) >= self.max_watchers:
            raise ServerBusyError("too many watchers (OXIDB_MAX_WATCHERS)")
        subscription = Subscription(self, watcher, collection, cursor, database)
        self.subscriptions.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self.subscriptions.discard(subscription)

    def catch_up(self, subscription: Subscription) -> None:
        """Write C{subscription} the changes after its cursor while its client reads."""
        watcher = subscription.watcher
        if not subscription.started or not subscription.active or watcher.paused:
            return
        ops = self._ops
        i = bisect.bisect_right(ops, subscription.cursor, lo=self._head, key=_last)
        end = len(ops)
        while i < end:
            op = ops[i]
            i += 1
            only = op.collection
            if only is not None and not subscription.matches_collection(only):
                subscription.cursor = op.last
                continue
            position = max(subscription.cursor + 1 - op.first, 0)
            n = op.count
            while position < n:
                change = op.change(position)
                position += 1
                subscription.cursor = change.token
                if only is None and not subscription.matches(change):
                    continue
                if subscription.dropped:
                    dropped, subscription.dropped = subscription.dropped, 0
                    watcher.send_overflow(dropped)
                watcher.send_change(change)
                subscription.dropped += change.lost
                if watcher.paused or not subscription.active:
                    return
        if subscription.dropped and subscription.active:
            dropped, subscription.dropped = subscription.dropped, 0
            watcher.send_overflow(dropped)


def _after(op: OperationChanges, position: int) -> OperationChanges:
    """The changes of C{op} from C{position} on."""
    runs = []
    for operation, collection, start, ids, texts in op.runs:
        skip = max(position - start, 0)
        if skip < len(ids):
            kept = (ids[skip:], None if texts is None else texts[skip:])
            runs.append((operation, collection, start + skip - position, *kept))
    return OperationChanges.of(op.first + position, runs, op.tx_id, op.lost)


@implementer(IChangeListener)
class ReactorListener:
    """The engine's listener: hands what the writer thread sees to the feed on the reactor thread."""

    def __init__(self, call_from_thread: Callable[..., Any], feed: ChangeFeed) -> None:
        self._call = call_from_thread
        self._feed = feed

    def opened(self, last_token: int) -> None:
        self._call(self._feed.reset, last_token)

    def committed(self, operations: list[OperationChanges]) -> None:
        self._call(self._feed.publish, operations)


def attach(engine: Any, reactor: Any, feed: ChangeFeed) -> None:
    """
    Feed C{feed} from C{engine}'s commits, starting at its last token (if
    open). The changes reach the reactor thread through a L{ReactorQueue}; a
    reactor without threads (tests' C{MemoryReactorClock}) gets them at its
    next C{advance()}.
    """
    if hasattr(reactor, "callFromThread"):
        call: Callable[..., Any] = ReactorQueue(reactor).call
    else:

        def call(fn: Callable[..., Any], *args: Any) -> None:
            reactor.callLater(0, fn, *args)

    last = engine.listen(ReactorListener(call, feed))
    feed.reset(last)


__all__ = [
    "REPLAY_BYTES",
    "REPLAY_EVENTS",
    "ChangeFeed",
    "IWatcher",
    "ReactorListener",
    "ResumeTokenTooOldError",
    "Subscription",
    "attach",
]
