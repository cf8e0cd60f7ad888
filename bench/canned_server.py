"""
A server that answers every request at once with the same reply: the
ceiling of a client, for bench/engine_bench.py. It frames like ours and
sends the reply payload read from a file, whatever the request was; it
does no decoding and no work, so a client's rate against it is the most
that client can do at all.

    python bench/canned_server.py PORT REPLY_FILE
"""

from __future__ import annotations

import sys

from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol

from oxidb.wire.framing import FrameDecoder, encode_frame


class CannedProtocol(Protocol):
    reply = b""

    def connectionMade(self) -> None:
        self.decoder = FrameDecoder()
        self.transport.setTcpNoDelay(True)

    def dataReceived(self, data: bytes) -> None:
        count = sum(1 for _ in self.decoder.feed(data))
        if count:
            self.transport.write(self.reply * count)


def main() -> None:
    with open(sys.argv[2], "rb") as f:
        CannedProtocol.reply = encode_frame(f.read())
    port = reactor.listenTCP(int(sys.argv[1]), Factory.forProtocol(CannedProtocol), interface="127.0.0.1")
    print(f"listening on 127.0.0.1:{port.getHost().port}", flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
