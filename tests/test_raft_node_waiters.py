"""
A regression test for a driver bug found by the nemesis test
(tests/test_cluster_nemesis.py, where it shows as C{Unhandled Error ...
ValueError: list.remove(x): x not in list} in a node's log).

C{RaftNode._notify} releases waiters (writes waiting for a new leader after
a redirect or a hand-over, membership changes waiting to settle) from a copy
of the waiter list. A released write that finds its node now leads proposes
at once, which runs the driver, which notifies again: that inner call
releases and removes the other ready waiters, and the outer loop, still on
its copy, removes one of them a second time. The C{ValueError} escapes into
whatever delivered the event (a peer connection, which Twisted then drops; a
Deferred chain, where it is logged as unhandled; the tick loop) and the
waiters after it are not released until the next change.
"""

from __future__ import annotations

from typing import Any

from raft_node_harness import Harness


def test_writes_released_by_a_leader_change_that_propose_at_once() -> None:
    h = Harness([1, 2, 3])
    h.bootstrap([1, 2, 3])
    node = h.nodes[2]
    results: list[Any] = []

    def released(_: Any, n: int) -> Any:
        # What RaftNode.write does after waiting: propose if this node leads.
        return node.propose({"Set": {"k": f"k{n}", "v": n}}).addCallback(results.append)

    # Three writes on node 2 wait for a leader other than node 1, as after a redirect.
    deadline = h.clock.seconds() + 5
    for n in range(3):
        node._wait_for_leader_change(1, deadline).addCallback(released, n)
    core = h.nodes[1].core
    assert core is not None
    core.transfer_leadership(2)
    h.nodes[1]._kick()
    h.run_until(lambda: len(results) == 3)
    assert results == [{"set": f"k{n}"} for n in range(3)]
