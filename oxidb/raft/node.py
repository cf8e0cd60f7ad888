"""
L{RaftNode}: the driver that turns the sans-IO L{oxidb.raft.core.RaftCore}
into a working replica.

It feeds the core ticks from the injected clock, messages from the peer
transport and requests from the server, and handles the core's outputs one
L{oxidb.raft.core.Ready} at a time in the documented order: send the
messages, make the batch durable (L{RaftStorage.save} on the Raft I/O
thread), send the messages that waited for that, answer ReadIndex reads and
L{advance <oxidb.raft.core.RaftCore.advance>}. The state machine's part
(install a snapshot, apply committed entries, pin the state for a new
snapshot) runs in an apply pipeline behind that, strictly in log order, and
reports back with L{applied <oxidb.raft.core.RaftCore.applied>}: the next
batch is persisted and replicated while this one is applied, and entries of
consecutive batches share the engine's group commit. Committed entries are
durable before their ready, so they enter the pipeline before its batch is
persisted (unless a snapshot is installed first), and entries committed while
it is persisted follow at once (L{RaftCore.take_committed}). Proposals and peer
messages are handled at the end of the reactor turn they arrive in, and
inputs that arrive while a ready is being handled are batched into the next
one, so concurrent writes share one fsync and one append message per
follower.

Requests:

* L{write}: on the leader, propose and fire with the apply result (matched
  by log id: a different entry applied at that index means the write was
  lost and may be retried); on a follower, forward to the leader
  (L{oxidb.raft.forward}) unless forwarding is off; with no leader, wait a
  bounded time for one.
* L{read_barrier}: a ReadIndex round; fires once the local state machine has
  applied everything committed when the read began.
* L{initialize}, L{add_learner}, L{change_membership}, L{remove_node},
  L{transfer_leadership}: the management commands, each waiting (bounded)
  for its effect (L{oxidb.raft.management}).

Forwarded writes, both ways, are kept by a L{oxidb.raft.forward.Forwarder};
bounded waits for a condition on the node's state by L{oxidb.raft.waits}.

A storage error (a failed fsync above all) or a failure to apply is fatal:
the node shuts down and reports it; it never retries.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
import orjson
from twisted.internet.defer import Deferred, fail, inlineCallbacks, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from oxidb.errors import LeaderError, NotLeaderError, OxiError, RaftError, TooLargeError, UnavailableError
from oxidb.logs import Logger
from oxidb.metrics import RaftStatus
from oxidb.raft.core import RaftConfig, RaftCore, RaftEvent, RaftMetrics, Ready, SafetyViolationError
from oxidb.raft.forward import FORWARD, FORWARD_RESULT, Forwarder, ForwardRequest, ForwardResult
from oxidb.raft.management import MembershipCommands
from oxidb.raft.messages import (
    Entry,
    LogId,
    Message,
    PersistBatch,
    Snapshot,
    encode_message,
    message_from_json,
)
from oxidb.raft.storage import DurableState, RaftStorage
from oxidb.raft.transport import IPeerChannel, IPeerHandler, IRaftTransport, PeerProtocolError
from oxidb.raft.waits import Waits, WaitTimeout
from oxidb.wire.framing import MAX_FRAME

#: Room left in a frame for the envelope around a replicated operation.
_FRAME_ROOM = 64 << 10
#: Committed entries waiting for the state machine beyond which no new ready
#: is taken.
APPLY_BACKLOG = 20_000
#: Committed entries waiting for the state machine beyond which a follower
#: persists on the I/O thread instead of in line with the applies (see
#: C{run_persist}), so that catching up does not hold back its
#: acknowledgements (the engine writer's default transaction size).
IN_LINE_BACKLOG = 512


@attrs.frozen
class Outcome:
    """The result of applying one entry: C{value} is the data, or the exception."""

    ok: bool
    value: Any


@attrs.frozen
class SnapshotBuild:
    """
    A snapshot being made: C{pinned} fires once the state it captures is fixed
    (the driver may go on applying), C{data} with the snapshot's bytes.
    """

    pinned: Deferred[None]
    data: Deferred[bytes]


class IStateMachine(Interface):
    """What the replicated log is applied to."""

    def apply(entries: Sequence[Entry]) -> Deferred[list[Outcome]]:
        """
        Apply committed entries in order, durably recording the last index
        applied with them; fire with one L{Outcome} per entry. A failure
        (rather than an outcome) means the state machine is broken.
        """

    def install_snapshot(data: bytes) -> Deferred[None]:
        """Replace the whole state with a snapshot's bytes."""

    def build_snapshot() -> SnapshotBuild:
        """Capture the current state (everything applied so far)."""


@attrs.define(eq=False)
class _Proposal:
    log_id: LogId
    deferred: Deferred[Any]
    deadline: float


@implementer(IPeerHandler)
class RaftNode(MembershipCommands):
    """
    @param node_id: this node's id.
    @param clock: an C{IReactorTime}: ticks, timeouts, entry timestamps.
    @param config: the core's timing and limits.
    @param storage: the loaded L{RaftStorage} (its C{save} runs via C{run_io}).
    @param state_machine: an L{IStateMachine}.
    @param transport: an L{IRaftTransport} (this node is its frame
        handler); may be set later through L{transport}, before L{start}.
    @param rng: the core's randomness (election timeouts).
    @param run_io: C{run_io(fn, *args)} runs blocking storage work off the
        reactor thread, one call at a time, and returns a Deferred.
    @param peers: the address book (node id -> C{host:port}) used for nodes
        whose address the membership does not give.
    @param forward_writes: followers forward writes to the leader.
    @param leader_wait: seconds a request waits for a leader to be elected.
    @param write_timeout: seconds a write waits to be committed and applied.
    @param catch_up_timeout: seconds C{raft_add_learner} and
        C{raft_change_membership} wait for their effect.
    @param on_fatal: called with the failure when the node stops itself.
    @param run_persist: like C{run_io}, but in line with the state machine's
        applies (L{EngineStateMachine.run_in_writer}): a follower persists
        its log batches this way when nothing holds the pipeline back (no
        snapshot installed or pinned, at most L{IN_LINE_BACKLOG} entries
        waiting to be applied), saving a thread hand-off and a reactor
        wakeup per ready; a leader, a candidate, a batch carrying a
        snapshot, and every batch when None, use C{run_io}.
    """

    _log = Logger()

    def __init__(
        self,
        node_id: int,
        *,
        clock: Any,
        config: RaftConfig,
        storage: RaftStorage,
        state_machine: IStateMachine,
        transport: IRaftTransport | None = None,
        rng: random.Random,
        run_io: Callable[..., Deferred[Any]],
        peers: Mapping[int, str] | None = None,
        forward_writes: bool = True,
        leader_wait: float = 5.0,
        write_timeout: float = 30.0,
        catch_up_timeout: float = 60.0,
        tick_interval: float = 0.05,
        on_fatal: Callable[[Failure], None] | None = None,
        run_persist: Callable[..., Deferred[Any]] | None = None,
    ) -> None:
        self.id = node_id
        self._clock = clock
        self._config = config
        self._storage = storage
        self._sm = state_machine
        self.transport = transport
        self._rng = rng
        self._run_io = run_io
        self._run_persist = run_persist
        self._peers = dict(peers or {})
        self.forward_writes = forward_writes
        self.leader_wait = leader_wait
        self.write_timeout = write_timeout
        self.catch_up_timeout = catch_up_timeout
        self._tick_interval = tick_interval
        self._on_fatal = on_fatal
        self.core: RaftCore | None = None
        self._loop: LoopingCall | None = None
        self._busy = False
        self._kick_pending = False
        self._stopped = False
        self.failure: Failure | None = None
        self._durable_index = 0
        self._applied: LogId | None = None
        # The apply pipeline: the state machine's work, one ready after the
        # other; entries not yet applied; pipeline steps that hold back the
        # submission of later entries.
        self._apply_tail: Deferred[Any] = succeed(None)
        # The ready whose batch is being persisted, when its entries (and
        # those committed meanwhile) went to the apply pipeline already.
        self._persisting: Ready | None = None
        self._apply_backlog = 0
        self._held_back = 0
        self._proposals: dict[int, _Proposal] = {}
        # Proposal deadlines, earliest first, (deadline, index, proposal):
        # one timer for the earliest instead of one per write. An entry whose
        # proposal has been settled is dropped when it reaches the front.
        self._deadlines: list[tuple[float, int, _Proposal]] = []
        self._expiry: IDelayedCall | None = None
        self._reads: dict[int, Deferred[bool]] = {}
        self._forwarder = Forwarder(clock, lambda: self.core, self._send_frame, self.propose)
        self._waits = Waits(clock)
        self._retained: frozenset[int] = frozenset()

    # --- lifecycle -------------------------------------------------------------

    def _now_ms(self) -> int:
        return int(self._clock.seconds() * 1000)

    def start(self, state: DurableState, applied: LogId | None) -> None:
        """Start from the loaded durable state; C{applied} is the state machine's."""
        self.core = RaftCore(
            self.id, config=self._config, rng=self._rng, state=state, now=self._now_ms(), applied=applied
        )
        self._applied = applied
        if state.entries:
            self._durable_index = state.entries[-1].index
        elif state.snapshot is not None:
            self._durable_index = state.snapshot.meta.last_log_id.index
        self._retain_links()
        self._loop = LoopingCall(self._tick)
        self._loop.clock = self._clock
        self._loop.start(self._tick_interval, now=False)
        self._kick()

    def stop(self) -> None:
        """Stop taking inputs; fail every waiting request."""
        if self._stopped:
            return
        self._stopped = True
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self.core is not None:
            self.core.shutdown()
        self._fail_everything(self._stopped_error())

    def _stopped_error(self) -> UnavailableError:
        if self.failure is not None:
            return UnavailableError("raft node stopped after a storage failure")
        return UnavailableError("the raft node is shutting down")

    def _halted(self) -> bool:
        """Stopped (asked after waiting: it may have happened meanwhile)."""
        return self._stopped

    @property
    def running(self) -> bool:
        return self.core is not None and not self._stopped

    def _require_core(self) -> RaftCore:
        if self.core is None:
            raise UnavailableError("the raft node is not running")
        if self._stopped:
            raise self._stopped_error()
        return self.core

    # --- driving the core ------------------------------------------------------------

    def _tick(self) -> None:
        if self.core is None or self._stopped:
            return
        self.core.tick(self._now_ms())
        self._kick()

    def _kick_soon(self) -> None:
        """
        L{_kick} once the reactor has handled the other events of this turn:
        the proposals and peer messages that arrive together (one read of
        many clients' requests, the answers of several followers) then go
        into one ready, one log append and fsync, one append per follower.
        """
        if not self._kick_pending:
            self._kick_pending = True
            self._clock.callLater(0, self._kick_now)

    def _kick_now(self) -> None:
        self._kick_pending = False
        self._kick()

    def _kick(self) -> None:
        """Handle readies until none is left or one waits for I/O."""
        if self._busy:
            return
        self._busy = True
        self._run_readies()

    def _run_readies(self) -> None:
        core = self.core
        while core is not None and not self._stopped and core.has_ready():
            if self._apply_backlog > APPLY_BACKLOG:
                # The state machine is behind: let it catch up first.
                self._apply_tail.addCallback(lambda _: self._run_readies())
                return
            try:
                d = self._process(core.ready())
            except Exception:
                self._fatal(Failure())
                return
            if d is None:
                continue
            if not d.called:
                d.addCallbacks(lambda _: self._run_readies(), self._fatal)
                return
            failures: list[Failure] = []
            d.addErrback(failures.append)
            if failures:
                self._fatal(failures[0])
                return
        self._busy = False
        self._notify()

    def _process(self, ready: Ready) -> Deferred[None] | None:
        """
        Steps 1-3 and 5-6 of a ready; the state machine's part (step 4, and
        building a snapshot) goes to the apply pipeline, so that the next
        ready is persisted while this one is applied. Returns C{None} when
        the ready is done, else a Deferred that fires once it is (after the
        persist on the Raft I/O thread).
        """
        self._log_events(ready.events)
        self._send_all(ready.messages)
        persist = ready.persist
        if persist.is_empty:
            self._finish(ready)
            return None
        early = ready.apply_snapshot is None
        # A follower's batch goes ahead of its committed entries' apply, so
        # that its acknowledgement does not wait for that.
        d: Deferred[None] = self._persist_runner(ready)(self._storage.save, persist)
        if early:
            # Its committed entries are durable already: apply them while
            # the batch is persisted, and what commits meanwhile after them
            # (L{_take_committed}).
            self._schedule_apply(ready)
            self._persisting = ready
        d.addCallback(self._persisted, ready, early)
        return d

    def _persist_runner(self, ready: Ready) -> Callable[..., Deferred[Any]]:
        """Where C{ready}'s batch is persisted: in line with the applies on a follower, else the I/O thread."""
        core = self.core
        if (
            self._run_persist is None
            or core is None
            or not core.is_follower
            or self._held_back
            or self._apply_backlog > IN_LINE_BACKLOG
            or ready.apply_snapshot is not None
            or ready.persist.snapshot is not None
        ):
            return self._run_io
        return self._run_persist

    def _persisted(self, _: object, ready: Ready, scheduled: bool) -> None:
        self._persisting = None
        if self._stopped:
            return
        self._saved(ready.persist)
        self._finish(ready, scheduled)

    def _take_committed(self) -> None:
        """
        While a ready's batch is persisted: hand the state machine the
        entries a quorum's answers committed meanwhile, instead of holding
        them until the next ready (a leader's fsync later).
        """
        core = self.core
        if core is None or self._persisting is None or self._apply_backlog > APPLY_BACKLOG:
            return
        entries = core.take_committed()
        if entries:
            self._schedule_entries(entries)
            self._apply_tail.addErrback(self._fatal)

    def _finish(self, ready: Ready, scheduled: bool = False) -> None:
        """The steps of a ready after its batch is durable (its state machine part unless C{scheduled})."""
        core = self.core
        assert core is not None
        self._send_all(ready.persisted_messages)
        # The core releases reads only for indexes the state machine has
        # reported applied, so they may run now.
        for state in ready.read_states:
            self._read_done(state.request_id, True)
        for request_id in ready.failed_reads:
            self._read_done(request_id, False)
        if not scheduled:
            self._schedule_apply(ready)
        core.advance(ready)
        self._retain_links()

    def _log_events(self, events: Sequence[RaftEvent]) -> None:
        for event in events:
            if event.level == "warn":
                self._log.warn(event.text, **event.fields)
            else:
                self._log.info(event.text, **event.fields)

    def _schedule_apply(self, ready: Ready) -> None:
        """
        Hand a ready's state machine work to the apply pipeline. Committed
        entries are submitted to the state machine at once when nothing
        ahead of them is still to be submitted (so the engine's writer
        commits the entries of several readies together); their results are
        taken in log order. Installing a snapshot and pinning the state for a
        new one wait for everything before them, and hold back what comes
        after.
        """
        tail = self._apply_tail
        if ready.apply_snapshot is not None:
            snapshot = ready.apply_snapshot
            self._held_back += 1
            tail.addCallback(lambda _: self._install(snapshot))
        if ready.committed_entries:
            self._schedule_entries(ready.committed_entries)
        if ready.build_snapshot:
            self._held_back += 1
            # Later entries wait until the snapshot's state is pinned.
            tail.addCallback(lambda _: self._start_snapshot()).addCallback(self._released)
        tail.addErrback(self._fatal)

    def _schedule_entries(self, entries: Sequence[Entry]) -> None:
        """Committed entries to the apply pipeline, after everything before them."""
        tail = self._apply_tail
        self._apply_backlog += len(entries)
        if self._held_back == 0:
            applying = self._sm.apply(entries)
            tail.addCallback(lambda _: applying)
        else:
            self._held_back += 1
            tail.addCallback(lambda _: self._submit_in_turn(entries))
        tail.addCallback(self._entries_applied, entries)

    def _released(self, result: Any = None) -> None:
        self._held_back -= 1

    def _submit_in_turn(self, entries: Sequence[Entry]) -> Deferred[list[Outcome]] | None:
        if self._halted():
            return None
        self._released()
        return self._sm.apply(entries)

    @inlineCallbacks
    def _install(self, snapshot: Snapshot) -> Any:
        core = self.core
        if core is None or self._halted():
            return
        meta = snapshot.meta
        self._log.info(
            "raft: installing snapshot {id} ({size} bytes) into the state machine", id=meta.snapshot_id,
            size=len(snapshot.data),
        )
        yield self._sm.install_snapshot(snapshot.data)
        if self._halted():
            return
        self._released()
        core.applied(meta.last_log_id)
        self._applied = meta.last_log_id
        self._kick()
        self._notify()

    def _entries_applied(self, outcomes: list[Outcome] | None, entries: Sequence[Entry]) -> None:
        core = self.core
        if core is None or outcomes is None or self._halted():
            return
        self._apply_backlog -= len(entries)
        core.applied(entries[-1].log_id)
        self._applied = entries[-1].log_id
        self._settle(entries, outcomes)
        self._kick()
        self._notify()

    def _saved(self, persist: PersistBatch) -> None:
        if persist.truncate_from is not None:
            self._durable_index = min(self._durable_index, persist.truncate_from - 1)
        if persist.snapshot is not None:
            self._durable_index = max(self._durable_index, persist.snapshot.meta.last_log_id.index)
        if persist.entries:
            self._durable_index = persist.entries[-1].index

    def _require_transport(self) -> IRaftTransport:
        if self.transport is None:
            raise RuntimeError("the node has no transport")
        return self.transport

    def _send_frame(self, peer: int, payload: bytes) -> None:
        self._require_transport().send(peer, payload)

    def _send_all(self, messages: Sequence[Message]) -> None:
        for msg in messages:
            self._send_frame(msg.dst, encode_message(msg))

    def _start_snapshot(self) -> Deferred[None]:
        applied = self._applied
        assert applied is not None
        build = self._sm.build_snapshot()

        def built(data: bytes) -> None:
            if self.core is None or self._stopped:
                return
            self.core.snapshot_built(applied, data)
            self._log.info(
                "raft: snapshot at {log_id} built ({size} bytes)", log_id=applied.display(), size=len(data)
            )
            self._kick()

        build.data.addCallbacks(built, self._fatal)
        return build.pinned

    def _retain_links(self) -> None:
        core = self.core
        if core is None or core.membership is None:
            return
        peers = frozenset(core.membership.membership.nodes) - {self.id}
        if peers != self._retained:
            self._retained = peers
            self._require_transport().retain(set(peers))

    def _fatal(self, failure: Failure) -> None:
        if self.failure is not None:
            return
        if self._stopped:
            # Work cut short by a clean shutdown (the engine closing under an
            # apply, say) is not a failure of the node.
            self._log.debug("raft: ignoring an error after shutdown: {error}", error=failure.getErrorMessage())
            return
        self.failure = failure
        self._busy = False
        self._log.failure("raft: stopping the node after a fatal error", failure)
        self.stop()
        if self._on_fatal is not None:
            self._on_fatal(failure)

    def _fail_everything(self, error: OxiError) -> None:
        proposals, self._proposals = self._proposals, {}
        self._deadlines.clear()
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        for proposal in proposals.values():
            proposal.deferred.errback(error)
        reads, self._reads = self._reads, {}
        for d in reads.values():
            d.callback(False)
        self._forwarder.fail_all(error)
        self._waits.fail_all(error)

    def _notify(self) -> None:
        """Something changed: fail forwards to a former leader, release the waits now satisfied."""
        self._forwarder.check()
        self._waits.notify()

    # --- IPeerHandler --------------------------------------------------------------------

    def frame_received(self, peer: int, frame: dict[str, Any], channel: IPeerChannel) -> None:
        if self.core is None or self._stopped:
            return
        kind = frame.get("type")
        if kind == FORWARD:
            self._forwarder.received(ForwardRequest.from_json(frame), channel)
            return
        if kind == FORWARD_RESULT:
            self._forwarder.answered(ForwardResult.from_json(frame))
            return
        msg = message_from_json(frame)
        if msg.src != peer or msg.dst != self.id:
            raise PeerProtocolError(f"a message from node {msg.src} to node {msg.dst} on node {peer}'s connection")
        try:
            self.core.receive(msg)
        except SafetyViolationError:
            self._fatal(Failure())
            return
        self._take_committed()
        self._kick_soon()

    # --- writes ------------------------------------------------------------------------------

    def propose(self, op: dict[str, Any], op_json: bytes | None = None) -> Deferred[Any]:
        """
        Propose C{op} on this node, which must lead (L{NotLeaderError}
        otherwise); fires with the apply result. C{op_json}, when the caller
        has it, is C{orjson.dumps(op)} (see L{Entry.normal}).
        """
        core = self._require_core()
        log_id = core.propose(op, self._now_ms(), op_json)
        d: Deferred[Any] = Deferred()
        previous = self._proposals.pop(log_id.index, None)
        if previous is not None:
            # An earlier proposal at this index was overwritten before it came back.
            previous.deferred.errback(RaftError("the write was lost in a leader change; retry it"))
        proposal = _Proposal(log_id, d, self._clock.seconds() + self.write_timeout)
        self._proposals[log_id.index] = proposal
        heapq.heappush(self._deadlines, (proposal.deadline, log_id.index, proposal))
        if self._expiry is None:
            self._expiry = self._clock.callLater(self.write_timeout, self._expire_proposals)
        elif proposal.deadline < self._expiry.getTime():
            self._expiry.reset(self.write_timeout)
        self._kick_soon()
        return d

    def _expire_proposals(self) -> None:
        """The earliest deadline has come: fail every proposal past its deadline."""
        self._expiry = None
        now = self._clock.seconds()
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            _deadline, index, proposal = heapq.heappop(deadlines)
            if self._proposals.get(index) is proposal:
                del self._proposals[index]
                proposal.deferred.errback(
                    RaftError(f"the write was not committed within {self.write_timeout:g}s; its outcome is unknown")
                )
        self._drop_settled_deadlines()

    def _drop_settled_deadlines(self) -> None:
        """Forget deadlines of settled proposals at the front; keep the timer on the earliest live one."""
        deadlines = self._deadlines
        while deadlines and self._proposals.get(deadlines[0][1]) is not deadlines[0][2]:
            heapq.heappop(deadlines)
        if not deadlines:
            if self._expiry is not None:
                self._expiry.cancel()
                self._expiry = None
        elif self._expiry is None:
            self._expiry = self._clock.callLater(
                max(0.0, deadlines[0][0] - self._clock.seconds()), self._expire_proposals
            )

    def _settle(self, entries: Sequence[Entry], outcomes: Sequence[Outcome]) -> None:
        if not self._proposals:
            return
        for entry, outcome in zip(entries, outcomes, strict=True):
            proposal = self._proposals.pop(entry.index, None)
            if proposal is None:
                continue
            if proposal.log_id != entry.log_id:
                proposal.deferred.errback(RaftError("the write was lost in a leader change; retry it"))
            elif outcome.ok:
                proposal.deferred.callback(outcome.value)
            else:
                proposal.deferred.errback(outcome.value)
        self._drop_settled_deadlines()

    def write(self, op: dict[str, Any]) -> Deferred[Any]:
        """
        Replicate C{op} and return the leader's apply result, from any node
        (see the module docstring).
        """
        try:
            op_json = orjson.dumps(op)
        except orjson.JSONEncodeError:
            return fail()
        if len(op_json) > MAX_FRAME - _FRAME_ROOM:
            return fail(TooLargeError(f"replicated operation of {len(op_json)} bytes exceeds the Raft frame limit"))
        core = self.core
        if core is not None and not self._stopped and (core.is_leader or not self.forward_writes):
            # The common case on the leader: no generator, the proposal's own Deferred.
            try:
                return self.propose(op, op_json)
            except RaftError:
                pass  # the general path below handles (or raises) it the same way again
        result: Deferred[Any] = self._write(op, op_json)
        return result

    @inlineCallbacks
    def _write(self, op: dict[str, Any], op_json: bytes) -> Any:
        deadline = self._clock.seconds() + self.leader_wait
        while True:
            core = self._require_core()
            if core.is_leader or not self.forward_writes:
                try:
                    proposed = self.propose(op, op_json)
                except NotLeaderError:
                    raise
                except RaftError:
                    # The leader is handing over: wait for the next one.
                    yield self._wait_for_leader_change(core.leader_id, deadline)
                    continue
                result = yield proposed
                return result
            leader = core.leader_id
            if leader is None:
                yield self._wait_for_leader_change(None, deadline)
                continue
            answer = yield self._forwarder.forward(leader, core.current_term, op, self.write_timeout)
            if answer.ok:
                return answer.data
            if not answer.redirect:
                raise LeaderError(answer.error)
            yield self._wait_for_leader_change(leader, deadline)

    def _wait_for_leader_change(self, leader: int | None, deadline: float) -> Deferred[None]:
        """Wait until a leader other than C{leader} is known, until C{deadline}."""

        def changed() -> bool:
            core = self._require_core()
            return core.leader_id is not None and core.leader_id != leader

        d = self._waits.wait(changed, deadline - self._clock.seconds())

        def timed_out(failure: Failure) -> None:
            failure.trap(WaitTimeout)
            raise RaftError(f"no leader elected within {self.leader_wait:g}s; retry")

        d.addErrback(timed_out)
        return d

    # --- linearizable reads -----------------------------------------------------------

    @inlineCallbacks
    def read_barrier(self) -> Any:
        """
        Fire once this node's state machine holds every write committed before
        the call (ReadIndex through the leader); fails with L{RaftError} when
        no leader confirms within the leader wait.
        """
        deadline = self._clock.seconds() + self.leader_wait
        while True:
            core = self._require_core()
            request_id = core.read_index()
            d: Deferred[bool] = Deferred()
            self._reads[request_id] = d
            self._kick()
            confirmed = yield d
            if confirmed:
                return None
            if self._clock.seconds() >= deadline:
                raise RaftError(f"linearizable read: no leader confirmed within {self.leader_wait:g}s; retry")
            yield self._wait_for_leader_change(None, deadline)

    def _read_done(self, request_id: int, confirmed: bool) -> None:
        d = self._reads.pop(request_id, None)
        if d is not None:
            d.callback(confirmed)

    # --- introspection ------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        return self.core is not None and not self._stopped and self.core.is_leader

    def metrics(self) -> RaftMetrics:
        core = self.core
        if core is None:
            raise UnavailableError("the raft node is not running")
        metrics = core.metrics()
        if self._stopped:
            metrics = attrs.evolve(metrics, state="Shutdown")
        return metrics

    def status(self) -> RaftStatus:
        """The node's Raft status for C{/metrics}, C{/ready} and C{server_status}."""
        core = self.core
        if core is None:
            return RaftStatus(node_id=self.id, state="Shutdown", term=0, leader_id=None,
                              last_log_index=0, commit_index=0, applied_index=0)
        m = core.metrics()
        return RaftStatus(
            node_id=self.id,
            state="Shutdown" if self._stopped else m.state,
            term=m.current_term,
            leader_id=m.current_leader,
            last_log_index=m.last_log_index or 0,
            commit_index=m.commit_index,
            applied_index=m.last_applied.index if m.last_applied else 0,
            match_index=dict(m.replication) if m.state == "Leader" else {},
        )

    def address_of(self, node: int) -> str | None:
        """A node's Raft address: the membership's, else the address book's."""
        core = self.core
        if core is not None and core.membership is not None:
            addr = core.membership.membership.nodes.get(node)
            if addr:
                return addr
        return self._peers.get(node)
