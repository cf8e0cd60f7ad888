"""
Transactions against a real server process with the official client: its
C{transaction()} context manager, conflicts surfacing as
C{TransactionConflictError}, and concurrent bank transfers that keep their
total and lose no update.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from types import ModuleType

import pytest

from oxidb._harness import ServerProcess

pytestmark = pytest.mark.slow

ACCOUNTS = 6
INITIAL = 1000
THREADS = 8
TRANSFERS = 15


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for the module: the tests use their own collections."""
    process = ServerProcess(str(tmp_path_factory.mktemp("tx") / "data")).start()
    try:
        yield process
    finally:
        process.stop()


def test_official_transaction_context_manager(server: ServerProcess, official_client: ModuleType) -> None:
    client = official_client.OxiDbClient("127.0.0.1", server.port, timeout=10)
    other = official_client.OxiDbClient("127.0.0.1", server.port, timeout=10)
    try:
        assert client.insert("acc", {"name": "a", "balance": 10}) == {"id": 1}
        with client.transaction():
            assert client.insert("acc", {"name": "b", "balance": 0}) == {"id": 2}
            assert client.update("acc", {"name": "a"}, {"$inc": {"balance": -5}}) == "buffered"
            assert client.update("acc", {"name": "b"}, {"$inc": {"balance": 5}}) == "buffered"
            assert client.find_one("acc", {"name": "b"})["balance"] == 5
            assert other.find("acc", {"name": "b"}) == []
        assert sorted(d["balance"] for d in other.find("acc")) == [5, 5]

        with pytest.raises(ValueError):
            with client.transaction():
                client.insert("acc", {"name": "c"})
                raise ValueError("boom")
        assert client.count("acc") == 2

        with pytest.raises(official_client.OxiDbError, match="already active"):
            with client.transaction():
                client.begin_tx()
        with pytest.raises(official_client.OxiDbError, match="no active transaction"):
            client.commit_tx()

        with pytest.raises(official_client.TransactionConflictError, match="transaction conflict on 'acc' doc 1"):
            with client.transaction():
                client.find_one("acc", {"name": "a"})
                other.update("acc", {"name": "a"}, {"$set": {"touched": True}})
                client.update("acc", {"name": "a"}, {"$inc": {"balance": 1}})
        assert client.find_one("acc", {"name": "a"})["balance"] == 5
        # The connection is usable and outside any transaction afterwards.
        with client.transaction():
            client.delete("acc", {"name": "b"})
        assert client.count("acc") == 1
    finally:
        client.close()
        other.close()


def test_concurrent_transfers_keep_the_total_and_lose_no_update(
    server: ServerProcess, official_client: ModuleType
) -> None:
    setup = official_client.OxiDbClient("127.0.0.1", server.port, timeout=10)
    setup.insert_many("bank", [{"acct": i, "balance": INITIAL} for i in range(ACCOUNTS)])
    committed: list[list[tuple[int, int, int]]] = [[] for _ in range(THREADS)]
    conflicts = [0] * THREADS
    failures: list[BaseException] = []

    def worker(index: int) -> None:
        rng = random.Random(index)
        client = official_client.OxiDbClient("127.0.0.1", server.port, timeout=30)
        try:
            for _ in range(TRANSFERS):
                src, dst = rng.sample(range(ACCOUNTS), 2)
                amount = rng.randint(1, 50)
                while True:
                    try:
                        with client.transaction():
                            a = client.find_one("bank", {"acct": src})
                            b = client.find_one("bank", {"acct": dst})
                            # Read-modify-write with $set: a lost update would break the sums.
                            client.update("bank", {"acct": src}, {"$set": {"balance": a["balance"] - amount}})
                            client.update("bank", {"acct": dst}, {"$set": {"balance": b["balance"] + amount}})
                    except official_client.TransactionConflictError:
                        conflicts[index] += 1
                        continue
                    committed[index].append((src, dst, amount))
                    break
        except BaseException as e:  # surfaced by the main thread
            failures.append(e)
        finally:
            client.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(thread.is_alive() for thread in threads)
    assert failures == []

    expected = [INITIAL] * ACCOUNTS
    updates = [0] * ACCOUNTS
    for src, dst, amount in (t for per_thread in committed for t in per_thread):
        expected[src] -= amount
        expected[dst] += amount
        updates[src] += 1
        updates[dst] += 1
    accounts = sorted(setup.find("bank"), key=lambda d: d["acct"])
    setup.close()
    assert sum(len(per_thread) for per_thread in committed) == THREADS * TRANSFERS
    assert [d["balance"] for d in accounts] == expected
    assert sum(d["balance"] for d in accounts) == INITIAL * ACCOUNTS
    # Every committed transfer bumped both versions exactly once.
    assert [d["_version"] for d in accounts] == [1 + n for n in updates]
