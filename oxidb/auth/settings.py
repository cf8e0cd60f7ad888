"""
Authentication settings from the environment, validated with clear errors.

| variable | default | rule |
|---|---|---|
| C{OXIDB_AUTH} | off | on only for exactly C{true} or C{1} (server.md 4.1) |
| C{OXIDB_SCRAM_ITERATIONS} | 4096 | integer, 4096 to 10000000 |
| C{OXIDB_HEALTH_OPEN} | off | on only for exactly C{true} or C{1} |
| C{OXIDB_AUTH_DELAY_MS} | 100 | u64: delay before answering a first failed login |
| C{OXIDB_AUTH_MAX_DELAY_MS} | 5000 | u64: cap of the doubling delay |
| C{OXIDB_AUTH_MAX_FAILURES} | 5 | u64, at least 1: failed logins before the connection is closed |
| C{OXIDB_AUTH_FAILURE_WINDOW_SECS} | 300 | u64: quiet time after which a name's failures are forgotten |

An empty value counts as unset.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import attrs

from oxidb.auth.scram import DEFAULT_ITERATIONS, MAX_ITERATIONS, MIN_ITERATIONS
from oxidb.auth.throttle import ThrottlePolicy
from oxidb.errors import ConfigError

_U64 = re.compile(r"\+?[0-9]+")
_U64_MAX = 2**64 - 1


def flag(environ: Mapping[str, str], name: str) -> bool:
    """Upstream's switch rule: on for exactly C{true} or C{1}, else off."""
    return environ.get(name, "") in ("true", "1")


def parse_u64(environ: Mapping[str, str], name: str, default: int | None) -> int | None:
    """
    An unsigned 64-bit integer (Rust's C{str::parse::<u64>} rule), or
    C{default} when unset or empty.

    @raise ConfigError: C{<name> must be a valid u64}.
    """
    text = environ.get(name, "")
    if text == "":
        return default
    if not _U64.fullmatch(text) or int(text) > _U64_MAX:
        raise ConfigError(f"{name} must be a valid u64")
    return int(text)


def _required_u64(environ: Mapping[str, str], name: str, default: int) -> int:
    value = parse_u64(environ, name, None)
    return default if value is None else value


@attrs.frozen
class AuthSettings:
    enabled: bool = False
    iterations: int = DEFAULT_ITERATIONS
    health_open: bool = False
    throttle: ThrottlePolicy = ThrottlePolicy()


def parse_auth_settings(environ: Mapping[str, str]) -> AuthSettings:
    """
    Read the variables in the module docstring.

    @raise ConfigError: a value is invalid; the message names the variable.
    """
    iterations_text = environ.get("OXIDB_SCRAM_ITERATIONS", "")
    iterations = DEFAULT_ITERATIONS
    if iterations_text != "":
        if not iterations_text.isascii() or not iterations_text.isdigit() or not (
            MIN_ITERATIONS <= int(iterations_text) <= MAX_ITERATIONS
        ):
            raise ConfigError(
                f"OXIDB_SCRAM_ITERATIONS must be an integer from {MIN_ITERATIONS} to {MAX_ITERATIONS}, "
                f'got "{iterations_text}"'
            )
        iterations = int(iterations_text)
    max_failures = _required_u64(environ, "OXIDB_AUTH_MAX_FAILURES", 5)
    if max_failures < 1:
        raise ConfigError(f'OXIDB_AUTH_MAX_FAILURES must be at least 1, got "{environ["OXIDB_AUTH_MAX_FAILURES"]}"')
    policy = ThrottlePolicy(
        base_delay=_required_u64(environ, "OXIDB_AUTH_DELAY_MS", 100) / 1000.0,
        max_delay=_required_u64(environ, "OXIDB_AUTH_MAX_DELAY_MS", 5000) / 1000.0,
        max_failures=max_failures,
        window=float(_required_u64(environ, "OXIDB_AUTH_FAILURE_WINDOW_SECS", 300)),
    )
    return AuthSettings(
        enabled=flag(environ, "OXIDB_AUTH"),
        iterations=iterations,
        health_open=flag(environ, "OXIDB_HEALTH_OPEN"),
        throttle=policy,
    )
