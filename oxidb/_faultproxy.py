"""
A fault-injecting TCP proxy for the links between Raft nodes, for tests.

Each I{directed link} (node A's view of node B's Raft address) is a
L{FaultLink} with a listening port of its own. Every connection A opens to
that port is a L{_Pipe}: the proxy dials B's real address and moves bytes
both ways, according to the link's mode:

* C{pass}: bytes go through;
* C{drop}: open connections are aborted (RST) and new ones are accepted and
  aborted at once, like a peer whose port refuses connections;
* C{blackhole}: connections are accepted and kept open, but no byte and no
  close moves in either direction: the proxy stops reading both sides, so
  the senders' kernel buffers fill up as in a real partition (TCP would
  retransmit, nothing arrives, nobody is told);
* C{delay}: bytes (and closes) go through C{delay_ms} milliseconds late, in
  order;
* C{one-way}: only the bytes from A to B are held (the dialer-to-listener
  direction); C{one-way-back} holds only the bytes from B to A.

Held bytes are kept in order, never dropped from the middle of a stream (the
peers' framing stays intact): when the link passes again they are delivered,
as TCP would after a partition heals, unless the link is healed with
C{reset=True}, which aborts the connections that were held, as if their TCP
connections had timed out during the partition. Either way the peers must
cope; a test picks one.

A Raft node dials the address the cluster's membership gives for a peer
(the address book, C{OXIDB_RAFT_PEERS}, only before the membership names
one), so every node is known to the others by one address. For that address
the proxy opens a I{front door} per node (L{FrontDoor}): it reads the first
frame of each connection, the handshake's C{hello}, which names the dialling
node (C{"from"}), and hands the connection to the link from that node. The
bytes it read are forwarded unchanged.

The proxy runs on any reactor (tests drive it on a C{MemoryReactorClock}).
Run as C{python -m oxidb._faultproxy}, it is a child process controlled by
JSON lines on its standard input (L{ControlProtocol}); L{FaultProxyProcess}
in L{oxidb._harness} is the blocking client of that.
"""

from __future__ import annotations

import json
import struct
import sys
from collections import deque
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import ClientFactory, Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure

MODES = ("pass", "drop", "blackhole", "delay", "one-way", "one-way-back")

#: Forward: from the dialling node (A) to the listening one (B); backward: B to A.
FORWARD, BACKWARD = 0, 1

#: The first frame (the handshake's hello) is small; anything larger is not a peer.
MAX_HELLO = 4096

_CLOSE = None


def parse_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"not a host:port address: {address!r}")
    return host.strip("[]"), int(port)


def hello_sender(data: bytes) -> int | None:
    """
    The node id in the first frame of C{data} (the handshake's C{hello},
    C{{"type":"hello","from":I,...}}), or C{None} while that frame is
    incomplete. Raises C{ValueError} if it is not a hello.
    """
    if len(data) < 4:
        return None
    (length,) = struct.unpack_from("<I", data)
    if length > MAX_HELLO:
        raise ValueError(f"a {length}-byte first frame is not a hello")
    if len(data) < 4 + length:
        return None
    frame = json.loads(data[4 : 4 + length])
    sender = frame.get("from") if isinstance(frame, dict) else None
    if not isinstance(sender, int) or isinstance(sender, bool):
        raise ValueError("the first frame names no sender")
    return sender


@attrs.define(eq=False)
class _Direction:
    """One direction of a pipe: bytes (and the close) waiting to be written, in order."""

    pending: deque[tuple[float, bytes | None]] = attrs.field(factory=deque)
    timer: IDelayedCall | None = None
    closed: bool = False  # the close was delivered


class _Side(Protocol):
    """One of the two connections of a pipe."""

    transport: Any

    def __init__(self, pipe: _Pipe | None, direction: int) -> None:
        self.pipe = pipe
        #: The direction of the bytes this side receives.
        self.direction = direction
        self.reading = True
        self.gone = False
        self.closing = False

    def dataReceived(self, data: bytes) -> None:
        if self.pipe is not None:
            self.pipe.received(self.direction, data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.gone = True
        if self.pipe is not None:
            self.pipe.side_lost(self.direction)

    def set_reading(self, reading: bool) -> None:
        if reading == self.reading or self.gone or self.closing or self.transport is None:
            return
        self.reading = reading
        if reading:
            self.transport.resumeProducing()
        else:
            self.transport.pauseProducing()

    def close(self, abort: bool = False) -> None:
        if not self.gone and self.transport is not None and not (self.closing and not abort):
            self.closing = True
            if abort:
                self.transport.abortConnection()
            else:
                self.transport.loseConnection()


class _Upstream(_Side):
    def __init__(self, pipe: _Pipe) -> None:
        super().__init__(pipe, BACKWARD)
        self._pipe = pipe

    def connectionMade(self) -> None:
        self._pipe.upstream_connected(self)


class _UpstreamFactory(ClientFactory):
    noisy = False

    def __init__(self, pipe: _Pipe) -> None:
        self.pipe = pipe

    def buildProtocol(self, addr: Any) -> _Upstream:
        return _Upstream(self.pipe)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.pipe.upstream_failed()


@attrs.define(eq=False)
class _Pipe:
    """One proxied connection: the dialler's side, the proxy's connection to the target, and the bytes between."""

    link: FaultLink
    inbound: _Inbound
    upstream: _Upstream | None = attrs.field(init=False, default=None)
    directions: tuple[_Direction, _Direction] = attrs.field(init=False, factory=lambda: (_Direction(), _Direction()))
    upstream_done: bool = attrs.field(init=False, default=False)  # the dial failed

    # --- events -------------------------------------------------------------------

    def upstream_connected(self, upstream: _Upstream) -> None:
        self.upstream = upstream
        if not self.link.flows(BACKWARD):
            upstream.set_reading(False)
        self.pump(FORWARD)

    def upstream_failed(self) -> None:
        self.upstream_done = True
        self.side_lost(BACKWARD)

    def received(self, direction: int, data: bytes) -> None:
        self.link.bytes[direction] += len(data)
        self._queue(direction, data)

    def side_lost(self, direction: int) -> None:
        self._queue(direction, _CLOSE)

    def _queue(self, direction: int, item: bytes | None) -> None:
        state = self.directions[direction]
        if state.closed:
            return
        due = self.link.clock.seconds() + self.link.delay_ms / 1000.0
        state.pending.append((due, item))
        self.pump(direction)

    # --- moving bytes ---------------------------------------------------------------

    def _writer(self, direction: int) -> _Side | None:
        return self.upstream if direction == FORWARD else self.inbound

    def pump(self, direction: int) -> None:
        """Deliver what is due in C{direction}, if the link lets it through."""
        state = self.directions[direction]
        if state.timer is not None and state.timer.active():
            state.timer.cancel()
        state.timer = None
        source = self.inbound if direction == FORWARD else self.upstream
        if not self.link.flows(direction):
            if source is not None:
                source.set_reading(False)
            return
        if source is not None:
            source.set_reading(True)
        writer = self._writer(direction)
        if writer is None and direction == FORWARD and not self.upstream_done:
            return  # still dialling the target
        now = self.link.clock.seconds()
        while state.pending:
            due, item = state.pending[0]
            if due > now:
                state.timer = self.link.clock.callLater(due - now, self.pump, direction)
                break
            state.pending.popleft()
            if item is _CLOSE:
                state.closed = True
                state.pending.clear()
                if writer is not None:
                    writer.close()
                break
            if writer is not None and not writer.gone and writer.transport is not None:
                writer.transport.write(item)
        if all(d.closed for d in self.directions):
            self.link.pipes.discard(self)

    def abort(self) -> None:
        """Reset both connections; nothing pending is delivered."""
        for state in self.directions:
            if state.timer is not None and state.timer.active():
                state.timer.cancel()
            state.timer = None
            state.pending.clear()
            state.closed = True
        for side in (self.inbound, self.upstream):
            if side is not None:
                side.close(abort=True)
        self.link.pipes.discard(self)

    @property
    def held(self) -> bool:
        """Whether anything is waiting in a direction the link does not let through."""
        return any(d.pending and not self.link.flows(i) for i, d in enumerate(self.directions))


@attrs.define(eq=False)
class FaultLink:
    """
    Node C{src}'s view of node C{dst}: connections to it are proxied to
    C{target} according to the mode (see the module docstring).
    """

    _log = Logger()

    reactor: Any
    src: int
    dst: int
    target: tuple[str, int]
    clock: Any = attrs.field(init=False, default=attrs.Factory(lambda self: self.reactor, takes_self=True))
    mode: str = attrs.field(init=False, default="pass")
    delay_ms: int = attrs.field(init=False, default=0)
    pipes: set[_Pipe] = attrs.field(init=False, factory=set)
    port: Any = attrs.field(init=False, default=None)
    #: Bytes received per direction, and connections accepted and refused.
    bytes: list[int] = attrs.field(init=False, factory=lambda: [0, 0])
    accepted: int = attrs.field(init=False, default=0)
    refused: int = attrs.field(init=False, default=0)

    def flows(self, direction: int) -> bool:
        if self.mode in ("blackhole", "drop"):
            return False
        if self.mode == "one-way":
            return direction != FORWARD
        if self.mode == "one-way-back":
            return direction != BACKWARD
        return True

    def set_mode(self, mode: str, delay_ms: int = 0, reset: bool = False) -> None:
        """
        Switch the link to C{mode}. With C{reset}, connections that have
        bytes held (or that were held in the mode being left) are aborted
        instead of being let through.
        """
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; one of {', '.join(MODES)}")
        if delay_ms < 0:
            raise ValueError("delay_ms must not be negative")
        was_holding = self.mode in ("blackhole", "one-way", "one-way-back")
        self.mode = mode
        self.delay_ms = delay_ms if mode == "delay" else 0
        for pipe in list(self.pipes):
            if mode == "drop" or (reset and (was_holding or pipe.held)):
                pipe.abort()
            else:
                pipe.pump(FORWARD)
                pipe.pump(BACKWARD)

    def connection_arrived(self, inbound: _Inbound) -> _Pipe | None:
        """A connection from C{src}: a new pipe, or C{None} if the link refuses it."""
        if self.mode == "drop":
            self.refused += 1
            return None
        self.accepted += 1
        pipe = _Pipe(self, inbound)
        self.pipes.add(pipe)
        host, port = self.target
        self.reactor.connectTCP(host, port, _UpstreamFactory(pipe), timeout=5)
        return pipe

    def factory(self) -> Factory:
        return _LinkFactory(self)

    def stats(self) -> dict[str, Any]:
        return {
            "src": self.src,
            "dst": self.dst,
            "mode": self.mode,
            "delay_ms": self.delay_ms,
            "port": self.port.getHost().port if self.port is not None else None,
            "open": len(self.pipes),
            "accepted": self.accepted,
            "refused": self.refused,
            "bytes_forward": self.bytes[FORWARD],
            "bytes_backward": self.bytes[BACKWARD],
        }


class _Inbound(_Side):
    """
    A connection from a dialling node. On a link's port it belongs to that
    link at once; on a front door it waits for the hello that names the
    sender, then joins the link from that sender.
    """

    def __init__(self, link: FaultLink | None, resolve: Callable[[int], FaultLink | None] | None = None) -> None:
        super().__init__(None, FORWARD)
        self._link = link
        self._resolve = resolve
        self._early = b""

    def connectionMade(self) -> None:
        if self._link is not None:
            self._attach(self._link, b"")

    def _attach(self, link: FaultLink, data: bytes) -> None:
        self.pipe = link.connection_arrived(self)
        if self.pipe is None:
            self.close(abort=True)
            self.gone = True
        elif data:
            self.pipe.received(FORWARD, data)
        else:
            self.pipe.pump(FORWARD)  # stop reading at once if the link holds this direction

    def dataReceived(self, data: bytes) -> None:
        if self.pipe is not None or self.gone:
            super().dataReceived(data)
            return
        self._early += data
        try:
            sender = hello_sender(self._early)
        except ValueError:
            sender, link = -1, None
        else:
            if sender is None:
                return
            link = self._resolve(sender) if self._resolve is not None else None
        if link is None:
            self.close(abort=True)
            self.gone = True
            return
        early, self._early = self._early, b""
        self._attach(link, early)


class _LinkFactory(Factory):
    noisy = False

    def __init__(self, link: FaultLink) -> None:
        self.link = link

    def buildProtocol(self, addr: Any) -> _Inbound:
        return _Inbound(self.link)


class FrontDoor(Factory):
    """
    The address node C{dst} is known by: each connection is handed to the
    link from the node its hello names (C{links[(sender, dst)]}); others are
    aborted.
    """

    noisy = False

    def __init__(self, dst: int, links: dict[tuple[int, int], FaultLink]) -> None:
        self.dst = dst
        self.links = links
        self.port: Any = None

    def buildProtocol(self, addr: Any) -> _Inbound:
        return _Inbound(None, lambda sender: self.links.get((sender, self.dst)))


@attrs.define(eq=False)
class FaultProxy:
    """
    The proxy for a set of nodes: a front door per node and a link per
    ordered pair of nodes, all listening on C{interface}.
    """

    reactor: Any
    interface: str = "127.0.0.1"
    targets: dict[int, tuple[str, int]] = attrs.field(init=False, factory=dict)
    links: dict[tuple[int, int], FaultLink] = attrs.field(init=False, factory=dict)
    fronts: dict[int, FrontDoor] = attrs.field(init=False, factory=dict)

    def add_node(self, node: int, target: str) -> dict[str, Any]:
        """Proxy node C{node} (whose real Raft address is C{target}); its front port and link ports."""
        if node in self.targets:
            raise ValueError(f"node {node} is already proxied")
        self.targets[node] = parse_address(target)
        front = self.fronts[node] = FrontDoor(node, self.links)
        front.port = self.reactor.listenTCP(0, front, interface=self.interface)
        for other in self.targets:
            if other == node:
                continue
            for src, dst in ((other, node), (node, other)):
                link = self.links[(src, dst)] = FaultLink(self.reactor, src, dst, self.targets[dst])
                link.port = self.reactor.listenTCP(0, link.factory(), interface=self.interface)
        return self.ports()

    def ports(self) -> dict[str, Any]:
        return {
            "fronts": {str(n): f.port.getHost().port for n, f in self.fronts.items()},
            "links": {f"{s}-{d}": link.port.getHost().port for (s, d), link in self.links.items()},
        }

    def link(self, src: int, dst: int) -> FaultLink:
        try:
            return self.links[(src, dst)]
        except KeyError:
            raise ValueError(f"no link from node {src} to node {dst}") from None

    def set_mode(self, src: int, dst: int, mode: str, delay_ms: int = 0, reset: bool = False) -> None:
        self.link(src, dst).set_mode(mode, delay_ms, reset)

    def heal(self, reset: bool = False) -> None:
        """Every link passes again (see L{FaultLink.set_mode} for C{reset})."""
        for link in self.links.values():
            link.set_mode("pass", reset=reset)

    def stats(self) -> list[dict[str, Any]]:
        return [link.stats() for _key, link in sorted(self.links.items())]


class ControlProtocol(LineReceiver):
    """
    One JSON command per line, one JSON reply per line (C{{"ok":true,...}}
    or C{{"ok":false,"error":...}}):

    * C{{"op":"add_node","node":N,"target":"host:port"}} -> C{ports}
    * C{{"op":"mode","src":A,"dst":B,"mode":M,"delay_ms":D,"reset":R}}
    * C{{"op":"modes","links":[[A,B,M,D],...],"reset":R}}: several at once
    * C{{"op":"heal","reset":R}}
    * C{{"op":"ports"}}, C{{"op":"stats"}}
    * C{{"op":"quit"}}
    """

    delimiter = b"\n"

    def __init__(self, proxy: FaultProxy, on_quit: Callable[[], Any] | None = None) -> None:
        self.proxy = proxy
        self.on_quit = on_quit

    def lineReceived(self, line: bytes) -> None:
        try:
            reply = {"ok": True, **self.run(json.loads(line))}
        except Exception as e:  # the test gets every error back
            reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        self.sendLine(json.dumps(reply).encode())

    def run(self, command: dict[str, Any]) -> dict[str, Any]:
        op = command.get("op")
        proxy = self.proxy
        if op == "add_node":
            return proxy.add_node(int(command["node"]), str(command["target"]))
        if op == "mode":
            proxy.set_mode(
                int(command["src"]), int(command["dst"]), str(command["mode"]),
                int(command.get("delay_ms", 0)), bool(command.get("reset", False)),
            )
            return {}
        if op == "modes":
            reset = bool(command.get("reset", False))
            for src, dst, _mode, _delay_ms in command["links"]:
                proxy.link(int(src), int(dst))  # all names checked before any change
            for src, dst, mode, delay_ms in command["links"]:
                proxy.set_mode(int(src), int(dst), str(mode), int(delay_ms), reset)
            return {}
        if op == "heal":
            proxy.heal(bool(command.get("reset", False)))
            return {}
        if op == "ports":
            return proxy.ports()
        if op == "stats":
            return {"links": proxy.stats()}
        if op == "quit":
            if self.on_quit is not None:
                self.proxy.reactor.callLater(0, self.on_quit)
            return {}
        raise ValueError(f"unknown op {op!r}")

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        # The controlling test went away: so does the proxy.
        if self.on_quit is not None:
            self.on_quit()


def main() -> None:  # pragma: no cover - run as a child process by FaultProxyProcess
    from twisted.internet import reactor
    from twisted.internet.stdio import StandardIO

    def stop() -> None:
        if reactor.running:
            reactor.stop()

    interface = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1"
    StandardIO(ControlProtocol(FaultProxy(reactor, interface), on_quit=stop))
    reactor.run()


if __name__ == "__main__":  # pragma: no cover
    main()
