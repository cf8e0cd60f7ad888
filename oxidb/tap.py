"""
twistd glue: C{twistd -n oxidb [options]}.

Options are generated from L{oxidb.config.SETTINGS}; each overrides the
C{OXIDB_*} variable of the same meaning.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

from twisted.python import usage

from oxidb import __version__
from oxidb.config import SETTINGS, Config
from oxidb.errors import ConfigError


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run an OxiDB-compatible document database server. Every option "
        "overrides the OXIDB_* environment variable named in its help; "
        "without either, the default applies."
    )
    optParameters = [
        [s.option, None, None, f"{s.help} [env {s.env}, default {s.default or 'unset'}]"]
        for s in SETTINGS
    ]

    def opt_version(self) -> None:
        """Print the version and exit."""
        print(f"oxidb-server {__version__}")
        sys.exit(0)


def makeService(
    options: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
    reactor: Any = None,
) -> Any:
    """
    Build the L{OxiService} for C{options}.

    @param environ: the environment to read C{OXIDB_*} from. When omitted
        (as twistd calls it), C{os.environ} is used, a configuration error
        exits with a one-line message, and SIGTERM/SIGINT shut down cleanly
        with exit status 0.
    @param reactor: the reactor to use (default: the global one, imported
        here and only here).
    @raise ConfigError: the configuration is invalid (only when C{environ}
        is given).
    """
    from oxidb.service import OxiService

    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    twistd = environ is None
    if twistd:
        environ = os.environ
    try:
        config = Config.from_sources(environ, {s.option: options.get(s.option) for s in SETTINGS})
        return OxiService(config, reactor=reactor, handle_signals=twistd)
    except ConfigError as e:
        if twistd:
            # A clean one-line message and a non-zero exit, not a traceback.
            raise SystemExit(f"oxidb: configuration error: {e}") from None
        raise


__all__ = ["Options", "makeService", "ConfigError"]
