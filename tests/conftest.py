"""
Shared fixtures (the official OxiDB client, installed once per checkout) and
the suite's scheduling: byte-code caching, the slow modules first, work
stealing between pytest-xdist workers.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from types import ModuleType
from typing import Any

import pytest

# Under PYTHONDONTWRITEBYTECODE (this machine's environment sets it) nothing is cached:
# every server process the tests start would compile the package from source
# again, and every run rewrite every test module's asserts. The workers write
# the caches as they collect; the server processes (which inherit the
# variable) read them. Cached byte code changes nothing the tests check.
sys.dont_write_bytecode = False

OFFICIAL_CLIENT = "oxidb==0.18.0"
CLIENT_DIR = os.path.join(os.path.dirname(__file__), ".official_client")


@pytest.fixture(scope="session")
def official_client() -> ModuleType:
    """
    PyPI's C{oxidb} 0.18.0 client module. Its module is also called
    C{oxidb}, so it is installed into its own directory and loaded under the
    name C{oxidb_official}.
    """
    path = os.path.join(CLIENT_DIR, "oxidb.py")
    if not os.path.exists(path):
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", CLIENT_DIR, OFFICIAL_CLIENT],
            check=True,
        )
    spec = importlib.util.spec_from_file_location("oxidb_official", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: The modules that take longest (real server processes and clusters, the
#: seeded Raft simulation, the large Hypothesis runs), longest first as
#: measured with C{--durations}. They run first, so that the end of a run is
#: made of short tests that the workers share evenly; a module that starts
#: real processes but is not listed runs right after these.
SLOW_MODULES = (
    "test_raft_simulation",
    "test_engine_sql_property",
    "test_cluster_nemesis",
    "test_cluster_identity_e2e",
    "test_cluster_e2e",
    "test_e2e_server",
    "test_pool_e2e",
    "test_wire_oxiwire_impls",
    "test_blobs_e2e",
    "test_wire_codec",
    "test_docs_walkthrough",
    "test_wire_fuzz",
    "test_wire_oxiwire",
    "test_e2e_security",
    "test_tx_end_to_end",
    "test_engine_updates",
    "test_encryption",
    "test_watch_cluster_e2e",
    "test_raft_stateful",
    "test_engine_matcher",
    "test_e2e_gelf",
    "test_datadir_lock",
)

#: Names a module imports from L{oxidb._harness} when it starts real processes.
_PROCESS_HARNESS = ("ServerProcess", "LocalCluster", "FaultProxyProcess")


def _module_rank(item: pytest.Item) -> int:
    module = getattr(item, "module", None)
    if module is None:
        return len(SLOW_MODULES) + 1
    name = module.__name__.rpartition(".")[2]
    if name in SLOW_MODULES:
        return SLOW_MODULES.index(name)
    if any(hasattr(module, harness) for harness in _PROCESS_HARNESS):
        return len(SLOW_MODULES)
    return len(SLOW_MODULES) + 1


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """
    The slow modules first (whole modules, in their own order, so that
    module-scoped fixtures are set up once per worker). Every test still runs.
    """
    items.sort(key=_module_rank)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """
    C{-n} without C{--dist} (CI's C{-n auto}) steals work: an idle worker
    takes half of the other's queue, instead of each worker keeping the
    consecutive chunks it was sent, so that the slow modules at the front of
    the collection are shared and no worker is left running a long queue
    alone at the end. Other C{--dist} modes are left as they are.
    """
    if config.getoption("dist") != "load":
        return None
    from xdist.scheduler import WorkStealingScheduling

    return WorkStealingScheduling(config, log)
