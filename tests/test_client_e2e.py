"""
The client and oxidb-cli end to end: one real server with auth and TLS on
(a certificate for 127.0.0.1 from a throwaway CA), driven by the blocking
client over verified TLS, the CLI in process (one-shot, shell, dump and
restore) and the installed console script once.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prompt_toolkit.application import create_app_session
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput
from rich.console import Console

from oxidb._harness import ServerProcess
from oxidb.cli import main
from oxidb.cli.shell import Shell
from oxidb.client import AuthenticationFailed, Client, ConnectionFailed, PermissionDenied
from oxidb.client.blocking import tcp_connector
from oxidb.client.core import InsertStreamResult
from oxidb.client.errors import InsertStreamFailed, UniqueViolation
from oxidb.client.twisted import TwistedClient
from oxidb.client.url import ConnectOptions


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def make_pki(root: Path) -> tuple[str, str, str, str]:
    """A CA, a server certificate for 127.0.0.1 and localhost signed by it, and an unrelated CA."""
    now = datetime.datetime.now(datetime.UTC)
    pem = serialization.Encoding.PEM

    def ca(name: str) -> tuple[Any, Any]:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        cert = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )  # fmt: skip
        return key, cert

    ca_key, ca_cert = ca("test CA")
    _, other_cert = ca("other CA")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "oxidb test server")]))
        .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return (
        _write(root / "ca.pem", ca_cert.public_bytes(pem)),
        _write(root / "server.pem", cert.public_bytes(pem)),
        _write(root / "server.key", key_pem),
        _write(root / "other-ca.pem", other_cert.public_bytes(pem)),
    )


def admin_password(process: ServerProcess) -> str:
    """The generated first admin password: from the stderr banner, or from the file the server writes it to."""
    match = re.search(r"^  password: (\S+)$", process.stderr(), re.M)
    if match:
        return match.group(1)
    with open(os.path.join(process.data_dir, "initial-admin-password"), encoding="utf-8") as f:
        text = f.read()
    found = re.search(r"password: (\S+)", text)
    return found.group(1) if found else text.strip()


class Secured:
    def __init__(self, process: ServerProcess, ca: str, other_ca: str, password: str, root: Path) -> None:
        self.process, self.ca, self.other_ca, self.password, self.root = process, ca, other_ca, password, root
        self.url = f"oxidb://127.0.0.1:{process.port}/app?ca={ca}"
        self.password_file = _write(root / "admin-password", password.encode() + b"\n")

    def options(self, **changes: Any) -> ConnectOptions:
        base = ConnectOptions(seeds=(("127.0.0.1", self.process.port or 0),), user="admin", password=self.password,
                              tls=True, ca=self.ca, database="app", retries=0)  # fmt: skip
        return base.with_changes(**changes)

    def cli(self, *args: str) -> Any:
        base = ["--url", self.url, "-u", "admin", "--password-file", self.password_file]
        return CliRunner().invoke(main.cli, [*base, *args], catch_exceptions=False)


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    root = tmp_path_factory.mktemp("client-e2e")
    ca, cert, key, other_ca = make_pki(root)
    process = ServerProcess(
        str(root / "data"),
        env={"OXIDB_AUTH": "true", "OXIDB_TLS_CERT": cert, "OXIDB_TLS_KEY": key, "OXIDB_AUTH_DELAY_MS": "1",
             "OXIDB_AUTH_MAX_DELAY_MS": "5"},
    ).start()  # fmt: skip
    try:
        secured = Secured(process, ca, other_ca, admin_password(process), root)
        # The URLs below name database `app`, which the clients switch to.
        with Client(secured.options(database="oxidb")) as setup:
            setup.create_database("app")
        yield secured
    finally:
        if process.process.poll() is None:
            assert process.stop() == 0


def test_client_over_verified_tls(secured: Secured) -> None:
    opened: list[Any] = []

    def counting(host: str, port: int, options: ConnectOptions) -> Any:
        opened.append(tcp_connector(host, port, options))
        return opened[-1]

    with Client(secured.options(), connector=counting) as client:
        assert client.insert_many("people", [{"name": n, "age": a} for n, a in [("ann", 41), ("bob", 25)]]) == [1, 2]
        with client.transaction():
            client.insert("people", {"name": "cy", "age": 33})
        assert [d["name"] for d in client.iter_find("people", {"age": {"$gt": 30}}, page_size=1)] == ["ann", "cy"]
        client.command("create_user", username="reader", password="pw-reader-1", role="read")
        assert len(opened) == 1  # one TLS connection for all of it (session tickets are not mistaken for a close)
    with Client(secured.options(user="reader", password="pw-reader-1", format="oxiwire")) as reader:
        assert reader.count("people") == {"count": 3}
        with pytest.raises(PermissionDenied):
            reader.insert("people", {})
    with pytest.raises(AuthenticationFailed):
        Client(secured.options(password="wrong")).connect()
    # Verification: another CA, or a name the certificate does not carry, fails before any login.
    with pytest.raises(ConnectionFailed, match="CERTIFICATE_VERIFY_FAILED"):
        Client(secured.options(ca=secured.other_ca)).connect()
    with pytest.raises(ConnectionFailed, match="CERTIFICATE_VERIFY_FAILED"):
        Client(secured.options(server_name="db.example.com")).connect()
    with pytest.raises(ConnectionFailed):
        Client(secured.options(tls=False)).connect()


def test_insert_stream_over_verified_tls(secured: Secured) -> None:
    """Batches above the server's offload size, three in flight: decoded ahead on the pool, answered in order."""
    docs = ({"n": i, **{f"f{j}": f"value-{i}-{j}" for j in range(12)}} for i in range(3000))
    ids: list[int] = []
    with Client(secured.options()) as client:
        client.create_unique_index("stream", "n")
        result = client.insert_stream(
            "stream", docs, batch_size=300, in_flight=3, on_batch=lambda outcome: ids.extend(outcome.ids or [])
        )
        assert result == InsertStreamResult(3000, 10)
        assert ids == list(range(1, 3001))
        # A duplicate in the fourth batch: three batches landed, the fourth did not; the stream stopped.
        again = [{"n": 5000 + i} for i in range(3000)]
        again[1000] = {"n": 7}
        with pytest.raises(InsertStreamFailed, match=r"documents 900\.\.1199 did not land") as info:
            client.insert_stream("stream", again, batch_size=300, in_flight=3)
        error = info.value
        assert error.inserted == 900 and isinstance(error.outcomes[0].error, UniqueViolation)
        landed_after = sum(o.count for o in error.outcomes if o.landed)
        assert error.resume_at == 1200 + 300 * (len(error.outcomes) - 1)  # the batches already in flight
        # The connection stays in step.
        assert client.count("stream") == {"count": 3000 + 900 + landed_after}


def test_cli_one_shot_shell_dump_restore(secured: Secured, tmp_path: Path) -> None:
    cities = '[{"n":"Oslo","pop":700},{"n":"Bergen","pop":290}]'
    assert secured.cli("--json", "insert_many", "cities", cities).exit_code == 0
    found = secured.cli("--json", "find", "cities", '{"pop":{"$gt":500}}')
    assert [d["n"] for d in json.loads(found.output)] == ["Oslo"]
    denied = secured.cli("--ca", secured.other_ca, "ping")
    assert denied.exit_code == 3 and denied.output.startswith("error: cannot connect")

    client = Client(secured.options())
    console = Console(record=True, width=120)
    with create_pipe_input() as pipe, create_app_session(input=pipe, output=DummyOutput()):
        pipe.send_text('count cities {"pop": {"$lt": 500}}\nexit\n')
        Shell(client, console, history="").run()
    assert '"count": 1' in console.export_text()
    assert Shell(client, console, history="").prompt_text() == f"admin@127.0.0.1:{secured.process.port}/app> "

    before = {name: client.find(name) for name in client.list_collections()}
    assert secured.cli("dump", str(tmp_path / "all.gz"), "--users").exit_code == 0
    client.delete("cities", {})
    assert secured.cli("restore", str(tmp_path / "all.gz"), "--drop").exit_code == 0
    after = {name: client.find(name) for name in client.list_collections()}
    strip = lambda docs: [{k: v for k, v in d.items() if k != "_version"} for d in docs]  # noqa: E731
    assert {k: strip(v) for k, v in after.items()} == {k: strip(v) for k, v in before.items()}
    client.close()


def test_console_script(secured: Secured) -> None:
    with Client(secured.options()) as client:
        client.insert_many("script", [{"a": 1}, {"a": 2}])
    script = os.path.join(os.path.dirname(sys.executable), "oxidb-cli")
    env = {**os.environ, "OXIDB_URL": secured.url, "OXIDB_USER": "admin", "OXIDB_PASSWORD": secured.password}
    done = subprocess.run([script, "--json", "count", "script"], env=env, capture_output=True, text=True, timeout=60)
    assert (done.returncode, json.loads(done.stdout)) == (0, {"count": 2}), done.stderr
    bad = subprocess.run([script, "find", "people", "{oops"], env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and bad.stderr.startswith("error: invalid JSON")


@pytest_twisted.ensureDeferred
async def test_twisted_client_over_verified_tls(secured: Secured) -> None:
    from twisted.internet import reactor

    client = TwistedClient(secured.options(format="oxiwire"), reactor=reactor)
    try:
        await client.insert_many("twisted", [{"n": n} for n in range(5)])
        async with client.transaction():
            await client.insert("twisted", {"n": 5})
        assert [d["n"] async for d in client.iter_find("twisted", {"n": {"$gte": 2}}, page_size=2)] == [2, 3, 4, 5]
        streamed = await client.insert_stream("twisted", ({"n": n} for n in range(6, 506)), batch_size=100)
        assert streamed == InsertStreamResult(500, 5)
        assert await client.count("twisted") == {"count": 506}
    finally:
        client.close()
    with pytest.raises(ConnectionFailed):
        await TwistedClient(secured.options(ca=secured.other_ca), reactor=reactor).ping()
    with pytest.raises(AuthenticationFailed):
        await TwistedClient(secured.options(password="wrong"), reactor=reactor).ping()
