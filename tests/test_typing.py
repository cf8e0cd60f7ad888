"""The package type-checks (mypy with the zope plugin; settings in pyproject.toml)."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_mypy_is_clean(tmp_path: "os.PathLike[str]") -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", os.path.join(str(tmp_path), "cache"), "oxidb"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
