"""The limits table: parsing, defaults, overrides, config wiring."""

from __future__ import annotations

import pytest

from oxidb.config import SETTINGS, Config
from oxidb.errors import ConfigError
from oxidb.limits import LIMIT_ROWS, LimitRow, Limits, parse_limit

ROW = LimitRow("max_things", "OXIDB_MAX_THINGS", "max-things", 10, 1, "things")


def test_parse_limit_accepts_integers_at_or_above_the_minimum() -> None:
    assert parse_limit(ROW, " 12 ") == 12
    assert parse_limit(ROW, "1") == 1


@pytest.mark.parametrize("text", ["0", "-1", "1.5", "ten", "", str(2**63)])
def test_parse_limit_refuses_bad_values(text: str) -> None:
    with pytest.raises(ValueError):
        parse_limit(ROW, text)


def test_unknown_limit_names_are_errors() -> None:
    with pytest.raises(TypeError):
        Limits.with_values(no_such_limit=1)
    with pytest.raises(AttributeError):
        _ = Limits().no_such_limit


def test_every_row_is_a_setting_and_reaches_the_config() -> None:
    envs = {s.env: s for s in SETTINGS}
    for row in LIMIT_ROWS:
        assert row.env in envs and envs[row.env].option == row.option
        assert row.default >= row.minimum
        assert getattr(Config().limits, row.attr) == row.default
        given = Config.from_sources({row.env: str(row.default + 1)})
        assert getattr(given.limits, row.attr) == row.default + 1
        with pytest.raises(ConfigError, match=row.env):
            Config.from_sources({row.env: "not-a-number"})
        overridden = Config.from_sources({row.env: str(row.default + 1)}, {row.option: str(row.default + 2)})
        assert getattr(overridden.limits, row.attr) == row.default + 2
