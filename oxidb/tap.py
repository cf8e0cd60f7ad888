"""
twistd glue: C{twistd -n oxidb [options]}.

Options are generated from L{oxidb.config.SETTINGS}; each overrides the
C{OXIDB_*} variable of the same meaning. Boolean settings are flags:
C{--auth} turns authentication on, C{--no-auth} off, whatever C{OXIDB_AUTH}
says.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping
from typing import Any

from twisted.logger import LogLevel
from twisted.python import usage

from oxidb import __version__
from oxidb.config import SETTINGS, Config
from oxidb.errors import ConfigError
from oxidb.logs import set_minimum_level


def option_lists(settings: Iterable[Any]) -> tuple[list[list[Any]], list[list[Any]]]:
    """
    twistd's C{optParameters} and C{optFlags} for C{settings} (rows with
    C{option}, C{env}, C{help}, C{default}, C{switch}): a switch is a pair
    of flags, C{--<option>} and C{--no-<option>}.
    """
    parameters: list[list[Any]] = []
    flags: list[list[Any]] = []
    for s in settings:
        if not s.switch:
            parameters.append([s.option, None, None, f"{s.help} [env {s.env}, default {s.default or 'unset'}]"])
            continue
        flags.append([s.option, None, f"{s.help} [env {s.env}=true, default {s.default or 'false'}]"])
        flags.append([f"no-{s.option}", None, f"turn --{s.option} off [env {s.env}=false]"])
    return parameters, flags


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run an OxiDB-compatible document database server. Every option "
        "overrides the OXIDB_* environment variable named in its help; "
        "without either, the default applies."
    )
    optParameters, optFlags = option_lists(SETTINGS)

    def opt_version(self) -> None:
        """Print the version and exit."""
        print(f"oxidb-server {__version__}")
        sys.exit(0)


def option_values(options: Mapping[str, Any], settings: Iterable[Any] = SETTINGS) -> dict[str, str | None]:
    """
    The text of each setting's option as L{Config.from_sources} takes it, or
    C{None} when not given. A switch given as C{--<option>} is C{"true"},
    as C{--no-<option>} C{"false"}; text (an embedder's C{{"auth": "true"}})
    is passed on.

    @raise ConfigError: both C{--<option>} and C{--no-<option>} are given.
    """
    values: dict[str, str | None] = {}
    for setting in settings:
        given = options.get(setting.option)
        if not setting.switch or isinstance(given, str):
            values[setting.option] = given
            continue
        off = options.get(f"no-{setting.option}")
        if given and off:
            raise ConfigError(f"--{setting.option} and --no-{setting.option} contradict each other: give one")
        values[setting.option] = "true" if given else "false" if off else None
    return values


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
        config = Config.from_sources(environ, option_values(options))
        if twistd:
            # twistd's own observer writes debug events too (a health
            # check's connection and close, every second): info and up
            # unless verbose.
            set_minimum_level(None if config.verbose else LogLevel.info)
        return OxiService(config, reactor=reactor, handle_signals=twistd)
    except ConfigError as e:
        if twistd:
            # A clean one-line message and a non-zero exit, not a traceback.
            raise SystemExit(f"oxidb: configuration error: {e}") from None
        raise


__all__ = ["Options", "makeService", "option_values", "ConfigError"]
