"""
twistd glue: C{twistd -n oxipool [options]}. Options are generated from
L{oxidb.pool.config.POOL_SETTINGS}; each overrides the C{OXIPOOL_*}
variable of the same meaning. Boolean settings are flags (C{--auth},
C{--no-auth}).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

from twisted.python import usage

from oxidb import __version__
from oxidb.errors import ConfigError
from oxidb.pool.config import POOL_SETTINGS, PoolConfig

__all__ = ["Options", "makeService", "option_values"]


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run oxipool, a router in front of OxiDB Raft groups (master/replica pooling or sharding). "
        "Every option overrides the OXIPOOL_* environment variable named in its help."
    )
    optParameters = [
        [s.option, None, None, f"{s.help} [env {s.env}, default {s.default or 'unset'}]"]
        for s in POOL_SETTINGS
        if not s.switch
    ]
    optFlags = [
        flag
        for s in POOL_SETTINGS
        if s.switch
        for flag in (
            [s.option, None, f"{s.help} [env {s.env}=true]"],
            [f"no-{s.option}", None, f"turn --{s.option} off [env {s.env}=false]"],
        )
    ]

    def opt_version(self) -> None:
        """Print the version and exit."""
        print(f"oxipool {__version__}")
        sys.exit(0)


def option_values(options: Mapping[str, Any]) -> dict[str, str | None]:
    """Each setting's option as text (switches as C{"true"}/C{"false"}), or C{None} when not given."""
    values: dict[str, str | None] = {}
    for setting in POOL_SETTINGS:
        given = options.get(setting.option)
        if not setting.switch or isinstance(given, str):
            values[setting.option] = given
            continue
        off = options.get(f"no-{setting.option}")
        if given and off:
            raise ConfigError(f"--{setting.option} and --no-{setting.option} contradict each other: give one")
        values[setting.option] = "true" if given else "false" if off else None
    return values


def makeService(options: Mapping[str, Any], environ: Mapping[str, str] | None = None, reactor: Any = None) -> Any:
    """
    The L{PoolService} for C{options}; with C{environ} omitted (as twistd
    calls it) C{os.environ} is read and a configuration error exits with a
    one-line message.
    """
    from oxidb.pool.service import PoolService

    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    twistd = environ is None
    try:
        config = PoolConfig.from_sources(os.environ if environ is None else environ, option_values(options))
        return PoolService(config, reactor, handle_signals=twistd)
    except ConfigError as e:
        if twistd:
            raise SystemExit(f"oxipool: configuration error: {e}") from None
        raise
