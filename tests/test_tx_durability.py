"""
Commit atomicity across a SIGKILL: a child process commits transactions as
fast as it can (each moves one unit between two accounts and inserts a batch
of log documents) and reports each acknowledgement; after the kill, every
acknowledged transaction is there, the one in flight is all there or not at
all, and the balances equal a replay of exactly the committed ones.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from typing import Any

import pytest

from oxidb.engine import transactions
from oxidb.engine.engine import Engine

pytestmark = pytest.mark.slow

ACCOUNTS = 10
BATCH = 400

_CHILD = textwrap.dedent(
    """
    import sys
    from oxidb.engine import transactions
    from oxidb.engine.engine import Engine
    from oxidb.engine.transactions import Transaction

    ACCOUNTS, BATCH = {accounts}, {batch}
    engine = Engine(sys.argv[1], synchronous="FULL")
    transactions.register_appliers(engine)
    engine.open()
    documents = [{{"i": i, "balance": 100}} for i in range(ACCOUNTS)]
    engine.apply({{"InsertMany": {{"collection": "acc", "documents": documents}}}}, 0.0)
    print("ready", flush=True)
    seq = 0
    while True:
        seq += 1
        tx = Transaction(seq)
        src, dst = seq % ACCOUNTS, (seq * 3 + 1) % ACCOUNTS
        for i, delta in ((src, -1), (dst, 1)):
            doc = engine.read(tx.find_one, "acc", {{"i": i}})
            engine.read(tx.stage_update, "acc", {{"i": i}}, {{"$set": {{"balance": doc["balance"] + delta}}}}, 0.0)
        first = engine.apply(transactions.reserve_operation("log", BATCH), 0.0)
        tx.stage_insert("log", first, [{{"seq": seq, "j": j, "pad": "x" * 300}} for j in range(BATCH)])
        engine.apply(tx.commit_operation(), 0.0)
        print(seq, flush=True)
    """
).format(accounts=ACCOUNTS, batch=BATCH)


def expected_balances(commits: int) -> list[int]:
    balances = [100] * ACCOUNTS
    for seq in range(1, commits + 1):
        src, dst = seq % ACCOUNTS, (seq * 3 + 1) % ACCOUNTS
        balances[src] -= 1
        balances[dst] += 1
    return balances


def test_sigkill_during_commits_leaves_whole_transactions(tmp_path: Any) -> None:
    data_dir = str(tmp_path / "data")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, data_dir], stdout=subprocess.PIPE, env=env, text=True
    )
    acknowledged = 0
    try:
        assert child.stdout is not None
        deadline = time.monotonic() + 60
        assert child.stdout.readline().strip() == "ready"
        while acknowledged < 25:
            assert time.monotonic() < deadline, "the child stopped acknowledging"
            line = child.stdout.readline()
            assert line, "the child exited"
            acknowledged = int(line)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(30)
        if child.stdout is not None:
            # Acknowledgements printed before the kill that were not read yet.
            for line in child.stdout.read().split():
                acknowledged = int(line)
            child.stdout.close()

    engine = Engine(data_dir, synchronous="FULL")
    transactions.register_appliers(engine)
    with engine:
        per_seq = Counter(doc["seq"] for doc in engine.find("log"))
        commits = max(per_seq)
        assert acknowledged <= commits <= acknowledged + 1
        assert set(per_seq) == set(range(1, commits + 1))
        assert set(per_seq.values()) == {BATCH}
        balances = [doc["balance"] for doc in engine.find("acc", None, {"i": 1})]
        assert balances == expected_balances(commits)
        assert sum(balances) == 100 * ACCOUNTS
