"""
One server per data directory: the OS lock on C{OXIDB_DATA/oxidb.lock}.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from oxidb._harness import ServerProcess
from oxidb.datadir import LOCK_FILE, DataDirLock
from oxidb.errors import ConfigError


def test_a_second_open_is_refused_and_names_the_holder(tmp_path: Path) -> None:
    first = DataDirLock(str(tmp_path))
    first.acquire()
    assert (tmp_path / LOCK_FILE).read_text() == f"{os.getpid()}\n"
    second = DataDirLock(str(tmp_path))
    with pytest.raises(ConfigError, match=rf"is in use by another oxidb-server process \(pid {os.getpid()},"):
        second.acquire()
    assert not second.held
    first.release()
    second.acquire()  # released: the next one gets it
    assert second.held
    second.release()


@pytest.mark.timeout(150)
def test_a_second_server_process_on_the_same_data_refuses_to_start(tmp_path: Path) -> None:
    # Standalone here; a cluster node takes the same lock in the same place
    # (OxiService.privilegedStartService).
    data = str(tmp_path / "data")
    standalone = ServerProcess(data).start()
    second = ServerProcess(data)
    try:
        with pytest.raises(RuntimeError, match="server exited with 1") as info:
            second.start()
        assert f"is in use by another oxidb-server process (pid {standalone.process.pid}" in str(info.value)
    finally:
        standalone.kill()
        if second.process is not None and second.process.poll() is None:
            second.kill()
    # The kernel dropped the lock with the killed process: a new one starts.
    again = ServerProcess(data)
    try:
        again.start()
        assert again.client().request({"cmd": "ping"})["ok"] is True
        assert again.stop() == 0
    finally:
        if again.process is not None and again.process.poll() is None:
            again.kill()
