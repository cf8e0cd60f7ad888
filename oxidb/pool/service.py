"""
L{PoolService}: the router as one Twisted service, run by C{twistd -n
oxipool} (L{oxidb.pool.tap}) or added to another application::

    from oxidb.pool.config import PoolConfig
    from oxidb.pool.service import PoolService
    PoolService(PoolConfig.from_sources(os.environ), reactor).setServiceParent(application)
"""

from __future__ import annotations

import errno
import signal
from typing import Any

from twisted.application.service import MultiService
from twisted.internet import task
from twisted.internet.defer import inlineCallbacks
from twisted.internet.error import CannotListenError

from oxidb import __version__
from oxidb.auth.tls import load_server_tls
from oxidb.client.twisted import TwistedConnector, endpoint_connector
from oxidb.client.url import ConnectOptions
from oxidb.config import format_address
from oxidb.errors import ConfigError
from oxidb.logs import Logger
from oxidb.pool.backend import Group, backend_connector
from oxidb.pool.config import PoolConfig
from oxidb.pool.protocol import PoolFactory
from oxidb.pool.router import Router

__all__ = ["PoolService"]


class PoolService(MultiService):
    """
    @param connector: opens backend connections (default: TCP, or TLS when
        configured, through Twisted endpoints); tests pass in-memory ones.
    @ivar port: the client port once started.
    """

    _log = Logger()

    def __init__(
        self,
        config: PoolConfig,
        reactor: Any,
        *,
        connector: TwistedConnector | None = None,
        handle_signals: bool = False,
    ) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.handle_signals = handle_signals
        self.tls_options = load_server_tls(config.tls.cert, config.tls.key) if config.tls is not None else None
        connector = connector or endpoint_connector(reactor)
        options = ConnectOptions(
            user=config.backend_user,
            password=config.backend_password.value if config.backend_password is not None else None,
            tls=config.backend_tls,
            ca=config.backend_tls_ca,
            server_name=config.backend_tls_name,
            timeout=config.connect_timeout,
        )
        connect = backend_connector(connector, options, reactor, config.connect_timeout)
        anonymous = ConnectOptions(
            tls=options.tls, ca=options.ca, server_name=options.server_name, timeout=options.timeout
        )
        self.groups = [
            Group(
                index,
                members,
                connect=connect,
                clock=reactor,
                size=config.pool_size,
                replica_size=config.replica_size,
                max_queued=config.max_queued,
                request_timeout=config.request_timeout,
                leader_poll=config.leader_poll,
                replicas=config.replicas if index == 0 and not config.sharded else (),
            )
            for index, members in enumerate(config.groups)
        ]
        self.router = Router(
            self.groups,
            config.sharding,
            auth=config.auth,
            follower_reads=config.read_preference == "follower",
            open_login=backend_connector(connector, anonymous, reactor, config.connect_timeout),
        )
        self.factory = PoolFactory(
            self.router,
            reactor,
            max_clients=config.max_clients,
            max_in_flight=config.max_in_flight,
            idle_timeout=config.idle_timeout,
        )
        self.port: Any = None
        self.metrics_port: Any = None
        self._stats: task.LoopingCall | None = None

    def privilegedStartService(self) -> None:
        try:
            self._listen()
        except CannotListenError as e:
            for port in (self.port, self.metrics_port):
                if port is not None:
                    port.stopListening()
            self.port = self.metrics_port = None
            cause = e.socketError
            reason = getattr(cause, "strerror", None) or str(cause)
            if getattr(cause, "errno", None) == errno.EADDRINUSE:
                reason += " (another process listens there)"
            error = ConfigError(f"cannot listen on {format_address((e.interface, e.port))}: {reason}")
            if self.handle_signals:
                raise SystemExit(f"oxipool: {error}") from None
            raise error from None
        super().privilegedStartService()

    def _listen(self) -> None:
        host, port = self.config.listen
        if self.tls_options is not None:
            self.port = self.reactor.listenSSL(port, self.factory, self.tls_options, interface=host)
        else:
            self.port = self.reactor.listenTCP(port, self.factory, interface=host)
        if self.config.metrics_addr is not None:
            from oxidb.pool.metrics import metrics_site

            mhost, mport = self.config.metrics_addr
            self.metrics_port = self.reactor.listenTCP(mport, metrics_site(self.groups), interface=mhost)

    def startService(self) -> None:
        if self.port is None:
            self.privilegedStartService()
        for group in self.groups:
            group.start()
        config = self.config
        bound = self.port.getHost()
        mode = f"sharded, {len(self.groups)} shards" if config.sharded else "master/replica"
        self._log.info(
            "oxipool listening on {addr} ({mode}, auth {auth}, TLS {tls}, version {version})",
            addr=format_address((bound.host, bound.port)),
            mode=mode,
            auth="on" if config.auth else "off",
            tls="on" if self.tls_options is not None else "off",
            version=__version__,
        )
        for group in self.groups:
            self._log.info(
                "oxipool {shard}: members {members}",
                shard=group.name,
                members=", ".join(format_address(a) for a in group.members),
            )
        if self.metrics_port is not None:
            mbound = self.metrics_port.getHost()
            self._log.info("oxipool metrics listening on {addr}", addr=format_address((mbound.host, mbound.port)))
        if config.stats_interval:
            self._stats = task.LoopingCall(self._log_stats)
            self._stats.clock = self.reactor
            self._stats.start(config.stats_interval, now=False)
        if self.handle_signals:
            self.reactor.callWhenRunning(self._install_signal_handlers)
        super().startService()

    def _log_stats(self) -> None:
        for group in self.groups:
            state = group.state
            self._log.info(
                "oxipool {shard}: leader {leader}, {requests} requests, {errors} errors, {clients} clients",
                shard=group.name,
                leader=format_address(state.leader) if state.leader else "unknown",
                requests=state.requests,
                errors=state.errors,
                clients=len(self.factory.clients),
            )

    @inlineCallbacks
    def stopService(self) -> Any:
        if self._stats is not None and self._stats.running:
            self._stats.stop()
        if self.port is not None:
            yield self.port.stopListening()
        for client in list(self.factory.clients):
            if client.transport is not None:
                client.transport.loseConnection()
        for group in self.groups:
            group.stop()
        if self.metrics_port is not None:
            yield self.metrics_port.stopListening()
        yield super().stopService()
        self._log.info("oxipool stopped")

    def _install_signal_handlers(self) -> None:
        def on_signal(signum: int, frame: Any) -> None:
            self._log.info("oxipool: shutdown signal received")
            self.reactor.callFromThread(self.reactor.stop)

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
