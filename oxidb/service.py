"""
L{OxiService}: the whole server as one Twisted service.

It can run under C{twistd -n oxidb} (see L{oxidb.tap}) or be added to another
Twisted application::

    from oxidb.config import Config
    from oxidb.service import OxiService
    OxiService(Config(addr=("127.0.0.1", 4444)), reactor).setServiceParent(application)
"""

from __future__ import annotations

import faulthandler
import os
import random
import signal
import sys
from pathlib import Path
from typing import Any

import attrs
from twisted.application.service import MultiService
from twisted.internet.defer import DeferredList, inlineCallbacks
from twisted.logger import globalLogPublisher

from oxidb import __version__
from oxidb.audit.events import Auditor
from oxidb.audit.gelf import GelfEncoder
from oxidb.audit.gelf_udp import GelfSender, resolve_gelf_address
from oxidb.audit.log import AuditLog
from oxidb.auth.manager import AuthManager
from oxidb.auth.store import register_appliers
from oxidb.auth.tls import load_server_tls
from oxidb.commands import default_registry
from oxidb.commands.auth import LOGIN_COMMANDS, USER_COMMANDS
from oxidb.commands.raft import RAFT_COMMANDS
from oxidb.commands._registry import CommandRegistry
from oxidb.config import SETTINGS, Config, format_address
from oxidb.datadir import DataDirLock
from oxidb.errors import ConfigError
from oxidb.engine import blobs, procedures as procedure_store, transactions
from oxidb.engine.engine import Engine
from oxidb.logs import Logger
from oxidb.metrics import MetricsRefresher, NodeHealth, ServerMetrics, make_metrics_site, threadpool_stats
from oxidb.raft.service import RaftService
from oxidb.server.dispatch import Dispatcher
from oxidb.server.executor import LocalExecutor
from oxidb.server.protocol import OxiServerFactory
from oxidb.server.workers import WorkerPool
from oxidb.server.scheduler import Scheduler

#: seconds a clean shutdown waits for in-flight requests before closing anyway.
DRAIN_TIMEOUT = 30.0

#: seconds after a shutdown signal by which the process has exited: a clean
#: stop that takes longer is stuck (a bug), so every thread's stack is
#: written to stderr and the process exits with status 1. Nothing
#: acknowledged is lost by that: the stores survive a kill -9.
SHUTDOWN_DEADLINE = DRAIN_TIMEOUT + 30.0


@attrs.define(eq=False)
class Services:
    """
    The server-wide parts handlers and adapters share
    (L{oxidb.commands.IServices}). Optional parts are C{None} when off.
    """

    config: Config
    clock: Any
    data_dir: str
    registry: CommandRegistry
    threadpool: Any = None
    executor: Any = None
    dispatcher: Any = None
    factory: Any = None
    engine: Any = None
    metrics: Any = None
    audit: Any = None
    auth: Any = None
    raft: Any = None
    auth_enabled: bool = False
    health_open: bool = False
    tls_enabled: bool = False
    started_at: float = 0.0
    serving: bool = False


class OxiService(MultiService):
    """
    The OxiDB server. Construction validates the configuration and prepares
    the data directory (raising L{oxidb.errors.ConfigError}); starting binds
    the client port; stopping stops accepting, lets in-flight requests finish,
    closes connections and flushes storage.

    @ivar port: the listening port once started (C{port.getHost().port} tells
        the real port when configured with port 0).
    """

    _log = Logger()

    def __init__(self, config: Config, reactor: Any, *, handle_signals: bool = False) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.handle_signals = handle_signals
        data_dir = config.prepare_data_dir()
        self.datadir_lock = DataDirLock(data_dir)
        self.shared = Services(config=config, clock=reactor, data_dir=data_dir, registry=default_registry())
        self.threadpool = WorkerPool(
            reactor, config.pool_size, name="oxidb-pool", owned=True, max_queued=config.limits.pool_queue
        )
        self.shared.threadpool = self.threadpool
        self.shared.executor = LocalExecutor(reactor, self.threadpool, self.shared)
        self.dispatcher = Dispatcher(self.shared)
        self.shared.dispatcher = self.dispatcher
        self.factory = OxiServerFactory(self.shared, self.dispatcher, reactor)
        self.shared.factory = self.factory
        self.port: Any = None
        self.metrics_port: Any = None
        # Reads never write (so a Read user creates nothing, docs/security.md);
        # in cluster mode the Raft log is the durable record
        # (docs/clustering.md, "Durability").
        cluster = config.node_id is not None
        self.engine = Engine(
            data_dir, synchronous="NORMAL" if cluster else "FULL", auto_create_on_read=False, limits=config.limits
        )
        transactions.register_appliers(self.engine)
        procedure_store.register_appliers(self.engine)
        blobs.register_appliers(self.engine)
        self.raft: RaftService | None = self._setup_cluster() if cluster else None
        self._setup_metrics()
        self._setup_security()
        Scheduler(
            reactor, self.shared.executor, self.engine, should_run=self._runs_schedules, metrics=self.shared.metrics
        ).setServiceParent(self)

    def _setup_security(self) -> None:
        """TLS, GELF, audit and authentication, each only when configured."""
        config, shared, reactor = self.config, self.shared, self.reactor
        self.tls_options = None
        if config.tls is not None:
            self.tls_options = load_server_tls(config.tls.cert, config.tls.key)
            shared.tls_enabled = True
        self.gelf: GelfSender | None = None
        if config.gelf is not None:
            encoder = GelfEncoder(config.gelf.compress, config.gelf.chunk_size, random.SystemRandom())
            self.gelf = GelfSender(reactor, config.gelf, resolve_gelf_address(config.gelf), encoder)
        self.audit_log: AuditLog | None = None
        if config.audit.enabled:
            self.audit_log = AuditLog(Path(shared.data_dir) / "_audit", config.audit.rotation, reactor)
            sinks: list[Any] = [self.audit_log] + ([self.gelf] if self.gelf is not None else [])
            shared.audit = Auditor(reactor, sinks)
        if config.auth.enabled:
            shared.auth_enabled = True
            shared.health_open = config.auth.health_open
            shared.auth = AuthManager.open(
                Path(shared.data_dir) / "_auth",
                config.auth,
                reactor,
                shared.executor.read,
                random.SystemRandom(),
                limits=config.limits,
            )
            shared.registry.extend([*LOGIN_COMMANDS, *USER_COMMANDS])
            register_appliers(self.engine, shared.auth.store)

    def _setup_metrics(self) -> None:
        """Request counters always; the HTTP endpoint when configured."""
        shared = self.shared
        metrics = ServerMetrics(
            self.reactor, shared.registry.names(), data_dir=shared.data_dir, names=self.config.metrics.names
        )
        metrics.threadpool_source = lambda: threadpool_stats(self.threadpool)
        metrics.documents_source = self.engine.collection_counts
        if self.raft is not None:
            metrics.raft_source = self.raft.status
        shared.metrics = metrics
        tls = self.config.metrics.tls
        self.metrics_tls = None if tls is None else load_server_tls(tls.cert, tls.key)
        if self.config.metrics_addr is not None:
            MetricsRefresher(metrics, self.reactor, shared.executor.read).setServiceParent(self)

    # --- cluster mode ---------------------------------------------------------

    def _setup_cluster(self) -> RaftService:
        """
        Raft (OXIDB_NODE_ID set): the node and its Raft port, writes through
        Raft (the cluster executor), linearizable reads on request, and the
        raft_* commands.
        """
        shared = self.shared
        raft = RaftService(
            self.config,
            self.reactor,
            engine=self.engine,
            threadpool=self.threadpool,
            users=lambda: shared.auth.store if shared.auth is not None else None,
            on_fatal=self._cluster_failed,
            audit=lambda: shared.audit,
        )
        shared.raft = raft
        shared.executor = raft.executor
        shared.dispatcher = self.factory.dispatcher = raft.wrap_dispatcher(self.dispatcher)
        shared.registry.extend(RAFT_COMMANDS)
        raft.setServiceParent(self)
        return raft

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

    def privilegedStartService(self) -> None:
        self._lock_data_dir()
        host, port = self.config.addr
        if self.tls_options is not None:
            self.port = self.reactor.listenSSL(port, self.factory, self.tls_options, interface=host)
        else:
            self.port = self.reactor.listenTCP(port, self.factory, interface=host)
        if self.config.metrics_addr is not None:
            health = NodeHealth(lambda: self.shared.serving, raft=self.shared.metrics.sample_raft)
            settings = self.config.metrics
            site = make_metrics_site(
                self.shared.metrics, health, self.reactor, self.threadpool, credentials=settings.credentials
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
        self.shared.engine = self.engine
        gelf_settings = self.config.gelf
        if self.gelf is not None and gelf_settings is not None:
            self.gelf.start()
            self._gelf_observer = self.gelf.observer()
            globalLogPublisher.addObserver(self._gelf_observer)
            self._log.info("GELF logging: enabled ({addr})", addr=format_address((gelf_settings.host, gelf_settings.port)))
        if self.audit_log is not None:
            self.audit_log.start()
            self._log.info("{line}", line=self.config.audit.startup_line())
        if self.tls_options is not None:
            self._log.info("TLS: enabled")
        if self.shared.auth is not None:
            self._log.info("authentication: enabled")
            # The real stderr: twistd may redirect sys.stderr into the log,
            # and the generated password must never reach a log.
            self.shared.auth.ensure_default_admin(sys.__stderr__)
        self.threadpool.start()
        self.shared.started_at = self.reactor.seconds()
        self.shared.serving = True
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

    @inlineCallbacks
    def stopService(self) -> Any:
        """Stop accepting, finish in-flight requests, close, flush."""
        self.shared.serving = False
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
        engine = self.shared.engine
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
