"""
oxidb-cli on the server in memory: one-shot commands and exit codes, the
shell through prompt-toolkit's pipe input, dump/restore, import/export,
users, and cluster bootstrap against scripted nodes.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from client_helpers import memory_connector, memory_server
from prompt_toolkit.application import create_app_session
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput
from rich.console import Console

from oxidb.cli import catalog, main, transfer
from oxidb.cli.parse import ParseError, build_request, split_line, unbalanced, words_to_items
from oxidb.cli.shell import Shell, ShellCompleter
from oxidb.cli.transfer import dump, restore
from oxidb.client import Client
from oxidb.client.errors import ServerError
from oxidb.client.url import ConnectOptions
from oxidb.testing import MemoryServer
from oxidb.wire import codec
from oxidb.wire.framing import encode_frame


def test_catalog_is_current() -> None:
    with open(os.path.join(os.path.dirname(catalog.__file__), "_catalog.py"), encoding="utf-8") as f:
        assert f.read() == catalog.render(catalog.build()), "run: python -m oxidb.cli.catalog > oxidb/cli/_catalog.py"


def test_stale_catalog_falls_back_to_the_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(catalog.CATALOG, "count")
    assert build_request(split_line("count people")) == {"cmd": "count", "collection": "people"}
    assert catalog.lookup("nosuchcommand") is None


def test_parse() -> None:
    assert build_request(split_line('find people {"age": {"$gt": 30}} limit=5')) == {
        "cmd": "find", "collection": "people", "query": {"age": {"$gt": 30}}, "limit": 5,
    }  # fmt: skip
    assert build_request(words_to_items(["find", "2024", '{"a":[1, 2]}', 'sort={"a":-1}'])) == {
        "cmd": "find", "collection": "2024", "query": {"a": [1, 2]}, "sort": {"a": -1},
    }  # fmt: skip
    assert build_request(split_line("create_user bob 123 role=read"))["password"] == "123"
    assert unbalanced('insert c {"a": [1,') and not unbalanced('insert c {"a": "}"}')
    for bad, message in [
        ("", "no command"),
        ("nope x", "unknown command: nope"),
        ('find c {"a": }', "invalid JSON"),
        ("ping extra", "at most 0 values"),
        ("find c {} query={}", "query given twice"),
    ]:
        with pytest.raises(ParseError, match=message):
            build_request(split_line(bad))
    with pytest.raises(ParseError, match="invalid JSON"):
        words_to_items(["find", "c", "{nope"])


@pytest.fixture
def server(tmp_path: Path) -> Iterator[MemoryServer]:
    with memory_server(tmp_path, auth=False) as (memory, _):
        yield memory


@pytest.fixture
def cli(server: MemoryServer, monkeypatch: pytest.MonkeyPatch) -> Any:
    connector = memory_connector({("mem", 1): server})
    monkeypatch.setattr(main, "Client", lambda options: Client(options, connector=connector, sleep=lambda s: None))

    def run(*args: str, input: str | None = None) -> Any:
        return CliRunner().invoke(main.cli, ["--url", "oxidb://mem:1", *args], input=input, catch_exceptions=False)

    return run


def test_one_shot_and_exit_codes(cli: Any) -> None:
    result = cli("--json", "insert_many", "people", '[{"name":"a","age":31},{"name":"b","age":20}]')
    assert (result.exit_code, result.output) == (0, "[1,2]\n")
    result = cli("--json", "find", "people", '{"age":{"$gt":30}}')
    assert json.loads(result.output) == [{"name": "a", "age": 31, "_id": 1, "_version": 1}]
    table = cli("find", "people", "sort={\"age\":1}")
    assert table.exit_code == 0 and "2 documents" in table.output
    assert table.output.index("│ b ") < table.output.index("│ a ")
    assert cli("status").exit_code == 0
    bad_query = cli("find", "people", '{"age":{"$nope":1}}')
    assert bad_query.exit_code == 1 and bad_query.output.startswith("error: invalid query:")
    assert cli("find", "people", "{oops").exit_code == 2
    assert cli("nosuchcommand").exit_code == 2
    unreachable = CliRunner().invoke(main.cli, ["--url", "oxidb://elsewhere:1?retries=0", "ping"])
    assert unreachable.exit_code == 3 and unreachable.output.count("\n") == 1
    assert CliRunner().invoke(main.cli, ["--url", "http://x", "ping"]).exit_code == 2
    assert "find collection [query]" in cli("find", "--help").output


def test_shell_through_pipe_input(server: MemoryServer, tmp_path: Path) -> None:
    # The URL's path selects the database, which must exist.
    Client("oxidb://mem:1", connector=memory_connector({("mem", 1): server})).create_database("app")
    client = Client("oxidb://mem:1/app", connector=memory_connector({("mem", 1): server}))
    client.insert("people", {"name": "ann", "age": 40})
    console = Console(record=True, width=100, force_terminal=False)
    shell = Shell(client, console, history=str(tmp_path / "history"))
    assert shell.prompt_text() == "mem:1/app> "
    with create_pipe_input() as pipe, create_app_session(input=pipe, output=DummyOutput()):
        pipe.send_text('insert people {"name": "bob",\n "age": 25}\n')
        pipe.send_text("find people {\"age\": {\"$lt\": 30}}\n")
        pipe.send_text("find people {\"age\": {\"$bad\": 1}}\n")
        pipe.send_text("help count\n")
        pipe.send_text("exit\n")
        shell.run()
    out = console.export_text()
    assert '"id": 2' in out
    assert "bob" in out and "1 document" in out
    assert "error: invalid query:" in out
    assert "count: `{\"count\": n}`" in out and "usage: count collection [query]" in out
    with open(tmp_path / "history", encoding="utf-8") as f:
        assert "help count" in f.read()


def completions(shell: Shell, text: str) -> list[str]:
    from prompt_toolkit.completion import CompleteEvent
    from prompt_toolkit.document import Document

    return [c.text for c in ShellCompleter(shell).get_completions(Document(text), CompleteEvent())]


def test_shell_completion(server: MemoryServer) -> None:
    client = Client("oxidb://mem:1", connector=memory_connector({("mem", 1): server}))
    client.insert("people", {"name": "ann", "nickname": "a"})
    client.insert("pets", {"kind": "cat"})
    shell = Shell(client, Console(), history="")
    assert completions(shell, "fin") == ["find", "find_and_modify", "find_one"]
    assert completions(shell, "find pe") == ["people", "pets"]
    assert completions(shell, 'find people {"na') == ["name"]
    assert completions(shell, 'find people {"name": 1, n') == ["name", "nickname"]
    assert completions(shell, "find people {} li") == ["limit="]
    assert completions(shell, "help create_u") == ["create_unique_index", "create_user"]


def test_dump_restore_round_trip(tmp_path: Path) -> None:
    with memory_server(tmp_path / "a", auth=True) as (source, password):
        options = ConnectOptions(seeds=(("mem", 1),), user="admin", password=password)
        a = Client(options, connector=memory_connector({("mem", 1): source}))
        a.insert_many("people", [{"name": f"p{i}", "age": i, "tags": ["x", i]} for i in range(1200)])
        a.delete("people", {"age": {"$in": [0, 5, 6, 700]}})  # gaps in the ids
        a.delete("people", {"age": {"$gte": 1190}})  # and a shorter tail
        a.create_index("people", "age")
        a.create_unique_index("people", "name")
        a.command("create_text_index", collection="people", fields=["name"])
        a.insert("empty", {"x": 1})
        a.delete("empty", {})
        a.command("create_procedure", name="adults", params=[], steps=[{"action": "find", "collection": "people"}])
        a.command("create_schedule", name="nightly", every="1h", procedure="adults", enabled=False)
        a.command("create_bucket", bucket="files")
        a.command("put_object", bucket="files", key="a/b.txt", data="aGVsbG8=", content_type="text/plain",
                  metadata={"m": "1"})  # fmt: skip
        a.command("create_user", username="reader", password="pw-reader", role="read")
        seen: list[tuple[str, int, Any]] = []
        counts = dump(a, str(tmp_path / "dump.gz"), users=True, progress=lambda *p: seen.append(p))
        assert counts == {"collections": 2, "documents": 1186, "procedures": 1, "schedules": 1, "objects": 1,
                          "users": 2}  # fmt: skip
        assert ("people", 1186, 1186) in seen
        expected = {name: a.find(name) for name in a.list_collections()}
        indexes = a.list_indexes("people")
    with memory_server(tmp_path / "b", auth=True) as (target, password):
        options = ConnectOptions(seeds=(("mem", 1),), user="admin", password=password)
        b = Client(options, connector=memory_connector({("mem", 1): target}))
        passwords = str(tmp_path / "passwords")
        restore(b, str(tmp_path / "dump.gz"), users_passwords=passwords)
        strip = lambda docs: [{k: v for k, v in d.items() if k != "_version"} for d in docs]  # noqa: E731
        assert {name: strip(b.find(name)) for name in b.list_collections()} == {
            name: strip(docs) for name, docs in expected.items()
        }
        assert b.list_indexes("people") == indexes
        assert b.command("get_procedure", name="adults")["steps"] == [{"action": "find", "collection": "people"}]
        assert b.command("get_schedule", name="nightly")["enabled"] is False
        assert b.command("get_object", bucket="files", key="a/b.txt")["content"] == "aGVsbG8="
        assert sorted(u["username"] for u in b.command("list_users")) == ["admin", "reader"]
        assert os.stat(passwords).st_mode & 0o777 == 0o600
        with open(passwords, encoding="utf-8") as f:
            (line,) = [line for line in f if line.startswith("reader ")]
        reader = Client(
            ConnectOptions(seeds=(("mem", 1),), user="reader", password=line.split()[1]),
            connector=memory_connector({("mem", 1): target}),
        )
        assert reader.count("people") == {"count": 1186}
        # A second restore refuses to mix into non-empty collections.
        with pytest.raises(ValueError, match="collection people is not empty"):
            restore(b, str(tmp_path / "dump.gz"))
        restore(b, str(tmp_path / "dump.gz"), drop=True)
        assert b.count("people") == {"count": 1186}
    # A truncated dump is loaded as far as it goes and reported.
    with gzip.open(tmp_path / "dump.gz", "rb") as f:
        lines = f.read().splitlines(keepends=True)
    with gzip.open(tmp_path / "cut.gz", "wb") as f:
        f.writelines(lines[:100])
    with memory_server(tmp_path / "c") as (third, _):
        c = Client("oxidb://mem:1", connector=memory_connector({("mem", 1): third}))
        with pytest.raises(ValueError, match="truncated"):
            restore(c, str(tmp_path / "cut.gz"))
        assert c.count("people") == {"count": 97}  # header, two collection records, 97 documents
        with pytest.raises(ValueError, match="not an oxidb dump"):
            restore(c, str(tmp_path / "passwords"))


def test_dump_under_writes_is_a_point_in_time_and_restore_keeps_versions_and_ids(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    Another client writes while the dump runs (between its pages); the dump
    holds the state at its snapshot, and a restore of it answers the same
    documents with the same versions and the same next ids. Blobs are
    listed in pages (two keys a page here).
    """
    monkeypatch.setattr(transfer, "_OBJECT_PAGE", 2)
    with memory_server(tmp_path / "a") as (source, _):
        connector = memory_connector({("mem", 1): source})
        a = Client("oxidb://mem:1", connector=connector)
        writer = Client("oxidb://mem:1", connector=connector)
        a.insert_many("people", [{"n": i} for i in range(1400)])
        a.update("people", {"n": {"$lt": 10}}, {"$set": {"seen": True}})  # version 2
        a.update("people", {"n": {"$lt": 3}}, {"$inc": {"n": 1000}})  # version 3
        a.insert_many("tail", [{"t": i} for i in range(4)])
        a.delete("tail", {"t": {"$gte": 2}})  # the counter stays at 4
        a.insert("gone", {"x": 1})
        a.command("create_bucket", bucket="files")
        blob_keys = ["a", "b/1", "b/2", "c", "d"]
        for key in blob_keys:
            a.command("put_object", bucket="files", key=key, data="aGk=")
        at_snapshot = {name: a.find(name, sort={"_id": 1}) for name in a.list_collections()}
        writes = iter(range(10_000))

        def write_meanwhile(what: str, done: int, total: int | None) -> None:
            k = next(writes)
            writer.insert("people", {"late": k})
            writer.update("people", {"n": {"$gte": 1000}}, {"$inc": {"n": 1}})
            writer.delete("people", {"n": k + 20})
            writer.insert("tail", {"late": k})
            writer.drop_collection("gone")
            writer.insert("new", {"late": k})

        dump(a, str(tmp_path / "dump.gz"), progress=write_meanwhile)
        assert next(writes) > 2, "the writer ran while the dump read"
        assert a.find("people", sort={"_id": 1}) != at_snapshot["people"] and "new" in a.list_collections()
    with gzip.open(tmp_path / "dump.gz", "rb") as f:
        header = json.loads(f.readline())
    assert header["consistency"] == "snapshot"
    with memory_server(tmp_path / "b") as (target, _):
        b = Client("oxidb://mem:1", connector=memory_connector({("mem", 1): target}))
        restore(b, str(tmp_path / "dump.gz"))
        assert {name: b.find(name, sort={"_id": 1}) for name in b.list_collections()} == at_snapshot
        assert b.find_one("people", {"n": 1000})["_version"] == 3
        assert [m["key"] for m in b.command("list_objects", bucket="files")] == blob_keys
        # The next insert gets the id the source would have given at the snapshot.
        assert b.insert("people", {"after": True}) == {"id": 1401}
        assert b.insert("tail", {"after": True}) == {"id": 5}
        assert b.insert("gone", {"after": True}) == {"id": 2}
        # restore_documents refuses ids that exist and bad documents, each with a clear error.
        bad: list[tuple[list[Any], str]] = [
            ([{"_id": 1, "_version": 1}], "restore: _id 1 already exists in people"),
            ([{"_id": 9000, "_version": 1}, {"_id": 9000, "_version": 2}], "restore: _id 9000 appears twice"),
            ([{"_id": 9001}], "restore: every document needs an integer '_id' and '_version'"),
            ([{"_id": "x", "_version": 1}], "restore: every document needs"),
            ([{"_id": 2**64, "_version": 1}], "restore: every document needs"),
            ([{"_id": 9002, "_version": 0}], "restore: every document needs"),
            ([5], "document must be a JSON object"),
        ]
        for docs, text in bad:
            with pytest.raises(ServerError) as info:
                b.command("restore_documents", collection="people", docs=docs)
            assert str(info.value).startswith(text), (docs, str(info.value))
        for request, text in [
            ({"collection": "people"}, "missing or invalid 'docs' array"),
            ({"collection": "people", "docs": {}}, "missing or invalid 'docs' array"),
            ({"docs": []}, "missing 'collection'"),
            ({"collection": "people", "docs": [], "last_id": -1}, "'last_id' must be an integer from 0 to 2^63-1"),
            ({"collection": "people", "docs": [], "last_id": 2**63}, "'last_id' must be an integer from 0 to 2^63-1"),
            ({"collection": "_procedures", "docs": []}, "invalid query: collection name is reserved"),
        ]:
            with pytest.raises(ServerError) as info:
                b.request({"cmd": "restore_documents", **request})
            assert str(info.value).startswith(text), (request, str(info.value))
        assert b.count("people") == {"count": len(at_snapshot["people"]) + 1}


def test_import_export(cli: Any, tmp_path: Path) -> None:
    source = tmp_path / "people.csv"
    source.write_text(
        'name,zip:str,age,score:float,active,extra:json\nann,01234,40,1,true,"{""a"": 1}"\nbob,99,,2.5,false,\n'
    )
    result = cli("import", "people", str(source))
    assert result.exit_code == 0, result.output
    assert cli("--json", "find", "people").output.strip() == json.dumps(
        [
            {"name": "ann", "zip": "01234", "age": 40, "score": 1.0, "active": True, "extra": {"a": 1}, "_id": 1,
             "_version": 1},
            {"name": "bob", "zip": "99", "score": 2.5, "active": False, "_id": 2, "_version": 1},
        ],
        separators=(",", ":"),
    )  # fmt: skip
    for name in ("out.jsonl", "out.json", "out.csv"):
        assert cli("export", "people", str(tmp_path / name), "--fields", "name,age").exit_code == 0
    with open(tmp_path / "out.csv", encoding="utf-8") as f:
        assert list(csv.reader(f)) == [["name", "age"], ["ann", "40"], ["bob", ""]]
    assert json.loads((tmp_path / "out.json").read_text()) == [{"name": "ann", "age": 40}, {"name": "bob"}]
    assert cli("import", "copy", str(tmp_path / "out.jsonl")).exit_code == 0
    assert cli("import", "copy", str(tmp_path / "out.json")).exit_code == 0
    assert json.loads(cli("--json", "count", "copy").output) == {"count": 4}
    stdout = cli("export", "people", "-", "--query", '{"name":"bob"}')
    assert json.loads(stdout.output)["name"] == "bob"
    bad = tmp_path / "bad.csv"
    bad.write_text("n:int\nx\n")
    result = cli("import", "people", str(bad))
    assert result.exit_code == 2 and "line 2, column n: 'x' is not int" in result.output
    (tmp_path / "bad.json").write_text('{"not": "an array"}')
    assert cli("import", "people", str(tmp_path / "bad.json")).exit_code == 2


def test_users(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with memory_server(tmp_path, auth=True) as (server, password):
        connector = memory_connector({("mem", 1): server})
        monkeypatch.setattr(main, "Client", lambda options: Client(options, connector=connector))

        def run(*args: str, input: str | None = None) -> Any:
            base = ["--url", "oxidb://mem:1", "-u", "admin", "-p", password or ""]
            return CliRunner().invoke(main.cli, [*base, *args], input=input, catch_exceptions=False)

        assert run("user", "add", "carol", "--role", "readWrite", input="pw-carol\n").exit_code == 0
        assert "carol" in run("user", "list").output
        assert run("user", "passwd", "carol", "--password", "pw-new").exit_code == 0
        carol = Client("oxidb://carol:pw-new@mem:1", connector=connector)
        assert carol.insert("c", {}) == {"id": 1}
        assert run("user", "drop", "carol").exit_code == 0
        dropped = run("user", "drop", "carol")
        assert dropped.exit_code == 1 and "error: user 'carol' not found" in dropped.output
        denied = CliRunner().invoke(main.cli, ["--url", "oxidb://mem:1", "-u", "admin", "-p", "wrong", "ping"])
        assert denied.exit_code == 3 and "authentication failed" in denied.output


class ScriptedNode:
    """Answers the Raft management commands as a bootstrapping node would, recording them."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.members: dict[int, str] = {}
        self.voters: set[int] = set()
        self.state = "Follower"

    def answer(self, request: dict[str, Any]) -> bytes:
        self.requests.append(request)
        cmd, ok = request["cmd"], codec.WireFormat.JSON
        if cmd == "hello":
            return codec.encode_json_top({"ok": True, "server": {}})
        if cmd == "raft_init":
            self.state, self.members, self.voters = "Leader", {1: "127.0.0.1:7001"}, {1}
            return codec.encode_ok(ok, "cluster initialized")
        if cmd == "raft_add_learner":
            self.members[request["node_id"]] = request["addr"]
        elif cmd == "raft_change_membership":
            self.voters = set(request["members"])
        elif cmd == "raft_transfer_leader":
            return codec.encode_ok(ok, {"leader": request["node_id"], "term": 2})
        members = [
            {"id": n, "role": "voter" if n in self.voters else "learner", "addr": a} for n, a in self.members.items()
        ]
        return codec.encode_ok(
            ok, {"id": 1, "state": self.state, "joint": False, "members": members, "text": f"node 1: {self.state}"}
        )


class ScriptedSocket:
    def __init__(self, node: ScriptedNode) -> None:
        self.node, self.out = node, b""

    def sendall(self, data: bytes) -> None:
        _, request = codec.decode_request(data[4:])
        self.out += encode_frame(self.node.answer(request))  # type: ignore[arg-type]

    def recv(self, n: int) -> bytes:
        data, self.out = self.out, b""
        return data

    def peer_closed(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def fileno(self) -> int:
        return -1


def test_cluster_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    node = ScriptedNode()
    monkeypatch.setattr(main, "Client", lambda options: Client(options, connector=lambda h, p, o: ScriptedSocket(node)))

    def run(*args: str) -> Any:
        return CliRunner().invoke(main.cli, ["--url", "oxidb://n1:1", *args], catch_exceptions=False)

    result = run("cluster", "init", "--node", "2=127.0.0.1:7002", "--node", "3=127.0.0.1:7003")
    assert result.exit_code == 0, result.output
    sent = [(r["cmd"], r.get("node_id"), r.get("members")) for r in node.requests if r["cmd"] != "raft_status"]
    assert sent == [
        ("hello", None, None),
        ("raft_init", None, None),
        ("raft_add_learner", 2, None),
        ("raft_add_learner", 3, None),
        ("raft_change_membership", None, [1, 2, 3]),
    ]
    assert run("cluster", "status").output == "node 1: Leader\n"
    node.requests.clear()
    assert run("cluster", "add", "4", "127.0.0.1:7004").exit_code == 0
    assert node.requests[-2] == {"cmd": "raft_change_membership", "members": [1, 2, 3, 4]}
    assert json.loads(run("--json", "cluster", "transfer-leader", "2").output) == {"leader": 2, "term": 2}
    assert run("cluster", "init", "--node", "two=x").exit_code == 2


def test_admin_reset_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The command calls L{oxidb.auth.reset.reset_admin_password} (stood in for here) and reports in one line."""
    import types

    from oxidb.errors import ConfigError

    calls: list[tuple[str, str | None]] = []

    def reset_admin_password(data_dir: str, password: str | None) -> str:
        calls.append((data_dir, password))
        if not os.path.isdir(data_dir):
            raise ConfigError(f"{data_dir!r} is not a data directory (it does not exist)")
        return password or "generated-password"

    stand_in = types.SimpleNamespace(reset_admin_password=reset_admin_password)
    monkeypatch.setitem(sys.modules, "oxidb.auth.reset", stand_in)
    runner = CliRunner()
    result = runner.invoke(main.cli, ["admin", "reset-password", "--data", str(tmp_path)])
    assert (result.exit_code, result.output) == (0, "admin password: generated-password\n")
    result = runner.invoke(main.cli, ["admin", "reset-password", "--data", str(tmp_path), "--password", "pw"])
    assert (result.exit_code, result.output) == (0, "admin password changed\n")
    result = runner.invoke(main.cli, ["admin", "reset-password", "--data", str(tmp_path / "nope")])
    assert result.exit_code == 2 and result.output.startswith("error: ") and "not a data directory" in result.output
    assert calls == [(str(tmp_path), None), (str(tmp_path), "pw"), (str(tmp_path / "nope"), None)]
