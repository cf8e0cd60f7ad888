"""
Blob durability across a SIGKILL: a child process puts (and overwrites)
objects as fast as it can and reports each acknowledgement; after the kill,
every acknowledged object is there with its etag, no object is torn, and
the search postings match what is stored.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import zlib
from typing import Any

import pytest

from oxidb.engine import blobs
from oxidb.engine.engine import Engine

KEYS_PER_WORKER = 7

_CHILD = textwrap.dedent(
    """
    import base64, sys, threading
    from oxidb.engine import blobs
    from oxidb.engine.engine import Engine

    def content(i):
        # Text with a token naming the version, padded to a varying size.
        return (f"version v{i} " + "filler " * (i * 997 % 30000)).encode()

    engine = Engine(sys.argv[1], synchronous="FULL")
    blobs.register_appliers(engine)
    engine.open()
    lock = threading.Lock()

    def writer(worker):
        i = worker
        while True:
            i += 2
            key = f"w{worker}/k{i % KEYS}"
            body = {"bucket": "crash", "key": key, "data_b64": base64.b64encode(content(i)).decode(),
                    "content_type": "text/plain", "metadata": {"i": str(i)}}
            record = engine.apply({"PutObject": body}, 0.0)
            with lock:
                print(key, record["etag"], i, flush=True)

    for worker in range(2):
        threading.Thread(target=writer, args=(worker,), daemon=True).start()
    threading.Event().wait()
    """
).replace("KEYS", str(KEYS_PER_WORKER))


def content(i: int) -> bytes:
    return (f"version v{i} " + "filler " * (i * 997 % 30000)).encode()


@pytest.mark.slow
def test_acknowledged_objects_survive_sigkill(tmp_path: Any) -> None:
    data_dir = str(tmp_path / "data")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    child = subprocess.Popen([sys.executable, "-c", _CHILD, data_dir], stdout=subprocess.PIPE, text=True, env=env)
    last_acked: dict[str, tuple[str, int]] = {}
    acks = 0
    deadline = time.monotonic() + 120
    try:
        assert child.stdout is not None
        while acks < 60:
            assert time.monotonic() < deadline, "child too slow"
            line = child.stdout.readline()
            assert line, "child died"
            key, etag, acked_version = line.split()
            last_acked[key] = (etag, int(acked_version))
            acks += 1
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    engine = Engine(data_dir)
    blobs.register_appliers(engine)
    with engine:
        stored = {r["key"]: r for r in engine.read(blobs.list_objects, "crash", None, 1000)}
        # Every acknowledged object is there: the acknowledged version or a
        # later one whose acknowledgement the kill swallowed.
        assert set(last_acked) <= set(stored)
        for key, (etag, i) in last_acked.items():
            version = int(stored[key]["metadata"]["i"])
            assert version >= i
            if version == i:
                assert stored[key]["etag"] == etag
        for key, record in stored.items():
            data, _ = engine.read(blobs.read_object, "crash", key)
            version = int(record["metadata"]["i"])
            # Not torn: content, size and etag are those of one whole put.
            assert data == content(version)
            assert record["size"] == len(data)
            assert record["etag"] == format(zlib.crc32(data), "08x")
            # The postings are those of the stored version only.
            assert [r["key"] for r in engine.read(blobs.search, f"v{version}", None, 10)] == [key]
        for key, (_, i) in last_acked.items():
            older = i - 2 * KEYS_PER_WORKER
            if older > 0 and int(stored[key]["metadata"]["i"]) != older:
                assert engine.read(blobs.search, f"v{older}", None, 10) == []

        def postings(reader: Any) -> int:
            return reader.conn.execute("SELECT count(*) FROM oxi_blob_docs").fetchone()[0]

        assert engine.read(postings) == len(stored)
