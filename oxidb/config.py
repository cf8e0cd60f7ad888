"""
Server configuration: C{OXIDB_*} environment variables, overridden by twistd
options of the same meaning.

Every setting is one row of L{SETTINGS}: its variable, its option, its
default, its parser and its help text. L{oxidb.tap.Options} is generated from
the same rows, so a variable without an option (or the reverse) cannot exist.
A bad value stops startup with a L{ConfigError} naming the variable (or
option) and the value.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from oxidb import filemodes
from oxidb.audit.gelf import GelfSettings, parse_gelf_settings
from oxidb.audit.log import AuditSettings, parse_audit_settings
from oxidb.auth.settings import AuthSettings, parse_auth_settings
from oxidb.auth.tls import TlsPaths, parse_tls_settings
from oxidb.errors import ConfigError
from oxidb.limits import LIMIT_ROWS, LimitRow, Limits, parse_limit
from oxidb.metrics._settings import MetricsSettings, parse_metrics_settings

Address = tuple[str, int]


# --- value parsers: (text) -> value, raising ValueError with a reason -------


def parse_address(text: str) -> Address:
    """
    C{host:port} with an IP literal (IPv6 in brackets: C{[::1]:4444}) or
    C{localhost}; port 0-65535.
    """
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError("expected [ipv6]:port")
        _check_ip(host, version=6)
    else:
        host, sep, port = text.rpartition(":")
        if not sep or not host:
            raise ValueError("expected host:port")
        if host == "localhost":
            host = "127.0.0.1"
        else:
            _check_ip(host, version=4)
    return host, _parse_port(port)


def parse_peer_address(text: str) -> Address:
    """C{host:port} where host may also be a DNS name (peers are dialled)."""
    if text.startswith("["):
        return parse_address(text)
    host, sep, port = text.rpartition(":")
    if not sep or not host or any(c.isspace() for c in host):
        raise ValueError("expected host:port")
    return host, _parse_port(port)


def _check_ip(host: str, version: int) -> None:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address") from None
    if address.version != version:
        raise ValueError("IPv6 addresses must be written in brackets, e.g. [::1]:4444")


def _parse_port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise ValueError("port must be an integer between 0 and 65535")
    return int(text)


def parse_uint(text: str) -> int:
    text = text.strip()
    if not text.isdigit():
        raise ValueError("must be a non-negative integer")
    return int(text)


def parse_positive_int(text: str) -> int:
    value = parse_uint(text)
    if value < 1:
        raise ValueError("must be at least 1")
    return value


def parse_bool(text: str) -> bool:
    """
    C{true}/C{1} are on, C{false}/C{0}/empty are off. Anything else is an
    error: upstream silently treats C{TRUE} or C{yes} as off, which turns
    security switches off by a typo.
    """
    if text in ("true", "1"):
        return True
    if text in ("false", "0", ""):
        return False
    raise ValueError("must be true, 1, false or 0")


def parse_path(text: str) -> str:
    if not text:
        raise ValueError("must not be empty")
    return text


def parse_node_id(text: str) -> int:
    value = parse_uint(text)
    if value >= 2**64:
        raise ValueError("must fit in 64 bits")
    return value


def parse_peers(text: str) -> dict[int, Address]:
    """C{1=host:port,2=host:port}; whitespace around entries is ignored."""
    peers: dict[int, Address] = {}
    for entry in text.split(","):
        entry = entry.strip()
        if not entry:
            continue
        node, sep, addr = entry.partition("=")
        if not sep:
            raise ValueError(f"entry {entry!r} is not id=host:port")
        try:
            node_id = parse_node_id(node.strip())
            peers[node_id] = parse_peer_address(addr.strip())
        except ValueError as e:
            raise ValueError(f"entry {entry!r}: {e}") from None
    return peers


@attrs.frozen(repr=False)
class Secret:
    """A secret setting; its repr never shows the value (verbose logging)."""

    value: str

    def __repr__(self) -> str:
        return "Secret(<redacted>)"


#: Shortest cluster key accepted: 32 characters hold 128 bits as hex, more
#: as base64 (C{openssl rand -base64 32} gives 44).
MIN_CLUSTER_KEY = 32
#: Fewest different characters in a cluster key (catches "aaaa...", "abab...").
MIN_CLUSTER_KEY_DISTINCT = 8


def parse_cluster_key(text: str) -> Secret:
    """The cluster key; the error never quotes it."""
    if len(text) < MIN_CLUSTER_KEY:
        raise ValueError(
            f"must be at least {MIN_CLUSTER_KEY} characters long (generate one with 'openssl rand -base64 32')"
        )
    if len(set(text)) < MIN_CLUSTER_KEY_DISTINCT:
        raise ValueError(
            f"must use at least {MIN_CLUSTER_KEY_DISTINCT} different characters "
            "(generate one with 'openssl rand -base64 32')"
        )
    return Secret(text)


def parse_secret(text: str) -> Secret:
    """A non-empty secret; the error never quotes it."""
    if not text:
        raise ValueError("must not be empty")
    return Secret(text)


def read_secret_file(path: str) -> Secret:
    """
    The first line of the file at C{path} (a trailing newline is not part
    of the secret).

    @raise ValueError: the file cannot be read, or its first line is empty.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.readline().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ValueError(f"cannot read it: {reason}") from None
    if not text:
        raise ValueError("its first line is empty")
    return Secret(text)


def parse_ms_range(text: str) -> tuple[int, int]:
    """C{low-high} in milliseconds, C{0 < low < high}."""
    low, sep, high = text.partition("-")
    if not sep:
        raise ValueError("expected low-high, e.g. 1500-3000")
    first, last = parse_positive_int(low), parse_positive_int(high)
    if first >= last:
        raise ValueError("the low end must be below the high end")
    return first, last


def format_address(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --- the table --------------------------------------------------------------


def passthrough(text: str) -> str:
    """Text checked later by the subsystem that owns the variable."""
    return text


def bool_text(text: str) -> str:
    """A boolean switch, passed on as C{true}/C{false} (see L{parse_bool})."""
    return "true" if parse_bool(text) else "false"


@attrs.frozen
class Setting:
    """
    @ivar field: the L{Config} attribute, or C{None} for a variable read by a
        subsystem's own parser (auth, TLS, audit, GELF) from the effective
        environment.
    @ivar env: the environment variable.
    @ivar option: the twistd long option (without C{--}).
    @ivar default: the default as text (parsed like any value), or C{None}
        for "unset".
    @ivar secret: the value is a secret: errors name the variable and the
        reason, never the value.
    """

    field: str | None
    env: str
    option: str
    default: str | None
    parse: Callable[[str], Any]
    help: str
    secret: bool = attrs.field(default=False, kw_only=True)

    @property
    def switch(self) -> bool:
        """
        A boolean: the variable takes C{true}/C{1} or C{false}/C{0}, and twistd
        has the flags C{--<option>} (on) and C{--no-<option>} (off).
        """
        return self.parse is parse_bool or self.parse is bool_text


SETTINGS: tuple[Setting, ...] = (
    # Core (server.md 9.1).
    Setting("addr", "OXIDB_ADDR", "addr", "127.0.0.1:4444", parse_address,
            "client listen address, host:port ([::1]:4444 for IPv6)"),
    Setting("data_dir", "OXIDB_DATA", "data", "./oxidb_data", parse_path,
            "data directory (created if missing)"),
    Setting("pool_size", "OXIDB_POOL_SIZE", "pool-size", "4", parse_positive_int,
            "worker threads for blocking work"),
    Setting("idle_timeout", "OXIDB_IDLE_TIMEOUT", "idle-timeout", "30", parse_uint,
            "seconds a connection may stay silent (0 = never)"),
    Setting("verbose", "OXIDB_VERBOSE", "verbose", "false", parse_bool,
            "extra startup logging (true/false)"),
    Setting("ttl_interval", "OXIDB_TTL_INTERVAL_SECS", "ttl-interval", "60", parse_positive_int,
            "seconds between passes deleting documents expired by TTL indexes"),
    Setting("ttl_batch_size", "OXIDB_TTL_BATCH_SIZE", "ttl-batch-size", "1000", parse_positive_int,
            "most expired documents deleted by one write of a TTL pass"),
    Setting("encryption_key", "OXIDB_ENCRYPTION_KEY", "encryption-key", None, parse_path,
            "encryption at rest: path of the key file (mode 0600, at least 32 bytes)", secret=True),
    # Security.
    Setting(None, "OXIDB_AUTH", "auth", None, bool_text,
            "require login (SCRAM-SHA-256) and enforce roles (true/false)"),
    Setting("admin_password", "OXIDB_ADMIN_PASSWORD", "admin-password", None, parse_secret,
            "password of the first admin, created on the first start with auth on (prefer the file: "
            "the environment and command line of a process can be read by others)", secret=True),
    Setting("admin_password_file", "OXIDB_ADMIN_PASSWORD_FILE", "admin-password-file", None, parse_path,
            "file holding the first admin's password; without this or OXIDB_ADMIN_PASSWORD it is generated "
            "into <data>/initial-admin-password (mode 0600)"),
    Setting(None, "OXIDB_SCRAM_ITERATIONS", "scram-iterations", None, passthrough,
            "PBKDF2 iterations for new SCRAM verifiers (4096..10000000, default 4096)"),
    Setting(None, "OXIDB_HEALTH_OPEN", "health-open", None, bool_text,
            "let raft_metrics run without login, for load-balancer checks (true/false)"),
    Setting(None, "OXIDB_AUTH_DELAY_MS", "auth-delay-ms", None, passthrough,
            "delay after the first failed login, doubling per failure; also the first throttle wait (default 100)"),
    Setting(None, "OXIDB_AUTH_MAX_DELAY_MS", "auth-max-delay-ms", None, passthrough,
            "longest delay after a failed login, and longest throttle wait (default 5000)"),
    Setting(None, "OXIDB_AUTH_FAILURE_WINDOW_SECS", "auth-failure-window-secs", None, passthrough,
            "seconds a username's failures are remembered (default 300)"),
    Setting(None, "OXIDB_AUTH_MAX_FAILURES", "auth-max-failures", None, passthrough,
            "failed logins after which a connection is closed (default 5)"),
    Setting(None, "OXIDB_TLS_CERT", "tls-cert", None, passthrough,
            "PEM certificate chain for the client port (with --tls-key)"),
    Setting(None, "OXIDB_TLS_KEY", "tls-key", None, passthrough,
            "PEM private key for the client port (with --tls-cert)"),
    Setting(None, "OXIDB_AUDIT", "audit", None, bool_text,
            "write the audit log <data>/_audit/audit.log (true/false)"),
    Setting(None, "OXIDB_AUDIT_MAX_BYTES", "audit-max-bytes", None, passthrough,
            "rotate the audit log at this size (0 = never)"),
    Setting(None, "OXIDB_AUDIT_MAX_AGE_SECS", "audit-max-age-secs", None, passthrough,
            "rotate the audit log after this many seconds (0 = never)"),
    Setting(None, "OXIDB_AUDIT_CALENDAR", "audit-calendar", None, passthrough,
            "rotate the audit log hourly or daily (UTC), or none"),
    Setting(None, "OXIDB_AUDIT_COMPRESS", "audit-compress", None, bool_text,
            "gzip rotated audit logs (true/false)"),
    Setting(None, "OXIDB_GELF_ADDR", "gelf-addr", None, passthrough,
            "host:port of a GELF UDP collector for server and audit events"),
    Setting(None, "OXIDB_GELF_COMPRESS", "gelf-compress", None, passthrough,
            "GELF compression: none, zlib or gzip (default none)"),
    Setting(None, "OXIDB_GELF_CHUNK_SIZE", "gelf-chunk-size", None, passthrough,
            "largest GELF datagram in bytes (512..65507, default 1420)"),
    # Monitoring.
    Setting("metrics_addr", "OXIDB_METRICS_ADDR", "metrics-addr", None, parse_address,
            "host:port of the HTTP endpoint serving /metrics, /health and /ready (off when unset)"),
    Setting(None, "OXIDB_METRICS_NAMES", "metrics-names", None, bool_text,
            "show collection names as label values on /metrics (true/false, default false)"),
    Setting(None, "OXIDB_METRICS_USER", "metrics-user", None, passthrough,
            "user name for HTTP basic authentication on /metrics (with the password file)"),
    Setting(None, "OXIDB_METRICS_PASSWORD_FILE", "metrics-password-file", None, passthrough,
            "file holding the /metrics basic-auth password (with the user)"),
    Setting(None, "OXIDB_METRICS_TLS_CERT", "metrics-tls-cert", None, passthrough,
            "PEM certificate chain for HTTPS on the metrics port (with the key)"),
    Setting(None, "OXIDB_METRICS_TLS_KEY", "metrics-tls-key", None, passthrough,
            "PEM private key for HTTPS on the metrics port (with the certificate)"),
    # Cluster (server.md 8.1).
    Setting("node_id", "OXIDB_NODE_ID", "node-id", None, parse_node_id,
            "this node's Raft id (u64); setting it turns cluster mode on"),
    Setting("raft_addr", "OXIDB_RAFT_ADDR", "raft-addr", "127.0.0.1:4445", parse_address,
            "Raft listen address, host:port"),
    Setting("raft_peers", "OXIDB_RAFT_PEERS", "raft-peers", None, parse_peers,
            "Raft peer address book: 1=host:port,2=host:port,..."),
    Setting("raft_advertise", "OXIDB_RAFT_ADVERTISE", "raft-advertise", None, parse_peer_address,
            "Raft address published to peers when OXIDB_RAFT_ADDR is not dialable (e.g. 0.0.0.0:4445)"),
    Setting("cluster_key", "OXIDB_CLUSTER_KEY", "cluster-key", None, parse_cluster_key,
            "shared secret every peer proves (SPAKE2) when it connects to the Raft port; 32+ characters",
            secret=True),
    Setting("raft_tls_cert", "OXIDB_RAFT_TLS_CERT", "raft-tls-cert", None, parse_path,
            "PEM certificate of this node for mutual TLS on the Raft port (with key and CA)"),
    Setting("raft_tls_key", "OXIDB_RAFT_TLS_KEY", "raft-tls-key", None, parse_path,
            "PEM private key for mutual TLS on the Raft port"),
    Setting("raft_tls_ca", "OXIDB_RAFT_TLS_CA", "raft-tls-ca", None, parse_path,
            "PEM CA certificate(s) that sign every cluster member's Raft certificate"),
    Setting("forward_writes", "OXIDB_FORWARD_WRITES", "forward-writes", "true", parse_bool,
            "a follower forwards writes to the leader instead of refusing them (true/false)"),
    Setting("raft_heartbeat_ms", "OXIDB_RAFT_HEARTBEAT_MS", "raft-heartbeat-ms", "200", parse_positive_int,
            "Raft heartbeat interval in milliseconds"),
    Setting("raft_election_ms", "OXIDB_RAFT_ELECTION_MS", "raft-election-ms", "1000-2000", parse_ms_range,
            "Raft election timeout range in milliseconds, low-high (randomised per term)"),
    Setting("raft_snapshot_logs", "OXIDB_RAFT_SNAPSHOT_LOGS", "raft-snapshot-logs", "5000", parse_positive_int,
            "applied log entries between two Raft snapshots"),
    Setting("raft_keep_logs", "OXIDB_RAFT_KEEP_LOGS", "raft-keep-logs", "1000", parse_uint,
            "log entries kept behind a snapshot for followers that lag a little"),
)


def _limit_setting(row: LimitRow) -> Setting:
    def parse(text: str) -> int:
        return parse_limit(row, text)

    return Setting(None, row.env, row.option, str(row.default), parse, row.help)


# Resource limits (docs/security.md, "Limits"): one setting per row of
# L{oxidb.limits.LIMIT_ROWS}, read back into C{Config.limits}.
SETTINGS += tuple(_limit_setting(row) for row in LIMIT_ROWS)

_BY_FIELD = {s.field: s for s in SETTINGS if s.field is not None}

#: C{OXIDB_*} variables that are not server settings, which the server
#: leaves alone: C{oxidb-cli}'s, and the test suite's knobs (docs/testing.md).
OTHER_VARIABLES: frozenset[str] = frozenset(
    {
        "OXIDB_URL",
        "OXIDB_USER",
        "OXIDB_PASSWORD",
        "OXIDB_BOOTSTRAP_RUNS",
        "OXIDB_NEMESIS_OPS",
        "OXIDB_NEMESIS_SECONDS",
        "OXIDB_NEMESIS_SEED",
        "OXIDB_PROPERTY_EXAMPLES",
        "OXIDB_RAFT_SIM_FIRST_SEED",
        "OXIDB_RAFT_SIM_SEEDS",
    }
)


def check_variables(environ: Mapping[str, str]) -> None:
    """
    Refuse C{OXIDB_*} variables that name no setting: a typo (C{OXIDB_ADRR},
    C{OXIDB_AUTHH}) would otherwise be ignored silently, leaving the default
    (auth off, say) in force.

    @raise ConfigError: naming each unknown variable and the closest valid one.
    """
    known = {s.env for s in SETTINGS}
    unknown = sorted(n for n in environ if n.startswith("OXIDB_") and n not in known and n not in OTHER_VARIABLES)
    if not unknown:
        return
    described = []
    for name in unknown:
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        described.append(f"{name} (did you mean {close[0]}?)" if close else name)
    raise ConfigError(
        f"unknown setting{'s' if len(unknown) > 1 else ''} {', '.join(described)}: "
        "every OXIDB_* variable must name a setting (docs/operations.md); unset it or fix its name"
    )


@attrs.frozen
class Config:
    """
    The validated configuration of one server. See L{SETTINGS}; the
    subsystem settings (C{auth}, C{tls}, C{audit}, C{gelf}) are parsed by
    their own modules from the same effective environment.
    """

    addr: Address = ("127.0.0.1", 4444)
    data_dir: str = "./oxidb_data"
    pool_size: int = 4
    idle_timeout: int = 30
    verbose: bool = False
    ttl_interval: int = 60
    ttl_batch_size: int = 1000
    encryption_key: str | None = None
    admin_password: Secret | None = None
    admin_password_file: str | None = None
    metrics_addr: Address | None = None
    node_id: int | None = None
    raft_addr: Address = ("127.0.0.1", 4445)
    raft_peers: dict[int, Address] | None = None
    raft_advertise: Address | None = None
    cluster_key: Secret | None = None
    raft_tls_cert: str | None = None
    raft_tls_key: str | None = None
    raft_tls_ca: str | None = None
    forward_writes: bool = True
    raft_heartbeat_ms: int = 200
    raft_election_ms: tuple[int, int] = (1000, 2000)
    raft_snapshot_logs: int = 5000
    raft_keep_logs: int = 1000
    auth: AuthSettings = attrs.field(factory=AuthSettings)
    tls: TlsPaths | None = None
    audit: AuditSettings = attrs.field(factory=AuditSettings)
    gelf: GelfSettings | None = None
    metrics: MetricsSettings = attrs.field(factory=MetricsSettings)
    limits: Limits = attrs.field(factory=Limits)

    @classmethod
    def from_sources(
        cls,
        environ: Mapping[str, str] | None = None,
        options: Mapping[str, str | None] | None = None,
    ) -> Config:
        """
        Build a config from the environment, overridden by options (keyed by
        option name; C{None} means "not given").

        @raise ConfigError: a value is invalid; the message names the variable
            or option and the value. An C{OXIDB_*} variable that names no
            setting (L{check_variables}).
        """
        environ = {} if environ is None else environ
        options = {} if options is None else options
        check_variables(environ)
        values: dict[str, Any] = {}
        effective = dict(environ)
        for setting in SETTINGS:
            given = options.get(setting.option)
            if given is not None:
                source, text = f"--{setting.option}", given
            elif setting.env in environ:
                source, text = setting.env, environ[setting.env]
            elif setting.default is not None:
                source, text = "default", setting.default
            else:
                if setting.field is not None:
                    values[setting.field] = None
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
        if values.get("admin_password_file") is not None:
            if values.get("admin_password") is not None:
                raise ConfigError(
                    "OXIDB_ADMIN_PASSWORD and OXIDB_ADMIN_PASSWORD_FILE are both set: keep one (the file is safer)"
                )
            try:
                values["admin_password"] = read_secret_file(values["admin_password_file"])
            except ValueError as e:
                raise ConfigError(f"OXIDB_ADMIN_PASSWORD_FILE={values['admin_password_file']!r}: {e}") from None
        if values.get("raft_peers") is None:
            values["raft_peers"] = {}
        return cls(
            **values,
            auth=parse_auth_settings(effective),
            tls=parse_tls_settings(effective),
            audit=parse_audit_settings(effective),
            gelf=parse_gelf_settings(effective),
            metrics=parse_metrics_settings(effective),
            limits=Limits.from_environ(effective),
        )

    def prepare_data_dir(self) -> str:
        """
        Create the data directory if missing and check that it is a writable
        directory; return its absolute path.

        @raise ConfigError: it cannot be created or written.
        """
        path = os.path.abspath(self.data_dir)
        where = f"{_BY_FIELD['data_dir'].env}={self.data_dir!r}"
        try:
            # Private modes (0700/0600) whatever the umask, also for what
            # an older version or an operator left there (docs/security.md).
            filemodes.secure_tree(path)
            probe = os.path.join(path, f".write-probe-{os.getpid()}")
            with filemodes.open_private(probe) as f:
                f.write(b"ok")
            os.remove(probe)
        except OSError as e:
            raise ConfigError(f"{where}: data directory is not usable: {e.strerror or e}") from None
        return path
