"""The operator docs cover every setting the server has."""

from __future__ import annotations

import os

from oxidb.config import SETTINGS

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")


def test_operations_doc_lists_every_variable_and_option() -> None:
    with open(os.path.join(DOCS, "operations.md"), encoding="utf-8") as f:
        text = f.read()
    for setting in SETTINGS:
        assert f"`{setting.env}`" in text, setting.env
        assert f"`--{setting.option}`" in text, setting.option
