"""
The change feed (oxidb.server.changefeed): replay buffer, cursors, resume
tokens and overflow for watchers that do not read.
"""

from __future__ import annotations

from typing import Any

import pytest

from oxidb.engine.changes import Change, OperationChanges
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
    return [OperationChanges.of(t, [("insert", collection, t, None, size)]) for t in tokens]


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
    feed.publish([OperationChanges.of(1, [("delete", "c", 1, None, 0), ("delete", "c", 2, None, 0)], lost=70_000)])
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
