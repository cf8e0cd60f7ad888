"""
Backward compatibility of replicated write operations: a data directory and
a Raft log written before operations had types and versions
(C{tests/fixtures/raft_v1}, built by C{tests/fixtures/make_raft_v1.py}) load,
decode and apply, and a node started on them serves the same data.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from scramp import ScramClient

from oxidb._harness import BlockingClient, LocalCluster, wait_until
from oxidb.auth.store import CreateUser, DropUser, UpdateUser, UserStore, register_appliers
from oxidb.engine import blobs, operations, procedures, transactions
from oxidb.engine.engine import Engine
from oxidb.engine.operations import VERSION_KEY, Operation, Rejected
from oxidb.errors import BadRequestError

FIXTURE = Path(__file__).parent / "fixtures" / "raft_v1"
KEY = "raft v1 fixture cluster key, 32+ characters long"
USER, PASSWORD = "fixture", "fixture-password"
#: The index of the fixture's last log entry.
LAST_INDEX = 38


def log_payloads() -> list[tuple[int, dict[str, Any]]]:
    """The index and request of every normal entry of the fixture's log."""
    entries = []
    with open(FIXTURE / "raft_log.jsonl") as f:
        for line in f:
            entry = json.loads(line)
            payload = entry["payload"]
            if isinstance(payload, dict) and "Normal" in payload:
                entries.append((entry["log_id"]["index"], payload["Normal"]))
    return entries


def copy_fixture(target: Path, *, with_database: bool) -> None:
    """The fixture as a node's data directory; without the database, only the log holds the data."""
    target.mkdir(parents=True)
    for name in ("raft_meta.json", "raft_log.jsonl"):
        shutil.copyfile(FIXTURE / name, target / name)
    if with_database:
        (target / "_auth").mkdir()
        for name in ("users.json", "scram_mock_secret"):
            shutil.copyfile(FIXTURE / "_auth" / name, target / "_auth" / name)
        with gzip.open(FIXTURE / "oxidb.sqlite3.gz", "rb") as z:
            (target / "oxidb.sqlite3").write_bytes(z.read())
    for path in [target, *target.rglob("*")]:
        os.chmod(path, 0o700 if path.is_dir() else 0o600)


def login(client: BlockingClient) -> None:
    scram = ScramClient(["SCRAM-SHA-256"], USER, PASSWORD)
    first = client.request({"cmd": "authenticate", "payload": scram.get_client_first()})
    assert first["ok"], first
    scram.set_server_first(first["data"]["payload"])
    final = client.request({"cmd": "authenticate_continue", "payload": scram.get_client_final()})
    assert final["ok"], final
    scram.set_server_final(final["data"]["payload"])


def applied_index(cluster: LocalCluster) -> int:
    """Node 1's last applied index (C{raft_metrics} shows it as C{T<term>-N<node>-<index>})."""
    applied = cluster.metrics(1)["last_applied"]
    return 0 if applied is None else int(applied.rsplit("-", 1)[1])


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    local = LocalCluster(
        str(tmp_path), env={"OXIDB_CLUSTER_KEY": KEY, "OXIDB_AUTH": "true", "OXIDB_HEALTH_OPEN": "true"}
    )
    yield local
    local.stop()


def test_fixture_log_holds_every_kind() -> None:
    kinds = {next(iter(op)) for _, op in log_payloads()}
    assert len(kinds) == 25
    assert all("v" not in body for _, op in log_payloads() for body in op.values())


#: The type each kind of the fixture's log decodes to.
TYPES: dict[str, type[Operation]] = {
    op_type.KIND: op_type
    for op_type in (
        *operations.BUILTIN,
        *transactions.OPERATIONS,
        *blobs.OPERATIONS,
        *procedures.OPERATIONS,
        CreateUser,
        DropUser,
        UpdateUser,
    )
}


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    """An engine that knows every operation the server replicates."""
    engine = Engine(str(tmp_path / "data"), synchronous="NORMAL")
    transactions.register_appliers(engine)
    procedures.register_appliers(engine)
    blobs.register_appliers(engine)
    register_appliers(engine, UserStore(tmp_path / "auth"))
    with engine:
        yield engine


def test_old_entries_decode_to_their_types(engine: Engine) -> None:
    for index, payload in log_payloads():
        [(kind, body)] = payload.items()
        op = engine.codec.decode(payload)
        assert type(op) is TYPES[kind], index
        # Written again, the body is the old one with its version (1).
        assert op.to_json() == {kind: {**body, VERSION_KEY: 1}}, index
        assert engine.codec.decode(op.to_json()) == op


def test_versions(engine: Engine) -> None:
    insert = operations.Insert("c", {"a": 1})
    assert insert.to_json() == {"Insert": {"collection": "c", "document": {"a": 1}, "v": 1}}
    assert engine.codec.decode({"Insert": {"collection": "c", "document": {"a": 1}}}) == insert
    for version in (0, -1, "1", 1.0, None, True):
        with pytest.raises(BadRequestError, match="^malformed operation$"):
            engine.codec.decode({"Insert": {"collection": "c", "document": {}, "v": version}})
    with pytest.raises(
        BadRequestError, match=r"^unsupported operation version: Insert v2 \(this server applies up to v1\)$"
    ):
        engine.codec.decode({"Insert": {"collection": "c", "document": {}, "v": 2}})


def test_a_payload_that_does_not_decode_is_applied_as_a_failure(engine: Engine) -> None:
    """Its Raft index is recorded all the same, so a replica does not stall on it."""
    op = engine.operation_of({"Insert": {"collection": "c", "document": {}, "v": 9}})
    assert isinstance(op, Rejected)
    with pytest.raises(BadRequestError, match="unsupported operation version"):
        engine.apply(op, 0.0, raft_index=3)
    assert engine.last_applied() == 3
    with pytest.raises(BadRequestError, match="^unknown operation: Frobnicate$"):
        engine.apply({"Frobnicate": {}}, 0.0, raft_index=4)
    assert engine.last_applied() == 4
    assert engine.list_collections() == []


@pytest.mark.timeout(120)
@pytest.mark.parametrize("with_database", [True, False], ids=["database", "log-only"])
def test_node_on_old_data_serves_the_same_data(cluster: LocalCluster, tmp_path: Path, with_database: bool) -> None:
    copy_fixture(tmp_path / "node1", with_database=with_database)
    node = cluster.start(1)
    # Once this node's blank entry of its new term is applied, so is the old log.
    wait_until(lambda: applied_index(cluster) > LAST_INDEX, 30)
    client = node.client()
    login(client)
    with open(FIXTURE / "expected.json") as f:
        expected = json.load(f)
    for request, reply in expected:
        assert client.request(request) == reply, request
    client.close()
