"""
L{OxiService}: the whole server as one Twisted service.

It can run under C{twistd -n oxidb} (see L{oxidb.tap}) or be added to another
Twisted application::

    from oxidb.config import Config
    from oxidb.service import OxiService
    OxiService(Config(addr=("127.0.0.1", 4444)), reactor).setServiceParent(application)
"""

from __future__ import annotations

import signal
from typing import Any

import attrs
from twisted.application.service import MultiService
from twisted.internet.defer import DeferredList, inlineCallbacks
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from oxidb import __version__
from oxidb.commands import default_registry
from oxidb.commands._registry import CommandRegistry
from oxidb.config import Config, format_address
from oxidb.metrics import MetricsRefresher, NodeHealth, ServerMetrics, make_metrics_site, threadpool_stats
from oxidb.server.dispatch import Dispatcher
from oxidb.server.executor import LocalExecutor
from oxidb.server.protocol import OxiServerFactory

#: seconds a clean shutdown waits for in-flight requests before closing anyway.
DRAIN_TIMEOUT = 30.0


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
        self.shared = Services(config=config, clock=reactor, data_dir=data_dir, registry=default_registry())
        self.threadpool = ThreadPool(minthreads=config.pool_size, maxthreads=config.pool_size, name="oxidb-pool")
        self.shared.threadpool = self.threadpool
        self.shared.executor = LocalExecutor(reactor, self.threadpool, self.shared)
        self.dispatcher = Dispatcher(self.shared)
        self.shared.dispatcher = self.dispatcher
        self.factory = OxiServerFactory(self.shared, self.dispatcher, reactor)
        self.shared.factory = self.factory
        self.port: Any = None
        self.metrics_port: Any = None
        self._setup_metrics()

    def _setup_metrics(self) -> None:
        """Request counters always; the HTTP endpoint when configured."""
        shared = self.shared
        metrics = ServerMetrics(self.reactor, shared.registry.names(), data_dir=shared.data_dir)
        metrics.threadpool_source = lambda: threadpool_stats(self.threadpool)
        shared.metrics = metrics
        if self.config.metrics_addr is not None:
            MetricsRefresher(metrics, self.reactor, shared.executor.read).setServiceParent(self)

    def privilegedStartService(self) -> None:
        host, port = self.config.addr
        self.port = self.reactor.listenTCP(port, self.factory, interface=host)
        if self.config.metrics_addr is not None:
            health = NodeHealth(lambda: self.shared.serving, raft=self.shared.metrics.sample_raft)
            site = make_metrics_site(self.shared.metrics, health, self.reactor, self.threadpool)
            mhost, mport = self.config.metrics_addr
            self.metrics_port = self.reactor.listenTCP(mport, site, interface=mhost)
        super().privilegedStartService()

    def startService(self) -> None:
        if self.port is None:
            self.privilegedStartService()
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
        yield super().stopService()
        if self.port is not None:
            yield self.port.stopListening()
        connections = list(self.factory.connections)
        drains = DeferredList([c.drain() for c in connections], consumeErrors=True)
        timeout = self.reactor.callLater(DRAIN_TIMEOUT, drains.cancel)
        yield drains
        if timeout.active():
            timeout.cancel()
        for connection in connections:
            connection.transport.loseConnection()
        engine = self.shared.engine
        if engine is not None:
            yield deferToThreadPool(self.reactor, self.threadpool, engine.close)
        self.threadpool.stop()
        if self.metrics_port is not None:
            # Last, so that /health answers 503 while connections drain.
            yield self.metrics_port.stopListening()
        self._log.info("oxidb-server stopped")

    def _install_signal_handlers(self) -> None:
        """
        SIGTERM/SIGINT: shut down cleanly and exit 0 (twistd's own handlers
        would re-raise the signal and exit with it).
        """

        def on_signal(signum: int, frame: Any) -> None:
            self._log.info("oxidb-server: shutdown signal received, flushing...")
            self.reactor.callFromThread(self.reactor.stop)

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
