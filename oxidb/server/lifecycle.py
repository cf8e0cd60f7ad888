"""
The life of one client connection as an explicit state machine (automat's
typed builder, in the style of Twisted's C{ClientService}).

The machine decides; L{oxidb.server.protocol.OxiServerProtocol} (the core)
does. Three things are orthogonal to a connection's life and the states are
their product:

 - whether a request is I{executing} (its reply is pending on a Deferred);
 - whether the client reads its replies (I{paused} when it does not: the
   transport paused us, so no further request runs);
 - the phase: open, I{closing} (an oversized frame arrived after valid
   ones: those are answered, then the connection closes; nothing more is
   read), I{draining} (a clean shutdown: the executing request is answered,
   no other runs), then I{closed} (we closed the transport) and I{gone}
   (connection lost).

The hot path never calls the machine: each transition installs the core's
handler for received bytes (L{Intake}) and, in the states where queued
requests may run, a fresh L{Turn}; every transition out of such a state
revokes it. A request that completes synchronously (ping) runs inside its
turn; only a request that goes asynchronous, and the events of the
transport (pause, resume, loss), go through the machine. An input that has
no transition in the current state raises L{automat.NoTransition}: a reply
without a request, a request while paused, a second connect, are
impossible rather than checked.

Docs: the graph in docs/state-machines/connection.dot is generated from
this machine (L{oxidb.machines}).
"""

from __future__ import annotations

import enum
from typing import Protocol

import attrs
from automat import TypeMachine, TypeMachineBuilder, pep614
from twisted.internet.defer import Deferred, succeed

from oxidb._automaton import index_transitions


class Intake(enum.Enum):
    """What the core does with the bytes it receives."""

    #: decode; run the frames now (a L{Turn} is live).
    RUN = "run"
    #: decode; queue the frames behind the executing request.
    QUEUE = "queue"
    #: decode (a too large frame still aborts); drop the frames.
    DROP = "drop"
    #: ignore the bytes.
    DISCARD = "discard"


@attrs.define
class Turn:
    """
    Permission to run queued requests, handed out on entering a state that
    runs them and revoked by every transition out of it.

    @ivar live: requests may run.
    @ivar flow: the queue's length decides whether the transport reads
        (false once the connection closes or stops reading for good).
    @ivar closing: when the queue is empty, the connection closes.
    """

    live: bool = True
    flow: bool = True
    closing: bool = False


#: The turn of the open states where nothing runs.
NO_TURN = Turn(live=False, flow=True)
#: The turn of the states that read no more.
STOPPED = Turn(live=False, flow=False)


class ConnectionCore(Protocol):
    """What the machine needs from the connection it drives."""

    def set_intake(self, intake: Intake, turn: Turn) -> None:
        """Install the handler for received bytes and the current turn."""

    def enqueue(self, frames: list[bytes]) -> None:
        """Queue whole frames for execution."""

    def clear_queue(self) -> None:
        """Forget the queued frames."""

    def stop_reading(self) -> None:
        """Pause the transport for good (closing)."""

    def write_reply(self, payload: bytes) -> None:
        """Write one reply frame."""

    def after_reply(self) -> None:
        """A reply was written: close if the session asked to, else restart the idle clock."""

    def count_writing_unsent(self) -> None:
        """The transport paused us: the reply being written is unsent."""

    def count_unsent(self, payload: bytes) -> None:
        """C{payload} was written while the transport is paused."""

    def release_unsent(self) -> None:
        """The transport has sent what it held."""

    def close(self) -> None:
        """Close the transport cleanly (after the last reply)."""

    def abort(self) -> None:
        """Close the transport at once, without a reply."""

    def cleanup(self) -> None:
        """The connection is lost: release everything it holds."""

    def wait_drained(self) -> Deferred[None]:
        """A Deferred fired by L{fire_drained}."""

    def fire_drained(self) -> None:
        """Fire the Deferreds of L{wait_drained}."""


class ConnectionInputs(Protocol):
    """The events of one client connection."""

    def connected(self) -> None:
        """The transport is connected."""

    def request_pending(self) -> None:
        """The request taken from the queue did not complete synchronously."""

    def answered(self, payload: bytes) -> None:
        """The pending request's reply is C{payload}."""

    def pause_writing(self) -> None:
        """The transport holds too much: the client does not read."""

    def resume_writing(self) -> None:
        """The transport has sent what it held."""

    def oversized(self) -> None:
        """A frame prefix above the limit, with no complete frame before it."""

    def oversized_after(self, frames: list[bytes]) -> None:
        """A frame prefix above the limit after the complete C{frames}."""

    def all_answered(self) -> None:
        """Closing: the last queued request has been answered."""

    def close_after_reply(self) -> None:
        """The session asked to close once its reply was written."""

    def drain(self) -> Deferred[None]:
        """Shutdown: take no new request; fire once the executing one is answered."""

    def abort(self) -> None:
        """A timeout: close without a reply."""

    def lost(self) -> None:
        """The connection is gone."""

    def busy(self) -> bool:
        """Is a request executing?"""


def _build() -> TypeMachine[ConnectionInputs, ConnectionCore]:
    # The core is a typing.Protocol (its implementation imports this module).
    machine = TypeMachineBuilder(ConnectionInputs, ConnectionCore)  # type: ignore[type-abstract]

    new = machine.state("new")
    idle = machine.state("idle")
    executing = machine.state("executing")
    paused = machine.state("paused")
    executing_paused = machine.state("executing_paused")
    closing = machine.state("closing")
    closing_executing = machine.state("closing_executing")
    closing_paused = machine.state("closing_paused")
    closing_executing_paused = machine.state("closing_executing_paused")
    draining = machine.state("draining")
    draining_paused = machine.state("draining_paused")
    drained = machine.state("drained")
    closed = machine.state("closed")
    gone = machine.state("gone")

    I = ConnectionInputs  # noqa: E741

    for state in (executing, executing_paused, closing_executing, closing_executing_paused, draining, draining_paused):
        state.upon(I.busy).loop().returns(True)
    for state in (new, idle, paused, closing, closing_paused, drained, closed, gone):
        state.upon(I.busy).loop().returns(False)

    # --- opening and running ------------------------------------------------

    @pep614(new.upon(I.connected).to(idle))
    @pep614(paused.upon(I.resume_writing).to(idle))
    def start_running(m: ConnectionInputs, c: ConnectionCore) -> None:
        c.release_unsent()
        c.set_intake(Intake.RUN, Turn())

    @pep614(idle.upon(I.request_pending).to(executing))
    def wait_for_reply(m: ConnectionInputs, c: ConnectionCore) -> None:
        c.set_intake(Intake.QUEUE, NO_TURN)

    @pep614(closing.upon(I.request_pending).to(closing_executing))
    def wait_for_reply_closing(m: ConnectionInputs, c: ConnectionCore) -> None:
        c.set_intake(Intake.DISCARD, STOPPED)

    @pep614(executing.upon(I.answered).to(idle))
    def reply_and_run(m: ConnectionInputs, c: ConnectionCore, payload: bytes) -> None:
        c.set_intake(Intake.RUN, Turn())
        c.write_reply(payload)
        c.after_reply()

    @pep614(executing_paused.upon(I.answered).to(paused))
    @pep614(closing_executing_paused.upon(I.answered).to(closing_paused))
    def reply_unsent(m: ConnectionInputs, c: ConnectionCore, payload: bytes) -> None:
        c.write_reply(payload)
        c.count_unsent(payload)
        c.after_reply()

    @pep614(closing_executing.upon(I.answered).to(closing))
    def reply_and_finish(m: ConnectionInputs, c: ConnectionCore, payload: bytes) -> None:
        c.set_intake(Intake.DISCARD, Turn(flow=False, closing=True))
        c.write_reply(payload)
        c.after_reply()

    # --- the client stops and starts reading its replies ---------------------

    @pep614(idle.upon(I.pause_writing).to(paused))
    def stall(m: ConnectionInputs, c: ConnectionCore) -> None:
        c.set_intake(Intake.QUEUE, NO_TURN)
        c.count_writing_unsent()

    @pep614(closing.upon(I.pause_writing).to(closing_paused))
    def stall_closing(m: ConnectionInputs, c: ConnectionCore) -> None:
        c.set_intake(Intake.DISCARD, STOPPED)
        c.count_writing_unsent()

    @pep614(executing.upon(I.pause_writing).to(executing_paused))
    @pep614(closing_executing.upon(I.pause_writing).to(closing_executing_paused))
    @pep614(draining.upon(I.pause_writing).to(draining_paused))
    def stall_executing(m: ConnectionInputs, c: ConnectionCore) -> None:
        c.count_writing_unsent()

    for state in (paused, executing_paused, closing_paused, closing_executing_paused, draining_paused):
        state.upon(I.pause_writing).loop().returns(None)

    @pep614(drained.upon(I.pause_writing).loop())
    @pep614(closed.upon(I.pause_writing).loop())
    @pep614(gone.upon(I.pause_writing).loop())
    def stall_after(m: ConnectionInputs, c: ConnectionCore) -> None:
        c.count_writing_unsent()

    @pep614(executing_paused.upon(I.resume_writing).to(executing))
    @pep614(closing_executing_paused.upon(I.resume_writing).to(closing_executing))
    @pep614(draining_paused.upon(I.resume_writing).to(draining))
    @pep614(idle.upon(I.resume_writing).loop())
    @pep614(executing.upon(I.resume_writing).loop())
    @pep614(closing.upon(I.resume_writing).loop())
    @pep614(closing_executing.upon(I.resume_writing).loop())
    @pep614(draining.upon(I.resume_writing).loop())
    @pep614(drained.upon(I.resume_writing).loop())
    @pep614(closed.upon(I.resume_writing).loop())
    @pep614(gone.upon(I.resume_writing).loop())
    def resume(m: ConnectionInputs, c: ConnectionCore) -> None:
        c.release_unsent()

    @pep614(closing_paused.upon(I.resume_writing).to(closing))
    def resume_closing(m: ConnectionInputs, c: ConnectionCore) -> None:
        c.release_unsent()
        c.set_intake(Intake.DISCARD, Turn(flow=False, closing=True))

    # --- oversized frames ------------------------------------------------------

    @pep614(idle.upon(I.oversized_after).to(closing))
    def close_when_answered(m: ConnectionInputs, c: ConnectionCore, frames: list[bytes]) -> None:
        c.stop_reading()
        c.enqueue(frames)
        c.set_intake(Intake.DISCARD, Turn(flow=False, closing=True))

    @pep614(executing.upon(I.oversized_after).to(closing_executing))
    @pep614(paused.upon(I.oversized_after).to(closing_paused))
    @pep614(executing_paused.upon(I.oversized_after).to(closing_executing_paused))
    def close_when_answered_later(m: ConnectionInputs, c: ConnectionCore, frames: list[bytes]) -> None:
        c.stop_reading()
        c.enqueue(frames)
        c.set_intake(Intake.DISCARD, STOPPED)

    @pep614(draining.upon(I.oversized_after).to(closed))
    @pep614(draining_paused.upon(I.oversized_after).to(closed))
    @pep614(drained.upon(I.oversized_after).to(closed))
    def abort_draining(m: ConnectionInputs, c: ConnectionCore, frames: list[bytes]) -> None:
        c.set_intake(Intake.DISCARD, STOPPED)
        c.abort()

    @pep614(closing.upon(I.all_answered).to(closed))
    def finish_closing(m: ConnectionInputs, c: ConnectionCore) -> None:
        c.set_intake(Intake.DISCARD, STOPPED)
        c.close()

    for state in (idle, paused, closing, closing_paused, drained):
        state.upon(I.close_after_reply).to(closed)(finish_closing)
    closed.upon(I.close_after_reply).loop().returns(None)
    gone.upon(I.close_after_reply).loop().returns(None)

    # --- shutdown ---------------------------------------------------------------

    @pep614(idle.upon(I.drain).to(drained))
    @pep614(paused.upon(I.drain).to(drained))
    def drain_now(m: ConnectionInputs, c: ConnectionCore) -> Deferred[None]:
        c.clear_queue()
        c.set_intake(Intake.DROP, NO_TURN)
        return succeed(None)

    @pep614(closing.upon(I.drain).to(drained))
    @pep614(closing_paused.upon(I.drain).to(drained))
    def drain_closing(m: ConnectionInputs, c: ConnectionCore) -> Deferred[None]:
        c.clear_queue()
        c.set_intake(Intake.DISCARD, STOPPED)
        return succeed(None)

    @pep614(executing.upon(I.drain).to(draining))
    @pep614(executing_paused.upon(I.drain).to(draining_paused))
    @pep614(closing_executing.upon(I.drain).to(draining))
    @pep614(closing_executing_paused.upon(I.drain).to(draining_paused))
    def drain_later(m: ConnectionInputs, c: ConnectionCore) -> Deferred[None]:
        c.clear_queue()
        c.set_intake(Intake.DROP, NO_TURN)
        return c.wait_drained()

    @pep614(draining.upon(I.drain).loop())
    @pep614(draining_paused.upon(I.drain).loop())
    def drain_again(m: ConnectionInputs, c: ConnectionCore) -> Deferred[None]:
        return c.wait_drained()

    @pep614(new.upon(I.drain).loop())
    @pep614(drained.upon(I.drain).loop())
    @pep614(closed.upon(I.drain).loop())
    @pep614(gone.upon(I.drain).loop())
    def nothing_to_drain(m: ConnectionInputs, c: ConnectionCore) -> Deferred[None]:
        return succeed(None)

    @pep614(draining.upon(I.answered).to(drained))
    def reply_drained(m: ConnectionInputs, c: ConnectionCore, payload: bytes) -> None:
        c.write_reply(payload)
        c.fire_drained()
        c.after_reply()

    @pep614(draining_paused.upon(I.answered).to(drained))
    def reply_drained_unsent(m: ConnectionInputs, c: ConnectionCore, payload: bytes) -> None:
        c.write_reply(payload)
        c.count_unsent(payload)
        c.fire_drained()
        c.after_reply()

    # --- the end -------------------------------------------------------------------

    @pep614(idle.upon(I.oversized).to(closed))
    @pep614(executing.upon(I.oversized).to(closed))
    @pep614(paused.upon(I.oversized).to(closed))
    @pep614(executing_paused.upon(I.oversized).to(closed))
    @pep614(draining.upon(I.oversized).to(closed))
    @pep614(draining_paused.upon(I.oversized).to(closed))
    @pep614(drained.upon(I.oversized).to(closed))
    def abort_at_once(m: ConnectionInputs, c: ConnectionCore) -> None:
        c.set_intake(Intake.DISCARD, STOPPED)
        c.abort()

    for state in (idle, paused, executing, executing_paused, closing, closing_paused,
                  closing_executing, closing_executing_paused, draining, draining_paused, drained):
        state.upon(I.abort).to(closed)(abort_at_once)
    closed.upon(I.abort).loop().returns(None)
    gone.upon(I.abort).loop().returns(None)

    @pep614(closed.upon(I.answered).loop())
    @pep614(gone.upon(I.answered).loop())
    def drop_reply(m: ConnectionInputs, c: ConnectionCore, payload: bytes) -> None:
        c.fire_drained()

    closed.upon(I.request_pending).loop().returns(None)
    gone.upon(I.request_pending).loop().returns(None)

    def clean_up(m: ConnectionInputs, c: ConnectionCore) -> None:
        c.set_intake(Intake.DISCARD, STOPPED)
        c.cleanup()
        c.fire_drained()

    for state in (new, idle, paused, executing, executing_paused, closing, closing_paused,
                  closing_executing, closing_executing_paused, draining, draining_paused, drained, closed):
        state.upon(I.lost).to(gone)(clean_up)

    return index_transitions(machine.build())


#: Builds the machine of one connection: C{ConnectionMachine(core)}.
ConnectionMachine = _build()
