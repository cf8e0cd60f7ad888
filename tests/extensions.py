"""The optional C extensions, for the tests that compare them with their pure-Python twins."""

from __future__ import annotations

import importlib
from types import ModuleType

import pytest


def built_extension(name: str) -> ModuleType:
    """The C extension module C{name}; the test fails (it is never skipped) when it is not built."""
    try:
        return importlib.import_module(name)
    except ImportError:
        pytest.fail(f"the C extension {name} is not built: run `pip install -e .` (or `setup.py build_ext --inplace`)")
