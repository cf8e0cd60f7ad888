"""The public test API, L{oxidb.testing}: what it exports and where that is documented."""

from __future__ import annotations

import os
import re

import oxidb.testing

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")


def _section() -> str:
    with open(os.path.join(DOCS, "testing.md"), encoding="utf-8") as f:
        text = f.read()
    return text.split("## Helpers for your own tests: `oxidb.testing`", 1)[1].split("\n## ", 1)[0]


def test_every_public_name_exists_and_is_documented() -> None:
    section = _section()
    for name in oxidb.testing.__all__:
        assert hasattr(oxidb.testing, name), name
        # Named in code style, alone or as a call: `Name` or `Name(...)`.
        assert re.search(rf"`{re.escape(name)}[`(]", section), f"{name} is not in docs/testing.md"


def test_no_undeclared_public_names() -> None:
    """Every public name the package defines (not a submodule) is in C{__all__}."""
    public = {
        name
        for name, value in vars(oxidb.testing).items()
        if not name.startswith("_") and not isinstance(value, type(os)) and name != "annotations"
    }
    assert public == set(oxidb.testing.__all__)


def test_the_process_harness_is_not_public() -> None:
    for name in ("ServerProcess", "BlockingClient", "LocalCluster", "FaultProxyProcess", "free_port", "wait_until"):
        assert not hasattr(oxidb.testing, name), name
