"""
Connection URLs: C{oxidb://user:pass@host:port[,host:port...]/db?tls=true&ca=FILE}.

Query options: C{tls} (true/false), C{ca} (a PEM CA file; implies TLS),
C{server_name} (the name to verify instead of the host), C{format}
(C{json} or C{oxiwire}), C{timeout} (seconds), C{retries}. The user name
and password are percent-decoded.
"""

from __future__ import annotations

from urllib.parse import parse_qs, unquote

import attrs

__all__ = ["DEFAULT_PORT", "ConnectOptions", "parse_url"]

DEFAULT_PORT = 4444
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@attrs.frozen
class ConnectOptions:
    """Everything needed to reach and log in to a server or a cluster."""

    seeds: tuple[tuple[str, int], ...] = (("127.0.0.1", DEFAULT_PORT),)
    user: str | None = None
    password: str | None = None
    database: str | None = None
    tls: bool = False
    ca: str | None = None
    server_name: str | None = None
    format: str = "json"
    timeout: float = 10.0
    retries: int = 5

    @property
    def switch_database(self) -> str | None:
        """The database a new connection must switch to (C{use_db}), or None for the default one."""
        return None if self.database in (None, "oxidb") else self.database

    def with_changes(self, **changes: object) -> ConnectOptions:
        """A copy with C{changes} applied (None values are ignored)."""
        return attrs.evolve(self, **{k: v for k, v in changes.items() if v is not None})  # type: ignore[arg-type]


def _host_port(text: str) -> tuple[str, int]:
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port_text = text.rpartition(":") if ":" in text else (text, "", "")
    if not host:
        raise ValueError(f"invalid address {text!r}: no host")
    if not port_text:
        return host, DEFAULT_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"invalid address {text!r}: bad port")
    return host, int(port_text)


def _bool(name: str, value: str) -> bool:
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise ValueError(f"invalid URL option {name}={value!r}: expected true or false")


def parse_url(url: str) -> ConnectOptions:
    """
    Parse a connection URL.

    @raise ValueError: a malformed URL, with a one-line explanation.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme != "oxidb":
        raise ValueError(f"invalid URL {url!r}: expected oxidb://host:port")
    rest, _, query = rest.partition("?")
    user = password = None
    credentials = None
    if "@" in rest:
        # The password may hold "/" or ":" (unencoded): everything up to the last "@" is credentials.
        credentials, _, rest = rest.rpartition("@")
    netloc, _, path = rest.partition("/")
    if credentials is not None:
        user_text, has_password, password_text = credentials.partition(":")
        user = unquote(user_text) or None
        password = unquote(password_text) if has_password else None
    seeds = tuple(_host_port(part) for part in netloc.split(",") if part) or ConnectOptions().seeds
    options: dict[str, object] = {}
    for name, values in parse_qs(query, keep_blank_values=True).items():
        value = values[-1]
        if name == "tls":
            options["tls"] = _bool(name, value)
        elif name == "ca":
            options["ca"] = value
            options.setdefault("tls", True)
        elif name == "server_name":
            options["server_name"] = value
        elif name == "format":
            if value not in ("json", "oxiwire"):
                raise ValueError(f"invalid URL option format={value!r}: expected json or oxiwire")
            options["format"] = value
        elif name == "timeout":
            try:
                options["timeout"] = float(value)
            except ValueError:
                raise ValueError(f"invalid URL option timeout={value!r}: expected seconds") from None
        elif name == "retries":
            if not value.isdigit():
                raise ValueError(f"invalid URL option retries={value!r}: expected a count")
            options["retries"] = int(value)
        else:
            raise ValueError(f"unknown URL option {name!r}")
    return ConnectOptions(
        seeds=seeds, user=user, password=password, database=unquote(path) or None, **options  # type: ignore[arg-type]
    )
