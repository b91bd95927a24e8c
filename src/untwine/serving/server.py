"""Run the HTTP service with uvicorn: ``serve(bundle_path, ...)`` or ``python -m untwine.serving.server BUNDLE``.

The server binds 127.0.0.1 unless told otherwise: exposing it needs an explicit ``--host 0.0.0.0``
(and then an admin token, since without one ``/admin/reload`` only answers loopback clients).

Threads. Each worker process sets ``torch.set_num_threads(torch_threads)`` (default 1) before loading
the bundle: at concurrency, one request per thread keeps every core busy with less overhead than
splitting each request's small matrix products over intra-op threads, and several intra-op pools
(one per concurrent request) would oversubscribe the cores. ``funnel_threads`` (default: cores /
workers) is the number of requests one worker runs at once; the rest queue.

``processes > 1`` keeps one HTTP process and runs the funnel in that many worker processes, each
request going to a free one (``untwine.serving.pool``): the cores are used and the load stays even;
the event loop awaits the workers directly, and ``queue`` is the wait for a free worker process;
``/admin/reload`` builds a new pool and swaps it in. ``workers > 1`` instead runs that many processes on one socket, each with its own copy of the bundle (memory
x workers). ``/admin/reload`` then reaches only the worker that accepted the connection: use the
file watch (``--watch-interval``), which every worker runs, to roll a new bundle out to all of them.
"""
from __future__ import annotations

import argparse
import gc
import importlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

from fastapi import FastAPI

from untwine.serving.app import create_app
from untwine.serving.contract import Funnel

__all__ = ["DEFAULT_LOADER", "ServeSettings", "app_from_env", "build_app", "configure_threads", "main",
           "resolve_loader", "serve"]

log = logging.getLogger("untwine.serving")

DEFAULT_LOADER = "untwine.serving.bundle:load_funnel"
SETTINGS_ENV = "UNTWINE_SERVE_SETTINGS"  # how a multi-worker parent hands its settings to the workers
ADMIN_TOKEN_ENV = "UNTWINE_ADMIN_TOKEN"


@dataclass
class ServeSettings:
    """Everything a worker process needs to build its app (JSON-serialisable for ``workers > 1``)."""

    bundle_path: str
    loader: str = DEFAULT_LOADER
    max_body_bytes: int = 1 << 20
    torch_threads: int = 1
    funnel_threads: int | None = None  # None: cores / workers
    workers: int = 1
    admin_token: str | None = None
    watch_interval_s: float | None = None
    watch_file: str = "manifest.json"
    log_level: str = "info"

    def resolved_funnel_threads(self) -> int:
        return self.funnel_threads or max(1, (os.cpu_count() or 1) // max(1, self.workers))


def resolve_loader(spec: str | Callable[[str], Funnel]) -> Callable[[str], Funnel]:
    """``"package.module:function"`` -> the function (imported now, so the default loader stays lazy)."""
    if callable(spec):
        return spec
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"loader spec {spec!r} is not 'module:function'")
    module = importlib.import_module(module_name)
    try:
        loader = getattr(module, attr)
    except AttributeError:
        raise ValueError(f"loader spec {spec!r}: module {module_name} has no {attr!r}") from None
    if not callable(loader):
        raise ValueError(f"loader spec {spec!r} names a {type(loader).__name__}, not a function")
    return loader


def configure_threads(torch_threads: int) -> dict[str, int]:
    """Set torch's intra-op (and, when still possible, inter-op) thread counts for this process."""
    import torch

    torch.set_num_threads(torch_threads)
    try:
        torch.set_num_interop_threads(torch_threads)
    except RuntimeError:  # only settable before the first inter-op work; the intra-op count is what matters
        pass
    return {"torch_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads()}


def _configure_logging(level: str) -> None:
    # uvicorn configures only its own loggers; without this the app's INFO lines (reloads) are dropped
    if not logging.getLogger().handlers:
        logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("untwine").setLevel(level.upper())


def build_app(settings: ServeSettings, loader: Callable[[str], Funnel] | None = None) -> FastAPI:
    """Threads first (before the bundle's tensors exist), then the loader, then the app."""
    _configure_logging(settings.log_level)
    threads = configure_threads(settings.torch_threads)
    app = create_app(loader or resolve_loader(settings.loader), settings.bundle_path, settings.max_body_bytes,
                     funnel_threads=settings.resolved_funnel_threads(), admin_token=settings.admin_token,
                     watch_interval_s=settings.watch_interval_s, watch_file=settings.watch_file)
    log.info("serving %s (pid %d): %s, funnel_threads=%d", app.state.serving.current.funnel.bundle_id,
             os.getpid(), threads, settings.resolved_funnel_threads())
    # the start-up heap (torch, FastAPI, pydantic models: ~10^5 objects) would be traversed by every full
    # collection while serving, 60-80 ms with the GIL held, which stalled every request in flight (measured
    # once per reload, whose allocations trigger one); frozen, a full collection sees only newer objects
    gc.collect()
    gc.freeze()
    return app


def app_from_env() -> FastAPI:
    """uvicorn factory for worker processes: the settings come from the parent through the environment."""
    raw = os.environ.get(SETTINGS_ENV)
    if not raw:
        raise RuntimeError(f"{SETTINGS_ENV} is not set: app_from_env is meant for workers started by serve()")
    return build_app(ServeSettings(**json.loads(raw)))


def serve(bundle_path: str, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
          loader: str | Callable[[str], Funnel] = DEFAULT_LOADER, log_level: str = "info",
          max_body_bytes: int = 1 << 20, *, torch_threads: int = 1, funnel_threads: int | None = None,
          admin_token: str | None = None, watch_interval_s: float | None = None,
          watch_file: str = "manifest.json", access_log: bool = False,
          limit_concurrency: int | None = None, processes: int = 1) -> None:
    """Serve the bundle until interrupted. ``loader`` is a ``module:function`` spec or (one worker only) a callable.

    ``access_log`` is off by default: one log line per request costs more CPU than a small funnel call.
    ``limit_concurrency``: uvicorn answers 503 beyond this many open requests (default: unbounded).
    """
    import uvicorn

    if processes > 1:  # one HTTP process, the funnel in `processes` worker processes (untwine.serving.pool)
        if workers != 1 or loader != DEFAULT_LOADER:
            raise ValueError("processes > 1 runs the bundle loader in a process pool: use one worker and the "
                             "default loader")
        os.environ["UNTWINE_FUNNEL_PROCESSES"] = str(processes)
        os.environ["UNTWINE_TORCH_THREADS"] = str(torch_threads)
        loader = "untwine.serving.pool:load_pool_funnel"
        # requests are awaited on the pool from the event loop (ProcessPoolFunnel.call_async); the threads
        # serve only funnels without it
        funnel_threads = funnel_threads or 2 * processes
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if host not in ("127.0.0.1", "::1", "localhost") and admin_token is None:
        log.warning("listening on %s without an admin token: /admin/reload answers loopback clients only", host)
    common = dict(host=host, port=port, log_level=log_level, access_log=access_log,
                  limit_concurrency=limit_concurrency, server_header=False)
    if workers == 1:
        settings = ServeSettings(bundle_path=bundle_path, loader=loader if isinstance(loader, str) else "<callable>",
                                 max_body_bytes=max_body_bytes, torch_threads=torch_threads,
                                 funnel_threads=funnel_threads, workers=1, admin_token=admin_token,
                                 watch_interval_s=watch_interval_s, watch_file=watch_file, log_level=log_level)
        app = build_app(settings, loader=None if isinstance(loader, str) else loader)
        uvicorn.Server(uvicorn.Config(app, **common)).run()
        return
    if not isinstance(loader, str):
        raise ValueError("workers > 1 needs the loader as a 'module:function' spec: each worker imports it")
    settings = ServeSettings(bundle_path=bundle_path, loader=loader, max_body_bytes=max_body_bytes,
                             torch_threads=torch_threads, funnel_threads=funnel_threads, workers=workers,
                             admin_token=admin_token, watch_interval_s=watch_interval_s, watch_file=watch_file,
                             log_level=log_level)
    os.environ[SETTINGS_ENV] = json.dumps(asdict(settings))  # inherited by the spawned workers
    config = uvicorn.Config("untwine.serving.server:app_from_env", factory=True, workers=workers, **common)
    from uvicorn.supervisors import Multiprocess

    Multiprocess(config, sockets=[config.bind_socket()]).run()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m untwine.serving.server", description=__doc__.split("\n\n")[0])
    p.add_argument("bundle", help="path of the exported bundle")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (0.0.0.0 exposes the service)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--processes", type=int, default=1,
                   help="funnel worker processes behind one HTTP process, requests dispatched to the free one")
    p.add_argument("--loader", default=DEFAULT_LOADER, help="module:function returning a Funnel for a path")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--max-body-bytes", type=int, default=1 << 20)
    p.add_argument("--torch-threads", type=int, default=1, help="intra-op threads per worker")
    p.add_argument("--funnel-threads", type=int, default=None,
                   help="requests one worker runs at once (default: cores / workers)")
    p.add_argument("--admin-token-env", default=ADMIN_TOKEN_ENV,
                   help="environment variable holding the admin token (not a flag: argv is visible in ps)")
    p.add_argument("--watch-interval", type=float, default=None, help="poll the manifest every S seconds")
    p.add_argument("--watch-file", default="manifest.json")
    p.add_argument("--access-log", action="store_true")
    p.add_argument("--limit-concurrency", type=int, default=None)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    serve(args.bundle, host=args.host, port=args.port, workers=args.workers, loader=args.loader,
          log_level=args.log_level, max_body_bytes=args.max_body_bytes, torch_threads=args.torch_threads,
          funnel_threads=args.funnel_threads, admin_token=os.environ.get(args.admin_token_env) or None,
          watch_interval_s=args.watch_interval, watch_file=args.watch_file, access_log=args.access_log,
          limit_concurrency=args.limit_concurrency, processes=args.processes)


if __name__ == "__main__":
    main()
