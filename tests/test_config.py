"""Configuration: OXIDB_* variables, twistd options overriding them, bad values."""

from __future__ import annotations

import os

import pytest

from oxidb.atrest import load_key_file
from oxidb.config import SETTINGS, Config, parse_address, parse_peers
from oxidb.errors import ConfigError
from oxidb.tap import Options, option_values


def test_defaults_match_the_spec() -> None:
    config = Config.from_sources({}, {})
    assert config.addr == ("127.0.0.1", 4444)
    assert config.data_dir == "./oxidb_data"
    assert config.pool_size == 4
    assert config.idle_timeout == 30
    assert config.verbose is False


def test_environment_is_read() -> None:
    config = Config.from_sources(
        {"OXIDB_ADDR": "0.0.0.0:5000", "OXIDB_DATA": "/tmp/x", "OXIDB_POOL_SIZE": "32", "OXIDB_IDLE_TIMEOUT": "0"},
        {},
    )
    assert config.addr == ("0.0.0.0", 5000)
    assert config.data_dir == "/tmp/x"
    assert config.pool_size == 32
    assert config.idle_timeout == 0


def test_options_override_environment() -> None:
    options = Options()
    options.parseOptions(["--addr", "127.0.0.2:7000", "--pool-size=8"])
    config = Config.from_sources(
        {"OXIDB_ADDR": "0.0.0.0:5000", "OXIDB_POOL_SIZE": "2", "OXIDB_IDLE_TIMEOUT": "9"},
        option_values(options),
    )
    assert config.addr == ("127.0.0.2", 7000)
    assert config.pool_size == 8
    assert config.idle_timeout == 9


def test_every_setting_has_an_option_and_a_variable() -> None:
    options = Options()
    names = {p[0] for p in options.optParameters} | {f[0] for f in options.optFlags}
    for setting in SETTINGS:
        assert setting.env.startswith("OXIDB_")
        assert setting.option in names
    usage = str(options)
    for setting in SETTINGS:
        assert f"--{setting.option}" in usage
        assert setting.env in usage


@pytest.mark.parametrize(
    "env, value, fragment",
    [
        ("OXIDB_POOL_SIZE", "four", "OXIDB_POOL_SIZE='four'"),
        ("OXIDB_POOL_SIZE", "0", "at least 1"),
        ("OXIDB_POOL_SIZE", "-3", "OXIDB_POOL_SIZE='-3'"),
        ("OXIDB_IDLE_TIMEOUT", "-1", "OXIDB_IDLE_TIMEOUT='-1'"),
        ("OXIDB_IDLE_TIMEOUT", "1.5", "OXIDB_IDLE_TIMEOUT='1.5'"),
        ("OXIDB_ADDR", "localhost", "OXIDB_ADDR='localhost'"),
        ("OXIDB_ADDR", "127.0.0.1:99999", "port"),
        ("OXIDB_ADDR", "127.0.0.1:", "port"),
        ("OXIDB_ADDR", "::1:4444", "brackets"),
        ("OXIDB_ADDR", "[::1]4444", "OXIDB_ADDR"),
        ("OXIDB_ADDR", "example.com:4444", "not an IP address"),
        ("OXIDB_VERBOSE", "yes", "OXIDB_VERBOSE='yes'"),
    ],
)
def test_bad_values_name_the_variable_and_the_value(env: str, value: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as e:
        Config.from_sources({env: value}, {})
    assert env in str(e.value)
    assert fragment in str(e.value)


def test_bad_option_names_the_option() -> None:
    with pytest.raises(ConfigError, match="--pool-size='many'"):
        Config.from_sources({}, {"pool-size": "many"})


def test_ipv6_address() -> None:
    assert parse_address("[::1]:4444") == ("::1", 4444)
    assert parse_address("localhost:1") == ("127.0.0.1", 1)


def test_peers() -> None:
    assert parse_peers(" 1=node1:5000, 2=[::1]:5001 ,") == {1: ("node1", 5000), 2: ("::1", 5001)}
    with pytest.raises(ValueError, match="'x=node:1'"):
        parse_peers("x=node:1")


def test_data_directory_is_created(tmp_path: os.PathLike[str]) -> None:
    target = os.path.join(str(tmp_path), "a", "b")
    config = Config.from_sources({"OXIDB_DATA": target}, {})
    assert config.prepare_data_dir() == os.path.abspath(target)
    assert os.path.isdir(target)


def test_unusable_data_directory(tmp_path: os.PathLike[str]) -> None:
    blocker = os.path.join(str(tmp_path), "file")
    with open(blocker, "w") as f:
        f.write("x")
    config = Config.from_sources({"OXIDB_DATA": os.path.join(blocker, "data")}, {})
    with pytest.raises(ConfigError, match="OXIDB_DATA=.*data directory is not usable"):
        config.prepare_data_dir()



def test_secret_settings_are_never_echoed() -> None:
    assert {s.env for s in SETTINGS if s.secret} >= {"OXIDB_CLUSTER_KEY", "OXIDB_ENCRYPTION_KEY"}
    with pytest.raises(ConfigError) as info:
        Config.from_sources({"OXIDB_CLUSTER_KEY": "tiny-secret"})
    assert str(info.value).startswith("OXIDB_CLUSTER_KEY=<redacted> is invalid: must be at least 32 characters long")
    assert "tiny-secret" not in str(info.value)
    # The key file's path is only read at startup; its errors echo neither it nor the content.
    assert Config.from_sources({}, {"encryption-key": "hunter2-secret"}).encryption_key == "hunter2-secret"
    with pytest.raises(ConfigError) as info:
        load_key_file("hunter2-secret")
    assert str(info.value) == "OXIDB_ENCRYPTION_KEY: cannot read the key file: No such file or directory"
