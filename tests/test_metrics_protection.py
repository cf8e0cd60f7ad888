"""
/metrics protection: no data names unless OXIDB_METRICS_NAMES, optional
HTTP basic authentication (constant-time check, /health and /ready stay
open), optional HTTPS on the metrics port; settings errors never show the
password.
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path
from typing import Any, cast

import pytest
import pytest_twisted
import treq
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import reactor as global_reactor
from twisted.internet import ssl
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool

from oxidb.config import Config
from oxidb.errors import ConfigError
from oxidb.metrics._settings import BasicCredentials
from oxidb.service import OxiService

reactor = cast(Any, global_reactor)
NOW = datetime.datetime.now(datetime.UTC)


def self_signed(directory: Path) -> tuple[Path, Path, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=1))
        .not_valid_after(NOW + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (directory / "cert.pem").write_bytes(cert_pem)
    (directory / "key.pem").write_bytes(key_pem)
    return directory / "cert.pem", directory / "key.pem", cert_pem


def test_credentials_check_both_parts() -> None:
    credentials = BasicCredentials("prom", b"s3cret")
    assert credentials.check(b"prom", b"s3cret")
    assert not credentials.check(b"prom", b"s3cre")
    assert not credentials.check(b"prom", b"s3cret\n")
    assert not credentials.check(b"root", b"s3cret")
    assert not credentials.check(b"", b"")
    assert "s3cret" not in repr(credentials)


def test_settings(tmp_path: Path) -> None:
    password = tmp_path / "pw"
    password.write_bytes(b"hunter2-secret\n")
    config = Config.from_sources(
        {"OXIDB_METRICS_USER": "prom", "OXIDB_METRICS_PASSWORD_FILE": str(password), "OXIDB_METRICS_NAMES": "true"}
    )
    assert config.metrics.names is True
    assert config.metrics.credentials == BasicCredentials("prom", b"hunter2-secret")
    assert "hunter2" not in repr(config)
    assert Config.from_sources({}).metrics.names is False
    assert Config.from_sources({}).metrics.credentials is None


@pytest.mark.parametrize(
    "env, message",
    [
        ({"OXIDB_METRICS_USER": "prom"}, "go together"),
        ({"OXIDB_METRICS_PASSWORD_FILE": "/x"}, "go together"),
        ({"OXIDB_METRICS_USER": "a:b", "OXIDB_METRICS_PASSWORD_FILE": "PW"}, "must not contain ':'"),
        ({"OXIDB_METRICS_USER": "p", "OXIDB_METRICS_PASSWORD_FILE": "/nonexistent/pw"}, "cannot read the file"),
        ({"OXIDB_METRICS_USER": "p", "OXIDB_METRICS_PASSWORD_FILE": "EMPTY"}, "holds no password"),
        ({"OXIDB_METRICS_TLS_CERT": "/c.pem"}, "OXIDB_METRICS_TLS_CERT is set but OXIDB_METRICS_TLS_KEY is not"),
        ({"OXIDB_METRICS_NAMES": "maybe"}, "OXIDB_METRICS_NAMES"),
    ],
)
def test_bad_settings(tmp_path: Path, env: dict[str, str], message: str) -> None:
    (tmp_path / "pw").write_bytes(b"hunter2-secret")
    (tmp_path / "empty").write_bytes(b"\n")
    env = {k: v.replace("PW", str(tmp_path / "pw")).replace("EMPTY", str(tmp_path / "empty")) for k, v in env.items()}
    with pytest.raises(ConfigError, match=message) as info:
        Config.from_sources(env)
    assert "hunter2" not in str(info.value)


@pytest_twisted.ensureDeferred
async def test_a_protected_metrics_port(tmp_path: Path) -> None:
    cert, key, cert_pem = self_signed(tmp_path)
    (tmp_path / "pw").write_bytes(b"scrape-pass\n")
    config = Config.from_sources(
        {
            "OXIDB_ADDR": "127.0.0.1:0",
            "OXIDB_DATA": str(tmp_path / "data"),
            "OXIDB_METRICS_ADDR": "127.0.0.1:0",
            "OXIDB_METRICS_USER": "prom",
            "OXIDB_METRICS_PASSWORD_FILE": str(tmp_path / "pw"),
            "OXIDB_METRICS_TLS_CERT": str(cert),
            "OXIDB_METRICS_TLS_KEY": str(key),
        }
    )
    service = OxiService(config, reactor)
    service.startService()
    pool = HTTPConnectionPool(reactor, persistent=False)
    policy = BrowserLikePolicyForHTTPS(trustRoot=ssl.Certificate.loadPEM(cert_pem))
    client = treq.client.HTTPClient(Agent(reactor, contextFactory=policy, pool=pool))
    try:
        assert service.shared.metrics.names is False  # OXIDB_METRICS_NAMES unset
        base = f"https://localhost:{service.metrics_port.getHost().port}"

        response = await client.get(base + "/metrics")
        assert response.code == 401
        assert response.headers.getRawHeaders(b"www-authenticate") == [b'Basic realm="oxidb metrics", charset="UTF-8"']
        assert b"oxidb_" not in await response.content()

        response = await client.get(base + "/metrics", auth=("prom", "wrong"))
        assert response.code == 401
        await response.content()

        response = await client.get(base + "/metrics", auth=("prom", "scrape-pass"))
        assert response.code == 200
        assert "oxidb_up 1.0" in await response.text()

        for path in ("/health", "/ready"):
            response = await client.get(base + path)
            assert response.code == 200, path
            await response.content()
    finally:
        await service.stopService()
        await pool.closeCachedConnections()


def test_the_service_passes_the_names_setting(tmp_path: Path) -> None:
    from oxidb.testing import MemoryServer

    shown = MemoryServer(Config.from_sources({"OXIDB_DATA": str(tmp_path / "a"), "OXIDB_METRICS_NAMES": "true"}))
    hidden = MemoryServer(Config.from_sources({"OXIDB_DATA": str(tmp_path / "b")}))
    assert shown.services.metrics.names is True
    assert hidden.services.metrics.names is False
