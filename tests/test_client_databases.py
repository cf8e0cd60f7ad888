"""
The clients' database methods: the URL's C{/db} path selects a database on
every connection, C{use_database} switches and is kept across reconnections,
and the create/drop/list and grant/revoke methods send the spec's requests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from client_helpers import memory_connector, memory_server
from test_client import iosim_connector, run
from twisted.test import iosim

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
