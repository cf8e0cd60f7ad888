"""
C{oxidb-cli}: one-shot commands, the interactive shell, dump/restore,
import/export, cluster and user management (docs/cli.md).

Exit codes: 0 success, 1 the server answered with an error, 2 bad usage or
input, 3 no server reachable (or login refused), 4 a write's outcome is
unknown (its reply was lost). Errors are one line on stderr.
"""

from __future__ import annotations

import functools
import getpass
import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from oxidb.cli.output import show
from oxidb.cli.parse import ParseError, build_request, words_to_items
from oxidb.client.blocking import Client
from oxidb.client.errors import (
    AuthenticationFailed,
    ClientError,
    ConnectionFailed,
    ServerError,
    UnknownOutcome,
)
from oxidb.client.url import ConnectOptions, parse_url

__all__ = ["cli", "main"]

EXIT_SERVER, EXIT_USAGE, EXIT_CONNECT, EXIT_UNKNOWN = 1, 2, 3, 4

F = TypeVar("F", bound=Callable[..., Any])


class State:
    """What the group's options give every subcommand: how to connect and how to print."""

    def __init__(self, options: ConnectOptions, raw: bool, console: Console, err: Console) -> None:
        self.options = options
        self.raw = raw
        self.console = console
        self.err = err
        self._client: Client | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client(self.options)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def fail(message: str, code: int) -> None:
    """Print a one-line error and exit with C{code}."""
    click.echo(f"error: {' '.join(message.split())}", err=True)
    sys.exit(code)


def handled(fn: F) -> F:
    """Turn client errors into one-line messages and exit codes."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UnknownOutcome as e:
            fail(str(e), EXIT_UNKNOWN)
        except (ConnectionFailed, AuthenticationFailed) as e:
            fail(str(e), EXIT_CONNECT)
        except ServerError as e:
            fail(str(e), EXIT_SERVER)
        except (ParseError, ValueError, OSError) as e:
            fail(str(e), EXIT_USAGE)
        except ClientError as e:
            fail(str(e), EXIT_SERVER)

    return wrapper  # type: ignore[return-value]


def connect_options(
    url: str, user: str | None, password: str | None, password_file: str | None, tls: bool | None, ca: str | None,
    server_name: str | None, fmt: str | None, timeout: float | None,
) -> ConnectOptions:  # fmt: skip
    """The URL with the flags applied over it (flags win)."""
    options = parse_url(url)
    if password_file is not None:
        with open(password_file, encoding="utf-8") as f:
            password = f.readline().rstrip("\r\n")
    if ca is not None and tls is None:
        tls = True
    return options.with_changes(
        user=user, password=password, tls=tls, ca=ca, server_name=server_name, format=fmt, timeout=timeout
    )


class CommandGroup(click.Group):
    """Subcommands, and any server command by name (one-shot mode: C{oxidb-cli find people '{...}'})."""

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            return command
        from oxidb.cli.catalog import lookup

        if lookup(cmd_name) is None:
            return None
        return _server_command(cmd_name)


def _server_command(name: str) -> click.Command:
    from oxidb.cli.catalog import help_text

    @click.command(name=name, help=help_text(name), context_settings={"ignore_unknown_options": True})
    @click.argument("values", nargs=-1, type=click.UNPROCESSED)
    @click.pass_obj
    @handled
    def run(state: State, values: tuple[str, ...]) -> None:
        request = build_request(words_to_items([name, *values]))
        show(state.console, state.client.request(request), raw=state.raw)

    return run


@click.group(cls=CommandGroup, invoke_without_command=True)
@click.option("--url", envvar="OXIDB_URL", default="oxidb://127.0.0.1:4444", show_default=True,
              help="oxidb://user:pass@host:port[,host:port...]/db?tls=true&ca=FILE (or OXIDB_URL)")
@click.option("-u", "--user", envvar="OXIDB_USER", help="log in as this user (SCRAM-SHA-256)")
@click.option("-p", "--password", envvar="OXIDB_PASSWORD", help="the password (or OXIDB_PASSWORD; prompted if absent)")
@click.option("--password-file", type=click.Path(dir_okay=False), help="read the password from this file's first line")
@click.option("--tls/--no-tls", default=None, help="TLS to the server (verifies its certificate)")
@click.option("--ca", type=click.Path(dir_okay=False), help="PEM CA file to verify the server with (implies --tls)")
@click.option("--server-name", help="the name the certificate must carry (default: the host)")
@click.option("--format", "fmt", type=click.Choice(["json", "oxiwire"]), help="wire format of requests")
@click.option("--timeout", type=float, help="socket timeout in seconds")
@click.option("--json", "raw", is_flag=True, help="print compact JSON instead of tables")
@click.version_option(package_name="oxidb-server")
@click.pass_context
def cli(
    ctx: click.Context, url: str, user: str | None, password: str | None, password_file: str | None,
    tls: bool | None, ca: str | None, server_name: str | None, fmt: str | None, timeout: float | None, raw: bool,
) -> None:  # fmt: skip
    """
    The oxidb shell and tools. Without a command: the interactive shell.
    Any server command runs once: oxidb-cli find people '{"age":{"$gt":30}}'
    (oxidb-cli find --help shows its fields).
    """
    try:
        options = connect_options(url, user, password, password_file, tls, ca, server_name, fmt, timeout)
    except (ValueError, OSError) as e:
        fail(str(e), EXIT_USAGE)
    if options.user is not None and options.password is None and sys.stdin.isatty():
        options = options.with_changes(password=getpass.getpass(f"password for {options.user}: "))
    state = ctx.obj = State(options, raw, Console(), Console(stderr=True))
    ctx.call_on_close(state.close)
    if ctx.invoked_subcommand is None:
        ctx.invoke(shell)


@cli.command()
@click.option("--history", type=click.Path(dir_okay=False), help="history file (default ~/.oxidb_history)")
@click.pass_obj
@handled
def shell(state: State, history: str | None) -> None:
    """The interactive shell (the default)."""
    from oxidb.cli.shell import Shell

    Shell(state.client, state.console, raw=state.raw, history=history).run()


@cli.command()
@click.pass_obj
@handled
def status(state: State) -> None:
    """The server's status (server_status)."""
    show(state.console, state.client.server_status(), raw=state.raw)


@cli.command(name="watch")
@click.argument("collection", required=False)
@click.option("--resume-after", type=click.IntRange(0, 2**64 - 1), help="replay the changes after this token")
@click.option("--count", type=click.IntRange(1), help="stop after this many events")
@click.pass_obj
@handled
def watch(state: State, collection: str | None, resume_after: int | None, count: int | None) -> None:
    """
    Print the changes to COLLECTION (default: every collection) as they
    happen, one JSON event per line; after a failover it resumes on another
    node without gap or repeat (docs/change-streams.md). Ctrl-C stops.
    """
    events = state.client.watch(collection, resume_after=resume_after)
    try:
        for n, event in enumerate(events, 1):
            click.echo(json.dumps(event, separators=(",", ":"), ensure_ascii=False))
            if count is not None and n >= count:
                break
    except KeyboardInterrupt:
        pass
    finally:
        events.close()


# -- dump, restore, import, export ----------------------------------------------


@contextmanager
def progress_bar(state: State) -> Iterator[Callable[[str, int, int | None], None]]:
    """A rich progress display on stderr, one bar per collection or bucket."""
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=state.err, transient=False
    ) as bars:
        tasks: dict[str, Any] = {}

        def update(what: str, done: int, total: int | None) -> None:
            if what not in tasks:
                tasks[what] = bars.add_task(what, total=total)
            bars.update(tasks[what], completed=done, total=total)

        yield update


@cli.command()
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--users", is_flag=True, help="also dump user names and roles (never passwords)")
@click.pass_obj
@handled
def dump(state: State, path: str, users: bool) -> None:
    """Dump everything to PATH (gzip JSON lines)."""
    from oxidb.cli.transfer import dump as run_dump

    with progress_bar(state) as progress:
        counts = run_dump(state.client, path, users=users, progress=progress)
    show(state.console, counts, raw=state.raw)


@cli.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--drop", is_flag=True, help="drop collections that exist before loading them")
@click.option("--users-passwords", type=click.Path(dir_okay=False),
              help="create the dump's users with new random passwords, written to this file (0600)")
@click.pass_obj
@handled
def restore(state: State, path: str, drop: bool, users_passwords: str | None) -> None:
    """Load a dump made by 'dump'."""
    from oxidb.cli.transfer import restore as run_restore

    with progress_bar(state) as progress:
        counts = run_restore(state.client, path, drop=drop, users_passwords=users_passwords, progress=progress)
    show(state.console, counts, raw=state.raw)


@cli.command(name="import")
@click.argument("collection")
@click.argument("path", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--format", "fmt", type=click.Choice(["jsonl", "json", "csv"]), help="default: from the extension")
@click.pass_obj
@handled
def import_(state: State, collection: str, path: str, fmt: str | None) -> None:
    """Insert the documents of PATH (JSON lines, a JSON array or CSV with a header) into COLLECTION."""
    from oxidb.cli.transfer import guess_format, import_docs, read_docs

    with progress_bar(state) as progress:
        count = import_docs(state.client, collection, read_docs(path, guess_format(path, fmt)), progress=progress)
    show(state.console, {"imported": count}, raw=state.raw)


@cli.command(name="export")
@click.argument("collection")
@click.argument("path", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--format", "fmt", type=click.Choice(["jsonl", "json", "csv"]), help="default: from the extension")
@click.option("--query", default="{}", help="a filter (JSON)")
@click.option("--fields", help="comma-separated fields (CSV columns)")
@click.pass_obj
@handled
def export(state: State, collection: str, path: str, fmt: str | None, query: str, fields: str | None) -> None:
    """Write COLLECTION's documents to PATH ('-' for stdout)."""
    from oxidb.cli.transfer import export_docs, guess_format

    try:
        filter_ = json.loads(query)
    except ValueError:
        raise ParseError("--query is not JSON") from None
    columns = [f for f in fields.split(",") if f] if fields else None
    count = export_docs(state.client, collection, path, guess_format(path, fmt), query=filter_, fields=columns)
    if path != "-":
        show(state.console, {"exported": count}, raw=state.raw)


# -- users ----------------------------------------------------------------------


def _new_password(password: str | None) -> str:
    if password is not None:
        return password
    if not sys.stdin.isatty():
        line = sys.stdin.readline().rstrip("\r\n")
        if not line:
            raise ParseError("no password given (--password, or a line on stdin)")
        return line
    first = getpass.getpass("new password: ")
    if first != getpass.getpass("again: "):
        raise ParseError("the passwords differ")
    return first


@cli.group()
def user() -> None:
    """Users and roles (the server must run with OXIDB_AUTH)."""


@user.command(name="add")
@click.argument("name")
@click.option("--role", type=click.Choice(["read", "readWrite", "admin"]), default="read", show_default=True)
@click.option("--password", "new_password", help="the password (default: prompted, or read from stdin)")
@click.pass_obj
@handled
def user_add(state: State, name: str, role: str, new_password: str | None) -> None:
    """Create user NAME."""
    password = _new_password(new_password)
    show(state.console, state.client.command("create_user", username=name, password=password, role=role))


@user.command(name="list")
@click.pass_obj
@handled
def user_list(state: State) -> None:
    """The users and their roles."""
    show(state.console, state.client.command("list_users"), raw=state.raw)


@user.command(name="passwd")
@click.argument("name")
@click.option("--password", "new_password", help="the new password (default: prompted, or read from stdin)")
@click.option("--role", type=click.Choice(["read", "readWrite", "admin"]), help="also change the role")
@click.pass_obj
@handled
def user_passwd(state: State, name: str, new_password: str | None, role: str | None) -> None:
    """Change NAME's password (and role)."""
    fields: dict[str, Any] = {"username": name, "password": _new_password(new_password)}
    if role is not None:
        fields["role"] = role
    show(state.console, state.client.command("update_user", **fields))


@user.command(name="drop")
@click.argument("name")
@click.pass_obj
@handled
def user_drop(state: State, name: str) -> None:
    """Delete user NAME (never the last admin)."""
    show(state.console, state.client.command("drop_user", username=name))


# -- cluster --------------------------------------------------------------------


def _wait(check: Callable[[], Any], what: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except ServerError:
            value = None
        if value:
            return value
        if time.monotonic() >= deadline:
            raise ConnectionFailed(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.1)


def _member_spec(text: str) -> tuple[int, str]:
    node_id, sep, addr = text.partition("=")
    if not sep or not node_id.isdigit() or not addr:
        raise ParseError(f"--node {text!r}: expected ID=RAFT_HOST:PORT")
    return int(node_id), addr


def _voters(status: dict[str, Any]) -> list[int] | None:
    """The voters of a settled configuration (None while a change is in its joint phase)."""
    if status.get("joint"):
        return None
    return sorted(int(m["id"]) for m in status.get("members", []) if m.get("role") == "voter")


@cli.group()
def cluster() -> None:
    """Cluster bootstrap and membership (talks to the node in --url)."""


@cluster.command(name="init")
@click.option("--node", "nodes", multiple=True, help="another member: ID=RAFT_HOST:PORT (repeat)")
@click.option("--timeout", "wait_timeout", type=float, default=30.0, show_default=True, help="seconds per step")
@click.pass_obj
@handled
def cluster_init(state: State, nodes: tuple[str, ...], wait_timeout: float) -> None:
    """
    Bootstrap a cluster: raft_init on this node, each --node added as a
    learner (waiting for it to catch up), then all made voters.
    """
    members = [_member_spec(n) for n in nodes]
    client = state.client
    client.command("raft_init")
    me = _wait(lambda: (m := client.command("raft_status"))["state"] == "Leader" and m, "leadership", wait_timeout)
    for node_id, addr in members:
        state.err.print(f"adding node {node_id} at {addr}")
        client.command("raft_add_learner", node_id=node_id, addr=addr)
    ids = sorted({int(me["id"]), *(node_id for node_id, _ in members)})
    if members:
        client.command("raft_change_membership", members=ids)
    _wait(lambda: _voters(client.command("raft_status")) == ids, f"voters {ids}", wait_timeout)
    show(state.console, client.command("raft_status"), raw=state.raw)


@cluster.command(name="status")
@click.pass_obj
@handled
def cluster_status(state: State) -> None:
    """This node's view of the cluster."""
    status = state.client.command("raft_status")
    if state.raw or not isinstance(status, dict) or "text" not in status:
        show(state.console, status, raw=state.raw)
    else:
        state.console.print(status["text"], markup=False, highlight=False)


@cluster.command(name="add")
@click.argument("node_id", type=int)
@click.argument("addr")
@click.option("--learner", is_flag=True, help="leave it a learner (default: make it a voter)")
@click.pass_obj
@handled
def cluster_add(state: State, node_id: int, addr: str, learner: bool) -> None:
    """Add node NODE_ID (Raft address ADDR) to the cluster."""
    client = state.client
    client.command("raft_add_learner", node_id=node_id, addr=addr)
    if not learner:
        voters = _voters(client.command("raft_status")) or []
        client.command("raft_change_membership", members=sorted({*voters, node_id}))
    show(state.console, client.command("raft_status"), raw=state.raw)


@cluster.command(name="remove")
@click.argument("node_id", type=int)
@click.pass_obj
@handled
def cluster_remove(state: State, node_id: int) -> None:
    """Remove node NODE_ID from the cluster."""
    show(state.console, state.client.command("raft_remove_node", node_id=node_id), raw=state.raw)


@cluster.command(name="transfer-leader")
@click.argument("node_id", type=int)
@click.pass_obj
@handled
def cluster_transfer(state: State, node_id: int) -> None:
    """Hand leadership to voter NODE_ID."""
    show(state.console, state.client.command("raft_transfer_leader", node_id=node_id), raw=state.raw)


# -- offline administration -------------------------------------------------------


@cli.group()
def admin() -> None:
    """Offline administration of a data directory (the server must be stopped)."""


@admin.command(name="reset-password")
@click.option("--data", "data_dir", required=True, type=click.Path(file_okay=False), help="the data directory")
@click.option("--password", "new_password", help="the new password (default: generated and printed)")
def admin_reset_password(data_dir: str, new_password: str | None) -> None:
    """Set the admin user's password in a stopped server's data directory."""
    from oxidb.errors import ConfigError

    try:
        from oxidb.auth.reset import reset_admin_password  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        fail("this build has no offline password reset (oxidb.auth.reset)", EXIT_USAGE)
    try:
        password = reset_admin_password(data_dir, new_password)
    except ConfigError as e:
        fail(str(e), EXIT_USAGE)
    if new_password is None:
        click.echo(f"admin password: {password}")
    else:
        click.echo("admin password changed")


def main() -> None:
    cli(prog_name="oxidb-cli")


if __name__ == "__main__":
    main()
