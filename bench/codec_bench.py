"""
Codec speed: OxiWire (C extension and pure-Python fallback) against orjson.

Encodes and decodes realistic C{find} results of 1, 100 and 10 000 documents
and prints operations per second with the ratio OxiWire/orjson (higher is
better for OxiWire; the goal for the C extension is >= 1.0 at every size).
MessagePack is shown for reference. On a shared machine, C{--runs N} repeats
the whole measurement N times and prints the median of each figure.

    .venv/bin/python bench/codec_bench.py [--quick] [--runs N]

It measures the checkout it lives in (build the extension first with
C{pip install -e .} or C{python setup.py build_ext --inplace}).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import pathlib
import random
import statistics
import sys
import time
import timeit
from collections.abc import Callable
from types import ModuleType

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import msgpack
import orjson

from oxidb.wire import _oxiwire_py
from oxidb.wire.limits import MAX_DEPTH

# the C extension, or None when it is not built
_oxiwire_c: ModuleType | None
try:
    _oxiwire_c = importlib.import_module("oxidb.wire._oxiwire")
except ImportError:
    _oxiwire_c = None

_WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliett kilo lima".split()
_CITIES = ["Zürich", "São Paulo", "Kraków", "Berlin", "Osaka", "Nairobi", "Lyon"]


def make_document(rng: random.Random, doc_id: int) -> dict[str, object]:
    """One stored document of 17 fields, shaped like a typical user record."""
    return {
        "name": f"{rng.choice(_WORDS).title()} {rng.choice(_WORDS).title()}",
        "email": f"user{doc_id}@example.com",
        "age": rng.randint(18, 90),
        "score": round(rng.uniform(0, 100), 3),
        "balance": round(rng.uniform(-5000, 50000), 2),
        "active": rng.random() < 0.7,
        "verified": rng.random() < 0.4,
        "tags": rng.sample(_WORDS, 3),
        "address": {
            "street": f"{rng.randint(1, 999)} {rng.choice(_WORDS).title()} Street",
            "city": rng.choice(_CITIES),
            "zip": f"{rng.randint(10000, 99999)}",
            "geo": {"lat": rng.uniform(-90, 90), "lon": rng.uniform(-180, 180)},
        },
        "created_at": f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T12:00:00Z",
        "login_count": rng.randint(0, 10_000),
        "ratings": [rng.randint(1, 5) for _ in range(4)],
        "notes": rng.choice(["", "prefers email", "VIP – call first", None]),
        "plan": rng.choice(["free", "pro", "enterprise"]),
        "last_ip": f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}",
        "_id": doc_id,
        "_version": rng.randint(1, 20),
    }


def best_rates(actions: list[Callable[[], object]], budget: float, rounds: int = 7) -> list[float]:
    """
    Operations per second of each action: the best of C{rounds} timings,
    taken in turn (one timing of each action per round) so that load from
    other processes hits every action alike. Each action is timed for about
    C{budget} seconds in all, of this process's CPU time: time spent waiting
    for a core another process holds is not counted against either codec.
    """
    timers = [timeit.Timer(action, timer=time.process_time) for action in actions]
    loops = []
    for timer in timers:
        count, elapsed = timer.autorange()
        loops.append(max(1, int(count * (budget / rounds) / max(elapsed, 1e-9))))
    best = [float("inf")] * len(timers)
    for _ in range(rounds):
        for index, timer in enumerate(timers):
            best[index] = min(best[index], timer.timeit(loops[index]) / loops[index])
    return [1 / seconds for seconds in best]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--quick", action="store_true", help="shorter timings")
    parser.add_argument("--runs", type=int, default=1, help="repeat and print medians")
    args = parser.parse_args(argv)
    budget = 0.25 if args.quick else 1.0
    runs = max(1, args.runs)

    codecs: list[tuple[str, Callable[[object], bytes], Callable[[bytes], object]]] = []
    if _oxiwire_c is not None:
        c = _oxiwire_c
        codecs.append(("oxiwire-c", c.encode, lambda b: c.decode(b, 0, MAX_DEPTH)))
    else:
        print("note: the C extension is not built; only the fallback is measured")
    p = _oxiwire_py
    codecs.append(("oxiwire-py", p.encode, lambda b: p.decode(b, 0, MAX_DEPTH)))
    codecs.append(("msgpack", msgpack.packb, lambda b: msgpack.unpackb(b, raw=False)))
    codecs.append(("orjson", orjson.dumps, orjson.loads))

    rng = random.Random(20240611)
    header = f"{'docs':>6} {'codec':<11} {'bytes':>9} {'encode/s':>11} {'decode/s':>11} " \
             f"{'enc vs orjson':>13} {'dec vs orjson':>13}"
    print(header)
    print("-" * len(header))
    for count in (1, 100, 10_000):
        docs = [make_document(rng, i + 1) for i in range(count)]
        actions: list[Callable[[], object]] = []
        sizes = []
        for name, encode, decode in codecs:
            blob = encode(docs)
            assert decode(blob) == docs, name
            sizes.append(len(blob))
            actions.append(functools.partial(encode, docs))
            actions.append(functools.partial(decode, blob))
        # each figure is the median over the runs of the best of each run
        samples = [best_rates(actions, budget) for _ in range(runs)]
        rates = [statistics.median(column) for column in zip(*samples, strict=True)]
        rows = [
            (name, size, rates[2 * index], rates[2 * index + 1])
            for index, ((name, _, _), size) in enumerate(zip(codecs, sizes, strict=True))
        ]
        _, _, base_enc, base_dec = rows[-1]
        for name, size, enc, dec in rows:
            print(
                f"{count:>6} {name:<11} {size:>9} {enc:>11.1f} {dec:>11.1f} "
                f"{enc / base_enc:>12.2f}x {dec / base_dec:>12.2f}x"
            )
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
