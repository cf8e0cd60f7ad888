"""
Membership changes (etcd-io/raft's C{confchange/confchange.go}): the
membership that each change leads to, derived from the current one.

A voter set changes through joint consensus: L{enter_joint} gives
C{[old, new]}, L{leave_joint} (once that is committed) C{[new]}. Learners
are added and removed with one entry. Every derived membership keeps the
current one's cluster id and the pinned incarnations of the nodes that
remain. The leader in L{oxidb.raft.core} decides when a change may start
and appends the entries; the quorum arithmetic is in L{oxidb.raft.quorum}.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from oxidb.errors import RaftError
from oxidb.raft.messages import Membership


def derive(current: Membership, configs: Iterable[Iterable[int]], nodes: Mapping[int, str]) -> Membership:
    """A membership derived from C{current}: its pins (of the remaining nodes) and cluster id."""
    pins = {n: i for n, i in current.incarnations.items() if n in nodes}
    return Membership(configs, nodes, pins, current.cluster_id)


def with_learner(current: Membership, node_id: int, addr: str) -> Membership:
    """Add C{node_id} as a learner at C{addr} (or give a member a new address)."""
    return derive(current, current.configs, {**current.nodes, node_id: addr})


def without_learner(current: Membership, node_id: int) -> Membership:
    """Drop the learner C{node_id} (a voter leaves through joint consensus)."""
    nodes = {n: a for n, a in current.nodes.items() if n != node_id}
    return derive(current, current.configs, nodes)


def check_voters(current: Membership, new: frozenset[int]) -> None:
    """
    C{new} may become the voter set of C{current}: it is not empty and
    every node in it is a member already.

    @raise RaftError: it may not.
    """
    if not new:
        raise RaftError("the voter set must not be empty")
    for node in sorted(new - set(current.nodes)):
        raise RaftError(f"node {node} is not a learner; add it with add_learner first")


def enter_joint(current: Membership, new: frozenset[int]) -> Membership:
    """The joint configuration C{[old, new]} of a uniform C{current}."""
    (old,) = current.configs
    return derive(current, [old, new], current.nodes)


def leave_joint(current: Membership) -> Membership:
    """The uniform C{[new]} after the joint C{current}; voters removed leave the membership."""
    old, new = current.configs
    nodes = {n: a for n, a in current.nodes.items() if n not in old - new}
    return derive(current, [new], nodes)


def pin(membership: Membership, seen: Mapping[int, str], cluster_id: str | None) -> Membership:
    """
    C{membership} with the incarnations in C{seen} pinned for its members
    that have none pinned yet, and C{cluster_id} if it names no cluster.
    """
    pins = {n: i for n, i in seen.items() if n in membership.nodes}
    pins.update(membership.incarnations)
    return Membership(membership.configs, membership.nodes, pins, membership.cluster_id or cluster_id)
