"""
Tests for L{oxidb.wire.framing}: u32 little-endian length prefixes, the 16 MiB
inbound limit, and decoding whatever way the stream is chunked.
"""

from __future__ import annotations

import random
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oxidb.wire.framing import MAX_FRAME, FrameDecoder, FrameTooLargeError, encode_frame

PING = b'{"cmd":"ping"}'


def test_max_frame_is_16_mib() -> None:
    assert MAX_FRAME == 16 * 1024 * 1024


def test_encode_frame_matches_spec_example() -> None:
    assert encode_frame(PING) == bytes.fromhex(
        "0e 00 00 00 7b 22 63 6d 64 22 3a 22 70 69 6e 67 22 7d"
    )
    reply = encode_frame(b'{"ok":true,"data":"pong"}')
    assert reply[:4] == bytes.fromhex("19 00 00 00")
    assert len(reply) == 4 + 25


def test_encode_empty_frame() -> None:
    assert encode_frame(b"") == b"\x00\x00\x00\x00"


def test_one_chunk_many_frames() -> None:
    payloads = [PING, b"", b"\xdb\x00", b"x" * 1000, b""]
    decoder = FrameDecoder()
    assert decoder.feed(b"".join(encode_frame(p) for p in payloads)) == payloads
    assert not decoder.in_frame
    assert decoder.buffered == 0


def test_empty_feed() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(b"") == []
    assert not decoder.in_frame


def test_byte_by_byte() -> None:
    """
    Every byte is fed on its own; a frame is returned by the call that
    brings its last byte, and C{in_frame}/C{buffered} track the partial frame.
    """
    payloads = [PING, b"", b"ab"]
    stream = b"".join(encode_frame(p) for p in payloads)
    decoder = FrameDecoder()
    got: list[tuple[int, bytes]] = []
    partial = 0
    for index, byte in enumerate(stream):
        frames = decoder.feed(bytes([byte]))
        got.extend((index, f) for f in frames)
        partial = 0 if frames else partial + 1
        assert decoder.buffered == partial
        assert decoder.in_frame == (partial > 0)
    # PING ends at byte 17, the empty frame at 21, "ab" at 27
    assert got == [(17, PING), (21, b""), (27, b"ab")]


def test_prefix_split_across_feeds() -> None:
    decoder = FrameDecoder()
    frame = encode_frame(b"hello")
    assert decoder.feed(frame[:2]) == []
    assert decoder.in_frame and decoder.buffered == 2
    assert decoder.feed(frame[2:6]) == []
    assert decoder.buffered == 6
    assert decoder.feed(frame[6:] + frame[:1]) == [b"hello"]
    assert decoder.in_frame and decoder.buffered == 1


@settings(max_examples=200, deadline=None)
@given(
    payloads=st.lists(st.binary(max_size=300), max_size=12),
    cuts=st.lists(st.integers(min_value=0, max_value=5000), max_size=30),
)
def test_random_chunking(payloads: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(encode_frame(p) for p in payloads)
    bounds = sorted({0, len(stream), *(c for c in cuts if c < len(stream))})
    decoder = FrameDecoder()
    got: list[bytes] = []
    for start, end in pairwise(bounds):
        got.extend(decoder.feed(stream[start:end]))
    assert got == payloads
    assert not decoder.in_frame


@settings(max_examples=200, deadline=None)
@given(
    payloads=st.lists(st.binary(max_size=300), max_size=12),
    cuts=st.lists(st.integers(min_value=0, max_value=5000), max_size=30),
)
def test_feed_sized_counts_the_payloads_it_returns(payloads: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(encode_frame(p) for p in payloads)
    bounds = sorted({0, len(stream), *(c for c in cuts if c < len(stream))})
    decoder = FrameDecoder()
    got: list[bytes] = []
    for start, end in pairwise(bounds):
        frames, size = decoder.feed_sized(stream[start:end])
        assert size == sum(map(len, frames))
        got.extend(frames)
    assert got == payloads


def test_feed_sized_across_a_compaction_of_the_buffer() -> None:
    # 40 KB frames in 50 KB chunks: a partial frame stays behind once more
    # than 64 KiB have been consumed, so the buffer's front is dropped.
    payloads = [bytes([n]) * 40_000 for n in range(12)]
    stream = b"".join(encode_frame(p) for p in payloads)
    decoder = FrameDecoder()
    got: list[bytes] = []
    for start in range(0, len(stream), 50_000):
        frames, size = decoder.feed_sized(stream[start : start + 50_000])
        assert size == 40_000 * len(frames)
        got.extend(frames)
    assert got == payloads


def test_many_small_pipelined_frames() -> None:
    rng = random.Random(7)
    payloads = [rng.randbytes(rng.randrange(0, 40)) for _ in range(20_000)]
    stream = b"".join(encode_frame(p) for p in payloads)
    decoder = FrameDecoder()
    got: list[bytes] = []
    for start in range(0, len(stream), 65536):
        got.extend(decoder.feed(stream[start : start + 65536]))
    assert got == payloads
    assert decoder.buffered == 0


def test_exactly_16_mib_in_64k_chunks() -> None:
    payload = bytes(range(256)) * (MAX_FRAME // 256)
    assert len(payload) == MAX_FRAME
    stream = encode_frame(payload) + encode_frame(PING)
    decoder = FrameDecoder()
    got: list[bytes] = []
    for start in range(0, len(stream), 65536):
        frames = decoder.feed(stream[start : start + 65536])
        if not got and not frames:
            assert decoder.in_frame
            assert decoder.buffered == min(start + 65536, len(stream))
        got.extend(frames)
    assert len(got) == 2
    assert got[0] == payload
    assert got[1] == PING
    assert not decoder.in_frame


def test_one_over_the_limit_fails_right_after_the_prefix() -> None:
    prefix = (MAX_FRAME + 1).to_bytes(4, "little")
    decoder = FrameDecoder()
    for byte in prefix[:3]:
        assert decoder.feed(bytes([byte])) == []
    with pytest.raises(FrameTooLargeError) as info:
        decoder.feed(prefix[3:])
    assert info.value.length == MAX_FRAME + 1
    assert info.value.frames == []
    assert "16777217" in str(info.value)
    # nothing of the oversized frame is kept
    assert decoder.buffered == 0
    assert not decoder.in_frame


def test_oversized_prefix_with_payload_bytes_in_the_same_chunk() -> None:
    decoder = FrameDecoder()
    with pytest.raises(FrameTooLargeError) as info:
        decoder.feed(b"\xff\xff\xff\xff" + b"a" * 1000)
    assert info.value.length == 0xFFFF_FFFF
    assert decoder.buffered == 0


def test_failure_is_sticky() -> None:
    decoder = FrameDecoder()
    with pytest.raises(FrameTooLargeError):
        decoder.feed((MAX_FRAME + 1).to_bytes(4, "little"))
    with pytest.raises(FrameTooLargeError) as info:
        decoder.feed(encode_frame(PING))
    assert info.value.length == MAX_FRAME + 1


def test_frames_before_the_oversized_prefix_are_kept_on_the_error() -> None:
    decoder = FrameDecoder()
    chunk = encode_frame(PING) + encode_frame(b"") + (MAX_FRAME + 1).to_bytes(4, "little")
    with pytest.raises(FrameTooLargeError) as info:
        decoder.feed(chunk)
    assert info.value.frames == [PING, b""]


def test_custom_limit() -> None:
    decoder = FrameDecoder(max_frame=3)
    assert decoder.feed(encode_frame(b"abc")) == [b"abc"]
    with pytest.raises(FrameTooLargeError) as info:
        decoder.feed(encode_frame(b"abcd"))
    assert info.value.length == 4
