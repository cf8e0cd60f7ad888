"""The operator docs cover every setting the server has."""

from __future__ import annotations

import os

from oxidb.config import SETTINGS
from oxidb.limits import LIMIT_ROWS

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")


def test_operations_doc_lists_every_variable_and_option() -> None:
    with open(os.path.join(DOCS, "operations.md"), encoding="utf-8") as f:
        text = f.read()
    limits = {row.env for row in LIMIT_ROWS}
    for setting in SETTINGS:
        if setting.env in limits:
            continue  # documented in security.md, see below
        assert f"`{setting.env}`" in text, setting.env
        assert f"`--{setting.option}`" in text, setting.option


def test_security_doc_limits_tables_list_every_limit() -> None:
    """
    Each limit row appears in docs/security.md's "Limits" section with its
    variable, option and default, in the table of its own group.
    """
    from oxidb.limits import AUTH_ROWS, ENGINE_ROWS, RAFT_ROWS, SERVER_ROWS

    with open(os.path.join(DOCS, "security.md"), encoding="utf-8") as f:
        text = f.read()
    section = text.split("## Limits", 1)[1].split("\n## ", 1)[0]
    groups = section.split("\n### ")[1:]
    titles = ["Queries, aggregation and search", "Connections, frames and the worker pool", "Login", "Raft port"]
    assert [g.splitlines()[0] for g in groups] == titles
    for group, rows in zip(groups, (ENGINE_ROWS, SERVER_ROWS, AUTH_ROWS, RAFT_ROWS), strict=True):
        for row in rows:
            line = f"| `{row.env}` | `--{row.option}` | `{row.default}` |"
            assert line in group, line


def _doc_texts() -> dict[str, str]:
    names = [os.path.join(DOCS, n) for n in sorted(os.listdir(DOCS)) if n.endswith(".md")]
    names.append(os.path.join(os.path.dirname(DOCS), "README.md"))
    texts = {}
    for name in names:
        with open(name, encoding="utf-8") as f:
            texts[os.path.basename(name)] = f.read()
    return texts


def test_docs_send_only_commands_that_exist() -> None:
    """Every C{"cmd":"..."} in the docs names a registry command (auth and cluster rows included) or oxipool's own."""
    import re

    from oxidb.commands import build_registry
    from oxidb.pool.router import ROUTER_COMMANDS

    names = set(build_registry(auth=True, cluster=True).names()) | ROUTER_COMMANDS
    for doc, text in _doc_texts().items():
        for name in re.findall(r'"cmd"\s*:\s*"([A-Za-z_]+)"', text):
            assert name in names, f"{doc} sends {name!r}, which is no command"


def test_docs_do_not_contradict_each_other() -> None:
    import re

    texts = _doc_texts()
    for doc, text in texts.items():
        # The package is not on PyPI: "pip install oxidb-server" installs nothing of ours.
        assert not re.search(r"pip install oxidb-server\b", text), doc
        # haproxy checks the metrics port every page documents.
        assert set(re.findall(r"check port (\d+)", text)) <= {"9464"}, doc
        # Switches accept true/1/false/0 only; no page may say TRUE or yes means anything else.
        assert "`TRUE` or `yes` mean off" not in text, doc
        assert "true`/`1`/`yes`/`on`" not in text, doc
    assert "OXIDB_METRICS_ADDR=127.0.0.1:9464" in texts["operations.md"]


def test_readme_keeps_the_newcomers_path_and_shows_how_to_connect() -> None:
    readme = _doc_texts()["README.md"]
    assert "python3 -m venv .venv && .venv/bin/pip install . && .venv/bin/twistd -n oxidb" in readme
    assert "## Run the tests\n\n```sh\npython3 -m venv .venv && .venv/bin/pip install -e '.[test]'" in readme
    assert ".venv/bin/oxidb-cli" in readme and "docs/getting-started.md" in readme


def test_the_test_knobs_are_not_refused_as_unknown_settings() -> None:
    """docs/testing.md's variables reach server processes the tests start: the server must accept them."""
    import re

    from oxidb.config import OTHER_VARIABLES

    knobs = set(re.findall(r"`(OXIDB_[A-Z_]+)`", _doc_texts()["testing.md"]))
    assert knobs and knobs <= OTHER_VARIABLES | {s.env for s in SETTINGS}
