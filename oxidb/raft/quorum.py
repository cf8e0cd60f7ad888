"""
Quorum arithmetic over one voter set or two during a joint change
(etcd-io/raft's C{quorum/majority.go} and C{quorum/joint.go}): whether a set
of nodes is a quorum, the highest index a quorum has reached, and the
outcome of an election.

Pure functions of voter sets (no log, no messages):
L{oxidb.raft.messages.Membership} answers its quorum questions through them
and the core counts votes with L{tally}. Membership I{changes} are in
L{oxidb.raft.confchange}.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping


def is_quorum(configs: Iterable[frozenset[int]], granted: Iterable[int]) -> bool:
    """C{granted} holds a majority of every voter set."""
    ids = set(granted)
    return all(len(ids & config) * 2 > len(config) for config in configs)


def quorum_index(configs: Iterable[frozenset[int]], matched: Callable[[int], int]) -> int:
    """
    The highest index that a majority of every voter set has reached,
    given each voter's matched index.
    """
    result = None
    for config in configs:
        indexes = sorted((matched(n) for n in config), reverse=True)
        majority = indexes[len(indexes) // 2] if indexes else 0
        result = majority if result is None else min(result, majority)
    return result or 0


class VoteResult(enum.Enum):
    PENDING = "pending"
    WON = "won"
    LOST = "lost"


def tally(configs: Iterable[frozenset[int]], votes: Mapping[int, bool]) -> VoteResult:
    """The outcome of an election (or pre-vote) given the C{votes} so far (voter -> granted)."""
    configs = tuple(configs)
    if is_quorum(configs, [n for n, ok in votes.items() if ok]):
        return VoteResult.WON
    if is_quorum(configs, [n for n, ok in votes.items() if not ok]):
        return VoteResult.LOST
    return VoteResult.PENDING
