"""
The composition root: L{compose} builds a server's whole object graph once,
in dependency order, and nothing is re-wired afterwards.

The registry comes first and is complete (core rows, the login and user rows
with authentication, the C{raft_*} rows in cluster mode) before anything
reads it: the metrics take their C{cmd} label set from it, the dispatcher
its roles and schemas. The shared parts handlers see are one frozen
L{Services}; each seam is checked against its zope interface when it is
stored (L{oxidb.commands._context.provides}).

The only state that changes while the server runs is in L{Lifecycle}: the
engine once it has opened, whether the server is serving, when it started.

L{oxidb.service.OxiService} composes a real server; L{oxidb.testing.MemoryServer}
composes one around an already opened engine and a synchronous executor.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import attrs
from zope.interface import implementer

from oxidb.atrest import load_key_file
from oxidb.audit.events import Auditor
from oxidb.audit.gelf import GelfEncoder
from oxidb.audit.gelf_udp import GelfSender, resolve_gelf_address
from oxidb.audit.log import AuditLog
from oxidb.auth.manager import AuthManager
from oxidb.auth.store import register_appliers
from oxidb.auth.tls import load_server_tls
from oxidb.commands import Command, CommandRegistry, build_registry
from oxidb.commands._context import (
    IDispatcher,
    IEngineSource,
    IExecutor,
    IServices,
    provides,
)
from oxidb.config import Config
from oxidb.engine import blobs, transactions, ttl
from oxidb.engine import procedures as procedure_store
from oxidb.engine.engine import Engine
from oxidb.metrics import ServerMetrics, threadpool_stats
from oxidb.raft.service import RaftService
from oxidb.server import changefeed
from oxidb.server.dispatch import Dispatcher
from oxidb.server.executor import LocalExecutor
from oxidb.server.protocol import OxiServerFactory
from oxidb.server.workers import WorkerPool

#: Builds the executor from the engine source (tests: a synchronous one).
ExecutorFactory = Callable[["Lifecycle"], Any]


@implementer(IEngineSource)
@attrs.define(eq=False)
class Lifecycle:
    """
    What changes while the server runs; set by L{oxidb.service.OxiService}
    as it starts and stops, read by everything else.

    @ivar engine: the engine once it has opened (None before).
    @ivar serving: accepting and answering requests (C{/health}).
    @ivar started_at: C{clock.seconds()} when the server started.
    """

    engine: Any = None
    serving: bool = False
    started_at: float = 0.0


@implementer(IServices)
@attrs.frozen(eq=False)
class Services:
    """
    The server-wide parts handlers and adapters share (L{IServices}),
    read-only once built. Optional parts are C{None} when off.
    """

    config: Config
    clock: Any
    data_dir: str
    registry: CommandRegistry = attrs.field(validator=attrs.validators.instance_of(CommandRegistry))
    lifecycle: Lifecycle = attrs.field(validator=provides(IEngineSource))
    executor: Any = attrs.field(validator=provides(IExecutor))
    dispatcher: Any = attrs.field(validator=provides(IDispatcher))
    threadpool: WorkerPool | None = None
    metrics: ServerMetrics | None = None
    audit: Auditor | None = None
    auth: AuthManager | None = None
    raft: RaftService | None = None
    health_open: bool = False
    tls_enabled: bool = False
    changes: changefeed.ChangeFeed | None = None

    @property
    def engine(self) -> Any:
        """The engine once it has opened, else None (L{Lifecycle})."""
        return self.lifecycle.engine

    @property
    def auth_enabled(self) -> bool:
        return self.auth is not None

    @property
    def serving(self) -> bool:
        return self.lifecycle.serving

    @property
    def started_at(self) -> float:
        return self.lifecycle.started_at


@attrs.frozen(eq=False)
class Parts:
    """
    Everything L{compose} built; the service starts and stops them.

    @ivar engine: the engine (opened by the service at start, unless it was
        given opened).
    @ivar gelf: the GELF sender, or None.
    @ivar audit_log: the audit log file writer, or None.
    @ivar tls_options: the client port's TLS context factory, or None.
    @ivar metrics_tls: the metrics port's, or None.
    """

    services: Services
    factory: OxiServerFactory
    dispatcher: Any = attrs.field(validator=provides(IDispatcher))
    engine: Any
    threadpool: WorkerPool
    raft: RaftService | None
    gelf: GelfSender | None
    audit_log: AuditLog | None
    tls_options: Any
    metrics_tls: Any

    @property
    def lifecycle(self) -> Lifecycle:
        return self.services.lifecycle

    @property
    def metrics(self) -> ServerMetrics:
        metrics = self.services.metrics
        assert metrics is not None
        return metrics


def _audit(config: Config, reactor: Any, data_dir: str) -> tuple[GelfSender | None, AuditLog | None, Auditor | None]:
    """GELF and the audit log, each only when configured, and the auditor writing to them."""
    gelf: GelfSender | None = None
    if config.gelf is not None:
        encoder = GelfEncoder(config.gelf.compress, config.gelf.chunk_size, random.SystemRandom())
        gelf = GelfSender(reactor, config.gelf, resolve_gelf_address(config.gelf), encoder)
    if not config.audit.enabled:
        return gelf, None, None
    audit_log = AuditLog(Path(data_dir) / "_audit", config.audit.rotation, reactor)
    sinks: list[Any] = [audit_log] + ([gelf] if gelf is not None else [])
    return gelf, audit_log, Auditor(reactor, sinks)


def compose(
    config: Config,
    reactor: Any,
    data_dir: str,
    *,
    on_fatal: Callable[[Any], None] = lambda failure: None,
    engine: Any = None,
    executor: ExecutorFactory | None = None,
    extra_commands: Iterable[Command] = (),
    audit: Auditor | None = None,
) -> Parts:
    """
    Build a server's object graph.

    @param data_dir: the prepared data directory.
    @param on_fatal: called when the Raft node stopped itself (cluster mode).
    @param engine: an engine that is open already (tests); by default an
        engine is made on C{data_dir}, its appliers registered, and it is
        served once the service has opened it.
    @param executor: builds the executor from the L{Lifecycle} (tests);
        default the local executor, or Raft's in cluster mode.
    @param extra_commands: rows added to the registry (tests, embedders).
    @param audit: an auditor to use instead of the configured one (tests).
    """
    cluster = config.node_id is not None
    registry = build_registry(auth=config.auth.enabled, cluster=cluster, extra=tuple(extra_commands))
    threadpool = WorkerPool(
        reactor, config.pool_size, name="oxidb-pool", owned=True, max_queued=config.limits.pool_queue
    )
    lifecycle = Lifecycle(engine=engine)
    if engine is None:
        # Reads never write (so a Read user creates nothing, docs/security.md);
        # in cluster mode the Raft log is the durable record
        # (docs/clustering.md, "Durability").
        key = None if config.encryption_key is None else load_key_file(config.encryption_key)
        engine = Engine(
            data_dir,
            synchronous="NORMAL" if cluster else "FULL",
            auto_create_on_read=False,
            limits=config.limits,
            key=key,
        )
        transactions.register_appliers(engine)
        procedure_store.register_appliers(engine)
        blobs.register_appliers(engine)
        ttl.register_appliers(engine)

    auth: AuthManager | None = None
    auditor: Auditor | None = None
    raft: RaftService | None = None
    if cluster:
        # Raft asks for the users only when it installs a snapshot, long
        # after this function has returned.
        raft = RaftService(
            config,
            reactor,
            engine=engine,
            threadpool=threadpool,
            users=lambda: auth.store if auth is not None else None,
            on_fatal=on_fatal,
            audit=lambda: auditor,
        )
    if executor is not None:
        run = executor(lifecycle)
    elif raft is not None:
        run = raft.executor
    else:
        run = LocalExecutor(reactor, threadpool, lifecycle)

    metrics = ServerMetrics(reactor, registry.names(), data_dir=data_dir, names=config.metrics.names)
    metrics.threadpool_source = lambda: threadpool_stats(threadpool)
    metrics.documents_source = engine.collection_counts
    if raft is not None:
        metrics.raft_source = raft.status
    metrics_tls = (
        None if config.metrics.tls is None else load_server_tls(config.metrics.tls.cert, config.metrics.tls.key)
    )

    # Security parts, in the order their configuration errors are reported.
    tls_options = None if config.tls is None else load_server_tls(config.tls.cert, config.tls.key)
    gelf, audit_log, auditor = _audit(config, reactor, data_dir)
    if audit is not None:
        auditor = audit
    if config.auth.enabled:
        auth = AuthManager.open(
            Path(data_dir) / "_auth", config.auth, reactor, run.read, random.SystemRandom(), limits=config.limits
        )
        register_appliers(engine, auth.store)

    health_open = auth is not None and config.auth.health_open
    # Change streams follow what the engine commits (applied entries in cluster mode).
    changes = changefeed.ChangeFeed(max_watchers=config.limits.max_watchers, accept_ahead=cluster)
    changefeed.attach(engine, reactor, changes)
    dispatcher: Any = Dispatcher(
        registry, auth_enabled=auth is not None, health_open=health_open, metrics=metrics, audit=auditor
    )
    if raft is not None:
        dispatcher = raft.wrap_dispatcher(dispatcher)

    services = Services(
        config=config,
        clock=reactor,
        data_dir=data_dir,
        registry=registry,
        lifecycle=lifecycle,
        executor=run,
        dispatcher=dispatcher,
        threadpool=threadpool,
        metrics=metrics,
        audit=auditor,
        auth=auth,
        raft=raft,
        health_open=health_open,
        tls_enabled=config.tls is not None,
        changes=changes,
    )
    return Parts(
        services=services,
        factory=OxiServerFactory(services, dispatcher, reactor),
        dispatcher=dispatcher,
        engine=engine,
        threadpool=threadpool,
        raft=raft,
        gelf=gelf,
        audit_log=audit_log,
        tls_options=tls_options,
        metrics_tls=metrics_tls,
    )
