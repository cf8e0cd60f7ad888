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
from oxidb.tap import option_lists
from oxidb.tap import option_values as server_option_values

__all__ = ["Options", "makeService", "option_values"]


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run oxipool, a router in front of OxiDB Raft groups (master/replica pooling or sharding). "
        "Every option overrides the OXIPOOL_* environment variable named in its help."
    )
    optParameters, optFlags = option_lists(POOL_SETTINGS)

    def opt_version(self) -> None:
        """Print the version and exit."""
        print(f"oxipool {__version__}")
        sys.exit(0)


def option_values(options: Mapping[str, Any]) -> dict[str, str | None]:
    """Each setting's option as text (switches as C{"true"}/C{"false"}), or C{None} when not given."""
    return server_option_values(options, POOL_SETTINGS)


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
