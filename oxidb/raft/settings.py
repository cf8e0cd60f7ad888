"""
Cluster settings, checked together at startup: how peers authenticate, the
loopback rule, the Raft timings and the address this node publishes.

Cluster mode never runs without peer authentication: it needs a cluster key
(L{oxidb.config.parse_cluster_key} checks its strength) or mutual TLS, on
every address including loopback (any local process could otherwise join).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import attrs
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from OpenSSL import crypto
from twisted.internet.ssl import AcceptableCiphers, CertificateOptions, TLSVersion

from oxidb.auth.tls import CIPHERS
from oxidb.config import MIN_CLUSTER_KEY, Address, Config, format_address
from oxidb.errors import ConfigError
from oxidb.raft.auth import ClusterKeyAuthenticator, IPeerAuthenticator, TransportTrust
from oxidb.raft.core import RaftConfig

_TLS_VARS = ("OXIDB_RAFT_TLS_CERT", "OXIDB_RAFT_TLS_KEY", "OXIDB_RAFT_TLS_CA")


@attrs.frozen
class ClusterSettings:
    """
    @ivar authenticator: how peers prove themselves in the handshake.
    @ivar tls: mutual TLS options for both directions, or C{None}.
    @ivar raft: the core's configuration.
    """

    node_id: int
    listen: Address
    advertise: Address | None
    peers: dict[int, str]
    authenticator: IPeerAuthenticator
    tls: Any
    raft: RaftConfig
    forward_writes: bool

    @classmethod
    def from_config(cls, config: Config) -> ClusterSettings:
        """@raise ConfigError: the cluster settings are inconsistent or unsafe."""
        assert config.node_id is not None
        tls_paths = (config.raft_tls_cert, config.raft_tls_key, config.raft_tls_ca)
        given = [name for name, value in zip(_TLS_VARS, tls_paths, strict=True) if value]
        if given and len(given) != len(_TLS_VARS):
            missing = [name for name in _TLS_VARS if name not in given]
            raise ConfigError(
                f"mutual TLS on the Raft port needs {', '.join(_TLS_VARS)}; "
                f"{', '.join(given)} set but {', '.join(missing)} not"
            )
        # given is all three paths or none (checked above).
        tls = load_peer_tls(*tls_paths) if given else None  # type: ignore[arg-type]
        if config.cluster_key is None and tls is None:
            raise ConfigError(
                f"cluster mode needs peer authentication on the Raft port "
                f"(OXIDB_RAFT_ADDR={format_address(config.raft_addr)}), also on loopback: set OXIDB_CLUSTER_KEY "
                f"(the same secret of {MIN_CLUSTER_KEY}+ characters on every node, e.g. 'openssl rand -base64 32') "
                "or mutual TLS (OXIDB_RAFT_TLS_CERT, OXIDB_RAFT_TLS_KEY and OXIDB_RAFT_TLS_CA)"
            )
        low, high = config.raft_election_ms
        try:
            raft = RaftConfig(
                heartbeat_interval=config.raft_heartbeat_ms,
                election_timeout_min=low,
                election_timeout_max=high,
                snapshot_threshold=config.raft_snapshot_logs,
                keep_after_snapshot=config.raft_keep_logs,
            )
        except ValueError as e:
            raise ConfigError(
                f"OXIDB_RAFT_HEARTBEAT_MS={config.raft_heartbeat_ms}, OXIDB_RAFT_ELECTION_MS={low}-{high}: {e}"
            ) from None
        # With both, the key is proved inside the TLS connection too.
        authenticator: IPeerAuthenticator = (
            TransportTrust()
            if config.cluster_key is None
            else ClusterKeyAuthenticator(config.cluster_key.value.encode("utf-8"))
        )
        return cls(
            node_id=config.node_id,
            listen=config.raft_addr,
            advertise=config.raft_advertise,
            peers={node: format_address(addr) for node, addr in (config.raft_peers or {}).items()},
            authenticator=authenticator,
            tls=tls,
            raft=raft,
            forward_writes=config.forward_writes,
        )

    def published_address(self, bound_port: int) -> str | None:
        """
        The Raft address peers should dial: C{OXIDB_RAFT_ADVERTISE}, else the
        listen address (with the port really bound), unless that is a
        wildcard address nobody can dial.
        """
        if self.advertise is not None:
            return format_address(self.advertise)
        host, _port = self.listen
        if ipaddress.ip_address(host).is_unspecified:
            return None
        return format_address((host, bound_port))


def load_peer_tls(cert_path: str, key_path: str, ca_path: str) -> CertificateOptions:
    """
    Mutual TLS options for the Raft port, used by both sides of a connection:
    this node's certificate and key, and the CA that must have signed the
    peer's certificate (a certificate is always required). Blocking reads:
    startup only.

    @raise ConfigError: a file is unreadable, not PEM, or the key does not
        match the certificate.
    """
    cert_data, key_data, ca_data = (
        _read(Path(p), v) for p, v in zip((cert_path, key_path, ca_path), _TLS_VARS, strict=True)
    )
    try:
        chain = x509.load_pem_x509_certificates(cert_data)
        authorities = x509.load_pem_x509_certificates(ca_data)
    except ValueError as e:
        raise ConfigError(f"raft TLS: cannot parse certificates ({cert_path}, {ca_path}): {e}") from None
    try:
        key = serialization.load_pem_private_key(key_data, password=None)
    except (TypeError, ValueError, UnsupportedAlgorithm) as e:
        raise ConfigError(f"raft TLS: cannot load the private key {key_path} (unencrypted PEM expected): {e}") from None
    spki, der = serialization.PublicFormat.SubjectPublicKeyInfo, serialization.Encoding.DER
    if chain[0].public_key().public_bytes(der, spki) != key.public_key().public_bytes(der, spki):
        raise ConfigError(f"raft TLS: the private key in {key_path} does not match the certificate in {cert_path}")
    # pyOpenSSL takes cryptography keys and certificates; Twisted's hints name only PKey/X509.
    return CertificateOptions(
        privateKey=key,  # type: ignore[arg-type]
        certificate=chain[0],  # type: ignore[arg-type]
        extraCertChain=chain[1:],  # type: ignore[arg-type]
        verify=True,
        caCerts=[crypto.X509.from_cryptography(c) for c in authorities],
        requireCertificate=True,
        raiseMinimumTo=TLSVersion.TLSv1_2,
        acceptableCiphers=AcceptableCiphers.fromOpenSSLCipherString(CIPHERS),
    )


def _read(path: Path, variable: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{variable}={str(path)!r}: cannot read the file: {e.strerror}") from None
