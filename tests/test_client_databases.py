"""
The clients' database methods: the URL's C{/db} path selects a database on
every connection, C{use_database} switches and is kept across reconnections,
and the create/drop/list and grant/revoke methods send the spec's requests.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest
from client_helpers import memory_connector, memory_server
from rich.console import Console
from test_client import iosim_connector, run
from twisted.test import iosim

from oxidb.cli.shell import Shell
from oxidb.cli.transfer import dump, restore
from oxidb.client import Client
from oxidb.client.errors import DatabaseNotFound
from oxidb.client.twisted import TwistedClient

NO_SLEEP: Any = lambda seconds: None  # noqa: E731


def test_blocking_client(tmp_path: Path) -> None:
    with memory_server(tmp_path) as (server, _):
        connector = memory_connector({("mem", 1): server})
        client = Client("oxidb://mem:1", connector=connector, sleep=NO_SLEEP)
        assert client.list_databases() == ["oxidb"]
        assert client.create_database("crm") == "database 'crm' created"
        client.insert("users", {"where": "oxidb"})
        assert client.use_database("crm") == "switched to database 'crm'"
        client.insert("users", {"where": "crm"})
        assert [d["where"] for d in client.find("users")] == ["crm"]
        # A new connection switches to the database the client is using.
        client.close()
        assert [d["where"] for d in client.find("users")] == ["crm"]
        with pytest.raises(DatabaseNotFound, match="^database not found: nope$"):
            client.use_database("nope")
        assert client.options.database == "crm"
        # The URL's path selects the database of every connection.
        other = Client("oxidb://mem:1/crm", connector=connector, sleep=NO_SLEEP)
        assert [d["where"] for d in other.find("users")] == ["crm"]
        default = Client("oxidb://mem:1/oxidb", connector=connector, sleep=NO_SLEEP)
        assert [d["where"] for d in default.find("users")] == ["oxidb"]
        assert default.drop_database("crm") == "database 'crm' dropped"
        assert default.list_databases() == ["oxidb"]
        with pytest.raises(DatabaseNotFound, match="^database not found: crm$"):
            Client("oxidb://mem:1/crm", connector=connector, sleep=NO_SLEEP).ping()


def test_blocking_client_db_roles(tmp_path: Path) -> None:
    with memory_server(tmp_path, auth=True) as (server, password):
        connector = memory_connector({("mem", 1): server})
        admin = Client(f"oxidb://admin:{password}@mem:1", connector=connector, sleep=NO_SLEEP)
        admin.command("create_user", username="bob", password="pw-bob", role="read")
        admin.create_database("crm")
        assert admin.grant_db_role("bob", "crm", "readWrite") == (
            "granted role 'readWrite' on database 'crm' to user 'bob'"
        )
        bob = Client("oxidb://bob:pw-bob@mem:1/crm", connector=connector, sleep=NO_SLEEP)
        assert bob.insert("c", {"a": 1}) == {"id": 1}
        assert admin.revoke_db_role("bob", "crm") == "revoked database role on 'crm' from user 'bob'"


def test_twisted_client(tmp_path: Path) -> None:
    with memory_server(tmp_path) as (server, _):
        pumps: list[iosim.IOPump] = []
        client = TwistedClient("oxidb://mem:1", reactor=server.clock, connector=iosim_connector(server, pumps))
        assert run(client.create_database("crm"), pumps, server) == "database 'crm' created"
        assert run(client.use_database("crm"), pumps, server) == "switched to database 'crm'"
        assert client.options.database == "crm"
        run(client.insert("c", {"a": 1}), pumps, server)
        assert run(client.list_databases(), pumps, server) == ["oxidb", "crm"]
        scoped = TwistedClient("oxidb://mem:1/crm", reactor=server.clock, connector=iosim_connector(server, pumps))
        assert run(scoped.count("c"), pumps, server) == {"count": 1}
        assert run(client.drop_database("crm"), pumps, server) == "database 'crm' dropped"
        gone = TwistedClient("oxidb://mem:1/crm", reactor=server.clock, connector=iosim_connector(server, pumps))
        with pytest.raises(DatabaseNotFound):
            run(gone.ping(), pumps, server)


def test_shell_prompt_follows_use_db(tmp_path: Path) -> None:
    with memory_server(tmp_path) as (server, _):
        client = Client("oxidb://mem:1", connector=memory_connector({("mem", 1): server}), sleep=NO_SLEEP)
        console = Console(record=True, width=100, force_terminal=False)
        shell = Shell(client, console, history="")
        assert shell.prompt_text() == "mem:1/oxidb> "
        assert shell.execute("create_database crm")
        assert shell.execute("use_db crm")
        assert shell.prompt_text() == "mem:1/crm> "
        assert shell.execute('insert people {"n": 1}')
        assert shell.collections() == ["people"]
        assert shell.execute("use_db nope")
        assert shell.prompt_text() == "mem:1/crm> "
        assert "error: database not found: nope" in console.export_text()
        assert shell.execute("use_db oxidb")
        assert shell.prompt_text() == "mem:1/oxidb> " and shell.collections() == []


def test_dump_and_restore_cover_every_database(tmp_path: Path) -> None:
    with memory_server(tmp_path / "a", auth=True) as (source, password):
        a = Client(f"oxidb://admin:{password}@mem:1/oxidb", connector=memory_connector({("mem", 1): source}))
        a.insert("people", {"where": "oxidb"})
        for name in ("crm", "hr"):
            a.create_database(name)
        a.command("create_user", username="bob", password="pw-bob", role="read")
        a.grant_db_role("bob", "crm", "readWrite")
        a.use_database("crm")
        a.insert_many("people", [{"where": "crm", "n": n} for n in range(3)])
        a.create_index("people", "n")
        a.use_database("hr")  # an empty database is dumped too
        counts = dump(a, str(tmp_path / "dump.gz"), users=True)
        assert counts["collections"] == 2 and counts["documents"] == 4
        assert a.options.database == "hr"  # the client is left where it was
        with gzip.open(tmp_path / "dump.gz", "rb") as f:
            kinds = [json.loads(line)["type"] for line in f]
        assert kinds[:3] == ["header", "collection", "doc"] and kinds.count("database") == 2
    with memory_server(tmp_path / "b", auth=True) as (target, password):
        b = Client(f"oxidb://admin:{password}@mem:1", connector=memory_connector({("mem", 1): target}))
        restore(b, str(tmp_path / "dump.gz"), users_passwords=str(tmp_path / "pw"))
        assert b.list_databases() == ["oxidb", "crm", "hr"]
        assert b.options.database == "oxidb"  # back in the database it started in
        assert [d["where"] for d in b.find("people")] == ["oxidb"]
        b.use_database("crm")
        assert [d["n"] for d in b.find("people")] == [0, 1, 2]
        assert [i["name"] for i in b.list_indexes("people")] == ["n"]
        bob = [u for u in b.command("list_users") if u["username"] == "bob"]
        assert bob[0]["db_roles"] == {"crm": "readwrite"}
