"""
Server TLS (oxidb.auth.tls): throwaway certificates made with cryptography,
loud failures for every misconfiguration, and in-memory handshakes.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from OpenSSL import SSL

from oxidb.auth.tls import TlsPaths, load_server_tls, parse_tls_settings
from oxidb.errors import ConfigError

NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def make_cert(
    name: str, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, issuer: x509.Certificate | None, signer: object
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(issuer.subject if issuer else x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=1))
        .not_valid_after(NOW + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    return builder.sign(signer, hashes.SHA256())  # type: ignore[arg-type]


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(
    key: object, fmt: serialization.PrivateFormat = serialization.PrivateFormat.PKCS8, password: bytes | None = None
) -> bytes:
    encryption = (
        serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, fmt, encryption)  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def pki() -> dict[str, object]:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = make_cert("test ca", ca_key, None, ca_key)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = make_cert("localhost", leaf_key, ca, ca_key)
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_cert = make_cert("rsa", rsa_key, None, rsa_key)
    return {"ca": ca, "leaf": leaf, "leaf_key": leaf_key, "rsa_key": rsa_key, "rsa_cert": rsa_cert}


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def handshake(server: SSL.Context, client: SSL.Context) -> SSL.Connection:
    """Run a TLS handshake through memory BIOs; return the client side."""
    s, c = SSL.Connection(server, None), SSL.Connection(client, None)
    s.set_accept_state()
    c.set_connect_state()
    for _ in range(20):
        for conn in (c, s):
            try:
                conn.do_handshake()
            except SSL.WantReadError:
                pass
        moved = False
        for src, dst in ((c, s), (s, c)):
            try:
                data = src.bio_read(65536)
            except SSL.WantReadError:
                continue
            dst.bio_write(data)
            moved = True
        if not moved:
            return c
    return c


def client_context(max_version: int | None = None) -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_METHOD)
    if max_version is not None:
        ctx.set_min_proto_version(0)
        ctx.set_max_proto_version(max_version)
    return ctx


def test_settings() -> None:
    assert parse_tls_settings({}) is None
    assert parse_tls_settings({"OXIDB_TLS_CERT": "", "OXIDB_TLS_KEY": ""}) is None
    assert parse_tls_settings({"OXIDB_TLS_CERT": "c.pem", "OXIDB_TLS_KEY": "k.pem"}) == TlsPaths(
        Path("c.pem"), Path("k.pem")
    )


@pytest.mark.parametrize("present, missing", [("OXIDB_TLS_CERT", "OXIDB_TLS_KEY"), ("OXIDB_TLS_KEY", "OXIDB_TLS_CERT")])
def test_one_without_the_other_is_an_error(present: str, missing: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_tls_settings({present: "/x.pem"})
    assert f"{present} is set but {missing} is not" in str(e.value)


def test_chain_loads_and_handshakes(tmp_path: Path, pki: dict[str, object]) -> None:
    cert = write(tmp_path, "chain.pem", pem(pki["leaf"]) + pem(pki["ca"]))  # type: ignore[arg-type]
    key = write(tmp_path, "key.pem", key_pem(pki["leaf_key"], serialization.PrivateFormat.TraditionalOpenSSL))
    options = load_server_tls(cert, key)
    client = handshake(options.getContext(), client_context())
    chain = client.get_peer_cert_chain()
    assert chain is not None and len(chain) == 2
    assert client.get_protocol_version_name() in ("TLSv1.2", "TLSv1.3")
    assert client.get_peer_certificate() is not None


def test_tls12_works_and_older_is_refused(tmp_path: Path, pki: dict[str, object]) -> None:
    cert = write(tmp_path, "rsa.pem", pem(pki["rsa_cert"]))  # type: ignore[arg-type]
    key = write(tmp_path, "rsa.key", key_pem(pki["rsa_key"]))
    server = load_server_tls(cert, key).getContext()
    ok = handshake(server, client_context(SSL.TLS1_2_VERSION))
    assert ok.get_protocol_version_name() == "TLSv1.2"
    cipher = ok.get_cipher_name() or ""
    assert "GCM" in cipher or "CHACHA" in cipher, cipher
    with pytest.raises(SSL.Error):
        handshake(server, client_context(SSL.TLS1_1_VERSION))


def test_no_client_certificate_is_requested(tmp_path: Path, pki: dict[str, object]) -> None:
    cert = write(tmp_path, "rsa.pem", pem(pki["rsa_cert"]))  # type: ignore[arg-type]
    key = write(tmp_path, "rsa.key", key_pem(pki["rsa_key"]))
    assert load_server_tls(cert, key).getContext().get_verify_mode() == SSL.VERIFY_NONE


def test_missing_files(tmp_path: Path, pki: dict[str, object]) -> None:
    key = write(tmp_path, "rsa.key", key_pem(pki["rsa_key"]))
    cert = write(tmp_path, "rsa.pem", pem(pki["rsa_cert"]))  # type: ignore[arg-type]
    with pytest.raises(ConfigError) as e:
        load_server_tls(tmp_path / "nope.pem", key)
    assert (
        str(e.value)
        == f"failed to load TLS config: failed to open cert file {tmp_path / 'nope.pem'}: No such file or directory"
    )
    with pytest.raises(ConfigError, match="failed to open key file .*nope.key"):
        load_server_tls(cert, tmp_path / "nope.key")


@pytest.mark.parametrize(
    "cert_data, message",
    [
        (b"", "no certificates found in cert file"),
        (b"just text\n", "no certificates found in cert file"),
        (b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n", "failed to parse certificates in"),
    ],
)
def test_bad_certificate(tmp_path: Path, pki: dict[str, object], cert_data: bytes, message: str) -> None:
    cert = write(tmp_path, "cert.pem", cert_data)
    key = write(tmp_path, "rsa.key", key_pem(pki["rsa_key"]))
    with pytest.raises(ConfigError, match=message) as e:
        load_server_tls(cert, key)
    assert str(cert) in str(e.value)


@pytest.mark.parametrize(
    "key_data, message",
    [
        (b"", "no private key found in key file"),
        (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "failed to parse private key in"),
    ],
)
def test_bad_key(tmp_path: Path, pki: dict[str, object], key_data: bytes, message: str) -> None:
    cert = write(tmp_path, "rsa.pem", pem(pki["rsa_cert"]))  # type: ignore[arg-type]
    key = write(tmp_path, "key.pem", key_data)
    with pytest.raises(ConfigError, match=message) as e:
        load_server_tls(cert, key)
    assert str(key) in str(e.value)


def test_encrypted_key(tmp_path: Path, pki: dict[str, object]) -> None:
    cert = write(tmp_path, "rsa.pem", pem(pki["rsa_cert"]))  # type: ignore[arg-type]
    key = write(tmp_path, "rsa.key", key_pem(pki["rsa_key"], password=b"secret"))
    with pytest.raises(ConfigError, match="is encrypted"):
        load_server_tls(cert, key)


def test_key_that_does_not_match(tmp_path: Path, pki: dict[str, object]) -> None:
    cert = write(tmp_path, "rsa.pem", pem(pki["rsa_cert"]))  # type: ignore[arg-type]
    key = write(tmp_path, "other.key", key_pem(pki["leaf_key"]))
    with pytest.raises(ConfigError) as e:
        load_server_tls(cert, key)
    assert (
        str(e.value) == f"failed to load TLS config: the private key in {key} does not match the certificate in {cert}"
    )
