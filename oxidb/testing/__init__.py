"""
Deterministic helpers for testing against the server, public so that
applications embedding it can test the way this project does (in the spirit
of C{treq.testing}). Nothing here opens a socket, starts a process or sleeps;
docs/testing.md describes each name.

 - L{MemoryServer}: the server's protocol stack on a C{MemoryReactorClock},
   with in-memory (iosim) client connections (L{oxidb.testing.memory}).
 - L{OxiClientProtocol}: a small Twisted client for the framing; requests
   may be pipelined.
 - L{SynchronousExecutor}: runs reads and writes inline, so a whole request
   completes inside one C{pump.flush()}.
 - L{fake_services}: a partial L{oxidb.commands.IServices} for handler tests.
 - L{QueuedReactor}: a reactor stand-in whose C{callFromThread} only queues,
   for code that hands results from threads to the reactor.
 - L{result_of}: the result of an already-fired Deferred.
 - L{Simulation}, L{Faults}, L{CrashingDisk}, L{KVStateMachine}: the seeded
   Raft cluster simulator and its parts (L{oxidb.testing.raft}).
 - L{Op}, L{check_history}: the linearizability checker for key-value
   histories (L{oxidb.testing.linearizability}).

The harness that runs real server processes for end-to-end tests is private
(L{oxidb._harness}).
"""

from __future__ import annotations

from oxidb.testing.linearizability import Op, check_history, check_key, kv_step
from oxidb.testing.memory import (
    MemoryServer,
    OxiClientProtocol,
    QueuedReactor,
    SynchronousExecutor,
    fake_services,
    result_of,
)
from oxidb.testing.raft import (
    NO_FAULTS,
    SIM_CONFIG,
    CrashingDisk,
    DiskCrashed,
    Faults,
    KVStateMachine,
    SafetyViolation,
    Simulation,
)

__all__ = [
    "CrashingDisk",
    "DiskCrashed",
    "Faults",
    "KVStateMachine",
    "MemoryServer",
    "NO_FAULTS",
    "Op",
    "OxiClientProtocol",
    "QueuedReactor",
    "SIM_CONFIG",
    "SafetyViolation",
    "Simulation",
    "SynchronousExecutor",
    "check_history",
    "check_key",
    "fake_services",
    "kv_step",
    "result_of",
]
