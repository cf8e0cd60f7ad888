"""
Seeded whole-cluster simulation of the Raft core (L{oxidb.testing.raft}).

Each seed runs a 5-node cluster on one logical clock through a safety phase
(message drop, duplication, reordering and long delays, partitions that often
isolate the leader, crashes that lose unsynced writes and tear the last
record, slow disks, membership churn between 3 and 5 voters, leadership
transfers, snapshots and compaction, random pre-vote/check-quorum settings)
while clients write and read through ReadIndex with timeouts. After every
step it checks election safety, log matching, leader completeness and state
machine safety; restarts check that terms and votes were durable before they
were sent. Then faults stop: a leader must appear, new writes must commit,
every member must converge, no acknowledged write may be lost, and the client
history must be linearizable.

C{OXIDB_RAFT_SIM_SEEDS} sets the number of seeds (default 100, ~20 s of CPU,
spread over the machine's cores, so that the whole suite stays within its
budget; run thousands before changing the Raft core);
C{OXIDB_RAFT_SIM_FIRST_SEED} the first one.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oxidb.testing import NO_FAULTS, Faults, SafetyViolation, Simulation, check_history

SEEDS = int(os.environ.get("OXIDB_RAFT_SIM_SEEDS", "100"))
FIRST = int(os.environ.get("OXIDB_RAFT_SIM_FIRST_SEED", "0"))


def run_seed(seed: int, faults: Faults | None = None) -> Simulation:
    sim = Simulation(seed, faults=faults)
    try:
        sim.run()
    except SafetyViolation as e:
        raise AssertionError(f"seed {seed} at t={sim.now}: {e}") from None
    bad = check_history(sim.client_history())
    assert not bad, f"seed {seed}: non-linearizable history on keys {bad}"
    return sim


def run_seeds(seeds: range) -> tuple[int, int, int]:
    """Acknowledged writes, steps and operations over C{seeds}, each checked."""
    acked = steps = ops = 0
    for seed in seeds:
        sim = run_seed(seed)
        acked += len(sim.acked_writes)
        steps += sim.steps
        ops += len(sim.history)
    return acked, steps, ops


def test_simulated_clusters_stay_safe_and_live() -> None:
    # Seeds are independent and pure CPU work: split them over the cores in
    # forked processes (a failing seed's AssertionError comes back as is).
    workers = max(1, min(len(os.sched_getaffinity(0)), 4, SEEDS))
    chunks = [range(FIRST + i, FIRST + SEEDS, workers) for i in range(workers)]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        totals = list(pool.map(run_seeds, chunks))
    acked, steps, ops = (sum(column) for column in zip(*totals, strict=True))
    # The workload really ran: plenty of writes were acknowledged under faults.
    assert acked > 20 * SEEDS and ops > 100 * SEEDS and steps > 1000 * SEEDS


# Seeds that found safety bugs, run whatever OXIDB_RAFT_SIM_SEEDS says:
# 1388 and 2005, a lone voter that led a term it had not made durable and,
# restarted without it, wrote a second entry 1-1-3 (log matching).
@pytest.mark.parametrize("seed", [1388, 2005])
def test_seeds_that_found_bugs(seed: int) -> None:
    run_seed(seed)


_TRACE = """
import hashlib, sys
from oxidb.raft.messages import encode_message
from oxidb.testing import SafetyViolation, Simulation
digest = hashlib.sha256()
transmit = Simulation._transmit
def traced(self, msg):
    digest.update(b"%d " % self.now + encode_message(msg))
    transmit(self, msg)
Simulation._transmit = traced
sim = Simulation(int(sys.argv[1]))
try:
    sim.run()
except SafetyViolation as e:
    digest.update(str(e).encode())
print(sim.steps, digest.hexdigest())
"""


def test_a_seed_gives_one_schedule_whatever_the_hash_seed() -> None:
    # Seed 107 once passed or failed from run to run: the simulated disk
    # drew its crash scraps in the order of a set of objects (their
    # addresses). Every message of a seed must be the same in every process.
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    # The four processes are independent: run them side by side.
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", _TRACE, "107"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=root,
            env={**os.environ, "PYTHONHASHSEED": hash_seed},
        )
        for hash_seed in ("0", "1", "2", "3")
    ]
    outputs = set()
    for run in runs:
        stdout, stderr = run.communicate()
        assert run.returncode == 0, stderr
        outputs.add(stdout)
    assert len(outputs) == 1, outputs


def test_a_fault_free_cluster_serves_every_client() -> None:
    sim = Simulation(7, faults=NO_FAULTS)
    sim.run_until(1500)  # bootstrap: reads fail while no leader is known
    formed = len(sim.history)
    sim.run()
    assert not check_history(sim.client_history())
    later = sim.history[formed:]
    assert len(later) > 300
    # Once the cluster is formed, nothing times out and nothing is refused.
    assert all(op.ret is not None and op.kind != "failed" for op in later)


def test_the_checks_catch_a_broken_core(monkeypatch: pytest.MonkeyPatch) -> None:
    # A leader that commits by counting its own unsynced entries (etcd #14370)
    # must be caught by the simulator, not pass silently.
    from oxidb.raft.core import RaftCore

    def careless_commit(self: RaftCore) -> None:
        membership = self._membership
        if membership is None:
            return
        index = membership.membership.quorum_index(
            lambda n: self._last_index if n == self.id else (self._progress[n].match if n in self._progress else 0)
        )
        if index > self._commit and self._term_at(index) == self._term:
            self._commit = index
            self._replication_dirty = True
            self._confirm_reads()
            self._after_commit()

    monkeypatch.setattr(RaftCore, "_maybe_commit", careless_commit)
    rough = Faults(crash=0.2, slow_disk=0.5)
    failures = 0
    for seed in range(40):
        try:
            run_seed(seed, rough)
        except AssertionError:
            failures += 1
            break  # caught once is what this checks; the other seeds add nothing
    assert failures > 0


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    drop=st.floats(0, 0.3),
    duplicate=st.floats(0, 0.2),
    crash=st.floats(0, 0.15),
    partition=st.floats(0, 0.2),
    membership=st.floats(0, 0.2),
)
def test_fault_mixes_chosen_by_hypothesis(
    seed: int, drop: float, duplicate: float, crash: float, partition: float, membership: float
) -> None:
    faults = Faults(drop=drop, duplicate=duplicate, crash=crash, partition=partition, membership=membership)
    run_seed(seed, faults)
