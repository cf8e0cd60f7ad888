"""
The change feed (oxidb.server.changefeed): replay buffer, cursors, resume
tokens and overflow for watchers that do not read.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oxidb.engine.changes import Change, OperationChanges, Run
from oxidb.errors import BadRequestError, ServerBusyError
from oxidb.server.changefeed import ChangeFeed, ResumeTokenTooOldError


class Watcher:
    def __init__(self) -> None:
        self.paused = False
        self.got: list[Any] = []
        self.reset = False
        self.pause_after: int | None = None

    def send_change(self, change: Change) -> None:
        self.got.append(change.token)
        if self.pause_after is not None and len(self.got) >= self.pause_after:
            self.paused = True

    def send_overflow(self, dropped: int) -> None:
        self.got.append(("overflow", dropped))

    def feed_reset(self) -> None:
        self.reset = True


def changes(*tokens: int, collection: str = "c", size: int = 0) -> list[OperationChanges]:
    """One operation of one change per token."""
    return [OperationChanges.of(t, [("insert", collection, 0, [t], ["x" * size])]) for t in tokens]


def started(feed: ChangeFeed, **kwargs: Any) -> tuple[Watcher, Any]:
    watcher = Watcher()
    subscription = feed.subscribe(watcher, **kwargs)
    subscription.start()
    return watcher, subscription


def test_live_watcher_follows_in_order_and_filters_by_collection() -> None:
    feed = ChangeFeed()
    everything, _ = started(feed)
    only_d, _ = started(feed, collection="d")
    feed.publish(changes(1, 2) + changes(3, collection="d"))
    feed.publish(changes(2))  # a token already published is ignored
    assert everything.got == [1, 2, 3]
    assert only_d.got == [3]


def test_nothing_is_written_before_start() -> None:
    feed = ChangeFeed()
    watcher = Watcher()
    subscription = feed.subscribe(watcher)
    feed.publish(changes(1))
    assert watcher.got == []
    subscription.start()
    assert watcher.got == [1]


def test_resume_replays_after_the_token() -> None:
    feed = ChangeFeed()
    feed.publish(changes(1, 2, 3, 4))
    watcher, _ = started(feed, resume_after=2)
    assert watcher.got == [3, 4]
    caught_up, _ = started(feed, resume_after=4)
    assert caught_up.got == []


def test_too_old_and_bad_tokens() -> None:
    feed = ChangeFeed(capacity=3)
    feed.reset(10)
    feed.publish(changes(11, 12, 13, 14, 15))
    assert feed.floor == 12
    with pytest.raises(ResumeTokenTooOldError, match="^resume token too old$"):
        feed.subscribe(Watcher(), resume_after=11)
    watcher, _ = started(feed, resume_after=12)
    assert watcher.got == [13, 14, 15]
    with pytest.raises(BadRequestError, match="ahead"):
        feed.subscribe(Watcher(), resume_after=16)
    with pytest.raises(BadRequestError, match="unsigned 64-bit"):
        feed.subscribe(Watcher(), resume_after=-1)
    with pytest.raises(BadRequestError, match="unsigned 64-bit"):
        feed.subscribe(Watcher(), resume_after=2**64)


def test_cluster_accepts_a_token_ahead_and_skips_up_to_it() -> None:
    feed = ChangeFeed(accept_ahead=True)
    feed.publish(changes(1))
    watcher, _ = started(feed, resume_after=3)
    feed.publish(changes(2, 3, 4))
    assert watcher.got == [4]


def test_a_watcher_that_does_not_read_holds_nothing_and_gets_overflow() -> None:
    feed = ChangeFeed(capacity=4)
    watcher, subscription = started(feed)
    watcher.pause_after = 2
    fast, _ = started(feed)
    feed.publish(changes(1, 2, 3))
    assert watcher.got == [1, 2]
    feed.publish(changes(*range(4, 10)))  # 3..5 fall out of the buffer unread
    assert fast.got == list(range(1, 10))
    assert subscription.cursor == 5 and subscription.dropped == 3
    watcher.paused, watcher.pause_after = False, None
    subscription.resume()
    assert watcher.got == [1, 2, ("overflow", 3), 6, 7, 8, 9]


def test_overflow_is_reported_once_caught_up_too() -> None:
    feed = ChangeFeed(capacity=2)
    watcher, subscription = started(feed)
    watcher.paused = True
    feed.publish(changes(1, 2, 3, 4, 5))
    watcher.paused = False
    subscription.resume()
    assert watcher.got == [("overflow", 3), 4, 5]


def test_lost_changes_of_a_huge_operation_are_an_overflow() -> None:
    feed = ChangeFeed()
    watcher, _ = started(feed)
    feed.publish([OperationChanges.of(1, [("delete", "c", 0, [1, 2], None)], lost=70_000)])
    assert watcher.got == [1, 2, ("overflow", 70_000)]


def test_buffer_is_bounded_by_document_bytes() -> None:
    feed = ChangeFeed(capacity=100, max_bytes=1000)
    feed.publish(changes(1, 2, 3, size=400))
    assert feed.floor == 1
    with pytest.raises(ResumeTokenTooOldError):
        feed.subscribe(Watcher(), resume_after=0)
    feed.publish(changes(4, size=5000))  # the newest stays however large
    assert feed.floor == 3


def test_watcher_cap_and_cancel() -> None:
    feed = ChangeFeed(max_watchers=1)
    _, subscription = started(feed)
    with pytest.raises(ServerBusyError, match="OXIDB_MAX_WATCHERS"):
        feed.subscribe(Watcher())
    subscription.cancel()
    subscription.cancel()
    started(feed)


def test_reset_to_another_history_ends_the_watchers() -> None:
    feed = ChangeFeed()
    feed.reset(5)
    watcher, _ = started(feed)
    feed.reset(5)  # the same database reopened
    assert not watcher.reset
    feed.publish(changes(6))
    feed.reset(100)  # a snapshot was installed
    assert watcher.reset and not feed.subscriptions
    assert feed.floor == feed.last_token == 100
    with pytest.raises(ResumeTokenTooOldError):
        feed.subscribe(Watcher(), resume_after=6)


# --- one entry per operation --------------------------------------------------


def operation(sequence: int, *collections: str, lost: int = 0, size: int = 0) -> OperationChanges:
    """An operation committed as C{sequence}, one change per collection named."""
    runs: list[Run] = []
    for i, name in enumerate(collections):
        if runs and runs[-1][1] == name:  # changes of one collection in a row: one run
            runs[-1][3].append(i + 1)
            texts = runs[-1][4]
            assert texts is not None
            texts.append("x" * size)
        else:
            runs.append(("insert", name, i, [i + 1], ["x" * size]))
    return OperationChanges.of(sequence << 20, runs, lost=lost)


def tok(sequence: int, position: int) -> int:
    return (sequence << 20) | position


def test_a_resume_token_in_the_middle_of_an_operation() -> None:
    feed = ChangeFeed()
    feed.publish([operation(1, "c", "c"), operation(2, "c", "d", "c", "d", "c")])
    watcher, _ = started(feed, resume_after=tok(2, 1))
    assert watcher.got == [tok(2, 2), tok(2, 3), tok(2, 4)]
    only_d, _ = started(feed, collection="d", resume_after=tok(2, 1))
    assert only_d.got == [tok(2, 3)]
    # A token between two operations' changes resumes at the next operation.
    between, _ = started(feed, resume_after=tok(1, 1))
    assert between.got == [tok(2, n) for n in range(5)]


def test_the_count_cap_falls_inside_an_operation() -> None:
    feed = ChangeFeed(capacity=4)
    feed.publish([operation(1, "c", "c", "c"), operation(2, "c", "c", "c")])
    # Six changes, four kept: the first two of operation 1 are gone.
    assert feed.floor == tok(1, 1)
    with pytest.raises(ResumeTokenTooOldError):
        feed.subscribe(Watcher(), resume_after=tok(1, 0))
    watcher, _ = started(feed, resume_after=tok(1, 1))
    assert watcher.got == [tok(1, 2), tok(2, 0), tok(2, 1), tok(2, 2)]
    feed.publish([operation(3, "c", "c")])
    # The rest of operation 1 and the first change of operation 2 go.
    assert feed.floor == tok(2, 0)
    late, _ = started(feed, resume_after=tok(2, 0))
    assert late.got == [tok(2, 1), tok(2, 2), tok(3, 0), tok(3, 1)]


def test_an_operation_larger_than_the_buffer_keeps_its_last_changes() -> None:
    feed = ChangeFeed(capacity=2)
    watcher, subscription = started(feed)
    watcher.paused = True
    feed.publish([operation(1, *"ccccc", lost=10)])
    assert feed.floor == tok(1, 2)
    watcher.paused = False
    subscription.resume()
    assert watcher.got == [("overflow", 3), tok(1, 3), tok(1, 4), ("overflow", 10)]


def test_the_byte_cap_drops_whole_operations_and_keeps_the_newest() -> None:
    feed = ChangeFeed(capacity=100, max_bytes=1000)
    feed.publish([operation(1, "c", "c", size=300)])
    assert feed.floor == 0
    feed.publish([operation(2, "c", "c", size=300)])
    assert feed.floor == tok(1, 1)  # 1,200 bytes: all of operation 1 goes
    feed.publish([operation(3, "c", size=300)])
    assert feed.floor == tok(1, 1)
    feed.publish([operation(4, *"cccc", size=5000)])
    assert feed.floor == tok(3, 0)
    watcher, _ = started(feed, resume_after=tok(3, 0))
    assert watcher.got == [tok(4, n) for n in range(4)]


def test_overflow_counts_only_the_watched_collection_and_its_lost_changes() -> None:
    feed = ChangeFeed(capacity=3)
    only_c, c_sub = started(feed, collection="c")
    only_d, d_sub = started(feed, collection="d")
    only_c.paused = only_d.paused = True
    # c: 3 + 2 (lost counted on a c change) ; d: 2 + 7 (lost on the last, a d).
    feed.publish([operation(1, "c", "d", "c", lost=2), operation(2, "c", "d", lost=7)])
    feed.publish([operation(3, "e", "e", "e")])
    assert feed.floor == tok(2, 1)
    only_c.paused = only_d.paused = False
    c_sub.resume()
    d_sub.resume()
    assert only_c.got == [("overflow", 3 + 2)]
    assert only_d.got == [("overflow", 2 + 7)]


def test_a_reader_far_behind_gets_one_overflow_then_the_buffer() -> None:
    feed = ChangeFeed()
    watcher, subscription = started(feed)
    watcher.paused = True
    for sequence in range(1, 2001):
        feed.publish([operation(sequence, *"ccc")])
    assert len(feed._ops) < 2 * 4096 // 3 + 64  # evicted operations do not pile up
    watcher.paused = False
    subscription.resume()
    assert watcher.got[0] == ("overflow", 6000 - 4096)
    assert len(watcher.got) == 1 + 4096
    assert watcher.got[1] == tok(635, 2) and watcher.got[-1] == tok(2000, 2)


class ReferenceFeed:
    """The feed one change at a time (no byte cap): what the operations' buffer must match."""

    def __init__(self, capacity: int, watchers: dict[str | None, Watcher]) -> None:
        self.capacity = capacity
        self.events: list[Change] = []
        self.floor = 0
        self.watchers = watchers
        self.cursor = dict.fromkeys(watchers, 0)
        self.dropped = dict.fromkeys(watchers, 0)

    def publish(self, operations: list[OperationChanges]) -> None:
        for op in operations:
            self.events.extend(op.changes())
        for name in self.watchers:
            self.catch_up(name)
        while len(self.events) > self.capacity:
            change = self.events.pop(0)
            self.floor = change.token
            for name in self.watchers:
                if self.cursor[name] < change.token:
                    if name is None or change.collection == name:
                        self.dropped[name] += 1 + change.lost
                    self.cursor[name] = change.token

    def catch_up(self, name: str | None) -> None:
        watcher = self.watchers[name]
        for change in self.events:
            if watcher.paused:
                return
            if change.token <= self.cursor[name]:
                continue
            self.cursor[name] = change.token
            if name is not None and change.collection != name:
                continue
            if self.dropped[name]:
                watcher.send_overflow(self.dropped[name])
                self.dropped[name] = 0
            watcher.send_change(change)
            self.dropped[name] += change.lost
        if self.dropped[name] and not watcher.paused:
            watcher.send_overflow(self.dropped[name])
            self.dropped[name] = 0


@settings(max_examples=60, deadline=None)
@given(
    capacity=st.integers(1, 12),
    steps=st.lists(
        st.one_of(
            st.lists(st.tuples(st.lists(st.sampled_from("cd"), min_size=1, max_size=8), st.integers(0, 3)), max_size=3),
            st.tuples(st.sampled_from([None, "c", "d"]), st.booleans()),
        ),
        max_size=25,
    ),
)
def test_operations_buffer_matches_the_feed_one_change_at_a_time(capacity: int, steps: list[Any]) -> None:
    names: list[str | None] = [None, "c", "d"]
    feed = ChangeFeed(capacity=capacity)
    ours = {name: started(feed, collection=name) for name in names}
    theirs = {name: Watcher() for name in names}
    reference = ReferenceFeed(capacity, theirs)
    sequence = 0
    for step in steps:
        if isinstance(step, list):
            batch = []
            for collections, lost in step:
                sequence += 1
                batch.append(operation(sequence, *collections, lost=lost))
            feed.publish(batch)
            reference.publish(batch)
        else:
            name, paused = step
            ours[name][0].paused = theirs[name].paused = paused
            if not paused:
                ours[name][1].resume()
                reference.catch_up(name)
        assert feed.floor == reference.floor
        for name in names:
            assert ours[name][0].got == theirs[name].got


def test_an_operation_published_again_in_part_keeps_only_what_is_new() -> None:
    feed = ChangeFeed()
    feed.reset(tok(1, 2))  # the database's last token falls inside operation 1
    watcher, _ = started(feed)
    feed.publish([operation(1, "c", "c", "d", "d", "c", size=10)])
    assert watcher.got == [tok(1, 3), tok(1, 4)]
    assert feed.published == 2
