"""
A database written before the engine moved to APSW and JSONB documents
(C{tests/fixtures/store_v2}, built by C{tests/fixtures/make_store_v2.py} with
the code of that time) opens migrated without loss, standalone and as a
Raft snapshot installed by the state machine.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
from collections.abc import Generator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from oxidb.engine import blobs, store
from oxidb.engine.engine import Engine
from oxidb.raft.statemachine import EngineStateMachine, ReadGate

FIXTURES = Path(__file__).parent / "fixtures"
FIXTURE = FIXTURES / "store_v2"


def _maker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_store_v2", FIXTURES / "make_store_v2.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MAKER = _maker()


def expected() -> dict[str, Any]:
    with open(FIXTURE / "expected.json") as f:
        result: dict[str, Any] = json.load(f)
    return result


def answers(engine: Engine) -> dict[str, Any]:
    """The fixture's checks asked of C{engine}, in their JSON form."""
    result: dict[str, Any] = json.loads(json.dumps(MAKER.answers(engine)))
    return result


def stored_types(engine: Engine) -> set[str]:
    def types(reader: Any) -> set[str]:
        info = store.get_collection(reader.conn, "people")
        return {row[0] for row in reader.conn.execute(f"SELECT DISTINCT typeof(doc) FROM {info.tbl}")}

    return engine.read(types)


def open_engine(data_dir: Path) -> Engine:
    engine = Engine(str(data_dir), synchronous="NORMAL", auto_create_on_read=False)
    blobs.register_appliers(engine)
    engine.open()
    return engine


def test_a_layout_2_database_opens_migrated(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    with gzip.open(FIXTURE / "oxidb.sqlite3.gz", "rb") as z:
        (data / store.DB_FILENAME).write_bytes(z.read())
    os.chmod(data / store.DB_FILENAME, 0o600)
    engine = open_engine(data)
    try:
        assert engine.read(lambda reader: store.get_meta(reader.conn, "layout")) == store.LAYOUT == 3
        assert stored_types(engine) == {"blob"}
        assert answers(engine) == expected()
        assert engine.last_applied() == MAKER.LAST_INDEX
        # Writes go on where the old database left off.
        assert engine.apply({"Insert": {"collection": "people", "document": {"name": "new", "age": 36}}}, 0.0) == {
            "id": 10
        }
        assert [d["name"] for d in engine.find("people", {"age": 36})] == ["new"]
    finally:
        engine.close()
    # Migrated once: a second open finds the same data.
    engine = open_engine(data)
    try:
        assert engine.count("people", {}) == 9
        assert engine.find("people", {"name": "zoë"})[0]["city"] == "Zürich"
    finally:
        engine.close()


@pytest.fixture
def pool() -> Generator[ThreadPool, None, None]:
    threadpool = ThreadPool(minthreads=1, maxthreads=2, name="test-migration")
    threadpool.start()
    yield threadpool
    threadpool.stop()


@pytest_twisted.inlineCallbacks
def test_a_snapshot_in_the_old_format_installs(tmp_path: Path, pool: ThreadPool) -> Any:
    engine = open_engine(tmp_path / "node")
    engine.apply({"Insert": {"collection": "people", "document": {"name": "replaced"}}}, 0.0, 1)
    gate = ReadGate()
    machine = EngineStateMachine(
        engine,
        reactor=reactor,
        threadpool=pool,
        run_io=lambda fn, *a: deferToThreadPool(reactor, pool, fn, *a),
        gate=gate,
        users=lambda: None,
    )
    try:
        with gzip.open(FIXTURE / "snapshot.bin.gz", "rb") as z:
            snapshot = z.read()
        yield machine.install_snapshot(snapshot)
        assert engine.last_applied() == MAKER.LAST_INDEX
        assert stored_types(engine) == {"blob"}
        assert answers(engine) == expected()
        # A snapshot built now carries the migrated state.
        build = machine.build_snapshot()
        yield build.pinned
        rebuilt = yield build.data
        assert rebuilt != snapshot
    finally:
        engine.close()
