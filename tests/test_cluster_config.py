"""
Cluster settings and wiring: the loopback rule, cluster key and mutual TLS
settings, Raft timings, the published address, the raft_* commands only in
cluster mode, and mutual TLS between two real peer transports.
"""

from __future__ import annotations

import datetime
import random
from pathlib import Path
from typing import Any

import orjson
import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from oxidb.config import Config
from oxidb.errors import ConfigError
from oxidb.raft.auth import ClusterKeyAuthenticator, TransportTrust
from oxidb.raft.executor import ClusterExecutor, LinearizableDispatcher
from oxidb.raft.settings import ClusterSettings
from oxidb.raft.transport import PeerTransport
from oxidb.testing import MemoryServer

NOW = datetime.datetime.now(datetime.UTC)


#: A cluster key for tests: cluster mode always needs peer authentication.
TEST_KEY = "test cluster key: 32 characters or more"


def config(**env: str) -> Config:
    """A node's config; with the test cluster key unless C{env} sets mutual TLS (or a key)."""
    defaults = {} if "OXIDB_RAFT_TLS_CERT" in env else {"OXIDB_CLUSTER_KEY": TEST_KEY}
    return Config.from_sources({"OXIDB_NODE_ID": "1", **defaults, **env})


@pytest.mark.parametrize("addr", ["0.0.0.0:4445", "127.0.0.1:4445", "[::1]:4445"])
def test_cluster_mode_always_needs_peer_authentication(addr: str) -> None:
    bare = Config.from_sources({"OXIDB_NODE_ID": "1", "OXIDB_RAFT_ADDR": addr})
    with pytest.raises(ConfigError) as info:
        ClusterSettings.from_config(bare)
    message = str(info.value)
    assert (
        f"cluster mode needs peer authentication on the Raft port (OXIDB_RAFT_ADDR={addr}), also on loopback" in message
    )
    for name in ("OXIDB_CLUSTER_KEY", "OXIDB_RAFT_TLS_CERT", "OXIDB_RAFT_TLS_KEY", "OXIDB_RAFT_TLS_CA"):
        assert name in message
    settings = ClusterSettings.from_config(config(OXIDB_RAFT_ADDR=addr))
    assert settings.authenticator == ClusterKeyAuthenticator(TEST_KEY.encode())
    assert settings.tls is None


def test_a_server_without_peer_authentication_does_not_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cluster mode needs peer authentication"):
        MemoryServer(Config.from_sources({"OXIDB_NODE_ID": "1", "OXIDB_DATA": str(tmp_path)}))


@pytest.mark.parametrize(
    "key, message",
    [
        ("short", "must be at least 32 characters long"),
        ("sixteen-chars-ok", "must be at least 32 characters long"),
        ("k" * 64, "at least 8 different characters"),
        ("abcd" * 10, "at least 8 different characters"),
    ],
)
def test_weak_cluster_keys_are_refused_without_being_shown(key: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        config(OXIDB_CLUSTER_KEY=key)
    text = str(info.value)
    assert text.startswith("OXIDB_CLUSTER_KEY=<redacted> is invalid: ") and message in text
    assert key not in text
    with pytest.raises(ConfigError) as info:
        Config.from_sources({"OXIDB_NODE_ID": "1"}, {"cluster-key": key})
    assert str(info.value).startswith("--cluster-key=<redacted> is invalid") and key not in str(info.value)


def test_the_cluster_key_is_never_shown() -> None:
    cfg = config(OXIDB_CLUSTER_KEY="a very secret cluster key, 32+ characters")
    assert "a very secret" not in repr(cfg)
    assert "a very secret" not in repr(ClusterSettings.from_config(cfg))


def test_the_raft_port_limits_reach_the_transport(tmp_path: Path) -> None:
    server = MemoryServer(
        config(OXIDB_DATA=str(tmp_path), OXIDB_RAFT_HANDSHAKE_SECS="3", OXIDB_RAFT_INBOUND_PER_ADDRESS="4")
    )
    raft = server.service.raft
    assert raft is not None
    assert raft.transport.handshake_timeout == 3.0 and raft.transport.inbound_per_address == 4
    # Frames from peers pass the membership gate before the node.
    assert raft.transport.handler is raft.member_gate


@pytest.mark.parametrize(
    "env, message",
    [
        ({"OXIDB_RAFT_ELECTION_MS": "3000"}, "expected low-high"),
        ({"OXIDB_RAFT_ELECTION_MS": "3000-1500"}, "low end must be below"),
        ({"OXIDB_RAFT_ELECTION_MS": "0-10"}, "at least 1"),
        ({"OXIDB_RAFT_HEARTBEAT_MS": "0"}, "at least 1"),
        ({"OXIDB_FORWARD_WRITES": "yes"}, "must be true, 1, false or 0"),
        ({"OXIDB_RAFT_ADVERTISE": "no-port"}, "expected host:port"),
    ],
)
def test_bad_cluster_values(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config(**env)


def test_timings_must_be_consistent() -> None:
    with pytest.raises(ConfigError, match="OXIDB_RAFT_HEARTBEAT_MS=2000, OXIDB_RAFT_ELECTION_MS=1000-2000"):
        ClusterSettings.from_config(config(OXIDB_RAFT_HEARTBEAT_MS="2000"))
    settings = ClusterSettings.from_config(
        config(OXIDB_RAFT_HEARTBEAT_MS="50", OXIDB_RAFT_ELECTION_MS="200-400", OXIDB_RAFT_SNAPSHOT_LOGS="10",
               OXIDB_RAFT_KEEP_LOGS="0", OXIDB_FORWARD_WRITES="false")
    )
    raft = settings.raft
    assert (raft.heartbeat_interval, raft.election_timeout_min, raft.election_timeout_max) == (50, 200, 400)
    assert (raft.snapshot_threshold, raft.keep_after_snapshot) == (10, 0)
    assert settings.forward_writes is False


def test_the_published_address() -> None:
    assert (
        ClusterSettings.from_config(config(OXIDB_RAFT_ADDR="127.0.0.1:0")).published_address(4711) == "127.0.0.1:4711"
    )
    wildcard = ClusterSettings.from_config(config(OXIDB_RAFT_ADDR="0.0.0.0:5000"))
    assert wildcard.published_address(5000) is None
    advertised = ClusterSettings.from_config(
        config(OXIDB_RAFT_ADDR="0.0.0.0:5000", OXIDB_RAFT_ADVERTISE="db-a0:5000")
    )
    assert advertised.published_address(5000) == "db-a0:5000"
    peers = ClusterSettings.from_config(config(OXIDB_RAFT_PEERS="2=db-b:4445, 3=[::1]:4445"))
    assert peers.peers == {2: "db-b:4445", 3: "[::1]:4445"}


# --- mutual TLS ---------------------------------------------------------------------


def make_cert(name: str, key: Any, issuer: x509.Certificate | None, signer: Any) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=1))
        .not_valid_after(NOW + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
        .sign(signer, hashes.SHA256())
    )


def write_pki(directory: Path, name: str) -> dict[str, str]:
    """A CA and one node certificate signed by it, as PEM files."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = make_cert(f"{name} ca", ca_key, None, ca_key)
    paths = {}
    for node in ("a", "b"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = make_cert(f"{name} {node}", key, ca, ca_key)
        (directory / f"{node}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (directory / f"{node}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        paths[node] = str(directory / node)
    (directory / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["ca"] = str(directory / "ca.pem")
    return paths


def tls_env(paths: dict[str, str], node: str) -> dict[str, str]:
    return {
        "OXIDB_RAFT_TLS_CERT": paths[node] + ".pem",
        "OXIDB_RAFT_TLS_KEY": paths[node] + ".key",
        "OXIDB_RAFT_TLS_CA": paths["ca"],
    }


def test_partial_or_broken_tls_settings_fail(tmp_path: Path) -> None:
    paths = write_pki(tmp_path / "pki", "one")
    env = tls_env(paths, "a")
    del env["OXIDB_RAFT_TLS_CA"]
    with pytest.raises(ConfigError, match="needs OXIDB_RAFT_TLS_CERT, OXIDB_RAFT_TLS_KEY, OXIDB_RAFT_TLS_CA; "
                                          "OXIDB_RAFT_TLS_CERT, OXIDB_RAFT_TLS_KEY set but OXIDB_RAFT_TLS_CA not"):
        ClusterSettings.from_config(config(**env))
    mismatched = dict(tls_env(paths, "a"), OXIDB_RAFT_TLS_KEY=paths["b"] + ".key")
    with pytest.raises(ConfigError, match="does not match the certificate"):
        ClusterSettings.from_config(config(**mismatched))
    missing = dict(tls_env(paths, "a"), OXIDB_RAFT_TLS_CA=str(tmp_path / "nope.pem"))
    with pytest.raises(ConfigError, match="OXIDB_RAFT_TLS_CA=.*cannot read the file"):
        ClusterSettings.from_config(config(**missing))
    # Complete TLS settings make a non-loopback address acceptable.
    settings = ClusterSettings.from_config(config(OXIDB_RAFT_ADDR="0.0.0.0:4445", **tls_env(paths, "a")))
    assert settings.tls is not None and settings.authenticator == TransportTrust()


class Inbox:
    def __init__(self) -> None:
        self.frames: list[tuple[int, Any]] = []
        self.arrived: Deferred[None] = Deferred()

    def frame_received(self, peer: int, frame: Any, channel: Any) -> None:
        self.frames.append((peer, frame))
        if not self.arrived.called:
            self.arrived.callback(None)


def tls_transport(node_id: int, settings: ClusterSettings, handler: Any, peer_port: list[int]) -> PeerTransport:
    transport = PeerTransport(
        node_id,
        clock=reactor,
        authenticator=settings.authenticator,
        handler=handler,
        address_of=lambda n: f"127.0.0.1:{peer_port[0]}",
        rng=random.Random(node_id),
        listen=(reactor, "127.0.0.1", 0, settings.tls),
    )
    transport.startService()
    return transport


@pytest_twisted.inlineCallbacks
def test_mutual_tls_admits_members_and_refuses_outsiders(tmp_path: Path) -> Any:
    cluster = write_pki(tmp_path / "cluster", "cluster")
    outsider_pki = write_pki(tmp_path / "outsider", "outsider")
    node_a = ClusterSettings.from_config(config(OXIDB_NODE_ID="1", **tls_env(cluster, "a")))
    node_b = ClusterSettings.from_config(config(OXIDB_NODE_ID="2", **tls_env(cluster, "b")))
    stranger = ClusterSettings.from_config(config(OXIDB_NODE_ID="3", **tls_env(outsider_pki, "a")))
    inbox = Inbox()
    port: list[int] = [0]
    b = tls_transport(2, node_b, inbox, port)
    port[0] = b.port.getHost().port
    a = tls_transport(1, node_a, Inbox(), port)
    c = tls_transport(3, stranger, Inbox(), port)
    try:
        c.send(2, orjson.dumps({"type": "test", "from": "outsider"}))
        a.send(2, orjson.dumps({"type": "test", "from": "member"}))
        yield inbox.arrived
        # Wait (with a deadline) until the outsider's TLS handshake has failed.
        deadline = reactor.seconds() + 10
        while c.links[2].attempts == 0 and reactor.seconds() < deadline:
            yield deferLater(reactor, 0.01, lambda: None)
        assert c.links[2].attempts >= 1 and c.links[2].protocol is None
        assert inbox.frames == [(1, {"type": "test", "from": "member"})]
    finally:
        for transport in (a, b, c):
            yield transport.stopService()


# --- the service ------------------------------------------------------------------------


def test_standalone_servers_do_not_know_raft_commands(tmp_path: Path) -> None:
    server = MemoryServer(Config(data_dir=str(tmp_path)))
    for cmd in ("raft_init", "raft_add_learner", "raft_change_membership", "raft_metrics",
                "raft_remove_node", "raft_transfer_leader", "raft_status"):
        assert server.request({"cmd": cmd}) == {"ok": False, "error": f"unknown command: {cmd}"}
    assert "raft" not in server.request({"cmd": "hello"})["server"]["features"]


def test_cluster_mode_wires_raft_into_the_service(tmp_path: Path) -> None:
    server = MemoryServer(config(OXIDB_DATA=str(tmp_path)))
    service, shared = server.service, server.services
    assert service.raft is not None and shared.raft is service.raft
    assert service.engine.synchronous == "NORMAL" and service.engine.auto_create_on_read is False
    assert isinstance(service.raft.executor, ClusterExecutor)
    assert isinstance(shared.dispatcher, LinearizableDispatcher) and shared.dispatcher is service.factory.dispatcher
    assert {"raft_init", "raft_add_learner", "raft_change_membership", "raft_metrics",
            "raft_remove_node", "raft_transfer_leader", "raft_status"} <= set(shared.registry.names())
    assert "raft" in server.request({"cmd": "hello"})["server"]["features"]
    assert shared.metrics.raft_source == service.raft.status
    assert service.raft.status().state == "Shutdown"  # not started yet
    assert server.request({"cmd": "raft_metrics"}) == {"ok": False, "error": "the raft node is not running"}


def test_only_the_leader_runs_schedules(tmp_path: Path) -> None:
    standalone = MemoryServer(Config(data_dir=str(tmp_path / "alone")))
    assert standalone.service._runs_schedules() is True
    clustered = MemoryServer(config(OXIDB_DATA=str(tmp_path / "node")))
    assert clustered.service._runs_schedules() is False  # not started: not the leader


def test_new_management_commands_validate_their_fields(tmp_path: Path) -> None:
    server = MemoryServer(config(OXIDB_DATA=str(tmp_path)))
    for cmd in ("raft_remove_node", "raft_transfer_leader"):
        for request in ({"cmd": cmd}, {"cmd": cmd, "node_id": "2"}, {"cmd": cmd, "node_id": -1}):
            assert server.request(request) == {"ok": False, "error": "missing 'node_id'"}
    assert server.request({"cmd": "raft_status"}) == {"ok": False, "error": "the raft node is not running"}
