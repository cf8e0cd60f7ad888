"""
Who may read C{/metrics} and what it shows (C{OXIDB_METRICS_*}).

 - C{OXIDB_METRICS_NAMES}: data names (collection names) appear as label
   values only when this is C{true}/C{1}; by default C{/metrics} carries
   totals only, so that a scraper (or anyone reaching the port) learns
   nothing about the data.
 - C{OXIDB_METRICS_USER} and C{OXIDB_METRICS_PASSWORD_FILE}: HTTP basic
   authentication on C{/metrics}. A credential of its own rather than a
   database login: a scraper's secret then opens no data, checking it costs
   no password hash per scrape (an unauthenticated client cannot make the
   server burn CPU), and it works with authentication off. Prometheus reads
   the same password file (C{basic_auth.password_file}). The comparison is
   in constant time. C{/health} and C{/ready} stay open for load balancers.
 - C{OXIDB_METRICS_TLS_CERT} and C{OXIDB_METRICS_TLS_KEY}: HTTPS on the
   metrics port, loaded like the client port's certificate.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from pathlib import Path

import attrs

from oxidb.auth.settings import flag
from oxidb.auth.tls import TlsPaths, parse_tls_settings
from oxidb.errors import ConfigError


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


@attrs.frozen(repr=False)
class BasicCredentials:
    """The one user and password accepted on C{/metrics}; repr never shows the password."""

    user: str
    password: bytes

    def __repr__(self) -> str:
        return f"BasicCredentials(user={self.user!r}, password=<redacted>)"

    def check(self, user: bytes, password: bytes) -> bool:
        """
        Do these match? Both parts are compared, in constant time over
        fixed-length digests, whatever the first comparison found.
        """
        user_ok = hmac.compare_digest(_digest(user), _digest(self.user.encode("utf-8")))
        password_ok = hmac.compare_digest(_digest(password), _digest(self.password))
        return user_ok & password_ok


@attrs.frozen
class MetricsSettings:
    """
    @ivar names: export data names (collection names) as label values.
    @ivar credentials: basic authentication on C{/metrics}, or None (open).
    @ivar tls: certificate and key of the metrics port, or None (plain HTTP).
    """

    names: bool = False
    credentials: BasicCredentials | None = None
    tls: TlsPaths | None = None


def _read_password(path_text: str) -> bytes:
    path = Path(path_text)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"OXIDB_METRICS_PASSWORD_FILE={path_text!r}: cannot read the file: {e.strerror}") from None
    password = raw.rstrip(b"\r\n")
    if not password:
        raise ConfigError(f"OXIDB_METRICS_PASSWORD_FILE={path_text!r}: the file holds no password")
    return password


def parse_metrics_settings(environ: Mapping[str, str]) -> MetricsSettings:
    """
    @raise ConfigError: only one of user and password file is set, the
        user contains C{:}, the password file is unreadable or empty, or
        only one of the TLS certificate and key is set. Messages never show
        the password.
    """
    user = environ.get("OXIDB_METRICS_USER", "")
    password_file = environ.get("OXIDB_METRICS_PASSWORD_FILE", "")
    credentials = None
    if user or password_file:
        if not user or not password_file:
            raise ConfigError(
                "OXIDB_METRICS_USER and OXIDB_METRICS_PASSWORD_FILE go together: set both to require "
                "a login on /metrics, or neither"
            )
        if ":" in user:
            raise ConfigError("OXIDB_METRICS_USER must not contain ':' (HTTP basic authentication)")
        credentials = BasicCredentials(user, _read_password(password_file))
    tls = parse_tls_settings(environ, "OXIDB_METRICS_TLS_CERT", "OXIDB_METRICS_TLS_KEY")
    return MetricsSettings(names=flag(environ, "OXIDB_METRICS_NAMES"), credentials=credentials, tls=tls)
