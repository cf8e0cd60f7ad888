"""Shared fixtures: the official OxiDB client, installed once per checkout."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from types import ModuleType

import pytest

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
