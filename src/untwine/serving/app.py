"""The HTTP service of the recommendation funnel: ``create_app(loader, bundle_path) -> FastAPI``.

Endpoints: ``POST /recommend``, ``POST /score``, ``GET /health``, ``GET /metrics`` (Prometheus text),
``POST /admin/reload``. The app knows the funnel only through :class:`~untwine.serving.contract.Funnel`.

Threading model. The funnel calls are CPU-bound, so they never run on the event loop: each one is
submitted to a dedicated, bounded thread pool (``funnel_threads`` threads) and awaited. The event loop
keeps parsing/validating requests and answering ``/health`` and ``/metrics`` while the pool is busy.
A plain ``def`` endpoint would do the same thing through FastAPI's shared anyio pool of 40 threads;
the dedicated pool exists so the number of threads running the funnel can be set to what the cores
can actually run (requests beyond it queue in FIFO order instead of time-slicing 40 threads over 2
cores, which inflates every request's latency and the tail with it). The wait for a pool thread is
reported as the ``queue`` stage. See docs/serving.md for the measurement behind the default. A funnel
that runs in worker processes (``call_async``, untwine.serving.pool) is awaited on the event loop
instead, and ``queue`` is then the wait for a free worker process.

Reload. The loaded funnel lives in one reference that is replaced whole; a request reads it once and
uses that object to the end, so a reload never changes the funnel under a running request. Loading
runs outside anything the requests touch (only reloads take the reload lock, which serialises them).
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import os
import re
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Callable

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError, ResponseValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest

from untwine.serving.contract import (
    BadInputError, Funnel, RecommendRequest, RecommendResponse, ReloadRequest, ScoreRequest, ScoreResponse,
)

__all__ = ["BodySizeLimitMiddleware", "LoadedBundle", "ReloadFailed", "ServingMetrics", "ServingState",
           "create_app", "DEFAULT_FUNNEL_THREADS"]

log = logging.getLogger("untwine.serving")

ENDPOINTS = ("/recommend", "/score", "/health", "/metrics", "/admin/reload")
# seconds (Prometheus base unit); dense between 1 and 200 ms where a funnel request should land
LATENCY_BUCKETS_S = (0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075,
                     0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5)
STAGE_BUCKETS_S = (0.0002, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05,
                   0.075, 0.1, 0.2, 0.5, 1.0)
MAX_STAGE_LABELS = 32  # the funnel names its stages; a bound keeps a buggy funnel from exploding the series
DEFAULT_FUNNEL_THREADS = max(1, os.cpu_count() or 1)
REQUEST_ID_SCOPE_KEY = "untwine.request_id"
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_MAX_ERROR_CHARS = 500


# ---------------------------------------------------------------------------------------- metrics

class ServingMetrics:
    """The Prometheus series of one app, in its own registry (several apps can live in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("untwine_requests", "HTTP requests by endpoint and status code",
                                ["endpoint", "status"], registry=r)
        self.latency = Histogram("untwine_request_latency_seconds", "HTTP request latency by endpoint, "
                                 "from the first byte seen by the app to the last byte sent",
                                 ["endpoint"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.stage = Histogram("untwine_stage_latency_seconds", "Funnel stage time as reported in timings_ms "
                               "(queue = wait for a funnel thread or worker process)", ["stage"],
                               buckets=STAGE_BUCKETS_S, registry=r)
        self.in_flight = Gauge("untwine_in_flight_requests", "HTTP requests being served", registry=r)
        self.bundle_items = Gauge("untwine_bundle_items", "Servable items in the loaded bundle", registry=r)
        self.reloads = Counter("untwine_reloads", "Bundle reloads by result", ["result"], registry=r)
        self.bundle = Info("untwine_bundle", "The loaded bundle", registry=r)
        self._stages: set[str] = set()
        self._stages_lock = threading.Lock()

    def observe_stages(self, timings_ms: dict[str, float]) -> None:
        for stage, ms in timings_ms.items():
            if stage not in self._stages:
                with self._stages_lock:
                    if len(self._stages) >= MAX_STAGE_LABELS:
                        continue
                    self._stages.add(stage)
            self.stage.labels(stage).observe(max(0.0, ms) / 1000.0)

    def bundle_loaded(self, loaded: LoadedBundle) -> None:
        items = loaded.description.get("items")
        if isinstance(items, (int, float)) and not isinstance(items, bool):
            self.bundle_items.set(items)
        self.bundle.info({"bundle": loaded.funnel.bundle_id, "path": loaded.path})


# ---------------------------------------------------------------------------------- ASGI middleware

async def _send_json(send: Callable, status: int, payload: dict[str, Any], close: bool = False) -> None:
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:  # the unread rest of the body makes the connection unusable for the next request
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BodySizeLimitMiddleware:
    """Answers 413 for a body larger than ``max_body_bytes`` before anything parses it (pure ASGI).

    A declared Content-Length over the limit is refused without reading a byte. Otherwise (a smaller
    Content-Length, or a chunked body with no declared size) the body is read here, counting bytes,
    up to the limit, and replayed to the app in one message: memory stays bounded by the limit.
    """

    def __init__(self, app: Callable, max_body_bytes: int) -> None:
        if max_body_bytes < 0:
            raise ValueError(f"max_body_bytes must be >= 0, got {max_body_bytes}")
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = next((v for k, v in scope.get("headers", ()) if k == b"content-length"), None)
        if declared is not None:
            try:
                declared_bytes = int(declared)
            except ValueError:
                await _send_json(send, 400, {"detail": "invalid Content-Length"}, close=True)
                return
            if declared_bytes > self.max_body_bytes:
                await self._too_large(send)
                return
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client went away mid-body: nobody is left to answer
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.max_body_bytes:
                await self._too_large(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: http.disconnect, as the server reports it

        await self.app(scope, replay, send)

    async def _too_large(self, send: Callable) -> None:
        await _send_json(send, 413, {"detail": f"request body larger than {self.max_body_bytes} bytes"}, close=True)


class ObservabilityMiddleware:
    """Request id (X-Request-ID in, or a fresh one; echoed on every response) and the request metrics.

    Outermost, so 413s from the size limit and 422s from validation are counted like everything else.
    """

    def __init__(self, app: Callable, metrics: ServingMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        endpoint = path if path in ENDPOINTS else "other"  # unknown paths share one series
        given = next((v for k, v in scope.get("headers", ()) if k == b"x-request-id"), b"").decode("latin-1")
        request_id = given if _REQUEST_ID_RE.match(given) else uuid.uuid4().hex
        scope[REQUEST_ID_SCOPE_KEY] = request_id
        status = 500  # if the app dies before starting a response, the server answers 500
        started = time.perf_counter()
        self.metrics.in_flight.inc()

        async def send_with_id(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()),
                                                  (b"x-request-id", request_id.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self.metrics.in_flight.dec()
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)


# --------------------------------------------------------------------------------------- state

@dataclass(frozen=True)
class LoadedBundle:
    """One loaded funnel and what was learnt while loading it; replaced whole on reload."""

    funnel: Funnel
    path: str
    description: dict[str, Any]
    loaded_at: float  # wall clock, for /health
    load_seconds: float
    watched_mtime_ns: int | None  # of the watched manifest when this bundle was loaded


class ReloadFailed(RuntimeError):
    """The loader raised (or returned something that is not a funnel): the previous funnel stays."""

    def __init__(self, message: str, still_serving: str) -> None:
        super().__init__(message)
        self.still_serving = still_serving


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= _MAX_ERROR_CHARS else text[:_MAX_ERROR_CHARS] + "..."


def watched_file(bundle_path: str, watch_file: str) -> Path:
    """The file whose mtime signals a new bundle: ``<bundle>/<watch_file>`` for a folder, else the file itself."""
    p = Path(bundle_path)
    return p / watch_file if p.is_dir() else p


def _mtime_ns(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


class ServingState:
    """The current funnel plus reload bookkeeping. ``current`` is read without a lock (one reference read)."""

    def __init__(self, loader: Callable[[str], Funnel], metrics: ServingMetrics,
                 watch_file: str = "manifest.json") -> None:
        self.loader = loader
        self.metrics = metrics
        self.watch_file = watch_file
        self.reloads = 0
        self.failed_reloads = 0
        self.last_reload_error: str | None = None
        self.started_monotonic = time.monotonic()
        self._reload_lock = threading.Lock()  # taken by reloads only, never by requests
        self._failed_mtime: int | None = None
        self.current: LoadedBundle

    def load_initial(self, bundle_path: str) -> None:
        self.current = self._load(bundle_path)
        self.metrics.bundle_loaded(self.current)

    def _load(self, path: str) -> LoadedBundle:
        mtime = _mtime_ns(watched_file(path, self.watch_file))  # before loading: a change during load re-triggers
        t0 = time.perf_counter()
        funnel = self.loader(path)
        if not isinstance(funnel, Funnel) or not isinstance(getattr(funnel, "bundle_id", None), str):
            raise TypeError(f"the loader returned {type(funnel).__name__}, which is not a Funnel "
                            "(bundle_id: str, recommend, score, describe)")
        description = dict(funnel.describe())
        return LoadedBundle(funnel=funnel, path=path, description=description, loaded_at=time.time(),
                            load_seconds=time.perf_counter() - t0, watched_mtime_ns=mtime)

    def reload(self, path: str | None = None) -> dict[str, Any]:
        """Load ``path`` (default: the current bundle's path) and swap it in; blocks while another reload runs."""
        with self._reload_lock:
            old = self.current
            target = path or old.path
            try:
                new = self._load(target)
            except Exception as e:
                self.failed_reloads += 1
                self.last_reload_error = _short(e)
                self.metrics.reloads.labels("error").inc()
                log.exception("reload of %s failed; still serving %s", target, old.funnel.bundle_id)
                raise ReloadFailed(f"reload of {target} failed: {_short(e)}", old.funnel.bundle_id) from e
            self.current = new  # the swap: requests that already read `current` keep `old`
            self.reloads += 1
            self.last_reload_error = None
            self.metrics.reloads.labels("ok").inc()
            self.metrics.bundle_loaded(new)
            log.info("reloaded %s -> %s from %s in %.2f s", old.funnel.bundle_id, new.funnel.bundle_id,
                     target, new.load_seconds)
            return {"status": "ok", "bundle": new.funnel.bundle_id, "previous": old.funnel.bundle_id,
                    "path": target, "load_seconds": round(new.load_seconds, 4), "reloads": self.reloads}

    def reload_if_changed(self) -> bool:
        """One poll of the file watcher: reload when the watched file's mtime moved since the last load."""
        current = self.current
        mtime = _mtime_ns(watched_file(current.path, self.watch_file))
        if mtime is None or mtime == current.watched_mtime_ns or mtime == self._failed_mtime:
            return False
        try:
            self.reload(None)
            return True
        except ReloadFailed:
            self._failed_mtime = mtime  # retry only when the file changes again, not at every poll
            return False


class _ManifestWatcher:
    """Polls the bundle's manifest mtime every ``interval_s`` in a daemon thread and reloads on change."""

    def __init__(self, state: ServingState, interval_s: float) -> None:
        self.state = state
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="untwine-bundle-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.state.reload_if_changed()
            except Exception:  # the watcher must outlive a bad poll; the error is in the log
                log.exception("bundle watch poll failed")


# ----------------------------------------------------------------------------------------- app

class _InternalError(Exception):
    """The funnel raised something other than BadInputError, or broke the response contract."""

    def __init__(self, request_id: str) -> None:
        super().__init__(request_id)
        self.request_id = request_id


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def create_app(loader: Callable[[str], Funnel], bundle_path: str, max_body_bytes: int = 1 << 20, *,
               funnel_threads: int = DEFAULT_FUNNEL_THREADS, admin_token: str | None = None,
               watch_interval_s: float | None = None, watch_file: str = "manifest.json") -> FastAPI:
    """Load the bundle at ``bundle_path`` with ``loader`` (eagerly: a bad bundle fails here) and build the app.

    ``funnel_threads``: threads running funnel calls (more requests than this queue).
    ``admin_token``: when set, ``/admin/reload`` needs the header ``X-Admin-Token``; when not set it is
    accepted only from loopback clients. ``watch_interval_s``: poll ``<bundle>/<watch_file>`` (or the
    bundle file itself) at this interval and reload when its mtime changes; ``None`` = off.
    """
    if funnel_threads < 1:
        raise ValueError(f"funnel_threads must be >= 1, got {funnel_threads}")
    metrics = ServingMetrics()
    state = ServingState(loader=loader, metrics=metrics, watch_file=watch_file)
    state.load_initial(bundle_path)
    pool = ThreadPoolExecutor(max_workers=funnel_threads, thread_name_prefix="untwine-funnel")

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        watcher = _ManifestWatcher(state, watch_interval_s) if watch_interval_s else None
        if watcher:
            watcher.start()
        try:
            yield
        finally:
            if watcher:
                watcher.stop()

    app = FastAPI(title="untwine serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.serving = state
    app.state.metrics = metrics
    app.add_middleware(BodySizeLimitMiddleware, max_body_bytes=max_body_bytes)
    app.add_middleware(ObservabilityMiddleware, metrics=metrics)  # added last = outermost

    async def run_funnel(funnel: Funnel, method: str, body: Any, request: Request) -> Any:
        """Run ``funnel.<method>(body)`` on the pool; BadInputError -> 422, anything else -> logged 500.
        A funnel with ``call_async`` (worker processes) is awaited on the loop instead: a pool thread
        blocked on each call only adds thread hand-offs to every request."""
        request_id = request.scope.get(REQUEST_ID_SCOPE_KEY, "")
        enqueued = time.perf_counter()
        call = getattr(funnel, method)

        def timed() -> tuple[float, Any]:
            waited = time.perf_counter() - enqueued
            return waited, call(body)

        direct = getattr(funnel, "call_async", None)
        try:
            waited_s, result = await (direct(method, body) if direct is not None
                                      else asyncio.wrap_future(pool.submit(timed)))
        except BadInputError as e:
            raise HTTPException(status_code=422, detail=str(e)[:_MAX_ERROR_CHARS]) from None
        except Exception:
            log.exception("funnel call failed (request %s, %s)", request_id, request.url.path)
            raise _InternalError(request_id) from None
        request.state.queue_ms = waited_s * 1000.0
        return result

    def contract_broken(request: Request, what: str) -> _InternalError:
        request_id = request.scope.get(REQUEST_ID_SCOPE_KEY, "")
        log.error("funnel broke the response contract (request %s): %s", request_id, what)
        return _InternalError(request_id)

    @app.post("/recommend", response_model=RecommendResponse)
    async def recommend(body: RecommendRequest, request: Request) -> RecommendResponse:
        funnel = state.current.funnel  # read once: a reload during this request does not switch funnels
        result = await run_funnel(funnel, "recommend", body, request)
        if not isinstance(result, RecommendResponse):
            raise contract_broken(request, f"recommend returned {type(result).__name__}")
        if len(result.items) > body.k:
            raise contract_broken(request, f"recommend returned {len(result.items)} items for k={body.k}")
        result.timings_ms["queue"] = request.state.queue_ms
        result.request_id = request.scope[REQUEST_ID_SCOPE_KEY]
        metrics.observe_stages(result.timings_ms)
        return result

    @app.post("/score", response_model=ScoreResponse)
    async def score(body: ScoreRequest, request: Request) -> ScoreResponse:
        funnel = state.current.funnel
        result = await run_funnel(funnel, "score", body, request)
        if not isinstance(result, ScoreResponse):
            raise contract_broken(request, f"score returned {type(result).__name__}")
        if len(result.scores) != len(body.items):
            raise contract_broken(request, f"score returned {len(result.scores)} scores for {len(body.items)} items")
        result.timings_ms["queue"] = request.state.queue_ms
        metrics.observe_stages(result.timings_ms)
        return result

    @app.get("/health")
    async def health() -> dict[str, Any]:
        # answered on the event loop from what was recorded at load time: stays fast when the pool is saturated
        current = state.current
        return {"status": "ok", "bundle": current.funnel.bundle_id, "bundle_path": current.path,
                "describe": current.description,
                "uptime_s": round(time.monotonic() - state.started_monotonic, 3),
                "loaded_at": current.loaded_at, "load_seconds": round(current.load_seconds, 4),
                "reloads": state.reloads, "failed_reloads": state.failed_reloads,
                "last_reload_error": state.last_reload_error, "funnel_threads": funnel_threads}

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def check_admin(request: Request) -> None:
        if admin_token is None:
            client = request.client.host if request.client else None
            if not _is_loopback(client):
                raise HTTPException(403, detail="admin endpoints accept loopback clients only unless an "
                                                "admin token is configured")
            return
        given = request.headers.get("x-admin-token")
        if given is None:
            raise HTTPException(401, detail="missing X-Admin-Token")
        if not hmac.compare_digest(given.encode(), admin_token.encode()):
            raise HTTPException(403, detail="wrong X-Admin-Token")

    # a dependency, so an unauthorised caller is refused before its body is validated
    @app.post("/admin/reload", dependencies=[Depends(check_admin)])
    async def admin_reload(body: ReloadRequest | None = None) -> dict[str, Any]:
        # not on the funnel pool: a reload must not take a serving thread, nor wait behind queued requests
        try:
            return await asyncio.to_thread(state.reload, body.path if body else None)
        except ReloadFailed as e:
            raise HTTPException(409, detail={"error": str(e), "bundle": e.still_serving}) from None

    @app.exception_handler(_InternalError)
    async def internal_error(_: Request, exc: _InternalError) -> JSONResponse:
        return JSONResponse({"detail": "internal error", "request_id": exc.request_id}, status_code=500)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's default echoes each offending input back; with 2000-id lists that is the whole request
        errors = [{k: v for k, v in err.items() if k in ("type", "loc", "msg", "ctx")} for err in exc.errors()]
        for err in errors:
            if "ctx" in err:
                err["ctx"] = {k: str(v) for k, v in err["ctx"].items()}
        return JSONResponse({"detail": jsonable_encoder(errors)}, status_code=422)

    @app.exception_handler(ResponseValidationError)
    async def response_validation_error(request: Request, exc: ResponseValidationError) -> JSONResponse:
        request_id = request.scope.get(REQUEST_ID_SCOPE_KEY, "")
        log.error("response failed validation (request %s): %s", request_id, exc.errors()[:3])
        return JSONResponse({"detail": "internal error", "request_id": request_id}, status_code=500)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        # Starlette logs the traceback; the client gets no internals
        return JSONResponse({"detail": "internal error",
                             "request_id": request.scope.get(REQUEST_ID_SCOPE_KEY, "")}, status_code=500)

    return app
