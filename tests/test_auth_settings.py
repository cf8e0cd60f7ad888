"""
Authentication settings (oxidb.auth.settings) and the throttle's delay curve.
"""

from __future__ import annotations

import pytest

from oxidb.auth.settings import AuthSettings, parse_auth_settings, parse_u64
from oxidb.auth.throttle import ThrottlePolicy
from oxidb.errors import ConfigError


def test_defaults() -> None:
    assert parse_auth_settings({}) == AuthSettings()
    settings = AuthSettings()
    assert (settings.enabled, settings.iterations, settings.health_open) == (False, 4096, False)
    assert settings.throttle == ThrottlePolicy(0.1, 5.0, 5, 300.0)


@pytest.mark.parametrize("value, on", [("true", True), ("1", True), ("TRUE", False), ("yes", False), ("", False)])
def test_switches_are_exact(value: str, on: bool) -> None:
    settings = parse_auth_settings({"OXIDB_AUTH": value, "OXIDB_HEALTH_OPEN": value})
    assert settings.enabled is on and settings.health_open is on


def test_values() -> None:
    settings = parse_auth_settings(
        {
            "OXIDB_SCRAM_ITERATIONS": "15000",
            "OXIDB_AUTH_DELAY_MS": "250",
            "OXIDB_AUTH_MAX_DELAY_MS": "2000",
            "OXIDB_AUTH_MAX_FAILURES": "3",
            "OXIDB_AUTH_FAILURE_WINDOW_SECS": "60",
        }
    )
    assert settings.iterations == 15000
    assert settings.throttle == ThrottlePolicy(0.25, 2.0, 3, 60.0)


@pytest.mark.parametrize("value", ["4095", "abc", "-4096", "10000001", "4096.0", "٤٠٩٦"])
def test_bad_iterations(value: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_auth_settings({"OXIDB_SCRAM_ITERATIONS": value})
    assert str(e.value) == f'OXIDB_SCRAM_ITERATIONS must be an integer from 4096 to 10000000, got "{value}"'


@pytest.mark.parametrize("name", ["OXIDB_AUTH_DELAY_MS", "OXIDB_AUTH_MAX_DELAY_MS", "OXIDB_AUTH_FAILURE_WINDOW_SECS"])
@pytest.mark.parametrize("value", ["-1", "1.5", "x", "18446744073709551616"])
def test_bad_u64(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_auth_settings({name: value})
    assert str(e.value) == f"{name} must be a valid u64"


def test_u64_rules() -> None:
    assert parse_u64({"X": "+7"}, "X", None) == 7
    assert parse_u64({"X": ""}, "X", 3) == 3
    assert parse_u64({"X": "18446744073709551615"}, "X", None) == 2**64 - 1


def test_max_failures_at_least_one() -> None:
    with pytest.raises(ConfigError, match='OXIDB_AUTH_MAX_FAILURES must be at least 1, got "00"'):
        parse_auth_settings({"OXIDB_AUTH_MAX_FAILURES": "00"})


def test_delay_curve() -> None:
    policy = ThrottlePolicy(base_delay=0.1, max_delay=1.0)
    assert [policy.delay(n) for n in range(6)] == [0.0, 0.1, 0.2, 0.4, 0.8, 1.0]
    assert policy.delay(10**6) == 1.0
    assert ThrottlePolicy(base_delay=0.0).delay(3) == 0.0
