"""
The operator's HTTP endpoint: C{/metrics}, C{/health} and C{/ready}.

C{/metrics} is prometheus_client's Twisted resource (a C{WSGIResource} over
C{make_wsgi_app}) built with the given reactor and thread pool instead of the
global reactor, so collection, including reading C{/proc}, runs off the
reactor thread. It always answers in the classic text format (0.0.4): the
required pair C{oxidb_connections} (gauge) / C{oxidb_connections_total}
(counter) is valid there but is one family name twice in OpenMetrics.

C{/health} and C{/ready} render on the reactor thread from in-memory state
and never need a login. C{/metrics} may require HTTP basic authentication
(L{oxidb.metrics._settings.BasicCredentials}); it shows data names only when
told to (C{OXIDB_METRICS_NAMES}). No endpoint reveals documents,
configuration or secrets.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from functools import partial
from typing import TYPE_CHECKING, Any

from prometheus_client.exposition import make_wsgi_app
from twisted.web import http
from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site
from twisted.web.wsgi import WSGIResource

from oxidb.metrics._interfaces import IHealth
from oxidb.metrics._settings import BasicCredentials

if TYPE_CHECKING:
    from oxidb.metrics._server import ServerMetrics

_WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def _classic_text_only(app: _WSGIApp) -> _WSGIApp:
    def classic(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        environ.pop("HTTP_ACCEPT", None)
        return app(environ, start_response)

    return classic


def _answer(request: Request, code: int, content_type: bytes, body: bytes) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", content_type)
    request.setHeader(b"cache-control", b"no-store")
    return body


class _Root(Resource):
    """The site's root: its children, 404 for anything else."""

    def getChild(self, path: bytes, request: Request) -> IResource:
        return notFound()


class _Probe(Resource):
    """A leaf answering GET and HEAD with C{answer(request)}; 405 otherwise."""

    isLeaf = True

    def __init__(self, answer: Callable[[Request], bytes]) -> None:
        super().__init__()
        self._answer = answer

    def render(self, request: Request) -> bytes:
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"allow", b"GET, HEAD")
            return _answer(request, 405, b"text/plain; charset=utf-8", b"method not allowed\n")
        return self._answer(request)


def health_answer(health: IHealth, request: Request) -> bytes:
    """C{GET /health}: 200 C{serving} while serving, else 503 with the reason."""
    state = health.liveness()
    return _answer(request, 200 if state.ok else 503, b"text/plain; charset=utf-8", (state.reason + "\n").encode())


def ready_answer(health: IHealth, request: Request) -> bytes:
    """
    C{GET /ready}: 200 when the node should receive traffic, else 503.
    C{GET /ready?role=leader}: 200 only when it is also the writer. Answers a
    JSON object C{{"ready", "leader", "reason"}}; any other C{role} is 400.
    """
    args: dict[bytes, list[bytes]] = request.args or {}
    roles = args.get(b"role")
    if roles not in (None, [b"leader"]):
        return _answer(request, 400, b"application/json", b'{"error":"role must be \'leader\'"}\n')
    state = health.readiness()
    ok, reason = state.ready, state.reason
    if roles and ok and not state.leader:
        ok, reason = False, "not the leader"
    body = {"ready": state.ready, "leader": state.leader, "reason": reason}
    encoded = json.dumps(body, separators=(",", ":")).encode() + b"\n"
    return _answer(request, 200 if ok else 503, b"application/json", encoded)


class _BasicAuthGuard(Resource):
    """
    C{inner} behind HTTP basic authentication: 401 with a C{WWW-Authenticate}
    challenge unless the request carries the right user and password.
    """

    isLeaf = True

    def __init__(self, inner: IResource, credentials: BasicCredentials) -> None:
        super().__init__()
        self._inner = inner
        self._credentials = credentials

    def render(self, request: Request) -> Any:
        if not self._credentials.check(request.getUser(), request.getPassword()):
            request.setHeader(b"www-authenticate", b'Basic realm="oxidb metrics", charset="UTF-8"')
            return _answer(request, 401, b"text/plain; charset=utf-8", b"unauthorized\n")
        return self._inner.render(request)


class _QuietSite(Site):
    """A Site that writes no access log (probes arrive every second)."""

    noisy = False

    def log(self, request: http.Request) -> None:
        pass


def make_metrics_site(
    metrics: ServerMetrics,
    health: IHealth,
    reactor: Any,
    threadpool: Any,
    timeout: float = 60.0,
    credentials: BasicCredentials | None = None,
) -> Site:
    """
    The site to listen on at C{OXIDB_METRICS_ADDR}.

    @param reactor: provides C{IReactorThreads} and C{IReactorTime}.
    @param threadpool: runs the scrapes: a started Twisted C{ThreadPool}
        (C{reactor.getThreadPool()}) or the server's
        L{oxidb.server.workers.WorkerPool}; the caller stops it.
    @param timeout: idle connection timeout, seconds.
    @param credentials: required on C{/metrics} (basic authentication), or
        None to leave it open.
    """
    root = _Root()
    app = _classic_text_only(make_wsgi_app(metrics.registry))
    scrape: IResource = WSGIResource(reactor, threadpool, app)
    if credentials is not None:
        scrape = _BasicAuthGuard(scrape, credentials)
    root.putChild(b"metrics", scrape)
    root.putChild(b"health", _Probe(partial(health_answer, health)))
    root.putChild(b"ready", _Probe(partial(ready_answer, health)))
    return _QuietSite(root, timeout=timeout, reactor=reactor)
