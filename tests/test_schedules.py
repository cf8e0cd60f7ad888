"""
Schedules (engine.md 9.6): cron and interval parsing, due computation, the
schedule commands, and the scheduler service driven by a fake clock (no
sleeping): runs, run state, failures, restarts, the leader hook.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail
from twisted.logger import capturedLogs

from oxidb.config import Config
from oxidb.engine import procedures, transactions
from oxidb.engine.engine import Engine
from oxidb.engine.operations import Operation, Update
from oxidb.engine.schedules import format_timestamp, is_due, new_schedule, parse_cron, parse_interval
from oxidb.errors import ScheduleError
from oxidb.server.scheduler import Scheduler
from oxidb.testing import MemoryServer, SynchronousExecutor


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> float:
    """Seconds since the epoch of a UTC date-time."""
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()


# --- parsing -----------------------------------------------------------------------------


def test_cron_fields() -> None:
    expr = parse_cron("*/15 9-17 1,15 */6 1-5")
    assert sorted(expr.minutes) == [0, 15, 30, 45]
    assert sorted(expr.hours) == list(range(9, 18))
    assert sorted(expr.days) == [1, 15]
    assert sorted(expr.months) == [1, 7]
    assert sorted(expr.weekdays) == [1, 2, 3, 4, 5]
    assert sorted(parse_cron("0-30/10 20/2 * * *").hours) == [20, 22]
    assert sorted(parse_cron("0-30/10 * * * *").minutes) == [0, 10, 20, 30]
    assert sorted(parse_cron("  5,5,1-2   * * * 0").minutes) == [1, 2, 5]
    assert len(parse_cron("* * * * *").days) == 31


@pytest.mark.parametrize(
    "text, message",
    [
        ("* * * *", "cron expression must have 5 fields, got 4"),
        ("* * * * * *", "cron expression must have 5 fields, got 6"),
        ("", "cron expression must have 5 fields, got 0"),
        ("60 * * * *", "value 60 out of bounds (0-59)"),
        ("* 24 * * *", "value 24 out of bounds (0-23)"),
        ("* * 0 * *", "value 0 out of bounds (1-31)"),
        ("* * * 13 *", "value 13 out of bounds (1-12)"),
        ("* * * * 7", "value 7 out of bounds (0-6)"),
        ("x * * * *", "invalid field value: x"),
        ("1,,2 * * * *", "invalid field value: "),
        ("-1 * * * *", "invalid range start: "),
        ("5-x * * * *", "invalid range end: x"),
        ("9-3 * * * *", "range 9-3 out of bounds (0-59)"),
        ("1-70 * * * *", "range 1-70 out of bounds (0-59)"),
        ("*/0 * * * *", "step value must be > 0"),
        ("*/x * * * *", "invalid step value: x"),
        ("1/2/3 * * * *", "invalid step value: 2/3"),
        ("70/5 * * * *", "value 70 out of bounds (0-59)"),
    ],
)
def test_cron_errors(text: str, message: str) -> None:
    with pytest.raises(ScheduleError) as raised:
        parse_cron(text)
    assert str(raised.value) == f"schedule error: {message}"


def test_intervals() -> None:
    assert [parse_interval(t) for t in ("30s", "5m", "2h", " 10s ", "007s")] == [30, 300, 7200, 10, 7]


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty interval string"),
        ("  ", "empty interval string"),
        ("10", "interval must end with 's', 'm', or 'h': 10"),
        ("1d", "interval must end with 's', 'm', or 'h': 1d"),
        ("s", "invalid interval number: "),
        ("-5s", "invalid interval number: -5"),
        ("1.5m", "invalid interval number: 1.5"),
        ("0h", "interval must be > 0"),
    ],
)
def test_interval_errors(text: str, message: str) -> None:
    with pytest.raises(ScheduleError) as raised:
        parse_interval(text)
    assert str(raised.value) == f"schedule error: {message}"


# --- due computation -------------------------------------------------------------------------


def test_every_is_due_after_its_interval() -> None:
    schedule: dict[str, Any] = {"every": "30s", "enabled": True, "last_run_epoch": 0}
    now = at(2026, 1, 1, 12, 0, 0)
    assert is_due(schedule, now)
    schedule["last_run_epoch"] = int(now)
    assert not is_due(schedule, now + 29)
    assert is_due(schedule, now + 30)
    # A clock that jumped back does not stall the schedule for ever.
    assert is_due(schedule, now - 30)
    assert not is_due({**schedule, "enabled": False}, now + 60)
    assert is_due({**schedule, "enabled": "yes"}, now + 60)


def test_cron_is_due_once_in_a_matching_minute() -> None:
    schedule: dict[str, Any] = {"cron": "30 12 * * *", "last_run_epoch": 0}
    minute = at(2026, 1, 1, 12, 30, 0)
    assert not is_due(schedule, minute - 1)
    assert is_due(schedule, minute)
    assert is_due(schedule, minute + 59)
    assert not is_due(schedule, minute + 60)
    schedule["last_run_epoch"] = int(minute + 1)
    assert not is_due(schedule, minute + 59)
    assert is_due(schedule, minute + 86_400)


def test_cron_day_of_month_and_weekday_must_both_match() -> None:
    friday_13th = {"cron": "0 0 13 * 5", "last_run_epoch": 0}
    assert is_due(friday_13th, at(2026, 2, 13))  # a Friday
    assert not is_due(friday_13th, at(2026, 1, 13))  # a Tuesday
    assert not is_due(friday_13th, at(2026, 2, 20))  # a Friday, the 20th
    sunday = {"cron": "0 0 * * 0", "last_run_epoch": 0}
    assert is_due(sunday, at(2026, 2, 15))
    assert not is_due(sunday, at(2026, 2, 16))


def test_unparseable_stored_schedules_are_never_due() -> None:
    now = at(2026, 1, 1)
    assert not is_due({"cron": "bad"}, now)
    assert not is_due({"every": "soon"}, now)
    assert not is_due({"every": 30}, now)
    assert not is_due({}, now)


def test_new_schedule_document() -> None:
    request = {"cmd": "create_schedule", "name": "s", "procedure": "p", "every": "5m", "params": {"a": 1},
               "run_count": 99, "last_status": "forged"}  # fmt: skip
    assert new_schedule(request) == {
        "cmd": "create_schedule", "name": "s", "procedure": "p", "every": "5m", "params": {"a": 1},
        "enabled": True, "last_run": None, "last_run_epoch": 0, "last_status": None, "last_error": None,
        "run_count": 0,
    }  # fmt: skip
    assert new_schedule({"procedure": "p", "cron": "* * * * *", "enabled": False})["enabled"] is False
    assert new_schedule({"procedure": "p", "cron": "* * * * *", "enabled": "no"})["enabled"] is True


def test_format_timestamp() -> None:
    assert format_timestamp(1_700_000_000.9) == "2023-11-14T22:13:20Z"


# --- commands ----------------------------------------------------------------------------------


@pytest.fixture
def data_dir(tmp_path: Any) -> str:
    return str(tmp_path / "data")


def open_engine(data_dir: str) -> Engine:
    engine = Engine(data_dir, synchronous="OFF")
    transactions.register_appliers(engine)
    procedures.register_appliers(engine)
    engine.open()
    return engine


@pytest.fixture
def server(data_dir: str) -> Iterator[MemoryServer]:
    engine = open_engine(data_dir)
    try:
        server = MemoryServer(Config(data_dir=data_dir), engine=engine)
        server.clock.advance(at(2026, 1, 1, 12, 0, 0))
        yield server
    finally:
        engine.close()


def ok(server: MemoryServer, cmd: str, **request: Any) -> Any:
    reply = server.request({"cmd": cmd, **request})
    assert reply.get("ok") is True, reply
    return reply["data"]


def error(server: MemoryServer, cmd: str, **request: Any) -> str:
    reply = server.request({"cmd": cmd, **request})
    assert reply.get("ok") is False, reply
    return str(reply["error"])


def tick_procedure(server: MemoryServer, name: str = "tick") -> None:
    steps = [{"step": "insert", "collection": "ticks", "document": {"at": "$param.label"}}]
    ok(server, "create_procedure", name=name, params=["label"], steps=steps)


def test_schedule_commands(server: MemoryServer) -> None:
    tick_procedure(server)
    assert ok(server, "create_schedule", name="b", procedure="tick", every="10s") == "schedule created"
    assert (
        ok(server, "create_schedule", name="a", procedure="tick", cron="0 * * * *", enabled=False) == "schedule created"
    )
    assert [s["name"] for s in ok(server, "list_schedules")] == ["a", "b"]
    schedule = ok(server, "get_schedule", name="b")
    fields = ("enabled", "last_run", "last_run_epoch", "last_status", "last_error", "run_count")
    assert {k: schedule[k] for k in fields} == {
        "enabled": True, "last_run": None, "last_run_epoch": 0, "last_status": None, "last_error": None, "run_count": 0,
    }  # fmt: skip
    assert ok(server, "disable_schedule", name="b") == "schedule disabled"
    assert ok(server, "get_schedule", name="b")["enabled"] is False
    assert ok(server, "enable_schedule", name="b") == "schedule enabled"
    assert ok(server, "get_schedule", name="b")["enabled"] is True
    # Create-or-replace.
    ok(server, "create_schedule", name="b", procedure="tick", every="1h")
    assert [s["every"] for s in ok(server, "list_schedules") if s["name"] == "b"] == ["1h"]
    assert ok(server, "delete_schedule", name="b") == "schedule deleted"
    assert [s["name"] for s in ok(server, "list_schedules")] == ["a"]
    for cmd in ("get_schedule", "delete_schedule", "enable_schedule", "disable_schedule"):
        assert error(server, cmd, name="b") == "schedule error: schedule not found: b"
        assert error(server, cmd) == "missing 'name'"


@pytest.mark.parametrize(
    "request_, text",
    [
        ({"procedure": "tick", "every": "5s"}, "missing 'name'"),
        ({"name": "s", "procedure": "tick"}, "schedule error: schedule must have 'cron' or 'every' field"),
        ({"name": "s", "procedure": "tick", "every": 5}, "schedule error: schedule must have 'cron' or 'every' field"),
        (
            {"name": "s", "procedure": "tick", "every": "5s", "cron": "* * * * *"},
            "schedule error: schedule cannot have both 'cron' and 'every'",
        ),
        (
            {"name": "s", "procedure": "tick", "cron": "* * *"},
            "schedule error: cron expression must have 5 fields, got 3",
        ),
        (
            {"name": "s", "procedure": "tick", "every": "5d"},
            "schedule error: interval must end with 's', 'm', or 'h': 5d",
        ),
        ({"name": "s", "every": "5s"}, "schedule error: missing 'procedure' field"),
        ({"name": "s", "procedure": "nope", "every": "5s"}, "procedure not found: nope"),
    ],
)
def test_create_schedule_errors(server: MemoryServer, request_: dict[str, Any], text: str) -> None:
    tick_procedure(server)
    assert error(server, "create_schedule", **request_) == text
    assert ok(server, "list_schedules") == []


# --- the service ---------------------------------------------------------------------------------


def start(server: MemoryServer, **kwargs: Any) -> Scheduler:
    scheduler = Scheduler(server.clock, server.services.executor, server.services.engine, **kwargs)
    scheduler.startService()
    return scheduler


def advance(server: MemoryServer, seconds: int) -> None:
    for _ in range(seconds):
        server.clock.advance(1)


def ticks(server: MemoryServer) -> list[Any]:
    return [d["at"] for d in ok(server, "find", collection="ticks")]


def test_every_schedule_runs_and_records(server: MemoryServer) -> None:
    tick_procedure(server)
    ok(server, "create_schedule", name="s", procedure="tick", every="5s", params={"label": "x"})
    scheduler = start(server)
    started = server.clock.seconds()
    advance(server, 1)
    assert ticks(server) == ["x"]
    schedule = ok(server, "get_schedule", name="s")
    assert schedule["run_count"] == 1
    assert schedule["last_status"] == "ok" and schedule["last_error"] is None
    assert schedule["last_run_epoch"] == int(started + 1)
    assert schedule["last_run"] == "2026-01-01T12:00:01Z"
    advance(server, 4)
    assert ticks(server) == ["x"]
    advance(server, 1)
    assert ticks(server) == ["x", "x"]
    assert ok(server, "get_schedule", name="s")["run_count"] == 2
    scheduler.stopService()
    advance(server, 30)
    assert len(ticks(server)) == 2


def test_cron_schedule_runs_once_per_matching_minute(server: MemoryServer) -> None:
    tick_procedure(server)
    ok(server, "create_schedule", name="s", procedure="tick", cron="1 12 * * *", params=["cron"])
    start(server)
    advance(server, 59)
    assert ticks(server) == []
    advance(server, 60)  # through 12:01
    assert ticks(server) == ["cron"]
    assert ok(server, "get_schedule", name="s")["last_run"] == "2026-01-01T12:01:00Z"
    server.clock.advance(86_400 - 120)  # the clock jumps to a minute before 12:01 the next day
    advance(server, 120)
    assert ticks(server) == ["cron", "cron"]


def test_a_failing_run_is_recorded_and_the_scheduler_goes_on(server: MemoryServer) -> None:
    ok(server, "create_procedure", name="fail", steps=[{"step": "abort", "message": "boom"}])
    tick_procedure(server)
    ok(server, "create_schedule", name="bad", procedure="fail", every="1s")
    ok(server, "create_schedule", name="good", procedure="tick", every="1s", params={"label": "g"})
    start(server)
    advance(server, 3)
    bad = ok(server, "get_schedule", name="bad")
    assert (bad["last_status"], bad["last_error"], bad["run_count"]) == ("error", "procedure error: boom", 3)
    assert ticks(server) == ["g", "g", "g"]
    ok(server, "delete_procedure", name="tick")
    advance(server, 1)
    good = ok(server, "get_schedule", name="good")
    assert (good["last_status"], good["last_error"], good["run_count"]) == ("error", "procedure not found: tick", 4)


def test_disabled_schedules_and_the_leader_hook(server: MemoryServer) -> None:
    tick_procedure(server)
    ok(server, "create_schedule", name="s", procedure="tick", every="1s", enabled=False)
    leader = [False]
    start(server, should_run=lambda: leader[0])
    advance(server, 3)
    ok(server, "enable_schedule", name="s")
    advance(server, 3)
    assert ticks(server) == []
    leader[0] = True
    advance(server, 2)
    assert len(ticks(server)) == 2
    ok(server, "disable_schedule", name="s")
    advance(server, 2)
    assert len(ticks(server)) == 2


def test_ticks_do_not_create_the_schedules_collection(server: MemoryServer) -> None:
    start(server)
    advance(server, 3)
    assert "_schedules" not in ok(server, "list_collections")


def test_run_state_survives_a_restart(data_dir: str) -> None:
    engine = open_engine(data_dir)
    server = MemoryServer(Config(data_dir=data_dir), engine=engine)
    server.clock.advance(at(2026, 1, 1, 12, 0, 0))
    tick_procedure(server)
    ok(server, "create_schedule", name="s", procedure="tick", every="1h", params={"label": "first"})
    scheduler = start(server)
    advance(server, 1)
    scheduler.stopService()
    engine.close()

    engine = open_engine(data_dir)
    try:
        server = MemoryServer(Config(data_dir=data_dir), engine=engine)
        server.clock.advance(at(2026, 1, 1, 12, 30, 0))
        start(server)
        advance(server, 10)
        assert ticks(server) == ["first"]
        server.clock.advance(at(2026, 1, 1, 13, 0, 0) - server.clock.seconds())
        advance(server, 2)
        assert ticks(server) == ["first", "first"]
        assert ok(server, "get_schedule", name="s")["run_count"] == 2
    finally:
        engine.close()


class HeldExecutor(SynchronousExecutor):
    """Runs writes and the first C{free} reads inline, and holds later reads until released."""

    def __init__(self, services: Any, free: int) -> None:
        super().__init__(services)
        self.free = free
        self.held: list[Callable[[], object]] = []

    def read(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
        if self.free:
            self.free -= 1
            return super().read(fn, *args, **kwargs)
        d: Deferred[Any] = Deferred()
        self.held.append(lambda: super(HeldExecutor, self).read(fn, *args, **kwargs).chainDeferred(d))
        return d

    def release(self) -> None:
        while self.held:
            self.held.pop(0)()


def test_stop_waits_for_the_run_in_progress(server: MemoryServer) -> None:
    tick_procedure(server)
    ok(server, "create_schedule", name="s", procedure="tick", every="1s", params={"label": "late"})
    # The tick's own read passes; the procedure's first step is held.
    executor = HeldExecutor(server.services, free=1)
    scheduler = Scheduler(server.clock, executor, server.services.engine)
    scheduler.startService()
    server.clock.advance(1)
    assert executor.held
    stopped: list[None] = []
    scheduler.stopService().addCallback(stopped.append)
    assert stopped == []
    executor.release()
    assert stopped == [None]
    assert ticks(server) == ["late"]
    # Stopping an idle scheduler is immediate.
    assert scheduler.stopService().called


class FlakyExecutor(SynchronousExecutor):
    """Fails the first read and the first write, then works."""

    def __init__(self, services: Any) -> None:
        super().__init__(services)
        self.read_failures = self.write_failures = 1

    def read(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
        if self.read_failures:
            self.read_failures -= 1
            return fail(RuntimeError("disk on fire"))
        return super().read(fn, *args, **kwargs)

    def write(self, op: Operation) -> Deferred[Any]:
        if self.write_failures and isinstance(op, Update):
            self.write_failures -= 1
            return fail(RuntimeError("disk full"))
        return super().write(op)


def test_storage_failures_are_logged_and_ticking_goes_on(server: MemoryServer) -> None:
    tick_procedure(server)
    ok(server, "create_schedule", name="s", procedure="tick", every="1s", params={"label": "t"})
    scheduler = Scheduler(server.clock, FlakyExecutor(server.services), server.services.engine)
    with capturedLogs() as events:
        scheduler.startService()
        advance(server, 3)
    formats = [event["log_format"] for event in events if "log_failure" in event]
    assert formats == ["scheduler tick failed", "could not record the run of schedule {name}"]
    # The run whose record was lost ran; the next one was recorded.
    assert ticks(server) == ["t", "t"]
    assert ok(server, "get_schedule", name="s")["run_count"] == 1
