"""
Security end to end on a real process: the first-start admin banner, SCRAM
login, RBAC denials, the audit log, TLS on the client port.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import ssl
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from scramp import ScramClient

from oxidb._harness import BlockingClient, ServerProcess


def login(client: BlockingClient, user: str, password: str) -> dict[str, Any]:
    scram = ScramClient(["SCRAM-SHA-256"], user, password)
    first = client.request({"cmd": "authenticate", "payload": scram.get_client_first()})
    if not first["ok"]:
        return first
    scram.set_server_first(first["data"]["payload"])
    final = client.request({"cmd": "authenticate_continue", "payload": scram.get_client_final()})
    if final["ok"]:
        scram.set_server_final(final["data"]["payload"])  # verifies the server signature
    return final


@pytest.fixture
def secured(tmp_path: Any) -> Any:
    process = ServerProcess(
        str(tmp_path / "data"),
        env={"OXIDB_AUTH": "true", "OXIDB_AUDIT": "1", "OXIDB_AUTH_DELAY_MS": "1", "OXIDB_AUTH_MAX_DELAY_MS": "5"},
    ).start()
    yield process
    if process.process.poll() is None:
        process.kill()


def admin_password(process: ServerProcess) -> str:
    """The generated first admin password: in its 0600 file, never on stderr (not a terminal here) or in the log."""
    password = Path(process.data_dir, "initial-admin-password").read_text().strip()
    assert password not in process.stderr() and password not in process.log()
    return password


def test_login_roles_and_audit(secured: ServerProcess) -> None:
    password = admin_password(secured)
    assert len(password) == 32
    client = secured.client()
    assert client.request({"cmd": "ping"}) == {"ok": True, "data": "pong"}
    assert client.request({"cmd": "find", "collection": "c"}) == {"ok": False, "error": "authentication required"}
    assert login(client, "admin", "wrong")["error"] == "authentication failed"
    assert login(client, "nobody", "wrong")["error"] == "authentication failed"
    assert login(client, "admin", password)["data"]["done"] is True
    assert client.request({"cmd": "insert", "collection": "c", "doc": {"a": 1}}) == {"ok": True, "data": {"id": 1}}
    assert client.request({"cmd": "create_user", "username": "reader", "password": "s3cret-reader", "role": "read"})[
        "ok"
    ]

    reader = secured.client()
    assert login(reader, "reader", "s3cret-reader")["ok"]
    assert reader.request({"cmd": "count", "collection": "c"}) == {"ok": True, "data": {"count": 1}}
    assert reader.request({"cmd": "insert", "collection": "c", "doc": {}}) == {
        "ok": False,
        "error": "permission denied: role 'read' cannot execute 'insert'",
    }
    reader.close()
    client.close()
    assert secured.stop() == 0

    audit_path = os.path.join(secured.data_dir, "_audit", "audit.log")
    with open(audit_path, encoding="utf-8") as f:
        lines = [json.loads(line) for line in f]
    assert any(line["user"] == "reader" and line["cmd"] == "insert" and line["result"] == "denied" for line in lines)
    assert any(line["cmd"] == "authenticate" and line["user"] == "admin" and line["result"] == "ok" for line in lines)
    assert any(line["user"] == "nobody" and line["result"] == "denied" for line in lines)
    assert any(line["cmd"] == "insert" and line["collection"] == "c" and line["result"] == "ok" for line in lines)
    for line in lines:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["ts"])
    # The generated password is shown once, on stderr, and nowhere else.
    with open(audit_path, encoding="utf-8") as f:
        assert password not in f.read()
    assert password not in secured.log()
    with open(os.path.join(secured.data_dir, "_auth", "users.json"), encoding="utf-8") as f:
        stored = f.read()
    assert password not in stored and "s3cret-reader" not in stored
    assert os.stat(os.path.join(secured.data_dir, "_auth", "users.json")).st_mode & 0o777 == 0o600


def self_signed(tmp_path: Any) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return cert_path, key_path


def test_tls_client_port(tmp_path: Any) -> None:
    cert, key = self_signed(tmp_path)
    process = ServerProcess(str(tmp_path / "data"), env={"OXIDB_TLS_CERT": cert, "OXIDB_TLS_KEY": key}).start()
    try:
        context = ssl.create_default_context(cafile=cert)
        context.check_hostname = False
        client = process.client(ssl_context=context)
        assert client.request({"cmd": "ping"}) == {"ok": True, "data": "pong"}
        assert client.sock.version() in ("TLSv1.2", "TLSv1.3")
        client.close()
        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.check_hostname = False
        old.verify_mode = ssl.CERT_NONE
        old.maximum_version = ssl.TLSVersion.TLSv1_1
        old.minimum_version = ssl.TLSVersion.TLSv1
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            process.client(ssl_context=old).request({"cmd": "ping"})
        assert "TLS: enabled" in process.log()
    finally:
        assert process.stop() == 0


def test_tls_half_configured_refuses_to_start(tmp_path: Any) -> None:
    cert, _ = self_signed(tmp_path)
    with pytest.raises(RuntimeError, match="OXIDB_TLS_CERT is set but OXIDB_TLS_KEY is not"):
        ServerProcess(str(tmp_path / "data"), env={"OXIDB_TLS_CERT": cert}).start()
