"""
oxipool configuration (OXIPOOL_* variables and twistd options), the plugin,
and login through the router with auth on (SCRAM relayed to shard 0, roles
checked by the router, the router's own backend login).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from client_helpers import memory_server
from pool_helpers import PoolStack, ok
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import getPlugins

from oxidb.client.core import ScramLogin
from oxidb.config import Secret
from oxidb.errors import ConfigError
from oxidb.pool import tap
from oxidb.pool.config import PoolConfig
from oxidb.pool.service import PoolService
from twisted.plugins import oxipool_plugin


def test_defaults_and_modes() -> None:
    config = PoolConfig.from_sources({})
    assert config.groups == ((("127.0.0.1", 4444),),) and not config.sharded
    assert config.listen == ("127.0.0.1", 4445) and config.pool_size == 10
    master = PoolConfig.from_sources({"OXIPOOL_BACKEND": "db1:4444,db2:4444", "OXIPOOL_SIZE": "4"})
    assert master.groups == ((("db1", 4444), ("db2", 4444)),) and master.pool_size == 4
    sharded = PoolConfig.from_sources(
        {"OXIPOOL_SHARDS": "a1:1,a2:1;b1:1", "OXIPOOL_SHARD_KEYS": "orders:customer_id", "OXIPOOL_NUM_CHUNKS": "16"}
    )
    assert sharded.groups == ((("a1", 1), ("a2", 1)), (("b1", 1),))
    assert sharded.sharding is not None and len(sharded.sharding.chunk_map) == 16
    assert sharded.sharding.keys == {"orders": "customer_id"}
    upstream = PoolConfig.from_sources({"OXIPOOL_SHARDS": "a:1,b:1,c:1"})
    assert len(upstream.groups) == 3 and all(len(g) == 1 for g in upstream.groups)
    over = PoolConfig.from_sources(
        {"OXIPOOL_SHARDS": "a:1,b:1", "OXIPOOL_BACKEND_USER": "r", "OXIPOOL_BACKEND_PASSWORD": "p"},
        {"shard-pool-size": "3", "auth": "true"},
    )
    assert over.pool_size == 3 and over.auth


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"OXIPOOL_SHARDZ": "a:1"}, "unknown setting OXIPOOL_SHARDZ (did you mean OXIPOOL_SHARDS?)"),
        ({"OXIPOOL_SHARDS": "a:1"}, "at least 2 shards"),
        ({"OXIPOOL_SHARDS": "a:1,b:x"}, "OXIPOOL_SHARDS='a:1,b:x' is invalid"),
        ({"OXIPOOL_MASTER": "a:1", "OXIPOOL_BACKEND": "b:1"}, "differ"),
        ({"OXIPOOL_SHARD_KEYS": "o:k"}, "needs OXIPOOL_SHARDS"),
        ({"OXIPOOL_SHARD_KEYS": "o"}, "not collection:field"),
        ({"OXIPOOL_BACKEND_USER": "router"}, "go together"),
        ({"OXIPOOL_AUTH": "true"}, "needs OXIPOOL_BACKEND_USER"),
        ({"OXIPOOL_REQUEST_TIMEOUT": "-1"}, "positive"),
        ({"OXIPOOL_TLS_CERT": "c.pem"}, "OXIPOOL_TLS_KEY is not"),
        ({"OXIPOOL_BACKEND_PASSWORD": "x", "OXIPOOL_BACKEND_USER": "u", "OXIPOOL_BACKEND_PASSWORD_FILE": "f"}, "both"),
    ],
)
def test_bad_settings(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        PoolConfig.from_sources(environ)


def test_secret_is_never_shown(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        PoolConfig.from_sources({"OXIPOOL_BACKEND_USER": "u", "OXIPOOL_BACKEND_PASSWORD": ""})
    assert "<redacted>" in str(caught.value)
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    config = PoolConfig.from_sources({"OXIPOOL_BACKEND_USER": "u", "OXIPOOL_BACKEND_PASSWORD_FILE": str(secret)})
    assert config.backend_password == Secret("s3cret") and "s3cret" not in repr(config)


def test_shard_config_file(tmp_path: Path) -> None:
    path = tmp_path / "shards.json"
    path.write_text(
        json.dumps(
            {
                "num_chunks": 4,
                "chunk_map": [1, 1, 0, 0],
                "shards": ["a:1,a:2", ["b:1", "b:2"]],
                "collection_keys": {"orders": {"field": "customer_id"}, "carts": "user"},
            }
        )
    )
    config = PoolConfig.from_sources({"OXIPOOL_SHARD_CONFIG": str(path)})
    assert config.groups == ((("a", 1), ("a", 2)), (("b", 1), ("b", 2)))
    assert config.sharding is not None and config.sharding.chunk_map == (1, 1, 0, 0)
    assert config.sharding.keys == {"orders": "customer_id", "carts": "user"}
    path.write_text(json.dumps({"shards": ["a:1", "b:1"], "num_chunks": 2, "chunk_map": [0, 7]}))
    with pytest.raises(ConfigError, match="names shard 7"):
        PoolConfig.from_sources({"OXIPOOL_SHARD_CONFIG": str(path)})


def test_tap_options_and_plugin() -> None:
    options = tap.Options()
    options.parseOptions(
        [
            "--shards",
            "127.0.0.1:1,127.0.0.1:2",
            "--listen",
            "127.0.0.1:0",
            "--auth",
            "--backend-user",
            "router",
            "--backend-password",
            "pw",
        ]
    )
    service = tap.makeService(options, environ={}, reactor=MemoryReactorClock())
    assert isinstance(service, PoolService)
    assert service.config.auth and len(service.groups) == 2
    with pytest.raises(ConfigError, match="unknown setting"):
        tap.makeService(tap.Options(), environ={"OXIPOOL_NOPE": "1"}, reactor=MemoryReactorClock())
    from twisted.application.service import IServiceMaker

    assert "oxipool" in [p.tapname for p in getPlugins(IServiceMaker)]
    assert oxipool_plugin.oxipool.module == "oxidb.pool.tap"


def test_login_through_the_router(tmp_path: Path) -> None:
    with memory_server(tmp_path, auth=True) as (server, password):
        assert password is not None
        addr = ("10.2.0.1", 4444)
        config = PoolConfig(groups=((addr,),), auth=True, backend_user="admin", backend_password=Secret(password))
        stack = PoolStack(config, {addr: server})
        admin, _ = stack.client()
        assert stack.request(admin, {"cmd": "find", "collection": "c", "query": {}}) == {
            "ok": False,
            "error": "authentication required",
        }
        assert ok(stack.request(admin, {"cmd": "ping"})) == "pong"

        def login(client: object, user: str, secret: str) -> dict[str, object]:
            scram = ScramLogin(user, secret)
            first = stack.request(client, scram.first())
            if not first["ok"]:
                return first  # type: ignore[no-any-return]
            final = stack.request(client, scram.second(first["data"]))
            if final["ok"]:
                scram.finish(final["data"])
            return final  # type: ignore[no-any-return]

        assert login(admin, "admin", password)["ok"]
        ok(stack.request(admin, {"cmd": "create_user", "username": "reader", "password": "pw-reader", "role": "read"}))
        ok(stack.request(admin, {"cmd": "insert", "collection": "c", "doc": {"a": 1}}))
        reader, _ = stack.client()
        bad = login(reader, "reader", "wrong")
        assert bad["ok"] is False and "authentication failed" in str(bad["error"])
        reader, _ = stack.client()
        assert login(reader, "reader", "pw-reader")["ok"]
        assert ok(stack.request(reader, {"cmd": "count", "collection": "c", "query": {}})) == {"count": 1}
        denied = stack.request(reader, {"cmd": "insert", "collection": "c", "doc": {}})
        assert denied == {"ok": False, "error": "permission denied: role 'read' cannot execute 'insert'"}
        stack.stop()


def test_sharding_doc_lists_every_setting() -> None:
    from oxidb.pool.config import POOL_SETTINGS

    text = (Path(__file__).resolve().parent.parent / "docs" / "sharding.md").read_text(encoding="utf-8")
    for setting in POOL_SETTINGS:
        assert f"`{setting.env}" in text, setting.env


def test_client_port_tls(tmp_path: Path) -> None:
    """OXIPOOL_TLS_CERT/KEY: the client port's TLS options, which complete a handshake."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from test_auth_tls import client_context, handshake, key_pem, make_cert, pem

    key = ec.generate_private_key(ec.SECP256R1())
    cert = make_cert("localhost", key, None, key)
    (tmp_path / "cert.pem").write_bytes(pem(cert))
    (tmp_path / "key.pem").write_bytes(key_pem(key, serialization.PrivateFormat.TraditionalOpenSSL))
    config = PoolConfig.from_sources(
        {"OXIPOOL_TLS_CERT": str(tmp_path / "cert.pem"), "OXIPOOL_TLS_KEY": str(tmp_path / "key.pem")}
    )
    service = PoolService(config, MemoryReactorClock())
    assert service.tls_options is not None
    assert handshake(service.tls_options.getContext(), client_context()).get_peer_certificate() is not None
    backend = PoolConfig.from_sources({"OXIPOOL_BACKEND_TLS": "true", "OXIPOOL_BACKEND_TLS_CA": "ca.pem"})
    assert backend.backend_tls and backend.backend_tls_ca == "ca.pem"
