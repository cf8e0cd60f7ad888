"""
docs/cluster-walkthrough.md runs as written: its shell blocks, in order, in
an empty directory, with the replies it shows after C{# ->}. Three real
server processes: the one test here that needs them.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parent.parent / "docs" / "cluster-walkthrough.md"
PORTS = (4441, 4442, 4443, 4451, 4452, 4453)


def shell_blocks(text: str) -> list[str]:
    return re.findall(r"^```sh\n(.*?)^```", text, re.S | re.M)


def expected_replies(blocks: list[str]) -> list[str]:
    return [line[len("# -> ") :] for block in blocks for line in block.splitlines() if line.startswith("# -> ")]


def _free(port: int) -> bool:
    with socket.socket() as probe:
        # As the server binds (Twisted sets SO_REUSEADDR): TIME-WAIT leftovers do not count.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _stop_leftovers(directory: Path) -> None:
    """Kill the nodes a failed run left behind (by their pid files)."""
    for pidfile in directory.glob("node*.pid"):
        try:
            pid = int(pidfile.read_text().strip())
            os.kill(pid, signal.SIGKILL)
        except (ValueError, OSError):
            pass


def test_the_cluster_walkthrough_runs_verbatim(tmp_path: Path) -> None:
    blocks = shell_blocks(DOC.read_text(encoding="utf-8"))
    assert len(blocks) == 5
    busy = [port for port in PORTS if not _free(port)]
    assert not busy, f"the walkthrough's ports {busy} are in use on this machine"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OXIDB_")}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    script = "set -euo pipefail\n" + "\n".join(blocks)
    started = time.monotonic()
    try:
        done = subprocess.run(
            ["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240
        )
        logs = {n: (tmp_path / f"node{n}.log").read_text() for n in (1, 2, 3) if (tmp_path / f"node{n}.log").exists()}
        assert done.returncode == 0, (done.stdout, done.stderr, logs)
        lines = done.stdout.splitlines()
        expected = expected_replies(blocks)
        assert [line for line in lines if line in expected] == expected, (done.stdout, done.stderr)
        assert (
            "oxidb-server ready: auth off, TLS off, cluster node 1, not initialized (run raft_init on one node); "
            "connect with: oxidb-cli --url oxidb://127.0.0.1:4441"
        ) in logs[1]
        # Step 5 stopped every node cleanly.
        deadline = time.monotonic() + 60
        while not all("oxidb-server stopped" in (tmp_path / f"node{n}.log").read_text() for n in (1, 2, 3)):
            if time.monotonic() > deadline:
                pytest.fail("the nodes did not stop")
            time.sleep(0.1)
    finally:
        _stop_leftovers(tmp_path)
    assert time.monotonic() - started < 240
