"""
End-to-end: the real C{twistd -n oxidb} process on loopback, the official
client, plugin discovery from an installed wheel, clean shutdown.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from types import ModuleType
from typing import Any

import pytest

from oxidb._harness import ServerProcess
from oxidb.config import SETTINGS

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def server(tmp_path: Any) -> Any:
    """A server of the test's own, for tests that stop or kill it."""
    process = ServerProcess(str(tmp_path / "data")).start()
    yield process
    if process.process.poll() is None:
        process.kill()


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One server for the tests that leave it running (each uses its own collections)."""
    process = ServerProcess(str(tmp_path_factory.mktemp("shared") / "data")).start()
    yield process
    if process.process.poll() is None:
        process.kill()


def test_help_lists_every_option(tmp_path: Any) -> None:
    out = subprocess.run([TWISTD, "oxidb", "--help"], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    for setting in SETTINGS:
        assert f"--{setting.option}" in out
        assert setting.env in out


def test_official_client_against_a_real_server(shared_server: ServerProcess, official_client: ModuleType) -> None:
    client = official_client.OxiDbClient("127.0.0.1", shared_server.port, timeout=10)
    try:
        assert client.ping() == "pong"
        with pytest.raises(official_client.OxiDbError, match="unknown command: frobnicate"):
            client._checked({"cmd": "frobnicate"})
    finally:
        client.close()


def test_sigterm_stops_cleanly_with_status_zero(server: ServerProcess) -> None:
    client = server.client()
    assert client.request({"cmd": "ping"}) == {"ok": True, "data": "pong"}
    server.signal(signal.SIGTERM)
    assert server.wait() == 0
    log = server.log()
    assert "shutdown signal received" in log
    assert "oxidb-server stopped" in log


def test_startup_log_line(shared_server: ServerProcess) -> None:
    assert f"oxidb-server listening on 127.0.0.1:{shared_server.port} (pool_size=4, data_dir=" in shared_server.log()
    assert "idle_timeout=30s)" in shared_server.log()


@pytest.mark.parametrize(
    "env, fragment",
    [
        ({"OXIDB_POOL_SIZE": "lots"}, "OXIDB_POOL_SIZE='lots'"),
        ({"OXIDB_ADDR": "nowhere"}, "OXIDB_ADDR='nowhere'"),
    ],
)
def test_bad_configuration_exits_non_zero_with_a_message(tmp_path: Any, env: dict[str, str], fragment: str) -> None:
    full = dict(os.environ, OXIDB_DATA=str(tmp_path / "d"), **env)
    result = subprocess.run(
        [TWISTD, "-n", "--pidfile=", "oxidb"], env=full, capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode != 0
    assert fragment in result.stderr
    assert "Traceback" not in result.stderr


def test_port_in_use_fails_startup(tmp_path: Any, shared_server: ServerProcess) -> None:
    env = dict(os.environ, OXIDB_DATA=str(tmp_path / "other"), OXIDB_ADDR=f"127.0.0.1:{shared_server.port}")
    result = subprocess.run(
        [TWISTD, "-n", "--pidfile=", "oxidb"], env=env, capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode != 0
    assert "Address already in use" in result.stderr + result.stdout


def test_plugin_is_discovered_from_an_installed_wheel(tmp_path: Any) -> None:
    """Build the wheel, install it alone into a fresh venv, and ask twistd."""
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), ROOT],
        check=True,
    )
    (wheel,) = wheels.glob("oxidb_server-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    # Dependencies come from the test venv; the package itself only from the wheel.
    deps = subprocess.run(
        [sys.executable, "-c", "import twisted, os; print(os.path.dirname(os.path.dirname(twisted.__file__)))"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    with open(os.path.join(site, "deps.pth"), "w") as f:
        f.write(deps + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", site, str(wheel)], check=True
    )
    probe = (
        "from twisted.plugin import getPlugins; from twisted.application.service import IServiceMaker;"
        "import oxidb, sys; m = [p for p in getPlugins(IServiceMaker) if p.tapname == 'oxidb'];"
        "print(m[0].tapname, oxidb.__file__)"
    )
    out = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, cwd=tmp_path, check=True).stdout
    name, location = out.split()
    assert name == "oxidb"
    assert location.startswith(site)
    assert os.path.exists(os.path.join(site, "twisted", "plugins", "oxidb_plugin.py"))
    assert not os.path.exists(os.path.join(site, "twisted", "plugins", "__init__.py"))


def test_official_client_documents(shared_server: ServerProcess, official_client: ModuleType) -> None:
    """The document commands through PyPI's client, unchanged, against the real process."""
    db = official_client.OxiDbClient("127.0.0.1", shared_server.port, timeout=10)
    try:
        assert db.insert("users", {"name": "Ada", "age": 36}) == {"id": 1}
        assert db.insert_many("users", [{"name": "Bob", "age": 25}, {"name": "Cy", "age": 41}]) == [2, 3]
        assert "users" in db.list_collections()
        found = db.find("users", {"age": {"$gte": 30}}, sort={"age": -1})
        assert [d["name"] for d in found] == ["Cy", "Ada"]
        assert db.find("users", {}, sort={"_id": 1}, skip=1, limit=1)[0]["name"] == "Bob"
        assert db.find_one("users", {"name": "Bob"})["_version"] == 1
        assert db.count("users") == 3
        assert db.update("users", {"name": "Bob"}, {"$inc": {"age": 1}}) == {"modified": 1}
        assert db.find_one("users", {"name": "Bob"})["age"] == 26
        db.create_unique_index("users", "name")
        with pytest.raises(official_client.OxiDbError, match="unique constraint violated: field 'name'"):
            db.insert("users", {"name": "Ada"})
        groups = db.aggregate("users", [{"$group": {"_id": None, "total": {"$sum": "$age"}}}])
        assert groups == [{"_id": None, "total": 36 + 26 + 41}]
        assert db.delete("users", {"age": {"$lt": 30}}) == {"deleted": 1}
        assert db.count("users") == 2
    finally:
        db.close()


def test_acknowledged_writes_survive_sigkill(server: ServerProcess) -> None:
    """kill -9 during a stream of acknowledged writes: every acknowledged one is there after restart."""
    client = server.client()
    acknowledged = []
    for i in range(300):
        reply = client.request(
            {"cmd": "insert_many", "collection": "log", "docs": [{"i": i, "j": j} for j in range(5)]}
        )
        assert reply["ok"], reply
        acknowledged.append(reply["data"])
    client.send_raw(b'{"cmd":"insert_many","collection":"log","docs":[{"last":1},{"last":2}]}')
    server.kill()
    client.close()
    restarted = ServerProcess(server.data_dir).start()
    try:
        docs = restarted.client().request({"cmd": "find", "collection": "log", "query": {}})["data"]
        ids = {d["_id"] for d in docs}
        for batch in acknowledged:
            assert set(batch) <= ids
        # The unacknowledged batch is all there or not at all.
        assert len([d for d in docs if "last" in d]) in (0, 2)
    finally:
        restarted.stop()


def test_json_log_output(tmp_path: Any) -> None:
    """Production logging: structured events as JSON lines, fields intact."""
    import json

    process = ServerProcess(str(tmp_path / "data"), twistd_args=["--logger=oxidb.logs.json_observer"]).start()
    try:
        process.client().request({"cmd": "ping"})
    finally:
        assert process.stop() == 0
    events = [json.loads(line) for line in process.log().splitlines() if line.startswith("{")]
    listening = [e for e in events if e.get("message", "").startswith("oxidb-server listening on")]
    assert listening and listening[0]["addr"] == f"127.0.0.1:{process.port}"
    assert listening[0]["pool_size"] == 4
    assert listening[0]["level"] == "info" and listening[0]["namespace"] == "oxidb.service.OxiService"
    assert any(e.get("message") == "oxidb-server stopped" for e in events)
    ready = [e for e in events if e.get("message", "").startswith("oxidb-server ready: ")]
    assert ready and ready[0]["url"] == f"oxidb://127.0.0.1:{process.port}"
