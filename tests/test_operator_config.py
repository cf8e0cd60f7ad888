"""
Operator-facing configuration errors: unknown C{OXIDB_*} variables, boolean
switches as twistd flags, a port that cannot be bound.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.testing import MemoryReactorClock

from oxidb.config import SETTINGS, Config
from oxidb.errors import ConfigError
from oxidb.service import OxiService
from oxidb.tap import Options, makeService, option_values


def make(environ: dict[str, str], argv: list[str] = ()) -> Any:  # type: ignore[assignment]
    options = Options()
    options.parseOptions(list(argv))
    return makeService(options, environ=environ, reactor=MemoryReactorClock())


@pytest.mark.parametrize(
    "name, closest",
    [("OXIDB_ADRR", "OXIDB_ADDR"), ("OXIDB_AUTHH", "OXIDB_AUTH"), ("OXIDB_POOLSIZE", "OXIDB_POOL_SIZE"),
     ("OXIDB_RAFT_PEER", "OXIDB_RAFT_PEERS")],
)  # fmt: skip
def test_an_unknown_variable_names_the_closest_valid_one(tmp_path: Path, name: str, closest: str) -> None:
    with pytest.raises(ConfigError) as e:
        make({"OXIDB_DATA": str(tmp_path), name: "x"})
    assert f"unknown setting {name} (did you mean {closest}?)" in str(e.value)
    assert "\n" not in str(e.value)


def test_every_unknown_variable_is_named_and_others_are_left_alone(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        Config.from_sources({"OXIDB_ZZZZZZ": "1", "OXIDB_AUTHH": "true", "PATH": "/bin", "OXIDBX": "1"})
    assert str(e.value).startswith("unknown settings OXIDB_AUTHH (did you mean OXIDB_AUTH?), OXIDB_ZZZZZZ: ")
    # The client's variable and the test suite's knobs are not the server's business.
    Config.from_sources(
        {"OXIDB_URL": "oxidb://localhost:4444", "OXIDB_USER": "u", "OXIDB_PASSWORD": "p", "OXIDB_NEMESIS_SEED": "3"}
    )


def test_boolean_settings_are_flags() -> None:
    options = Options()
    flags = {f[0] for f in options.optFlags}
    switches = {s.option for s in SETTINGS if s.switch}
    assert switches == {"verbose", "auth", "health-open", "audit", "audit-compress", "metrics-names", "forward-writes"}
    assert flags == switches | {f"no-{name}" for name in switches}
    assert not switches & {p[0] for p in options.optParameters}


def test_a_flag_overrides_the_variable_either_way(tmp_path: Path) -> None:
    base = {"OXIDB_DATA": str(tmp_path / "a"), "OXIDB_ADDR": "127.0.0.1:0"}
    on = make(base, ["--auth", "--no-forward-writes", "--verbose"])
    assert on.config.auth.enabled and on.config.forward_writes is False and on.config.verbose
    off = make({**base, "OXIDB_DATA": str(tmp_path / "b"), "OXIDB_AUTH": "true"}, ["--no-auth"])
    assert not off.config.auth.enabled
    env_only = make({**base, "OXIDB_DATA": str(tmp_path / "c"), "OXIDB_AUDIT_COMPRESS": "1"})
    assert env_only.config.audit.rotation.compress
    with pytest.raises(ConfigError, match="--auth and --no-auth contradict each other"):
        make(base, ["--auth", "--no-auth"])


def test_a_switch_takes_no_value() -> None:
    from twisted.python.usage import UsageError

    with pytest.raises(UsageError):
        Options().parseOptions(["--auth=true"])


def test_embedders_may_still_pass_text() -> None:
    assert option_values({"auth": "true"})["auth"] == "true"
    assert option_values({})["auth"] is None


@pytest.mark.parametrize("env", ["OXIDB_AUTH", "OXIDB_AUDIT", "OXIDB_AUDIT_COMPRESS", "OXIDB_HEALTH_OPEN"])
@pytest.mark.parametrize("value", ["TRUE", "yes", "on", "False"])
def test_switch_variables_take_one_spelling_set(env: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"{env}='{value}' is invalid: must be true, 1, false or 0"):
        Config.from_sources({env: value})


# --- a port that cannot be bound --------------------------------------------------------


@pytest.fixture
def busy_port() -> Iterator[int]:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    yield holder.getsockname()[1]
    holder.close()


def test_a_busy_port_is_a_one_line_error(tmp_path: Path, busy_port: int) -> None:
    from twisted.internet import reactor

    service = OxiService(Config(addr=("127.0.0.1", busy_port), data_dir=str(tmp_path)), reactor)
    with pytest.raises(ConfigError) as e:
        service.privilegedStartService()
    assert str(e.value).startswith(f"cannot listen on OXIDB_ADDR=127.0.0.1:{busy_port}: Address already in use")
    assert "\n" not in str(e.value)
    assert not service.datadir_lock.held and service.port is None


def test_a_busy_metrics_port_names_its_setting_and_frees_the_client_port(tmp_path: Path, busy_port: int) -> None:
    from twisted.internet import reactor

    config = Config(addr=("127.0.0.1", 0), data_dir=str(tmp_path), metrics_addr=("127.0.0.1", busy_port))
    service = OxiService(config, reactor, handle_signals=True)
    with pytest.raises(SystemExit) as e:
        service.privilegedStartService()
    message = str(e.value.code)
    assert message.startswith(f"oxidb: cannot listen on OXIDB_METRICS_ADDR=127.0.0.1:{busy_port}: ")
    assert "\n" not in message
    assert service.port is None and service.metrics_port is None


def test_an_address_of_another_host_is_a_one_line_error(tmp_path: Path) -> None:
    from twisted.internet import reactor

    # 192.0.2.0/24 is TEST-NET-1: never an address of this machine.
    service = OxiService(Config(addr=("192.0.2.1", 0), data_dir=str(tmp_path)), reactor)
    expected = r"^cannot listen on OXIDB_ADDR=192\.0\.2\.1:0: Cannot assign requested address$"
    with pytest.raises(ConfigError, match=expected):
        service.privilegedStartService()
