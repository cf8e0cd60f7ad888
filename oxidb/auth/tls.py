"""
TLS for the client port from C{OXIDB_TLS_CERT} and C{OXIDB_TLS_KEY}.

Unlike upstream, a misconfiguration fails startup loudly: one of the two
variables without the other, an unreadable file, PEM that does not parse, an
encrypted key, or a key that does not belong to the certificate each raise
L{ConfigError} naming the problem and the path. TLS 1.2 and 1.3 only, ciphers
with forward secrecy and AEAD only, no client certificates (server.md 6).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import attrs
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from OpenSSL import crypto
from twisted.internet.ssl import AcceptableCiphers, CertificateOptions, TLSVersion

from oxidb.errors import ConfigError

#: TLS 1.2 suites (TLS 1.3 suites are all acceptable and set by OpenSSL).
CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL:!MD5:!DSS"


@attrs.frozen
class TlsPaths:
    cert: Path
    key: Path


def parse_tls_settings(
    environ: Mapping[str, str], cert_var: str = "OXIDB_TLS_CERT", key_var: str = "OXIDB_TLS_KEY"
) -> TlsPaths | None:
    """
    The certificate and key paths, or None when neither is set (the client
    port's variables unless others are named: the metrics port has its own).

    @raise ConfigError: only one of the two is set.
    """
    cert = environ.get(cert_var, "")
    key = environ.get(key_var, "")
    if not cert and not key:
        return None
    if not cert or not key:
        present, missing = (cert_var, key_var) if cert else (key_var, cert_var)
        raise ConfigError(
            f"failed to load TLS config: {present} is set but {missing} is not; set both to enable TLS "
            "or neither to serve plaintext"
        )
    return TlsPaths(Path(cert), Path(key))


def load_server_tls(cert_path: Path | str, key_path: Path | str) -> CertificateOptions:
    """
    Server TLS options from a PEM certificate chain (leaf first) and a PEM
    private key (PKCS#8, PKCS#1 RSA or SEC1 EC, unencrypted). Blocking file
    reads: startup only.

    @raise ConfigError: see the module docstring.
    """
    cert_path, key_path = Path(cert_path), Path(key_path)
    cert_data = _read(cert_path, "cert")
    key_data = _read(key_path, "key")
    try:
        chain = x509.load_pem_x509_certificates(cert_data)
    except ValueError as e:
        if b"-----BEGIN CERTIFICATE-----" not in cert_data:
            raise ConfigError(f"failed to load TLS config: no certificates found in cert file {cert_path}") from None
        raise ConfigError(f"failed to load TLS config: failed to parse certificates in {cert_path}: {e}") from None
    try:
        key = serialization.load_pem_private_key(key_data, password=None)
    except TypeError:
        raise ConfigError(
            f"failed to load TLS config: the private key in {key_path} is encrypted; give an unencrypted key"
        ) from None
    except (ValueError, UnsupportedAlgorithm) as e:
        if b"PRIVATE KEY-----" not in key_data:
            raise ConfigError(f"failed to load TLS config: no private key found in key file {key_path}") from None
        raise ConfigError(f"failed to load TLS config: failed to parse private key in {key_path}: {e}") from None
    leaf = chain[0]
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if leaf.public_key().public_bytes(der, spki) != key.public_key().public_bytes(der, spki):
        raise ConfigError(
            f"failed to load TLS config: the private key in {key_path} does not match the certificate in {cert_path}"
        )
    try:
        return CertificateOptions(
            # A PEM private key of any algorithm; pyOpenSSL refuses the ones it cannot use.
            privateKey=crypto.PKey.from_cryptography_key(key),  # type: ignore[arg-type]
            certificate=crypto.X509.from_cryptography(leaf),
            extraCertChain=[crypto.X509.from_cryptography(c) for c in chain[1:]],
            verify=False,
            raiseMinimumTo=TLSVersion.TLSv1_2,
            acceptableCiphers=AcceptableCiphers.fromOpenSSLCipherString(CIPHERS),
        )
    except Exception as e:
        raise ConfigError(f"failed to load TLS config: TLS config error for {cert_path}: {e}") from None


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ConfigError(f"failed to load TLS config: failed to open {what} file {path}: {e.strerror}") from None
