"""
The composition root (oxidb.compose): the registry is complete before
anything reads it, the shared parts are read-only and their seams checked,
and the metrics count every command under its own name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import pytest
from twisted.internet.task import Clock

from oxidb.commands import Command, build_registry
from oxidb.compose import Lifecycle, Services, compose
from oxidb.config import Config
from oxidb.server.dispatch import Dispatcher
from oxidb.testing import MemoryServer, SynchronousExecutor

CLUSTER_KEY = "a test cluster key of 32+ characters"


def count(server: MemoryServer, cmd: str, result: str) -> float:
    metrics = server.services.metrics
    assert metrics is not None
    value = metrics.registry.get_sample_value("oxidb_commands_total", {"cmd": cmd, "result": result})
    return 0 if value is None else value


def call(server: MemoryServer, request: dict[str, Any]) -> Any:
    """One request, letting the login throttle's delays pass."""
    client, pump = server.connect()
    replies: list[Any] = []
    client.request(request).addCallback(replies.append)
    for _ in range(20):
        pump.flush()
        if replies:
            return replies[0]
        server.clock.advance(1)
    raise AssertionError("no reply")


def auth_server(tmp_path: Path) -> MemoryServer:
    return MemoryServer(Config.from_sources({"OXIDB_DATA": str(tmp_path), "OXIDB_AUTH": "true"}))


def test_login_and_user_commands_are_counted_under_their_names(tmp_path: Path) -> None:
    server = auth_server(tmp_path)
    assert call(server, {"cmd": "authenticate", "payload": "garbage"})["ok"] is False
    assert call(server, {"cmd": "auth_simple", "username": "nobody", "password": "x"})["ok"] is False
    assert call(server, {"cmd": "create_user", "username": "u", "password": "p"}) == {
        "ok": False,
        "error": "authentication required",
    }
    assert count(server, "authenticate", "error") == 1
    assert count(server, "auth_simple", "error") == 1
    assert count(server, "create_user", "denied") == 1
    assert count(server, "unknown", "error") == 0 and count(server, "unknown", "denied") == 0


def test_raft_commands_are_counted_under_their_names(tmp_path: Path) -> None:
    config = Config.from_sources({"OXIDB_NODE_ID": "1", "OXIDB_CLUSTER_KEY": CLUSTER_KEY, "OXIDB_DATA": str(tmp_path)})
    server = MemoryServer(config)
    assert server.request({"cmd": "raft_metrics"}) == {"ok": False, "error": "the raft node is not running"}
    assert server.request({"cmd": "raft_status"})["ok"] is False
    assert count(server, "raft_metrics", "error") == 1
    assert count(server, "raft_status", "error") == 1
    assert count(server, "unknown", "error") == 0


@pytest.mark.parametrize("auth, cluster", [(False, False), (True, False), (False, True), (True, True)])
def test_the_metrics_label_set_is_the_whole_registry(tmp_path: Path, auth: bool, cluster: bool) -> None:
    env = {"OXIDB_DATA": str(tmp_path)}
    if auth:
        env["OXIDB_AUTH"] = "true"
    if cluster:
        env |= {"OXIDB_NODE_ID": "1", "OXIDB_CLUSTER_KEY": CLUSTER_KEY}
    server = MemoryServer(Config.from_sources(env))
    registry = server.services.registry
    assert set(registry.names()) == set(build_registry(auth=auth, cluster=cluster).names())
    assert server.services.metrics is not None
    assert server.services.metrics.command_labels == {*registry.names(), "unknown"}


def test_shared_parts_are_read_only(tmp_path: Path) -> None:
    server = MemoryServer(Config(data_dir=str(tmp_path)))
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        server.services.executor = None  # type: ignore[misc]
    assert not hasattr(server.services.registry, "add")
    with pytest.raises(TypeError):
        server.services.registry._commands["x"] = server.services.registry.get("ping")  # type: ignore[index]
    assert server.services.dispatcher is server.factory.dispatcher


def test_the_seams_are_checked_when_stored(tmp_path: Path) -> None:
    clock = Clock()
    registry = build_registry()
    lifecycle = Lifecycle()
    good: dict[str, Any] = dict(
        config=Config(data_dir=str(tmp_path)),
        clock=clock,
        data_dir=str(tmp_path),
        registry=registry,
        lifecycle=lifecycle,
        executor=SynchronousExecutor(lifecycle, clock),
        dispatcher=Dispatcher(registry),
    )
    Services(**good)
    with pytest.raises(TypeError, match="executor must provide IExecutor"):
        Services(**{**good, "executor": object()})
    with pytest.raises(TypeError, match="dispatcher must provide IDispatcher"):
        Services(**{**good, "dispatcher": object()})
    with pytest.raises(TypeError, match="lifecycle must provide IEngineSource"):
        Services(**{**good, "lifecycle": object()})


def test_extra_rows_are_part_of_the_registry_from_the_start(tmp_path: Path) -> None:
    row = Command("echo", lambda ctx, request: request.get("v"), audit_collection=None)
    parts = compose(Config(data_dir=str(tmp_path)), Clock(), str(tmp_path), extra_commands=[row])
    assert parts.services.registry.get("echo") is row
    assert "echo" in parts.metrics.command_labels


def test_the_engine_is_served_once_open(tmp_path: Path) -> None:
    parts = compose(Config(data_dir=str(tmp_path)), Clock(), str(tmp_path))
    assert parts.services.engine is None
    parts.lifecycle.engine = parts.engine
    assert parts.services.engine is parts.engine
