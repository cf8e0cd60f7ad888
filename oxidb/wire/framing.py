"""
Length-prefixed framing (spec sections 1.2 and 1.3): every request and reply
is a u32 little-endian payload length followed by that many payload bytes.
Inbound frames may declare at most L{MAX_FRAME} bytes; outbound frames have
no limit of their own.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import attrs

from oxidb.wire._accel import impl as _impl
from oxidb.wire.limits import MAX_FRAME

__all__ = ["MAX_FRAME", "FrameDecoder", "FrameTooLargeError", "encode_frame"]

_PREFIX = struct.Struct("<I")
_split_frames: Callable[[bytearray, int, int, int], tuple[list[bytes], int, int, bool]] = _impl.split_frames

# Consumed bytes at the front of the buffer are dropped once there are at
# least this many and they make up at least half of it, so compaction copies
# amortise to O(1) per byte.
_COMPACT_AT = 64 * 1024


class FrameTooLargeError(Exception):
    """
    A frame declared more than L{MAX_FRAME} bytes; the connection must close
    without a reply.

    @ivar length: the declared payload length.
    @ivar frames: the payloads completed, in the same C{feed} call, before
        the oversized prefix; they are valid requests, to be answered before
        closing if the caller wishes.
    """

    def __init__(self, length: int, frames: list[bytes] | None = None) -> None:
        super().__init__(length)
        self.length = length
        self.frames = frames if frames is not None else []

    def __str__(self) -> str:
        return f"frame of {self.length} bytes exceeds the {MAX_FRAME}-byte limit"


@attrs.define(eq=False)
class FrameDecoder:
    """
    Splits a byte stream into frame payloads.

    Bytes are appended to one buffer that is read through an offset, so many
    small frames in one chunk and one 16 MiB frame arriving in small chunks
    both cost time linear in their size. An oversized prefix is refused as
    soon as its 4 bytes arrive, before any of its payload is buffered; the
    decoder then stays failed.
    """

    _max_frame: int = MAX_FRAME
    _buffer: bytearray = attrs.field(init=False, factory=bytearray)
    _start: int = attrs.field(init=False, default=0)
    # payload length of the frame at self._start, once its prefix is read
    _length: int | None = attrs.field(init=False, default=None)
    _failure: FrameTooLargeError | None = attrs.field(init=False, default=None)

    @property
    def max_frame(self) -> int:
        """
        The largest payload a prefix may declare. It may be changed between
        calls to L{feed} (a server raises it once a client has logged in);
        a prefix is checked against the value in force when it arrives.
        """
        return self._max_frame

    @max_frame.setter
    def max_frame(self, value: int) -> None:
        self._max_frame = value

    @property
    def in_frame(self) -> bool:
        """Some bytes of an unfinished frame are buffered."""
        return len(self._buffer) > self._start

    @property
    def buffered(self) -> int:
        """The number of buffered bytes of the unfinished frame."""
        return len(self._buffer) - self._start

    def feed(self, data: bytes) -> list[bytes]:
        """
        Add received bytes; return every payload they complete, in order.

        @raise FrameTooLargeError: a prefix declared more than the limit
            (raised again on every later call).
        """
        return self.feed_sized(data)[0]

    def feed_sized(self, data: bytes) -> tuple[list[bytes], int]:
        """
        L{feed}, and the total size of the payloads it returns (counted
        from the bytes taken off the buffer, not payload by payload).

        @raise FrameTooLargeError: as L{feed}.
        """
        if self._failure is not None:
            raise FrameTooLargeError(self._failure.length)
        buffer = self._buffer
        available = len(buffer) - self._start + len(data)
        buffer += data
        known = self._length
        # One pass over the buffer (in C when the extension is built).
        frames, start, length, oversized = _split_frames(
            buffer, self._start, -1 if known is None else known, self._max_frame
        )
        end = len(buffer)
        if oversized:
            self._failure = FrameTooLargeError(length, frames)
            # Drop everything: the connection is over.
            buffer.clear()
            self._start = 0
            self._length = None
            raise self._failure
        # What was taken: the whole frames, each a 4-byte prefix and its payload.
        size = available - (end - start) - 4 * len(frames)
        if start == end:
            buffer.clear()
            start = 0
        elif start >= _COMPACT_AT and start * 2 >= end:
            del buffer[:start]
            start = 0
        self._start = start
        self._length = None if length < 0 else length
        return frames, size


def encode_frame(payload: bytes) -> bytes:
    """The frame for C{payload}: its u32 little-endian length, then itself."""
    if len(payload) > 0xFFFF_FFFF:
        raise ValueError(f"payload of {len(payload)} bytes does not fit a u32 length")
    return _PREFIX.pack(len(payload)) + payload
