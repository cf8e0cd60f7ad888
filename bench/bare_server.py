"""
The framework limit for bench/ping_bench.py: a bare Twisted server with the
same framing and JSON handling as ours (frame decoder, orjson decode of each
request, an encoded pong reply), and nothing else.

    python bench/bare_server.py PORT
"""

from __future__ import annotations

import sys

import orjson
from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol

from oxidb.wire.framing import FrameDecoder, encode_frame


class BareProtocol(Protocol):
    def connectionMade(self) -> None:
        self.decoder = FrameDecoder()
        self.transport.setTcpNoDelay(True)

    def dataReceived(self, data: bytes) -> None:
        out = []
        for payload in self.decoder.feed(data):
            request = orjson.loads(payload)
            if request.get("cmd") == "ping":
                out.append(encode_frame(b'{"ok":true,"data":' + orjson.dumps("pong") + b"}"))
            else:
                out.append(encode_frame(b'{"ok":false,"error":"unknown command"}'))
        for frame in out:
            self.transport.write(frame)


def main() -> None:
    port = reactor.listenTCP(int(sys.argv[1]), Factory.forProtocol(BareProtocol), interface="127.0.0.1")
    print(f"listening on 127.0.0.1:{port.getHost().port}", flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
