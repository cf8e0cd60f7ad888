"""
L{OxiService}: the whole server as one Twisted service.

It can run under C{twistd -n oxidb} (see L{oxidb.tap}) or be added to another
Twisted application::

    from oxidb.config import Config
    from oxidb.service import OxiService
    OxiService(Config(addr=("127.0.0.1", 4444)), reactor).setServiceParent(application)
"""

from __future__ import annotations

import errno
import faulthandler
import os
import signal
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any, cast

from twisted.application.service import MultiService
from twisted.internet.defer import DeferredList, inlineCallbacks
from twisted.internet.error import CannotListenError
from twisted.logger import globalLogPublisher

from oxidb import __version__
from oxidb.audit.events import Auditor
from oxidb.auth.manager import AuthManager
from oxidb.auth.store import ADMIN_PASSWORD_FILE
from oxidb.commands import Command
from oxidb.compose import ExecutorFactory, Lifecycle, Parts, Services, compose
from oxidb.config import SETTINGS, Config, format_address
from oxidb.datadir import DataDirLock
from oxidb.errors import BadRequestError, ConfigError
from oxidb.logs import Logger
from oxidb.metrics import MetricsRefresher, NodeHealth, make_metrics_site
from oxidb.server.eager import listen_tcp
from oxidb.server.scheduler import Scheduler
from oxidb.server.ttl import TtlSweeper

#: seconds a clean shutdown waits for in-flight requests before closing anyway.
DRAIN_TIMEOUT = 30.0

#: seconds after a shutdown signal by which the process has exited: a clean
#: stop that takes longer is stuck (a bug), so every thread's stack is
#: written to stderr and the process exits with status 1. Nothing
#: acknowledged is lost by that: the stores survive a kill -9.
SHUTDOWN_DEADLINE = DRAIN_TIMEOUT + 30.0

__all__ = ["DRAIN_TIMEOUT", "SHUTDOWN_DEADLINE", "Lifecycle", "OxiService", "Services"]


class OxiService(MultiService):
    """
    The OxiDB server. Construction validates the configuration and prepares
    the data directory (raising L{oxidb.errors.ConfigError}), and builds the
    whole object graph once (L{oxidb.compose.compose}); starting binds the
    client port; stopping stops accepting, lets in-flight requests finish,
    closes connections and flushes storage.

    @ivar port: the listening port once started (C{port.getHost().port} tells
        the real port when configured with port 0).
    @ivar parts: what L{oxidb.compose.compose} built.
    @ivar shared: the frozen L{Services} handlers share.
    """

    _log = Logger()

    def __init__(
        self,
        config: Config,
        reactor: Any,
        *,
        handle_signals: bool = False,
        engine: Any = None,
        executor: ExecutorFactory | None = None,
        extra_commands: Iterable[Command] = (),
        audit: Auditor | None = None,
    ) -> None:
        """
        @param engine: see L{compose}: an engine open already (tests).
        @param executor: see L{compose}: builds the executor (tests).
        @param extra_commands: registry rows added to the built-in ones.
        @param audit: an auditor replacing the configured one (tests).
        """
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.handle_signals = handle_signals
        data_dir = config.prepare_data_dir()
        self.datadir_lock = DataDirLock(data_dir)
        self.parts: Parts = compose(
            config,
            reactor,
            data_dir,
            on_fatal=self._cluster_failed,
            engine=engine,
            executor=executor,
            extra_commands=extra_commands,
            audit=audit,
        )
        parts = self.parts
        self.shared: Services = parts.services
        self.lifecycle: Lifecycle = parts.lifecycle
        self.threadpool = parts.threadpool
        self.engine = parts.engine
        self.dispatcher = parts.dispatcher
        self.factory = parts.factory
        self.raft = parts.raft
        self.gelf = parts.gelf
        self.audit_log = parts.audit_log
        self.tls_options = parts.tls_options
        self.metrics_tls = parts.metrics_tls
        self.port: Any = None
        self.metrics_port: Any = None
        if self.raft is not None:
            self.raft.setServiceParent(self)
        if config.metrics_addr is not None:
            MetricsRefresher(parts.metrics, reactor, self.shared.executor.read).setServiceParent(self)
        Scheduler(
            reactor, self.shared.executor, self.engine, should_run=self._runs_schedules, metrics=parts.metrics
        ).setServiceParent(self)
        # Expired documents: deleted by the same node that runs schedules.
        TtlSweeper(
            reactor,
            self.shared.executor,
            self.engine,
            should_run=self._runs_schedules,
            interval=config.ttl_interval,
            batch_size=config.ttl_batch_size,
        ).setServiceParent(self)

    def _runs_schedules(self) -> bool:
        """Standalone servers run schedules; in a cluster, only the leader."""
        return self.raft is None or self.raft.node.is_leader

    def _cluster_failed(self, failure: Any) -> None:
        """
        The Raft node stopped itself (its storage failed): stop the server.
        Under twistd the process then exits with status 1, so that a
        supervisor sees a failure rather than a clean stop.
        """
        self._log.critical("oxidb-server: stopping: the Raft node failed ({error})", error=failure.getErrorMessage())
        if self.handle_signals:
            self.reactor.addSystemEventTrigger("after", "shutdown", self._exit_failed)
        self.reactor.callLater(0, self.reactor.stop)

    @staticmethod
    def _exit_failed() -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)

    # --- starting and stopping -----------------------------------------------

    def _lock_data_dir(self) -> None:
        """One server per data directory: take its OS lock before anything else."""
        try:
            self.datadir_lock.acquire()
        except ConfigError as e:
            if self.handle_signals:
                # Under twistd: a one-line message and a non-zero exit.
                raise SystemExit(f"oxidb: configuration error: {e}") from None
            raise

    def _ensure_first_admin(self, auth: AuthManager) -> None:
        """
        On the first start with auth on, create C{admin} with the configured
        password, or a generated one written to a 0600 file whose path (never
        the password) is logged. In a cluster, C{raft_init} then replicates
        the admin of the node it ran on to every node (L{SeedAdmin}).
        """
        config = self.config
        given = config.admin_password.value if config.admin_password is not None else None
        password_file = Path(self.shared.data_dir) / ADMIN_PASSWORD_FILE
        # The banner goes to the real stderr, and only when it is a terminal:
        # twistd redirects sys.stderr into the log, and under a supervisor
        # stderr is a log too (the journal); the password must never reach
        # one. The file is where it always is.
        terminal = sys.__stderr__ if sys.__stderr__ is not None and sys.__stderr__.isatty() else None
        try:
            first = auth.ensure_first_admin(given, password_file, cast(IO[str] | None, terminal))
        except BadRequestError as e:
            source = "OXIDB_ADMIN_PASSWORD_FILE" if config.admin_password_file else "OXIDB_ADMIN_PASSWORD"
            error = ConfigError(f"{source}: {e}")
            if self.handle_signals:
                raise SystemExit(f"oxidb: configuration error: {error}") from None
            raise error from None
        if first is None:
            return
        if first.password_file is not None:
            self._log.info(
                "first start: created user '{user}' (admin); its generated password is in {path} (mode 0600, "
                "readable by this user only): log in, change it with update_user, then delete the file",
                user=first.username,
                path=str(first.password_file),
            )
        else:
            source = "OXIDB_ADMIN_PASSWORD_FILE" if config.admin_password_file else "OXIDB_ADMIN_PASSWORD"
            self._log.info(
                "first start: created user '{user}' (admin) with the password from {source}",
                user=first.username,
                source=source,
            )

    def privilegedStartService(self) -> None:
        self._lock_data_dir()
        try:
            self._listen()
        except CannotListenError as e:
            self._unlisten()
            self.datadir_lock.release()
            error = ConfigError(self._listen_error(e))
            if self.handle_signals:
                # Under twistd: a one-line message and a non-zero exit, not a traceback.
                raise SystemExit(f"oxidb: {error}") from None
            raise error from None

    def _listen_error(self, error: CannotListenError) -> str:
        """One line naming the address, the setting it comes from, and why it cannot be bound."""
        config = self.config
        where = (error.interface, error.port)
        env = "OXIDB_ADDR"
        if config.metrics_addr is not None and where == config.metrics_addr:
            env = "OXIDB_METRICS_ADDR"
        elif config.node_id is not None and where == config.raft_addr:
            env = "OXIDB_RAFT_ADDR"
        cause = error.socketError
        reason = getattr(cause, "strerror", None) or str(cause)
        if getattr(cause, "errno", None) == errno.EADDRINUSE:
            reason += " (another process, perhaps another oxidb-server, listens there: stop it or choose another port)"
        return f"cannot listen on {env}={format_address(where)}: {reason}"

    def _unlisten(self) -> None:
        """Close the ports bound before a bind failed (in-process callers keep running)."""
        ports = [self.port, self.metrics_port]
        if self.raft is not None:
            ports.append(self.raft.transport.port)
            self.raft.transport.port = None
        for port in ports:
            if port is not None:
                port.stopListening()
        self.port = self.metrics_port = None

    def _listen(self) -> None:
        host, port = self.config.addr
        if self.tls_options is not None:
            self.port = self.reactor.listenSSL(port, self.factory, self.tls_options, interface=host)
        else:
            self.port = listen_tcp(self.reactor, port, self.factory, interface=host)
        if self.config.metrics_addr is not None:
            health = NodeHealth(lambda: self.lifecycle.serving, raft=self.parts.metrics.sample_raft)
            settings = self.config.metrics
            site = make_metrics_site(
                self.parts.metrics, health, self.reactor, self.threadpool, credentials=settings.credentials
            )
            mhost, mport = self.config.metrics_addr
            if self.metrics_tls is not None:
                self.metrics_port = self.reactor.listenSSL(mport, site, self.metrics_tls, interface=mhost)
            else:
                self.metrics_port = self.reactor.listenTCP(mport, site, interface=mhost)
        super().privilegedStartService()

    def startService(self) -> None:
        if self.port is None:
            self.privilegedStartService()
        # Blocking, once, before the reactor serves anything: a storage
        # failure stops startup (twistd exits non-zero).
        self.engine.open()
        self.lifecycle.engine = self.engine
        gelf_settings = self.config.gelf
        if self.gelf is not None and gelf_settings is not None:
            self.gelf.start()
            self._gelf_observer = self.gelf.observer()
            globalLogPublisher.addObserver(self._gelf_observer)
            self._log.info(
                "GELF logging: enabled ({addr})", addr=format_address((gelf_settings.host, gelf_settings.port))
            )
        if self.audit_log is not None:
            self.audit_log.start()
            self._log.info("{line}", line=self.config.audit.startup_line())
        if self.tls_options is not None:
            self._log.info("TLS: enabled")
        if self.shared.auth is not None:
            self._log.info("authentication: enabled")
            self._ensure_first_admin(self.shared.auth)
        self.threadpool.start()
        self.lifecycle.started_at = self.reactor.seconds()
        self.lifecycle.serving = True
        config = self.config
        bound = self.port.getHost()
        self._log.info(
            "oxidb-server listening on {addr} (pool_size={pool_size}, data_dir={data_dir}, "
            "idle_timeout={idle_timeout}s)",
            addr=format_address((bound.host, bound.port)),
            pool_size=config.pool_size,
            data_dir=self.shared.data_dir,
            idle_timeout=config.idle_timeout,
            version=__version__,
        )
        if config.verbose:
            for setting in SETTINGS:
                if setting.field is not None:
                    self._log.info("config {env} = {value!r}", env=setting.env, value=getattr(config, setting.field))
        if self.metrics_port is not None:
            mbound = self.metrics_port.getHost()
            self._log.info("metrics listening on {addr}", addr=format_address((mbound.host, mbound.port)))
        if self.handle_signals:
            self.reactor.callWhenRunning(self._install_signal_handlers)
        super().startService()
        self._log.info(
            "oxidb-server ready: auth {auth}, TLS {tls}, {cluster}; connect with: oxidb-cli --url {url}",
            auth="on" if self.shared.auth is not None else "off",
            tls="on" if self.tls_options is not None else "off",
            cluster=self._cluster_text(),
            url=self.connect_url(),
            data_dir=self.shared.data_dir,
        )

    def _cluster_text(self) -> str:
        if self.raft is None:
            return "standalone"
        core = self.raft.node.core
        cluster_id = core.cluster_id if core is not None else None
        if cluster_id is None:
            return f"cluster node {self.config.node_id}, not initialized (run raft_init on one node)"
        return f"cluster node {self.config.node_id}, cluster id {cluster_id}"

    def connect_url(self) -> str:
        """
        The C{oxidb://} URL C{oxidb-cli} connects to this server with (the
        bound port; a wildcard address becomes loopback).
        """
        bound = self.port.getHost()
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(bound.host, bound.host)
        user = "admin@" if self.shared.auth is not None else ""
        query = "?tls=true" if self.tls_options is not None else ""
        return f"oxidb://{user}{format_address((host, bound.port))}{query}"

    @inlineCallbacks
    def stopService(self) -> Any:
        """Stop accepting, finish in-flight requests, close, flush."""
        self.lifecycle.serving = False
        if self.port is not None:
            yield self.port.stopListening()
        # In-flight requests finish while everything they need (the Raft node
        # in a cluster, the scheduler's writes) still runs.
        connections = list(self.factory.connections)
        busy = [c for c in connections if c.busy]
        if busy:
            self._log.info(
                "oxidb-server: waiting up to {timeout:g}s for {count} in-flight requests",
                timeout=DRAIN_TIMEOUT,
                count=len(busy),
            )
        drains = DeferredList([c.drain() for c in connections], consumeErrors=True)
        timeout = self.reactor.callLater(DRAIN_TIMEOUT, drains.cancel)
        yield drains
        if timeout.active():
            timeout.cancel()
        else:
            self._log.warn(
                "oxidb-server: {count} requests still in flight after {timeout:g}s; closing their connections",
                count=sum(1 for c in connections if c.busy),
                timeout=DRAIN_TIMEOUT,
            )
        for connection in connections:
            if connection.transport is not None:
                connection.transport.loseConnection()
        yield super().stopService()
        engine = self.lifecycle.engine
        if engine is not None:
            yield self.threadpool.defer(engine.close)
        self.threadpool.stop()
        if self.audit_log is not None:
            yield self.audit_log.stop()
        if self.gelf is not None:
            globalLogPublisher.removeObserver(self._gelf_observer)
            yield self.gelf.stop()
        if self.metrics_port is not None:
            # Last, so that /health answers 503 while connections drain.
            yield self.metrics_port.stopListening()
        self.datadir_lock.release()
        self._log.info("oxidb-server stopped")

    def _install_signal_handlers(self) -> None:
        """
        SIGTERM/SIGINT: shut down cleanly and exit 0 (twistd's own handlers
        would re-raise the signal and exit with it).
        """

        def on_signal(signum: int, frame: Any) -> None:
            self._log.info("oxidb-server: shutdown signal received, flushing...")
            if sys.__stderr__ is not None:
                faulthandler.dump_traceback_later(SHUTDOWN_DEADLINE, exit=True, file=sys.__stderr__)
            self.reactor.callFromThread(self.reactor.stop)

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
