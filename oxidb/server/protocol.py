"""
The client-port protocol: frames in, requests run strictly in order, replies
out in the request's format.

Every bound below is a row of the limits table (C{config.limits}, documented
in docs/security.md, "Connections, frames and the worker pool").

Input. Queued frames pile up when the client pipelines faster than we
answer; when the waiting frames plus the executing request (a C{pipeline}
counts as its number of commands) reach C{max_queued_requests}, or their
bytes C{max_queued_bytes}, the protocol stops reading from the socket until
the queue drains. A frame prefix above the frame limit closes the connection
before any of its payload is buffered.

Before login (auth on) a connection can do little, cheaply: its frame limit
and its queued-bytes limit are C{preauth_max_frame}, only the pre-auth
commands run (the dispatcher's gate, also for each command of a
C{pipeline}), and it is closed when C{login_timeout} seconds pass without a
completed login. A prefix is checked against the limit in force when it
arrives, so a client sends large frames only after its login reply.

The reactor thread never decodes or encodes much: a frame above
L{OFFLOAD_BYTES} is decoded on the worker pool and a reply that is not
surely small (L{oxidb.wire.codec.is_small}) is encoded there; the small
frames of the fast path (C{ping}) stay synchronous. While a request
executes, the next queued frame, when it is that large, is decoded ahead
on the pool (at most one per connection), so that a client pipelining
large writes (C{insert_many} batches) finds it decoded when its turn comes;
decoding has no effect, so requests still run strictly one at a time. Work on the pool belongs
to the connection (L{oxidb.server.workers.current_owner}): it is refused
with C{server busy} when the pool's queue is full and dropped unrun once the
connection has closed.

Output. When the client does not read its replies, the transport pauses us
(we are its push producer) and no further request runs until it resumes, so
one connection holds at most one unsent reply, or one batch of small replies
(at most 80 KiB: the replies of one read are written together, see L{_run}). A reply is at most
L{MAX_FRAME} bytes: a larger one is replaced by an error naming C{limit} and
C{skip}. Bytes written while the transport is paused are counted for all
connections together (L{OxiServerFactory.unsent}) until the transport has
sent them; a reply above L{OFFLOAD_BYTES} that would take that count past
C{max_unsent_bytes} is replaced by a C{server busy} error, so clients that
do not read cannot make the server hold more than that.

Change streams (L{oxidb.commands.watch}): once the C{watching} reply is
written the connection is in watch mode: its subscription writes events
while the transport takes them (L{paused} is false) and stays behind in
the shared feed while it does not (L{oxidb.server.changefeed}); of the
frames received only a small C{unwatch} is run, the others are dropped
unanswered (server.md 3.6).

Timeouts (C{OXIDB_IDLE_TIMEOUT}, 0 = off): the idle timer runs only while no
request of this connection is executing and it is not watching, and restarts
on every byte received;
the frame timer runs from the first byte of a frame until its last, so a frame
trickled in slowly is cut too. Either closes the connection without a reply.
"""

from __future__ import annotations

import gc
import struct
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer, ISSLTransport
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from oxidb.commands._context import CommandContext
from oxidb.engine.changes import Change
from oxidb.errors import (
    DecodeError,
    EncodedReplyTooLargeError,
    InternalError,
    OxiError,
    ServerBusyError,
)
from oxidb.logs import Logger
from oxidb.server.changefeed import IWatcher
from oxidb.server.dispatch import Reply, command_name
from oxidb.server.lifecycle import NO_TURN, ConnectionInputs, ConnectionMachine, Intake, Turn
from oxidb.server.session import Session
from oxidb.server.workers import current_owner
from oxidb.wire.codec import (
    WireFormat,
    decode_request,
    detect,
    encode_error,
    encode_event,
    encode_json_top,
    encode_ok,
    encode_text,
    is_small,
)
from oxidb.wire.framing import FrameDecoder, FrameTooLargeError, encode_frame
from oxidb.wire.limits import MAX_FRAME

#: Frames above this many bytes are decoded on the worker pool; replies above
#: it count against the unsent-bytes budget (it is also the transport's
#: write buffer size, above which a write pauses us).
OFFLOAD_BYTES = 64 * 1024

_PREFIX = struct.Struct("<I")

_JSON = WireFormat.JSON

#: Replies up to this size are batched (L{OxiServerProtocol._run}).
_BATCHED_REPLY_BYTES = 16 * 1024


class _GcPause:
    """
    Cyclic garbage collection off while large frames are decoded on worker
    threads. Decoding builds up to millions of containers; each automatic
    full collection that triggers walks the whole heap holding the GIL,
    which stalls the reactor thread for hundreds of milliseconds. A decoded
    request holds no reference cycles, so nothing is lost by not looking.

    Collection comes back on when no such decode runs, and at the latest
    after L{MAX_STREAK} decodes, however they overlap: later ones run with
    it on until the earlier ones have finished.
    """

    MAX_STREAK = 16

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holders = 0
        self._streak = 0
        self._was_enabled = False

    def run(self, fn: Any, *args: Any) -> Any:
        with self._lock:
            hold = self._streak < self.MAX_STREAK
            if hold:
                if not self._holders:
                    self._was_enabled = gc.isenabled()
                    gc.disable()
                self._holders += 1
                self._streak += 1
        if not hold:
            return fn(*args)
        try:
            return fn(*args)
        finally:
            with self._lock:
                self._holders -= 1
                if not self._holders:
                    self._streak = 0
                    if self._was_enabled:
                        gc.enable()


_gc_pause = _GcPause()


def decode_large(payload: bytes) -> tuple[WireFormat, object]:
    """L{decode_request} for a worker thread (see L{_GcPause})."""
    result: tuple[WireFormat, object] = _gc_pause.run(decode_request, payload)
    return result


def format_peer(address: Any) -> str:
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is None:
        return str(address)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _ignore(failure: Failure) -> None:
    """Swallow the failure of work whose result nobody waits for."""


#: Frames received in watch mode above this size are dropped undecoded (not an C{unwatch}).
WATCH_FRAME_BYTES = 4096


@implementer(IPushProducer, IWatcher)
class OxiServerProtocol(Protocol):
    """
    One client connection. See the module docstring; its life is the
    machine of L{oxidb.server.lifecycle} (this object is that machine's
    core) and, with auth on, the login machine of L{oxidb.auth.login}.

    @ivar host: the client's address (for the per-address connection
        count), or None.
    """

    _log = Logger()
    #: an ITCPTransport (or TLS) that is also an IPushProducer, once connected.
    transport: Any

    def __init__(self, factory: OxiServerFactory, host: str | None = None) -> None:
        self.factory = factory
        self.host = host
        self._decoder = FrameDecoder()
        self._queue: deque[bytes] = deque()
        # The queued frame being decoded ahead on the pool, and its decode.
        self._ahead: tuple[bytes, Deferred[tuple[WireFormat, object]]] | None = None
        self._queued_bytes = 0
        # The size of the frames the last read completed (see _read).
        self._read_size = 0
        # Requests the executing one counts for (a pipeline: its commands).
        self._weight = 0
        self._max_requests: int = factory.max_queued_requests
        self._max_bytes: int = factory.max_queued_bytes
        # Whether we asked the transport to stop reading (input flow control).
        self._reading_paused = False
        # Reply bytes written while the transport was paused (see unsent).
        self._unsent = 0
        # The size of the reply frame being written (see count_writing_unsent).
        self._writing = 0
        self._drained: list[Deferred[None]] = []
        self._timer: IDelayedCall | None = None
        self._login_timer: IDelayedCall | None = None
        self._last_activity = 0.0
        self._frame_started: float | None = None
        #: No reply will be written any more (set by the machine; read by
        #: worker threads, see L{gone}).
        self._gone = False
        # Set by the machine (lifecycle.ConnectionCore.set_intake).
        self._intake: Callable[[bytes], None] = self._discard
        self._turn: Turn = NO_TURN
        # Called after each reply until the login's reply has been written.
        self._after_reply: Callable[[], None] | None = None
        self._machine: ConnectionInputs = ConnectionMachine(self)
        # The transport paused us (the client does not read).
        self._write_paused = False
        # The format of the last request dispatched, and of the events.
        self._last_format = WireFormat.JSON
        self._watch_format = WireFormat.JSON
        self.session: Session
        self.ctx: CommandContext

    @property
    def gone(self) -> bool:
        """
        No reply will be written on this connection any more: work done
        for it can be dropped. Read from worker threads.
        """
        return self._gone

    # --- connection lifecycle ------------------------------------------------

    def connectionMade(self) -> None:
        factory = self.factory
        peer = format_peer(self.transport.getPeer())
        tls = ISSLTransport.providedBy(self.transport)
        if factory.services.auth_enabled:
            self.session = Session(peer=peer, tls=tls)
            self._decoder.max_frame = factory.preauth_max_frame
            self._max_bytes = min(self._max_bytes, factory.preauth_max_frame)
            login = self.session.login
            login.attach(self._logged_in, self._login_expired)
            self._after_reply = login.reply_written
            if factory.login_timeout:
                self._login_timer = factory.clock.callLater(factory.login_timeout, login.deadline_passed)
        else:
            self.session = Session.anonymous_admin(peer, tls=tls)
        self.session.watcher = self
        self.ctx = CommandContext(self.session, factory.services)
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            try:
                set_no_delay(True)
            except OSError:
                pass
        self._machine.connected()
        self.transport.registerProducer(self, True)
        factory.connection_opened(self)
        self._log.debug("client connected: {peer}", peer=peer)
        self._last_activity = factory.clock.seconds()
        self._arm_timer()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._machine.lost()

    @property
    def busy(self) -> bool:
        """A request is executing (open connections only)."""
        return self._machine.busy()

    def drain(self) -> Deferred[None]:
        """
        Stop taking new requests; fire when the one executing (if any) has
        been answered. Used by a clean shutdown.
        """
        return self._machine.drain()

    def _logged_in(self) -> None:
        """The login's reply has been written: lift the pre-login limits."""
        self._after_reply = None
        self._cancel_login_timer()
        self._decoder.max_frame = MAX_FRAME
        self._max_bytes = self.factory.max_queued_bytes

    def _login_expired(self) -> None:
        self._login_timer = None
        self._log.info("login timeout for {peer}, disconnecting", peer=self.session.peer)
        self._machine.abort()

    # --- lifecycle.ConnectionCore ------------------------------------------------

    _INTAKES = {
        Intake.RUN: "_read_and_run",
        Intake.QUEUE: "_read_and_queue",
        Intake.DROP: "_read_and_drop",
        Intake.DISCARD: "_discard",
    }

    def set_intake(self, intake: Intake, turn: Turn) -> None:
        self._intake = getattr(self, self._INTAKES[intake])
        self._turn.live = False
        self._turn = turn

    def enqueue(self, frames: list[bytes], size: int | None = None) -> None:
        """Queue C{frames}; C{size}: their total size, if known."""
        self._queue.extend(frames)
        self._queued_bytes += sum(map(len, frames)) if size is None else size

    def clear_queue(self) -> None:
        self._queue.clear()
        self._queued_bytes = 0
        self._drop_ahead()

    def stop_reading(self) -> None:
        if not self._reading_paused:
            self._reading_paused = True
            self.transport.pauseProducing()

    def write_reply(self, payload: bytes) -> None:
        """Write one reply frame (no copy of a large payload to prefix it)."""
        size = len(payload) + 4
        self._writing = size
        if size <= OFFLOAD_BYTES:
            self.transport.write(encode_frame(payload))
        else:
            # One writeSequence: an eager transport sends both in one syscall.
            self.transport.writeSequence((_PREFIX.pack(len(payload)), payload))
        metrics = self.factory.services.metrics
        if metrics is not None:
            metrics.bytes_sent(size)
        if self._after_reply is not None:
            self._after_reply()

    def after_reply(self) -> None:
        if self.session.close_after_reply:
            self._machine.close_after_reply()
        else:
            # The idle clock did not run while the request executed.
            self._last_activity = self.factory.clock.seconds()

    def count_writing_unsent(self) -> None:
        self._add_unsent(self._writing)
        self._writing = 0

    def count_unsent(self, payload: bytes) -> None:
        self._add_unsent(len(payload) + 4)
        self._writing = 0

    def _add_unsent(self, size: int) -> None:
        # The transport holds more than its buffer size: count the reply
        # against the budget until it has been sent (resumeProducing).
        self._unsent += size
        self.factory.unsent += size

    def release_unsent(self) -> None:
        if self._unsent:
            self.factory.unsent -= self._unsent
            self._unsent = 0

    def close(self) -> None:
        self._gone = True
        self._cancel_timer()
        self.transport.loseConnection()

    def abort(self) -> None:
        self._gone = True
        self._cancel_timer()
        self.clear_queue()
        self.transport.abortConnection()

    def cleanup(self) -> None:
        self._gone = True
        self._cancel_timer()
        self.clear_queue()
        self.release_unsent()
        if self.session.watch is not None:
            self.session.watch.cancel()
            self.session.watch = None
        # An open transaction dies with its connection (server.md 1.7).
        self.session.tx = None
        self.session.closed()
        self.session.login.lost()
        self.factory.connection_closed(self)
        self._log.debug("client disconnected: {peer}", peer=self.session.peer)

    def wait_drained(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self._drained.append(d)
        return d

    def fire_drained(self) -> None:
        waiting, self._drained = self._drained, []
        for d in waiting:
            d.callback(None)

    # --- input -----------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        metrics = self.factory.services.metrics
        if metrics is not None:
            metrics.bytes_received(len(data))
        self._intake(data)

    def _discard(self, data: bytes) -> None:
        """Closing or closed: nothing more is read."""

    def _read_and_run(self, data: bytes) -> None:
        frames = self._read(data)
        if frames:
            self.enqueue(frames, self._read_size)
            self._run()
        else:
            self._update_reading()

    def _read_and_queue(self, data: bytes) -> None:
        frames = self._read(data)
        if frames:
            self.enqueue(frames, self._read_size)
            self._decode_ahead()
        self._update_reading()

    def _read_and_drop(self, data: bytes) -> None:
        self._read(data)
        self._update_reading()

    def _read(self, data: bytes) -> list[bytes] | None:
        """
        The whole frames in C{data} (their total size in C{_read_size});
        None once a too large frame closes the connection.
        """
        try:
            frames, self._read_size = self._decoder.feed_sized(data)
        except FrameTooLargeError as e:
            if e.length <= MAX_FRAME:  # so the pre-login limit was in force
                self._log.warn(
                    "read error from {peer}: frame of {length} bytes before login (limit {limit}, "
                    "OXIDB_PREAUTH_MAX_FRAME)",
                    peer=self.session.peer,
                    length=e.length,
                    limit=self._decoder.max_frame,
                )
            else:
                self._log.warn(
                    "read error from {peer}: message too large (>16 MiB): declared {length} bytes",
                    peer=self.session.peer,
                    length=e.length,
                )
            if not e.frames:
                self._machine.oversized()
            else:
                # Answer the requests that arrived before the oversized one, then close.
                self._machine.oversized_after(e.frames)
                self._run()
            return None
        now = self.factory.clock.seconds()
        self._last_activity = now
        if self._decoder.in_frame:
            if self._frame_started is None:
                self._frame_started = now
        else:
            self._frame_started = None
        return frames

    def _run(self) -> None:
        """
        Run queued requests one at a time while the current turn lasts.

        The small replies of one turn (the requests of one read, answered
        synchronously) are written together, in one C{transport.write}
        once they reach L{OFFLOAD_BYTES} and at the end of the turn, and
        always before anything else reaches the transport or the machine
        (a pending reply, a close, a watch's events), so the bytes keep the
        requests' order. A pause of the transport then stops the turn as
        after a single reply.

        The flow-control counts (L{_update_reading}) are settled once per
        turn, not per request: nothing reads them while the turn's requests
        run synchronously, except a C{pipeline}, which works out its own
        (L{_dispatch_pipeline}).
        """
        turn = self._turn
        queue = self._queue
        if not (queue and turn.live):
            return self._turn_over(turn)
        session = self.session
        run_small = self._run_small
        batch = bytearray()
        answered = False
        pending = False
        # The bytes of the frames taken off the queue in this turn.
        taken = 0
        # One request executes at a time; a pipeline counts for more (its
        # commands), set and reset around it by _dispatch_pipeline.
        self._weight = 1
        # Work the requests send to the worker pool belongs to this
        # connection: it is set once for the turn's requests, not per request.
        token = current_owner.set(self)
        try:
            while queue and turn.live:
                payload = queue.popleft()
                size = len(payload)
                taken += size
                result: bytes | Deferred[bytes] | None
                if session.watch is None and size <= OFFLOAD_BYTES:
                    result = run_small(payload)  # _handle's common case, without its checks
                else:
                    result = self._handle(payload)
                    if result is None:  # dropped in watch mode
                        continue
                if type(result) is not bytes:
                    pending = True
                    self._settle(taken, pending)
                    self._machine.request_pending()
                    self._write_batch(batch)
                    cast("Deferred[bytes]", result).addCallback(self._answered)
                    self._decode_ahead()
                    break
                reply: bytes = result
                if len(reply) <= _BATCHED_REPLY_BYTES and self._after_reply is None:
                    batch += _PREFIX.pack(len(reply))
                    batch += reply
                    if len(batch) >= OFFLOAD_BYTES:
                        self._write_batch(batch)
                else:
                    self._write_batch(batch)
                    self.write_reply(reply)
                    self._writing = 0
                # after_reply, inline: this is the fast path.
                if session.close_after_reply:
                    self._write_batch(batch)
                    self._machine.close_after_reply()
                else:
                    answered = True
                    if session.watch is not None and not session.watch.started:
                        self._write_batch(batch)
                        self._start_watch()
        finally:
            current_owner.reset(token)
            if not pending:
                self._settle(taken, pending)
        if answered:
            # The idle clock did not run while the requests executed.
            self._last_activity = self.factory.clock.seconds()
        self._write_batch(batch)
        self._turn_over(turn)

    def _turn_over(self, turn: Turn) -> None:
        """After a turn: read on or not; close once the last request of a closing connection is answered."""
        if turn.flow:
            self._update_reading()
        elif turn.live and turn.closing and not self._queue:
            self._machine.all_answered()

    def _settle(self, taken: int, pending: bool) -> None:
        """
        The flow-control counts after a turn took C{taken} bytes of frames
        off the queue, and left a request C{pending} or none executing.
        """
        # The queue may have been cleared during the turn (a shutdown's drain).
        self._queued_bytes = self._queued_bytes - taken if self._queue else 0
        if not pending:
            self._weight = 0

    def _write_batch(self, batch: bytearray) -> None:
        """Write the reply frames gathered in C{batch} at once (if any), and empty it."""
        size = len(batch)
        if not size:
            return
        self._writing = size
        self.transport.write(bytes(batch))
        batch.clear()
        self._writing = 0
        metrics = self.factory.services.metrics
        if metrics is not None:
            metrics.bytes_sent(size)

    def _answered(self, payload: bytes) -> None:
        """The pending request's reply is ready (a Deferred's callback)."""
        self._weight = 0
        self._machine.answered(payload)
        self._writing = 0
        watch = self.session.watch
        if watch is not None and not watch.started and not self._gone:
            self._start_watch()
        self._run()

    def _handle(self, payload: bytes) -> bytes | Deferred[bytes] | None:
        """
        The reply to one request, or a Deferred firing with it; None: no
        reply (watch mode). Called in L{_run}'s turn (this connection is
        L{current_owner}).
        """
        ahead, self._ahead = self._ahead, None
        if ahead is not None and (ahead[0] is not payload or self.session.watch is not None):
            ahead[1].addErrback(_ignore)  # decoded for a request that will not use it
            ahead = None
        if self.session.watch is not None:
            return self._watch_frame(payload)
        if len(payload) > OFFLOAD_BYTES:
            d = ahead[1] if ahead is not None else self.factory.offload(self, decode_large, payload)
            if d is not None:
                replied: Deferred[bytes] = d.addCallbacks(self._dispatch, self._decode_failed, errbackArgs=(payload,))
                return replied
        return self._run_small(payload)

    def _decode_ahead(self) -> None:
        """
        Start decoding the next queued frame on the pool if it is large and
        nothing is being decoded ahead yet (a request is executing). Not
        when the pool refuses it at once (full): its turn decodes it then.
        """
        queue = self._queue
        if self._ahead is not None or not queue or self._gone or self.session.watch is not None:
            return
        payload = queue[0]
        if len(payload) <= OFFLOAD_BYTES:
            return
        d = self.factory.offload(self, decode_large, payload)
        if d is None:
            return
        if d.called and isinstance(d.result, Failure):
            d.addErrback(_ignore)
            return
        self._ahead = (payload, d)

    def _drop_ahead(self) -> None:
        """Forget the frame decoded ahead (its request will not run)."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            ahead[1].addErrback(_ignore)

    def _run_small(self, payload: bytes) -> bytes | Deferred[bytes]:
        """
        A frame decoded here and run: its reply, or a Deferred firing with
        it. Called in L{_run}'s turn, which made this connection
        L{current_owner}.
        """
        try:
            decoded = decode_request(payload)
        except DecodeError as e:
            return encode_error(_JSON, e.message)
        return self._dispatch_owned(decoded)

    def _decode_failed(self, failure: Failure, payload: bytes) -> bytes:
        error = failure.value
        if isinstance(error, DecodeError):
            return encode_error(WireFormat.JSON, error.message)
        if isinstance(error, OxiError):  # server busy, or the connection is gone
            return encode_error(detect(payload), error.message)
        self._log.failure("decoding failed for {peer}", failure, peer=self.session.peer)
        return encode_error(WireFormat.JSON, InternalError().message)

    def _dispatch(self, decoded: tuple[WireFormat, object]) -> bytes | Deferred[bytes]:
        """L{_dispatch_owned} with this connection as the owner of the work it sends to the pool."""
        token = current_owner.set(self)
        try:
            return self._dispatch_owned(decoded)
        finally:
            current_owner.reset(token)

    def _dispatch_owned(self, decoded: tuple[WireFormat, object], counted: bool = False) -> bytes | Deferred[bytes]:
        """
        Run one decoded request: its reply, or a Deferred firing with it.
        The caller has made this connection L{current_owner}.

        @param counted: a C{pipeline}'s weight is set (L{_dispatch_pipeline}).
        """
        if self._gone:  # closed while its frame was decoded on the pool
            return b""
        fmt, request = decoded
        self._last_format = fmt
        if not counted and type(request) is dict and "commands" in request:
            commands = request["commands"]
            if type(commands) is list and len(commands) > 1 and command_name(request) == "pipeline":
                return self._dispatch_pipeline(decoded, len(commands))
        try:
            outcome = self.factory.dispatcher.dispatch(self.ctx, request)
        except Exception:
            self._log.failure("dispatch failed for {peer}", peer=self.session.peer)
            return encode_error(fmt, InternalError().message)
        if type(outcome) is not Reply:
            d: Deferred[bytes] = outcome.addCallback(self._reply, fmt)
            d.addErrback(self._unexpected, fmt)
            if d.called and type(d.result) is bytes:
                # Answered synchronously: no pending request.
                payload: bytes = d.result
                return payload
            return d
        value = outcome.value
        if type(value) is str and len(value) <= 4096 and not outcome.top_level:
            # The fast path (ping, every error): small, encoded inline (or reused).
            try:
                return encode_text(fmt, outcome.ok, value)
            except Exception:
                return self._encode_failed(Failure(), fmt)
        return self._reply(outcome, fmt)

    def _dispatch_pipeline(self, decoded: tuple[WireFormat, object], commands: int) -> bytes | Deferred[bytes]:
        """
        L{_dispatch_owned} for a C{pipeline} of C{commands} commands: it
        counts for that many requests while it executes.
        """
        self._weight = commands
        # The waiting frames' size, exact also during a turn (L{_run}
        # settles L{_queued_bytes} only at its end).
        self._update_reading(sum(map(len, self._queue)))
        reply = self._dispatch_owned(decoded, counted=True)
        if type(reply) is bytes:
            self._weight = 1  # one request executing, until the turn settles
        return reply

    def _unexpected(self, failure: Failure, fmt: WireFormat) -> bytes:
        self._log.failure("reply failed for {peer}", failure, peer=self.session.peer)
        return encode_error(fmt, InternalError().message)

    # --- output ------------------------------------------------------------

    def _reply(self, reply: Reply, fmt: WireFormat) -> bytes | Deferred[bytes]:
        """Encode C{reply} (on the pool unless it is small)."""
        if self._gone:
            return b""
        if reply.ok and not reply.top_level and not is_small(reply.value):
            d = self.factory.offload(self, self._encode, fmt, reply)
            if d is not None:
                encoded: Deferred[bytes] = d.addCallbacks(
                    self._encoded, self._encode_failed, callbackArgs=(fmt,), errbackArgs=(fmt,)
                )
                return encoded
        try:
            payload = self._encode(fmt, reply)
        except Exception:
            return self._encode_failed(Failure(), fmt)
        if len(payload) > OFFLOAD_BYTES:
            payload = self._bounded(payload, fmt)
        return payload

    def _encode_failed(self, failure: Failure, fmt: WireFormat) -> bytes:
        error = failure.value
        if isinstance(error, OxiError):  # server busy, or the connection is gone
            return encode_error(fmt, error.message)
        self._log.failure("encoding the reply failed for {peer}", failure, peer=self.session.peer)
        return encode_error(fmt, InternalError().message)

    def _encoded(self, payload: bytes, fmt: WireFormat) -> bytes:
        return self._bounded(payload, fmt)

    def _bounded(self, payload: bytes, fmt: WireFormat) -> bytes:
        """
        C{payload}, or an error in its place when it is too large for a
        frame or for the unsent-bytes budget.
        """
        size = len(payload)
        if size > MAX_FRAME:
            return encode_error(fmt, EncodedReplyTooLargeError(size, MAX_FRAME).message)
        if size > OFFLOAD_BYTES and not self.factory.unsent_fits(size + 4):
            self.factory.replies_refused += 1
            return encode_error(fmt, ServerBusyError("too many reply bytes unsent (OXIDB_MAX_UNSENT_BYTES)").message)
        return payload

    @staticmethod
    def _encode(fmt: WireFormat, reply: Reply) -> bytes:
        if reply.top_level:
            return encode_json_top(reply.value)
        if reply.ok:
            return encode_ok(fmt, reply.value)
        return encode_error(fmt, reply.value)

    # --- change streams ----------------------------------------------------

    def _watch_frame(self, payload: bytes) -> bytes | None:
        """In watch mode only C{unwatch} runs (through the dispatcher: roles, audit)."""
        if len(payload) > WATCH_FRAME_BYTES:
            return None
        try:
            fmt, request = decode_request(payload)
        except DecodeError:
            return None
        if command_name(request) != "unwatch":
            return None
        reply = self._dispatch((fmt, request))
        return reply if type(reply) is bytes else None

    def _start_watch(self) -> None:
        """The C{watching} reply is out: events follow, in that request's format."""
        self._watch_format = self._last_format
        keep_alive = getattr(self.transport, "setTcpKeepAlive", None)
        if keep_alive is not None:
            try:
                keep_alive(True)
            except OSError:
                pass
        self.session.watch.start()

    @property
    def paused(self) -> bool:
        """L{IWatcher}: write no event now (the client does not read, or it is gone)."""
        return self._write_paused or self._gone

    def _write_event(self, event: dict[str, Any]) -> None:
        payload = encode_event(self._watch_format, event)
        if len(payload) > MAX_FRAME:
            # A document close to the frame limit: the event without it.
            data = dict(cast("dict[str, Any]", event["data"]))
            data.pop("document", None)
            data["document_omitted"] = True
            payload = encode_event(self._watch_format, {"event": event["event"], "data": data})
        # Buffered, also on an eager transport: a burst of events leaves in one send.
        write = getattr(self.transport, "write_later", None) or self.transport.write
        write(_PREFIX.pack(len(payload)) + payload)
        metrics = self.factory.services.metrics
        if metrics is not None:
            metrics.bytes_sent(len(payload) + 4)

    def send_change(self, change: Change) -> None:
        # The document as stored: JSON events embed its text as it is.
        self._write_event({"event": "change", "data": change.event_data(raw=True)})

    def send_overflow(self, dropped: int) -> None:
        self._write_event({"event": "overflow", "data": {"dropped": dropped}})

    def feed_reset(self) -> None:
        """The node's history was replaced (a snapshot): the client must resume elsewhere or anew."""
        self.session.watch = None
        self._log.info("change feed reset, closing the watch of {peer}", peer=self.session.peer)
        self._machine.abort()

    # --- flow control ----------------------------------------------------

    def _update_reading(self, queued_bytes: int | None = None) -> None:
        """
        Read from the socket or not, by the flow-control limits;
        C{queued_bytes}: the size of the waiting frames, when it is not
        L{_queued_bytes} (during a turn).
        """
        if not self._turn.flow:
            return
        if queued_bytes is None:
            queued_bytes = self._queued_bytes
        full = len(self._queue) + self._weight >= self._max_requests or queued_bytes >= self._max_bytes
        if full and not self._reading_paused:
            self._reading_paused = True
            self.transport.pauseProducing()
        elif not full and self._reading_paused:
            self._reading_paused = False
            self.transport.resumeProducing()
            if self._frame_started is not None:
                # The frame could not arrive while we were not reading.
                self._frame_started = self.factory.clock.seconds()

    def pauseProducing(self) -> None:
        """The client is not reading its replies: run nothing more for now."""
        self._write_paused = True
        self._machine.pause_writing()

    def resumeProducing(self) -> None:
        """The transport has sent everything it held."""
        self._write_paused = False
        self._machine.resume_writing()
        self._run()
        watch = self.session.watch
        if watch is not None and watch.started:
            watch.resume()

    def stopProducing(self) -> None:
        self._write_paused = True
        self._machine.pause_writing()

    # --- timers ------------------------------------------------------------
    #
    # One timer per connection, re-armed lazily: the hot path only records
    # timestamps, and the timer works out on expiry whether a deadline passed.
    # The login deadline has a timer of its own, cancelled at login.

    def _arm_timer(self) -> None:
        timeout = self.factory.services.config.idle_timeout
        if timeout and not self._gone:
            self._timer = self.factory.clock.callLater(timeout, self._check_timeouts)

    def _check_timeouts(self) -> None:
        self._timer = None
        if self._gone:
            return
        timeout = self.factory.services.config.idle_timeout
        now = self.factory.clock.seconds()
        deadline = now + timeout
        if self._frame_started is not None and not self._reading_paused:
            if now - self._frame_started >= timeout:
                return self._timed_out("frame arriving too slowly")
            deadline = min(deadline, self._frame_started + timeout)
        if not self._machine.busy() and self.session.watch is None:
            if now - self._last_activity >= timeout:
                return self._timed_out("silent")
            deadline = min(deadline, self._last_activity + timeout)
        self._timer = self.factory.clock.callLater(max(deadline - now, 0.001), self._check_timeouts)

    def _timed_out(self, why: str) -> None:
        self._log.info("idle timeout for {peer}, disconnecting ({why})", peer=self.session.peer, why=why)
        self._machine.abort()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
        self._cancel_login_timer()

    def _cancel_login_timer(self) -> None:
        if self._login_timer is not None:
            if self._login_timer.active():
                self._login_timer.cancel()
            self._login_timer = None


class _RefusedProtocol(Protocol):
    """A connection over a connection limit: one error frame, then closed."""

    transport: Any

    def __init__(self, message: str) -> None:
        self.message = message

    def connectionMade(self) -> None:
        self.transport.write(encode_frame(encode_error(WireFormat.JSON, self.message)))
        self.transport.loseConnection()


class OxiServerFactory(Factory):
    """
    Builds L{OxiServerProtocol}s and keeps the set of live connections.

    Connections over C{max_connections}, or over C{max_connections_per_ip}
    from one address, get one short C{server busy} error frame and are
    closed at once.

    @ivar services: the service's shared parts; the limits are read from
        C{services.config.limits} once, here.
    @ivar dispatcher: the L{oxidb.server.dispatch.Dispatcher}.
    @ivar clock: an IReactorTime for the timeouts.
    @ivar unsent: reply bytes written by all connections while their
        transports were paused, not yet sent.
    @ivar refused: connections refused by a connection limit.
    @ivar replies_refused: replies replaced by C{server busy} because of
        C{max_unsent_bytes}.
    """

    _log = Logger()

    #: seconds between two log lines about refused connections.
    REFUSAL_LOG_INTERVAL = 60.0

    def __init__(self, services: Any, dispatcher: Any, clock: Any) -> None:
        self.services = services
        self.dispatcher = dispatcher
        self.clock = clock
        self.connections: set[OxiServerProtocol] = set()
        self.connections_total = 0
        limits = services.config.limits
        self.max_connections: int = limits.max_connections
        self.max_connections_per_ip: int = limits.max_connections_per_ip
        self.preauth_max_frame: int = limits.preauth_max_frame
        self.login_timeout: int = limits.login_timeout
        self.max_queued_requests: int = limits.max_queued_requests
        self.max_queued_bytes: int = limits.max_queued_bytes
        self.max_unsent_bytes: int = limits.max_unsent_bytes
        self.per_host: dict[str, int] = {}
        self.unsent = 0
        self.refused = 0
        self.replies_refused = 0
        self._refusals_logged = 0
        self._refusal_logged_at: float | None = None

    def buildProtocol(self, addr: Any) -> Protocol:
        host = getattr(addr, "host", None)
        if self.max_connections and len(self.connections) >= self.max_connections:
            return self._refuse("too many connections (OXIDB_MAX_CONNECTIONS)")
        if (
            host is not None
            and self.max_connections_per_ip
            and self.per_host.get(host, 0) >= self.max_connections_per_ip
        ):
            return self._refuse("too many connections from your address (OXIDB_MAX_CONNECTIONS_PER_IP)")
        return OxiServerProtocol(self, host)

    def _refuse(self, why: str) -> Protocol:
        self.refused += 1
        now = self.clock.seconds()
        if self._refusal_logged_at is None or now - self._refusal_logged_at >= self.REFUSAL_LOG_INTERVAL:
            self._log.warn(
                "refusing client connections: {why} ({count} refused since the last report)",
                why=why,
                count=self.refused - self._refusals_logged,
            )
            self._refusal_logged_at = now
            self._refusals_logged = self.refused
        return _RefusedProtocol(ServerBusyError(why).message)

    def connection_opened(self, protocol: OxiServerProtocol) -> None:
        self.connections.add(protocol)
        self.connections_total += 1
        if protocol.host is not None:
            self.per_host[protocol.host] = self.per_host.get(protocol.host, 0) + 1
        metrics = self.services.metrics
        if metrics is not None:
            metrics.connection_opened()

    def connection_closed(self, protocol: OxiServerProtocol) -> None:
        if protocol in self.connections:
            self.connections.discard(protocol)
            host = protocol.host
            if host is not None:
                left = self.per_host.get(host, 1) - 1
                if left > 0:
                    self.per_host[host] = left
                else:
                    self.per_host.pop(host, None)
            metrics = self.services.metrics
            if metrics is not None:
                metrics.connection_closed()

    def unsent_fits(self, size: int) -> bool:
        """
        May a reply of C{size} bytes be written now? Always when nothing is
        unsent (so that any reply up to the frame limit can go out), else
        only within C{max_unsent_bytes}.
        """
        return not self.unsent or self.unsent + size <= self.max_unsent_bytes

    def offload(self, owner: Any, fn: Any, *args: Any) -> Deferred[Any] | None:
        """
        Run C{fn(*args)} on the worker pool for C{owner}; None when there is
        no started pool (the caller then runs it inline).
        """
        pool = self.services.threadpool
        if pool is None or not pool.started:
            return None
        d: Deferred[Any] = pool.submit(owner, fn, *args)
        return d
