"""
Snapshot reads: the engine's L{Snapshots} (a point-in-time view under
writes, the open limit, the time limit, owners, ending one being read) and
the C{snapshot_*} commands through a server in memory (bad input, another
connection's id, ended with the connection and by the timer).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import pytest
from client_helpers import memory_connector, memory_server

from oxidb.client import Client
from oxidb.client.errors import ServerBusy, ServerError
from oxidb.engine.engine import Engine
from oxidb.engine.governor import DEFAULT_LIMITS
from oxidb.engine.operations import Insert, Update
from oxidb.engine.reads import Reader
from oxidb.errors import ServerBusyError, SnapshotNotFoundError


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_engine_snapshot_is_a_point_in_time(tmp_path: Path) -> None:
    clock = FakeClock()
    limits = attrs.evolve(DEFAULT_LIMITS, snapshot_max_open=2, snapshot_max_secs=60)
    with Engine(str(tmp_path), synchronous="OFF", limits=limits, clock=clock) as engine:
        engine.apply(Insert("c", {"n": 1}), 0.0)
        snaps = engine.snapshots
        owner, other = object(), object()
        snap = snaps.begin(owner)
        engine.apply(Insert("c", {"n": 2}), 0.0)
        engine.apply(Update("c", {"n": 1}, {"$set": {"n": 10}}), 0.0)
        engine.apply(Insert("new", {"x": 1}), 0.0)
        assert snaps.read(snap.id, owner, None, Reader.find, "c", {}, None, None, None) == [
            {"n": 1, "_id": 1, "_version": 1}
        ]
        assert snaps.read(snap.id, owner, None, Reader.count, "new", {}) == 0
        assert snaps.read(snap.id, owner, None, Reader.list_collections) == ["c"]
        assert engine.count("c") == 2
        # Only its owner reads it.
        with pytest.raises(SnapshotNotFoundError, match=f"snapshot not found: {snap.id}"):
            snaps.read(snap.id, other, None, Reader.count, "c", {})
        # The open limit.
        second = snaps.begin(other)
        with pytest.raises(ServerBusyError, match=r"too many open snapshots \(OXIDB_SNAPSHOT_MAX_OPEN\)"):
            snaps.begin(owner)
        snaps.end(second.id, other)
        with pytest.raises(SnapshotNotFoundError):
            snaps.end(second.id, other)
        # The time limit: ended, whatever its owner does.
        clock.now += 60
        with pytest.raises(SnapshotNotFoundError):
            snaps.read(snap.id, owner, None, Reader.count, "c", {})
        assert snaps.count == 0 and snap.closed
        for bad in (None, "1", 2**70, -1):
            with pytest.raises(SnapshotNotFoundError):
                snaps.read(bad, owner, None, Reader.count, "c", {})


def test_ending_a_snapshot_being_read_waits_for_the_read(tmp_path: Path) -> None:
    with Engine(str(tmp_path), synchronous="OFF") as engine:
        snaps = engine.snapshots
        snap = snaps.begin("me")

        def read_and_end_meanwhile(reader: Reader) -> int:
            snaps.drop(snap.id)  # as the reactor would, while this read holds the snapshot
            assert not snap.closed
            return reader.count("c", {})

        assert snaps.read(snap.id, "me", None, read_and_end_meanwhile) == 0
        assert snap.closed and snaps.count == 0
        # end_all by owner, and closing the engine ends the rest.
        mine, theirs = snaps.begin("me"), snaps.begin("them")
        assert snaps.end_all("me") == 1 and mine.closed and not theirs.closed
    assert theirs.closed


def test_snapshot_commands(tmp_path: Path) -> None:
    with memory_server(tmp_path) as (server, _):
        connector = memory_connector({("mem", 1): server})
        client = Client("oxidb://mem:1", connector=connector)
        # No retries: a retry after "server busy" reconnects, which would end the snapshots.
        writer = Client("oxidb://mem:1?retries=0", connector=connector)
        writer.insert_many("c", [{"n": n} for n in range(5)])
        writer.command("create_procedure", name="p", params=[], steps=[{"action": "find", "collection": "c"}])
        begun = client.command("snapshot_begin")
        snap = begun["snap"]
        assert begun["collections"] == ["c"] and begun["expires_in"] == 300 and begun["last_ids"] == {"c": 5}
        writer.insert("c", {"n": 5})
        writer.delete("c", {"n": 0})
        assert client.command("snapshot_count", snap=snap, collection="c") == 5
        assert client.command("snapshot_count", snap=snap, collection="c", query={"n": {"$gte": 3}}) == 2
        page = client.command("snapshot_find", snap=snap, collection="c", sort={"_id": -1}, limit=2)
        assert [d["n"] for d in page] == [4, 3]
        grouped = client.command(
            "snapshot_aggregate", snap=snap, collection="c", pipeline=[{"$group": {"_id": None, "t": {"$sum": "$n"}}}]
        )
        assert grouped == [{"_id": None, "t": 10}]
        assert client.count("c") == {"count": 5}
        # Another connection cannot read it; bad input is a clear error.
        with pytest.raises(ServerError, match=f"snapshot not found: {snap}"):
            writer.command("snapshot_count", snap=snap, collection="c")
        errors: list[tuple[dict[str, Any], str]] = [
            ({"cmd": "snapshot_find", "collection": "c"}, "missing 'snap'"),
            ({"cmd": "snapshot_find", "snap": "x", "collection": "c"}, "missing 'snap'"),
            ({"cmd": "snapshot_find", "snap": -1, "collection": "c"}, "missing 'snap'"),
            ({"cmd": "snapshot_find", "snap": snap}, "missing 'collection'"),
            ({"cmd": "snapshot_aggregate", "snap": snap, "collection": "c"}, "missing 'pipeline'"),
            ({"cmd": "snapshot_count", "snap": 2**80, "collection": "c"}, "snapshot not found: "),
            ({"cmd": "snapshot_end", "snap": 12345}, "snapshot not found: 12345"),
            ({"cmd": "snapshot_find", "snap": snap, "collection": "c", "query": {"n": {"$nope": 1}}}, "invalid query"),
        ]
        for request, text in errors:
            with pytest.raises(ServerError) as info:
                client.request(request)
            assert str(info.value).startswith(text), (request, str(info.value))
        # A bad query did not end the snapshot.
        assert client.command("snapshot_end", snap=snap) == "snapshot closed"
        with pytest.raises(ServerError, match="snapshot not found"):
            client.command("snapshot_count", snap=snap, collection="c")
        engine = server.services.engine
        # Ended when the connection closes...
        client.command("snapshot_begin")
        assert engine.snapshots.count == 1
        client.close()
        assert engine.snapshots.count == 0
        # ... and at the latest after OXIDB_SNAPSHOT_MAX_SECS on the server's clock.
        snap = writer.command("snapshot_begin")["snap"]
        server.clock.advance(301)
        assert engine.snapshots.count == 0
        with pytest.raises(ServerError, match="snapshot not found"):
            writer.command("snapshot_count", snap=snap, collection="c")
        # The open limit.
        for _ in range(8):
            writer.command("snapshot_begin")
        with pytest.raises(ServerBusy, match="too many open snapshots"):
            writer.command("snapshot_begin")


def _expiry_timers(clock: Any) -> int:
    return sum(1 for call in clock.getDelayedCalls() if getattr(call.func, "__name__", "") == "expired")


def test_snapshot_timers_end_with_their_snapshots(tmp_path: Path) -> None:
    """A client beginning and ending snapshots in a loop leaves no pending timers (no unbounded growth)."""
    with memory_server(tmp_path) as (server, _):
        connector = memory_connector({("mem", 1): server})
        client = Client("oxidb://mem:1", connector=connector)
        for _ in range(50):
            snap = client.command("snapshot_begin")["snap"]
            assert _expiry_timers(server.clock) == 1
            assert client.command("snapshot_end", snap=snap) == "snapshot closed"
        assert _expiry_timers(server.clock) == 0
        # A failed end (another id) cancels nothing; closing the connection cancels the rest.
        client.command("snapshot_begin")
        client.command("snapshot_begin")
        with pytest.raises(ServerError, match="snapshot not found"):
            client.command("snapshot_end", snap=12345)
        assert _expiry_timers(server.clock) == 2
        client.close()
        assert _expiry_timers(server.clock) == 0
        assert server.services.engine.snapshots.count == 0
