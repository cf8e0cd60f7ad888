"""
The shutdown signal: SIGTERM stops the reactor cleanly, and arms a
deadline after which a stuck stop dumps every thread's stack and exits 1.
"""

from __future__ import annotations

import signal
from typing import Any

import pytest
from twisted.internet.testing import MemoryReactorClock

from oxidb import service as service_module
from oxidb.config import Config
from oxidb.service import DRAIN_TIMEOUT, SHUTDOWN_DEADLINE, OxiService


class ThreadsReactor(MemoryReactorClock):
    """A memory reactor whose C{callFromThread} runs the call at once."""

    def callFromThread(self, f: Any, *args: Any, **kwargs: Any) -> None:
        f(*args, **kwargs)


def test_a_shutdown_signal_stops_the_reactor_and_arms_the_deadline(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    handlers: dict[int, Any] = {}
    armed: list[tuple[float, bool]] = []
    monkeypatch.setattr(service_module.signal, "signal", lambda signum, handler: handlers.__setitem__(signum, handler))
    monkeypatch.setattr(
        service_module.faulthandler,
        "dump_traceback_later",
        lambda timeout, exit=False, file=None: armed.append((timeout, exit)),
    )
    reactor = ThreadsReactor()
    stopped: list[bool] = []
    reactor.stop = lambda: stopped.append(True)  # type: ignore[method-assign]
    service = OxiService(Config(addr=("127.0.0.1", 0), data_dir=str(tmp_path)), reactor, handle_signals=True)
    service._install_signal_handlers()
    assert set(handlers) == {signal.SIGTERM, signal.SIGINT}
    assert not armed and not stopped

    handlers[signal.SIGTERM](signal.SIGTERM, None)

    assert stopped == [True]
    # Longer than the drain of in-flight requests, and it exits the process.
    assert armed == [(SHUTDOWN_DEADLINE, True)]
    assert SHUTDOWN_DEADLINE > DRAIN_TIMEOUT
