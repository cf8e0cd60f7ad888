"""
ReadIndex reads (etcd-io/raft's C{read_only.go}): L{ReadOnly} keeps the
linearizable reads a node has started until they are answered.

On the leader a read takes C{max(commit, the term's blank entry)} as its
index and waits for a heartbeat round acknowledged by a quorum that began
after it (rounds are numbered: C{seq}); a follower asks the leader for the
index and gives up after a deadline. Either way the read is released once
the local state machine has applied its index, or fails. The core in
L{oxidb.raft.core} sends the heartbeats and messages; this module keeps the
queues.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator

import attrs


@attrs.frozen
class ReadState:
    """A confirmed read: the state machine has applied C{index}; read now."""

    request_id: int
    index: int


@attrs.define(eq=False)
class ReadOnly:
    """
    The reads of one node.

    @ivar seq: the last heartbeat round this leader started.
    @ivar round_pending: a read waits for a round not sent yet.
    @ivar to_confirm: the leader's reads waiting for their round, in order:
        C{(round, origin node, request id, index)}.
    @ivar waiting_apply: confirmed reads of this node waiting for the state
        machine to apply their index.
    @ivar remote: the reads this node asked the leader to confirm: request
        id -> deadline (logical ms).
    @ivar released: reads to answer now (L{oxidb.raft.core.Ready.read_states}).
    @ivar failed: request ids of reads that failed
        (L{oxidb.raft.core.Ready.failed_reads}).
    """

    next_id: int = 1
    seq: int = 0
    round_pending: bool = False
    to_confirm: deque[tuple[int, int, int, int]] = attrs.Factory(deque)
    waiting_apply: list[ReadState] = attrs.Factory(list)
    remote: dict[int, int] = attrs.Factory(dict)
    released: list[ReadState] = attrs.Factory(list)
    failed: list[int] = attrs.Factory(list)

    def new_request(self) -> int:
        """A new read's request id."""
        request_id = self.next_id
        self.next_id += 1
        return request_id

    def add_request(self, origin: int, request_id: int, index: int) -> None:
        """The leader registers a read of node C{origin} at C{index}, for the next round."""
        self.to_confirm.append((self.seq + 1, origin, request_id, index))

    def heartbeat_round(self) -> int:
        """The round number heartbeats carry now (a new round if a read waits for one)."""
        if self.round_pending:
            self.seq += 1
            self.round_pending = False
        return self.seq

    def confirmed(self, acknowledged: Callable[[int], bool]) -> Iterator[tuple[int, int, int]]:
        """
        Take the reads whose round a quorum acknowledged (C{acknowledged(round)}),
        in order, as C{(origin, request id, index)}.
        """
        while self.to_confirm:
            seq, origin, request_id, index = self.to_confirm[0]
            if seq > self.seq or not acknowledged(seq):
                return
            self.to_confirm.popleft()
            yield origin, request_id, index

    def abandon(self) -> list[tuple[int, int]]:
        """Leadership is lost: take every read still to confirm, as C{(origin, request id)}."""
        reads = [(origin, request_id) for _seq, origin, request_id, _index in self.to_confirm]
        self.to_confirm.clear()
        self.round_pending = False
        return reads

    def wait_remote(self, request_id: int, deadline: int) -> None:
        """This node asked the leader to confirm a read; it fails at C{deadline}."""
        self.remote[request_id] = deadline

    def remote_answered(self, request_id: int) -> bool:
        """The leader answered a read: says whether it was still waiting."""
        return self.remote.pop(request_id, None) is not None

    def expire(self, now: int) -> None:
        """Fail the reads the leader did not answer by their deadline."""
        for request_id, deadline in list(self.remote.items()):
            if now >= deadline:
                del self.remote[request_id]
                self.failed.append(request_id)

    def wait_for_apply(self, state: ReadState, applied: int) -> None:
        """A read of this node is confirmed; it is released once C{state.index} is applied."""
        self.waiting_apply.append(state)
        self.release(applied)

    def release(self, applied: int) -> None:
        """The state machine has applied up to C{applied}: release the reads it covers."""
        waiting: list[ReadState] = []
        for state in self.waiting_apply:
            (self.released if state.index <= applied else waiting).append(state)
        self.waiting_apply = waiting

    def has_answers(self) -> bool:
        return bool(self.released or self.failed)

    def take_answers(self) -> tuple[tuple[ReadState, ...], tuple[int, ...]]:
        """The reads released and failed since the last call."""
        answers = tuple(self.released), tuple(self.failed)
        self.released, self.failed = [], []
        return answers
