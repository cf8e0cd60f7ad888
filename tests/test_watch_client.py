"""
oxidb.client's change streams: the blocking iterator and the Twisted
callback, each resuming after its last token when the connection breaks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from client_helpers import memory_connector, memory_server
from twisted.test import iosim

from oxidb.client import Client
from oxidb.client.errors import ServerError
from oxidb.client.twisted import TwistedClient
from oxidb.testing import result_of


def NO_SLEEP(seconds: float) -> None:
    pass


def test_blocking_watch_yields_events_and_resumes_after_a_broken_connection(tmp_path: Path) -> None:
    with memory_server(tmp_path) as (server, _):
        connector = memory_connector({("mem", 1): server})
        writer = Client("oxidb://mem:1", connector=connector, sleep=NO_SLEEP)
        events = writer.watch("c")
        writer.insert("c", {"n": 0})
        first = next(events)
        assert first["event"] == "change" and first["data"]["document"]["n"] == 0
        writer.insert("c", {"n": 1})
        writer.insert("other", {"n": 99})
        assert next(events)["data"]["doc_id"] == 2
        # The node goes away mid-stream; changes happen meanwhile.
        (watching,) = [s for s in connector.sockets if s.protocol.session.watch is not None]
        watching.close()
        writer.insert("c", {"n": 2})
        writer.update("c", {"n": 0}, {"$set": {"x": 1}})
        got = [next(events), next(events)]
        assert [(e["data"]["operation"], e["data"]["doc_id"]) for e in got] == [("insert", 3), ("update", 1)]
        events.close()
        assert not server.services.changes.subscriptions


def test_blocking_watch_reports_a_refusal(tmp_path: Path) -> None:
    with memory_server(tmp_path) as (server, _):
        client = Client("oxidb://mem:1", connector=memory_connector({("mem", 1): server}), sleep=NO_SLEEP)
        with pytest.raises(ServerError, match="ahead"):
            client.watch(resume_after=2**64 - 1)
        assert not server.services.changes.subscriptions


def test_twisted_watch_calls_back_and_resumes(tmp_path: Path) -> None:
    with memory_server(tmp_path) as (server, _):
        pumps: list[iosim.IOPump] = []
        from test_client import iosim_connector, run

        def settle() -> None:
            for _ in range(5):
                server.clock.advance(1)
                for pump in list(pumps):
                    pump.flush()

        client = TwistedClient("oxidb://mem:1", reactor=server.clock, connector=iosim_connector(server, pumps))
        seen: list[Any] = []
        watch = client.watch(seen.append, "c")
        run(client.insert("c", {"n": 0}), pumps, server)
        run(client.insert("c", {"n": 1}), pumps, server)
        settle()
        assert [e["data"]["doc_id"] for e in seen] == [1, 2]
        # Break the watching connection: it reconnects and resumes after token 2.
        watching = pumps[0]
        watching.client.transport.loseConnection()
        settle()
        run(client.insert("c", {"n": 2}), pumps, server)
        settle()
        assert [e["data"]["doc_id"] for e in seen] == [1, 2, 3]
        watch.stop()
        settle()
        assert watch.done.called
        result_of(watch.done)


def test_cli_watch_prints_one_event_per_line(tmp_path: Path, monkeypatch: Any) -> None:
    import json

    from click.testing import CliRunner

    from oxidb.cli import main
    from oxidb.cli.shell import Shell

    with memory_server(tmp_path) as (server, _):
        connector = memory_connector({("mem", 1): server})
        monkeypatch.setattr(main, "Client", lambda options: Client(options, connector=connector, sleep=NO_SLEEP))
        writer = Client("oxidb://mem:1", connector=connector, sleep=NO_SLEEP)
        writer.insert_many("c", [{"n": 1}, {"n": 2}])
        writer.insert("d", {"n": 3})
        result = CliRunner().invoke(
            main.cli, ["--url", "oxidb://mem:1", "watch", "c", "--resume-after", "0", "--count", "2"]
        )
        assert result.exit_code == 0, result.output
        lines = [json.loads(line) for line in result.output.splitlines()]
        assert [(e["event"], e["data"]["doc_id"]) for e in lines] == [("change", 1), ("change", 2)]
        bad = CliRunner().invoke(main.cli, ["--url", "oxidb://mem:1", "watch", "--resume-after", "-1"])
        assert bad.exit_code == 2
        # The shell does not take a watch over its connection.
        errors: list[str] = []
        shell = Shell(writer, None, raw=True)  # type: ignore[arg-type]
        shell._error = errors.append  # type: ignore[method-assign]
        assert shell.execute("watch c")
        assert errors and "oxidb-cli watch" in errors[0]
