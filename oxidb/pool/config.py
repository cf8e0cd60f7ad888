"""
oxipool configuration: C{OXIPOOL_*} environment variables, overridden by
twistd options of the same meaning (L{POOL_SETTINGS}, one row each, like the
server's L{oxidb.config.SETTINGS}). An C{OXIPOOL_*} variable that names no
setting is an error.

Groups of members: C{OXIPOOL_MASTER} is one Raft group, its members'
client addresses separated by commas. C{OXIPOOL_SHARDS} lists the shards:
with a C{;} in it, shards are separated by C{;} and each shard's members by
commas (C{a1:4444,a2:4444;b1:4444,b2:4444}); without one it is upstream's
form, one address per shard (C{a:4444,b:4444}).
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping
from typing import Any

import attrs

from oxidb.auth.tls import TlsPaths, parse_tls_settings
from oxidb.config import (
    Address,
    Secret,
    Setting,
    parse_address,
    parse_bool,
    parse_path,
    parse_peer_address,
    parse_positive_int,
    parse_secret,
    parse_uint,
    read_secret_file,
)
from oxidb.errors import ConfigError
from oxidb.pool.routing import ShardMap

__all__ = ["POOL_SETTINGS", "PoolConfig", "parse_group", "parse_shards"]

Group = tuple[Address, ...]


def parse_group(text: str) -> Group:
    """Comma-separated member addresses of one Raft group."""
    members = tuple(parse_peer_address(part.strip()) for part in text.split(",") if part.strip())
    if not members:
        raise ValueError("expected at least one host:port")
    if len(set(members)) != len(members):
        raise ValueError("a member is listed twice")
    return members


def parse_shards(text: str) -> tuple[Group, ...]:
    """C{a1,a2;b1,b2} (groups), or upstream's C{a,b} (one member per shard)."""
    if ";" in text:
        shards = tuple(parse_group(part) for part in text.split(";") if part.strip())
    else:
        shards = tuple((member,) for member in parse_group(text))
    if len(shards) < 2:
        raise ValueError("sharding needs at least 2 shards")
    return shards


def parse_shard_keys(text: str) -> dict[str, str]:
    """C{orders:customer_id,carts:customer_id}."""
    keys: dict[str, str] = {}
    for entry in text.split(","):
        entry = entry.strip()
        if not entry:
            continue
        collection, sep, field = entry.partition(":")
        if not sep or not collection.strip() or not field.strip():
            raise ValueError(f"entry {entry!r} is not collection:field")
        keys[collection.strip()] = field.strip()
    return keys


def parse_read_preference(text: str) -> str:
    if text not in ("leader", "follower"):
        raise ValueError("must be leader or follower")
    return text


def parse_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError("must be a number of seconds") from None
    if not value > 0 or value != value or value == float("inf"):
        raise ValueError("must be a positive number of seconds")
    return value


def passthrough(text: str) -> str:
    return text


POOL_SETTINGS: tuple[Setting, ...] = (
    Setting("listen", "OXIPOOL_LISTEN", "listen", "127.0.0.1:4445", parse_address,
            "client listen address, host:port"),
    Setting("master", "OXIPOOL_MASTER", "master", None, parse_group,
            "master/replica mode: the Raft group's members, host:port,host:port,... (default 127.0.0.1:4444)"),
    Setting("backend", "OXIPOOL_BACKEND", "backend", None, parse_group, "alias of OXIPOOL_MASTER"),
    Setting("replicas", "OXIPOOL_REPLICAS", "replicas", None, parse_group,
            "master/replica mode: more members to read from when a client asks for follower reads"),
    Setting("shards", "OXIPOOL_SHARDS", "shards", None, parse_shards,
            "sharded mode: shards separated by ';', members of each by ',' (a:1,b:1 = one member per shard)"),
    Setting("shard_config", "OXIPOOL_SHARD_CONFIG", "shard-config", None, parse_path,
            "sharded mode: JSON file {num_chunks, chunk_map, shards, collection_keys}"),
    Setting("shard_keys", "OXIPOOL_SHARD_KEYS", "shard-keys", None, parse_shard_keys,
            "sharded collections and their keys: orders:customer_id,carts:customer_id"),
    Setting("num_chunks", "OXIPOOL_NUM_CHUNKS", "num-chunks", "256", parse_positive_int,
            "chunks the key hash is spread over (chunk c is on shard c mod shards)"),
    Setting("size", "OXIPOOL_SIZE", "size", None, parse_positive_int, "default of OXIPOOL_MASTER_SIZE"),
    Setting("master_size", "OXIPOOL_MASTER_SIZE", "master-size", None, parse_positive_int,
            "connections to the master group's leader (default OXIPOOL_SIZE or 10)"),
    Setting("replica_size", "OXIPOOL_REPLICA_SIZE", "replica-size", "10", parse_positive_int,
            "connections to each other member, for follower reads"),
    Setting("shard_pool_size", "OXIPOOL_SHARD_POOL_SIZE", "shard-pool-size", "10", parse_positive_int,
            "connections to each shard's leader"),
    Setting("max_clients", "OXIPOOL_MAX_CLIENTS", "max-clients", "1000", parse_positive_int,
            "client connections at once; more are closed at once"),
    Setting("max_in_flight", "OXIPOOL_MAX_IN_FLIGHT", "max-in-flight", "32", parse_positive_int,
            "requests of one client being served at once; the pool stops reading that client beyond"),
    Setting("max_queued", "OXIPOOL_MAX_QUEUED", "max-queued", "10000", parse_positive_int,
            "requests waiting for a connection to one member; more are refused with 'server busy'"),
    Setting("connect_timeout", "OXIPOOL_CONNECT_TIMEOUT", "connect-timeout", "5", parse_seconds,
            "seconds to open (and log in to) a backend connection"),
    Setting("request_timeout", "OXIPOOL_REQUEST_TIMEOUT", "request-timeout", "30", parse_seconds,
            "seconds a request may take, waits for a leader included"),
    Setting("idle_timeout", "OXIPOOL_IDLE_TIMEOUT", "idle-timeout", "0", parse_uint,
            "seconds a client connection may stay silent (0 = never)"),
    Setting("leader_poll", "OXIPOOL_LEADER_POLL", "leader-poll", "1", parse_seconds,
            "seconds between leader checks of each group (sooner after a failure)"),
    Setting("stats_interval", "OXIPOOL_STATS_INTERVAL", "stats-interval", "60", parse_uint,
            "seconds between statistics log lines (0 = none)"),
    Setting("read_preference", "OXIPOOL_READ_PREFERENCE", "read-preference", "leader", parse_read_preference,
            "where reads go unless a client asks otherwise: leader or follower"),
    Setting("auth", "OXIPOOL_AUTH", "auth", "false", parse_bool,
            "clients must log in (SCRAM-SHA-256, verified by shard 0); roles are checked before routing"),
    Setting("backend_user", "OXIPOOL_BACKEND_USER", "backend-user", None, passthrough,
            "user the pool logs in to every backend as (an admin)"),
    Setting("backend_password", "OXIPOOL_BACKEND_PASSWORD", "backend-password", None, parse_secret,
            "its password (prefer the file)", secret=True),
    Setting("backend_password_file", "OXIPOOL_BACKEND_PASSWORD_FILE", "backend-password-file", None, parse_path,
            "file holding its password (first line)"),
    Setting("backend_tls", "OXIPOOL_BACKEND_TLS", "backend-tls", "false", parse_bool,
            "connect to backends with TLS"),
    Setting("backend_tls_ca", "OXIPOOL_BACKEND_TLS_CA", "backend-tls-ca", None, parse_path,
            "PEM CA certificate backends' certificates are verified against (default: the system's)"),
    Setting("backend_tls_name", "OXIPOOL_BACKEND_TLS_NAME", "backend-tls-name", None, passthrough,
            "host name expected in backends' certificates (default: each member's host)"),
    Setting(None, "OXIPOOL_TLS_CERT", "tls-cert", None, passthrough,
            "PEM certificate chain for the client port (with --tls-key)"),
    Setting(None, "OXIPOOL_TLS_KEY", "tls-key", None, passthrough, "PEM private key for the client port"),
    Setting("metrics_addr", "OXIPOOL_METRICS_ADDR", "metrics-addr", None, parse_address,
            "host:port of the HTTP endpoint serving /metrics (off when unset)"),
    Setting("verbose", "OXIPOOL_VERBOSE", "verbose", "false", parse_bool, "log every backend event"),
)  # fmt: skip


@attrs.frozen
class PoolConfig:
    """
    The validated configuration of one router. C{groups} are the Raft
    groups, shard 0 first; master/replica mode has exactly one.
    """

    groups: tuple[Group, ...] = ((("127.0.0.1", 4444),),)
    sharding: ShardMap | None = None
    listen: Address = ("127.0.0.1", 4445)
    replicas: Group = ()
    pool_size: int = 10
    replica_size: int = 10
    max_clients: int = 1000
    max_in_flight: int = 32
    max_queued: int = 10000
    connect_timeout: float = 5.0
    request_timeout: float = 30.0
    idle_timeout: int = 0
    leader_poll: float = 1.0
    stats_interval: int = 0
    read_preference: str = "leader"
    auth: bool = False
    backend_user: str | None = None
    backend_password: Secret | None = None
    backend_tls: bool = False
    backend_tls_ca: str | None = None
    backend_tls_name: str | None = None
    tls: TlsPaths | None = None
    metrics_addr: Address | None = None
    verbose: bool = False

    @property
    def sharded(self) -> bool:
        return self.sharding is not None

    @classmethod
    def from_sources(
        cls, environ: Mapping[str, str] | None = None, options: Mapping[str, str | None] | None = None
    ) -> PoolConfig:
        """
        @raise ConfigError: a value is invalid, settings contradict each
            other, or an C{OXIPOOL_*} variable names no setting.
        """
        environ = {} if environ is None else environ
        options = {} if options is None else options
        _check_variables(environ)
        values: dict[str, Any] = {}
        effective: dict[str, str] = {}
        for setting in POOL_SETTINGS:
            given = options.get(setting.option)
            if given is not None:
                source, text = f"--{setting.option}", given
            elif setting.env in environ:
                source, text = setting.env, environ[setting.env]
            elif setting.default is not None:
                source, text = "default", setting.default
            else:
                continue
            try:
                value = setting.parse(text)
            except ValueError as e:
                shown = "<redacted>" if setting.secret else repr(text)
                raise ConfigError(f"{source}={shown} is invalid: {e}") from None
            if setting.field is None:
                effective[setting.env] = value
            else:
                values[setting.field] = value
        return cls._build(values, effective)

    @classmethod
    def _build(cls, values: dict[str, Any], effective: dict[str, str]) -> PoolConfig:
        master = values.pop("master", None)
        backend = values.pop("backend", None)
        if master is not None and backend is not None and master != backend:
            raise ConfigError("OXIPOOL_MASTER and OXIPOOL_BACKEND (its alias) differ: give one")
        master = master or backend
        shards = values.pop("shards", None)
        shard_config = values.pop("shard_config", None)
        keys = values.pop("shard_keys", None) or {}
        num_chunks = values.pop("num_chunks")
        sharding: ShardMap | None = None
        if shards is not None and shard_config is not None:
            raise ConfigError("OXIPOOL_SHARDS and OXIPOOL_SHARD_CONFIG are both set: give one")
        if shard_config is not None:
            shards, sharding = _read_shard_config(shard_config, keys)
        elif shards is not None:
            sharding = ShardMap.default(len(shards), num_chunks, keys)
        if sharding is not None:
            if master is not None or "replicas" in values:
                raise ConfigError("OXIPOOL_MASTER/OXIPOOL_REPLICAS are for master/replica mode, not with shards")
            groups = tuple(shards or ())
        else:
            if keys:
                raise ConfigError("OXIPOOL_SHARD_KEYS needs OXIPOOL_SHARDS or OXIPOOL_SHARD_CONFIG")
            groups = (master or (("127.0.0.1", 4444),),)
        size = values.pop("size", None)
        master_size = values.pop("master_size", None)
        shard_size = values.pop("shard_pool_size")
        values["pool_size"] = shard_size if sharding is not None else master_size or size or 10
        password = values.pop("backend_password", None)
        password_file = values.pop("backend_password_file", None)
        if password is not None and password_file is not None:
            raise ConfigError("OXIPOOL_BACKEND_PASSWORD and OXIPOOL_BACKEND_PASSWORD_FILE are both set: keep one")
        if password_file is not None:
            try:
                password = read_secret_file(password_file)
            except ValueError as e:
                raise ConfigError(f"OXIPOOL_BACKEND_PASSWORD_FILE={password_file!r}: {e}") from None
        if (values.get("backend_user") is None) != (password is None):
            raise ConfigError("OXIPOOL_BACKEND_USER and a backend password go together: give both or neither")
        if values.get("auth") and values.get("backend_user") is None:
            raise ConfigError(
                "OXIPOOL_AUTH=true needs OXIPOOL_BACKEND_USER and its password: the router logs in to the "
                "servers (an admin) to check leaders and read users' roles"
            )
        tls = parse_tls_settings(effective, "OXIPOOL_TLS_CERT", "OXIPOOL_TLS_KEY")
        return cls(groups=groups, sharding=sharding, backend_password=password, tls=tls, **values)


def _read_shard_config(path: str, keys: dict[str, str]) -> tuple[tuple[Group, ...], ShardMap]:
    """Upstream's JSON file; C{shards} entries are an address, a comma list, or a list of addresses."""
    where = f"OXIPOOL_SHARD_CONFIG={path!r}"
    try:
        with open(path, encoding="utf-8") as f:
            document = json.load(f)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{where}: cannot read it: {e}") from None
    try:
        if not isinstance(document, dict):
            raise ValueError("expected a JSON object")
        entries = document.get("shards")
        if not isinstance(entries, list) or len(entries) < 2:
            raise ValueError("'shards' must list at least 2 shards")
        groups = tuple(parse_group(entry if isinstance(entry, str) else ",".join(map(str, entry))) for entry in entries)
        num_chunks = document.get("num_chunks", 256)
        if not isinstance(num_chunks, int) or num_chunks < 1:
            raise ValueError("'num_chunks' must be a positive integer")
        chunk_map = document.get("chunk_map")
        if chunk_map is None:
            chunk_map = [c % len(groups) for c in range(num_chunks)]
        if isinstance(chunk_map, dict):
            chunk_map = [chunk_map.get(str(c), c % len(groups)) for c in range(num_chunks)]
        if not isinstance(chunk_map, list) or not all(isinstance(s, int) for s in chunk_map):
            raise ValueError("'chunk_map' must be a list (or an object) of shard numbers")
        if len(chunk_map) != num_chunks:
            raise ValueError(f"'chunk_map' has {len(chunk_map)} entries for {num_chunks} chunks")
        file_keys: dict[str, str] = {}
        for collection, key in (document.get("collection_keys") or {}).items():
            field = key.get("field") if isinstance(key, dict) else key
            if not isinstance(field, str) or not field:
                raise ValueError(f"collection_keys.{collection} needs a 'field'")
            file_keys[collection] = field
        return groups, ShardMap(len(groups), tuple(chunk_map), {**file_keys, **keys})
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None


def _check_variables(environ: Mapping[str, str]) -> None:
    known = {s.env for s in POOL_SETTINGS}
    unknown = sorted(n for n in environ if n.startswith("OXIPOOL_") and n not in known)
    if not unknown:
        return
    described = []
    for name in unknown:
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        described.append(f"{name} (did you mean {close[0]}?)" if close else name)
    raise ConfigError(
        f"unknown setting{'s' if len(unknown) > 1 else ''} {', '.join(described)}: "
        "every OXIPOOL_* variable must name a setting (docs/sharding.md); unset it or fix its name"
    )
