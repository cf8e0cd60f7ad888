"""
Login hardening: the SCRAM first step does the same work for known and
unknown users (structurally, and measured), login attempts are counted when
they start and refused while the user name or the source address is
throttled (so one connection per guess gains nothing), the first step is
audited, and Argon2 checks run under a concurrency cap.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import test_auth_commands
from scramp import ScramClient
from test_auth_commands import POLICY, USERS, ListSink, Services, World, error_of, result_of
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from oxidb.audit.events import Auditor
from oxidb.auth.cred import Argon2Checker, LoginFailed, ScramChecker, ScramContinue, ScramCredentials
from oxidb.auth.manager import AuthManager
from oxidb.auth.scram import ScramVerifier, start_exchange
from oxidb.auth.settings import AuthSettings
from oxidb.auth.store import UserRecord, UserStore
from oxidb.auth.throttle import source_address
from oxidb.commands import auth as commands
from oxidb.errors import LoginBusyError
from oxidb.limits import Limits
from oxidb.server.session import Session

THROTTLED = "too many failed logins; retry later"

# The users and services of test_auth_commands, as this module's fixture.
world = test_auth_commands.world


def session(host: str = "203.0.113.5", port: int = 40000) -> Session:
    return Session(peer=f"{host}:{port}")


def first_step(world: World, ctx: Any, user: str) -> tuple[Deferred[Any], ScramClient]:
    client = ScramClient(["SCRAM-SHA-256"], user, "a guess")
    return commands.authenticate(ctx, {"cmd": "authenticate", "payload": client.get_client_first()}), client


def guess(world: World, ctx: Any, user: str, password: str) -> str | None:
    """
    One guess on its own connection, dropped right after the proof is sent
    (the attacker never waits for the delayed failure). None when the
    guess was made; the error text when the first step was refused.
    """
    client = ScramClient(["SCRAM-SHA-256"], user, password)
    d = commands.authenticate(ctx, {"cmd": "authenticate", "payload": client.get_client_first()})
    box: list[Any] = []
    d.addBoth(box.append)
    assert box, "the first step must answer at once"
    if isinstance(box[0], Failure):
        return str(box[0].value)
    client.set_server_first(box[0]["payload"])
    final = commands.authenticate_continue(ctx, {"payload": client.get_client_final()})
    final.addErrback(lambda f: None)  # the connection is gone; nobody reads it
    return None


# --- the first step: same work for every name ----------------------------------------


def test_the_first_step_runs_the_same_operations_for_known_and_unknown_users() -> None:
    known = ScramVerifier.mock(b"k" * 32, "alice", 4096)
    calls: list[str] = []

    def lookup(name: str) -> ScramVerifier | None:
        calls.append("lookup")
        return known if name == "alice" else None

    def mock(name: str) -> ScramVerifier:
        calls.append("mock")
        return ScramVerifier.mock(b"s" * 32, name, 4096)

    for name in ("alice", "bobby"):
        calls.clear()
        exchange = start_exchange(f"n,,n={name},r=abcdef", lookup, mock, "srvnonce")
        assert calls == ["lookup", "mock"], name
        assert exchange.known is (name == "alice")


def test_first_step_timing_does_not_tell_unknown_users_apart(tmp_path: Path) -> None:
    """
    The only timing test. Medians of 1,000 interleaved first steps (checker
    level, where the paths could differ) for a known and an unknown name of
    the same length. Before the fix the unknown path did three more HMACs
    (~10 us, about 20% of the step); now both run the same operations and
    the medians must agree within 8% (or 2 us). A loaded machine can skew
    one round, so up to three rounds are tried; a real difference fails all.
    """
    _, role, secrets = USERS[1]
    store = UserStore(tmp_path, [UserRecord("alice", role, secrets.password_hash, secrets.verifier)])
    checker = ScramChecker(store, b"s" * 32, 4096, random.Random(2))
    messages = {name: f"n,,n={name},r=fyko+d2lbbFgONRv9qkxdawL" for name in ("alice", "bobby")}

    def sample(name: str) -> int:
        credentials = ScramCredentials(messages[name])
        started = time.perf_counter_ns()
        d = checker.requestAvatarId(credentials)
        elapsed = time.perf_counter_ns() - started
        d.addErrback(lambda f: f.trap(ScramContinue))
        return elapsed

    rounds = []
    for _ in range(3):
        times: dict[str, list[int]] = {"alice": [], "bobby": []}
        for i in range(1000):
            order = ("alice", "bobby") if i % 2 else ("bobby", "alice")
            for name in order:
                times[name].append(sample(name))
        known, unknown = statistics.median(times["alice"]), statistics.median(times["bobby"])
        rounds.append((known / 1000, unknown / 1000))
        if abs(known - unknown) <= max(2000.0, 0.08 * max(known, unknown)):
            return
    pytest.fail(f"first-step medians (known, unknown) in us differ in every round: {rounds}")


# --- refusal while throttled -----------------------------------------------------------


def test_one_connection_per_guess_is_refused(world: World) -> None:
    throttle = world.services.auth.throttle
    results = [guess(world, world.ctx(session(port=40000 + i)), "alice", f"guess{i}") for i in range(8)]
    # Five guesses, counted as they started; then the name is throttled and
    # the next attempts are refused before any credential is looked at.
    assert results == [None] * throttle.name_free + [THROTTLED] * 3
    refusal = world.sink.events[-1]
    assert (refusal.user, refusal.cmd, refusal.result, refusal.detail) == ("alice", "authenticate", "denied", THROTTLED)
    # After the delay, one more guess; then a doubled wait.
    eps = 0.001
    world.clock.advance(POLICY.delay(1) + eps)
    assert guess(world, world.ctx(session(port=41000)), "alice", "again") is None
    world.clock.advance(POLICY.delay(1) + eps)
    assert guess(world, world.ctx(session(port=41001)), "alice", "again") == THROTTLED
    world.clock.advance(POLICY.delay(2))
    assert guess(world, world.ctx(session(port=41002)), "alice", "again") is None


def test_guessing_as_fast_as_possible_gets_about_one_guess_per_max_delay(world: World) -> None:
    made = 0
    for i in range(1200):  # one attempt every 50 ms for a minute, each on a new connection
        if guess(world, world.ctx(session(port=1024 + i)), "alice", f"g{i}") is None:
            made += 1
        world.clock.advance(0.05)
    # 5 free, then delays 0.1, 0.2, 0.4, 0.8 and 1.0 s (the cap) each.
    assert made <= 5 + 4 + 60 / POLICY.max_delay + 1, made


def test_dropping_the_connection_before_the_proof_gains_nothing(world: World) -> None:
    for i in range(5):
        d, _ = first_step(world, world.ctx(session(port=42000 + i)), "alice")
        assert result_of(d)["done"] is False  # and the attacker hangs up
    d, _ = first_step(world, world.ctx(session(port=42010)), "alice")
    assert error_of(d) == THROTTLED


def test_the_source_address_is_throttled_across_names_and_connections(world: World) -> None:
    free = world.services.auth.throttle.address_free
    results = [guess(world, world.ctx(session(port=43000 + i)), f"user{i}", "pw") for i in range(free + 2)]
    assert results == [None] * free + [THROTTLED] * 2
    assert world.services.auth.throttle.address_attempts("203.0.113.5") == free
    # Another address, and another name from it, are not affected.
    assert guess(world, world.ctx(session("198.51.100.9")), "user0", "pw") is None


def test_refusals_look_the_same_for_known_and_unknown_names(world: World) -> None:
    for name in ("alice", "nobody"):
        for i in range(5):
            guess(world, world.ctx(session(port=44000 + i)), name, "pw")
        d, _ = first_step(world, world.ctx(session(port=44100)), name)
        assert d.called and error_of(d) == THROTTLED
        world.clock.advance(POLICY.window)


def test_auth_simple_is_throttled_too(world: World) -> None:
    for i in range(5):
        d = commands.auth_simple(world.ctx(session(port=45000 + i)), {"username": "alice", "password": f"g{i}"})
        d.addErrback(lambda f: None)
    d = commands.auth_simple(world.ctx(session(port=45100)), {"username": "alice", "password": "pencil"})
    assert error_of(d) == THROTTLED
    assert world.sink.events[-1].cmd == "auth_simple" and world.sink.events[-1].result == "denied"


def test_successes_are_never_throttled(world: World) -> None:
    for i in range(3 * world.services.auth.throttle.address_free):
        client = ScramClient(["SCRAM-SHA-256"], "alice", "pencil")
        ctx = world.ctx(session(port=46000 + i))
        first = result_of(commands.authenticate(ctx, {"payload": client.get_client_first()}))
        client.set_server_first(first["payload"])
        result_of(commands.authenticate_continue(ctx, {"payload": client.get_client_final()}))
        assert ctx.session.user == "alice"
    assert world.services.auth.throttle.address_attempts("203.0.113.5") == 0


def test_source_address() -> None:
    assert source_address("203.0.113.5:40000") == "203.0.113.5"
    assert source_address("[::1]:4444") == "::1"
    assert source_address("-") == "-"


# --- the Argon2 cap --------------------------------------------------------------------


class HeldPool:
    """run_blocking whose work waits until released (a busy pool)."""

    def __init__(self) -> None:
        self.waiting: list[tuple[Deferred[Any], Callable[..., Any], tuple[Any, ...]]] = []

    def read(self, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.waiting.append((d, fn, args))
        return d

    def release_one(self) -> None:
        d, fn, args = self.waiting.pop(0)
        d.callback(fn(*args))


def test_argon2_checks_run_under_a_cap(tmp_path: Path) -> None:
    clock = Clock()
    pool = HeldPool()
    manager = AuthManager.open(
        tmp_path, AuthSettings(enabled=True, throttle=POLICY), clock, pool.read, random.Random(0),
        limits=Limits.with_values(auth_simple_concurrency=2),
    )
    name, role, secrets = USERS[0]
    manager.store.create(UserRecord(name, role, secrets.password_hash, secrets.verifier))
    sink = ListSink()
    services = Services(clock, manager, Auditor(clock, [sink]), None)  # type: ignore[arg-type]
    w = World(services, sink, clock, None)  # type: ignore[arg-type]
    pending = [
        commands.auth_simple(w.ctx(session(f"198.51.100.{i}")), {"username": "root", "password": "rootpw"})
        for i in range(2)
    ]
    assert len(pool.waiting) == 2 and not any(d.called for d in pending)
    # A third parallel attempt does not reach the pool: refused at once.
    busy = commands.auth_simple(w.ctx(session("198.51.100.3")), {"username": "root", "password": "rootpw"})
    assert error_of(busy) == LoginBusyError().message
    assert len(pool.waiting) == 2
    assert sink.events[-1].result == "error" and sink.events[-1].detail == LoginBusyError().message
    # When a check finishes its slot is free again.
    pool.release_one()
    assert result_of(pending[0])["role"] == "admin"
    again = commands.auth_simple(w.ctx(session("198.51.100.4")), {"username": "root", "password": "rootpw"})
    assert len(pool.waiting) == 2 and not again.called
    pool.release_one()
    pool.release_one()
    assert result_of(pending[1])["done"] and result_of(again)["done"]


def test_a_failed_check_gives_its_slot_back(tmp_path: Path) -> None:
    store = UserStore(tmp_path)

    def broken(fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        d.errback(RuntimeError("pool gone"))
        return d

    checker = Argon2Checker(store, broken, max_running=1)
    from twisted.cred.credentials import UsernamePassword

    for _ in range(3):
        d = checker.requestAvatarId(UsernamePassword(b"x", b"y"))
        failures: list[Failure] = []
        d.addErrback(failures.append)
        assert failures and failures[0].check(RuntimeError)
    assert checker.running == 0
    held = HeldPool()
    checker = Argon2Checker(store, held.read, max_running=1)
    checker.requestAvatarId(UsernamePassword(b"x", b"y"))
    refused: list[Failure] = []
    checker.requestAvatarId(UsernamePassword(b"x", b"y")).addErrback(refused.append)
    assert refused and isinstance(refused[0].value, LoginFailed)
    assert isinstance(refused[0].value.error, LoginBusyError)
