"""A funnel spread over worker processes, dispatched per request: how one server uses every core.

The funnel is mostly Python (feature encoding, channel lookups, merging, re-ranking) around a few
torch and faiss calls, so threads of one process serialise on the GIL: two funnel threads served no
more requests per second than one on 2 cores (benchmarks/results/serving). Several uvicorn workers
would use the cores but bind each keep-alive connection to one process, so a load of 8 connections
lands unevenly and the busier worker sets the tail latency.

``ProcessPoolFunnel`` keeps one HTTP process and hands every request to whichever of N worker
processes is free (``concurrent.futures.ProcessPoolExecutor``: a shared call queue). Each worker loads
the bundle once (hashes verified, warmed up) and answers with the response as JSON text; requests go
to it as JSON text too, so nothing but strings and exceptions crosses the process boundary.

Why the executor, whose feeder and manager threads cost the parent 276-360 us of CPU per round trip in a
microbenchmark with both cores busy: a variant without them (one pipe per worker, written and read on
the event loop, 63-72 us there) served 9-14% fewer requests per second at concurrency 8 in three
interleaved pairs, because a worker that answered then idles until the busy HTTP process gets a core to
hand it the next request; the executor's shared call queue already holds one for it.

Workers fork from a fork server that has torch and the funnel imported (a fresh single-threaded process,
so forking is safe), which halves a worker's start-up CPU. Reload: the app's loader builds a new pool
(new processes, the new bundle, loaded at low CPU priority so the serving workers keep their latency)
while the old one serves;
the app swaps references; the old pool finishes what was submitted to it and exits when the last
request holding it lets go. Cold-start impression counters live in each worker (per-process quotas).
"""
from __future__ import annotations

import asyncio
import gc
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from untwine.serving.contract import RecommendRequest, RecommendResponse, ScoreRequest, ScoreResponse

_FUNNEL = None  # the bundle of this worker process
_RESPONSES = {"recommend": RecommendResponse, "score": ScoreResponse}


LOAD_NICENESS = 19


def _init_worker(path: str, torch_threads: int, serving_niceness: int) -> None:
    """Load the bundle at low CPU priority (inherited from the fork server, see ``_low_priority_fork_server``):
    on a reload the new workers' loading (a second of CPU each) then yields to the workers still serving;
    back to the server's own priority once loaded where allowed."""
    global _FUNNEL
    os.setpriority(os.PRIO_PROCESS, 0, max(os.getpriority(os.PRIO_PROCESS, 0), LOAD_NICENESS))
    import torch

    torch.set_num_threads(torch_threads)
    from untwine.serving.funnel import BundleFunnel

    _FUNNEL = BundleFunnel.load(path)
    # the bundle's long-lived objects (id maps, vocabulary dicts: ~10^6 objects) would be traversed by
    # every full collection, a pause of tens of ms in some request; frozen, collections skip them
    gc.collect()
    gc.freeze()
    try:
        os.setpriority(os.PRIO_PROCESS, 0, serving_niceness)
    except PermissionError:  # unprivileged: stays niced, which only ranks it below the HTTP process
        pass


def _describe() -> dict[str, Any]:
    return {"bundle_id": _FUNNEL.bundle_id, **_FUNNEL.describe(), "pid": os.getpid()}


def _recommend(body: str) -> str:
    return _FUNNEL.recommend(RecommendRequest.model_validate_json(body)).model_dump_json()


def _score(body: str) -> str:
    return _FUNNEL.score(ScoreRequest.model_validate_json(body)).model_dump_json()


_CALLS = {"recommend": _recommend, "score": _score}


def _timed(method: str, body: str, submitted: float) -> tuple[float, str]:
    """(seconds the call waited for a free worker, its response as JSON text). ``time.monotonic`` reads
    CLOCK_MONOTONIC, one clock for every process of the machine."""
    return time.monotonic() - submitted, _CALLS[method](body)


def _context():
    """A fork server with torch and the funnel imported: workers (and a reload's new workers) fork from it
    instead of importing torch again, about half of a worker's start-up CPU. Not plain fork: this process
    already runs torch and OpenMP threads, and forking a threaded process can deadlock; the fork server
    is a fresh single-threaded process."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "untwine.serving.funnel", _main_module()])
    _low_priority_fork_server()
    return ctx


def _main_module() -> str:
    """What a new worker re-runs as ``__mp_main__`` before its initializer (multiprocessing's main-module
    fix-up): under ``python -m untwine.serving.server`` that module, under the ``untwine`` script its file, so
    FastAPI, uvicorn and the CLI would be imported again in every worker; preloaded in the fork server they
    are imported once and the fix-up costs a few ms. "__main__" makes the fork server import the main
    script's path (multiprocessing's convention)."""
    main = sys.modules.get("__main__")
    return getattr(getattr(main, "__spec__", None), "name", None) or "__main__"


def _low_priority_fork_server() -> None:
    """Start the fork server and lower its priority, so a worker is niced from its first instruction: forked
    at the server's priority, a reload's two new workers took both cores for the ~40 ms before their
    initializer ran (a 110 ms p99 spike at the start of every reload). Best effort: the fork server's pid
    is a private attribute of multiprocessing."""
    from multiprocessing import forkserver

    forkserver.ensure_running()
    pid = getattr(getattr(forkserver, "_forkserver", None), "_forkserver_pid", None)
    if pid:
        try:
            os.setpriority(os.PRIO_PROCESS, pid, max(os.getpriority(os.PRIO_PROCESS, pid), LOAD_NICENESS))
        except OSError:
            pass


class ProcessPoolFunnel:
    """The ``Funnel`` protocol over ``processes`` workers, each holding the bundle at ``path``."""

    def __init__(self, path: str, processes: int = 2, torch_threads: int = 1) -> None:
        if processes < 1:
            raise ValueError(f"processes must be >= 1, got {processes}")
        env = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
        for k in env:  # a worker is one request at a time: BLAS / OpenMP pools would only oversubscribe
            os.environ[k] = str(torch_threads)
        try:
            self._pool = ProcessPoolExecutor(processes, mp_context=_context(),
                                             initializer=_init_worker, initargs=(str(path), torch_threads,
                                                                             os.getpriority(os.PRIO_PROCESS, 0)))
            # one task per worker, submitted together, so every process has loaded before serving starts
            infos = [f.result() for f in [self._pool.submit(_describe) for _ in range(processes)]]
        except BaseException:
            if hasattr(self, "_pool"):
                self._pool.shutdown(wait=False, cancel_futures=True)
            raise
        finally:
            for k, v in env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        self.bundle_id = infos[0]["bundle_id"]
        self._info = {k: v for k, v in infos[0].items() if k not in ("bundle_id", "pid")}
        self._info["processes"] = processes

    def describe(self) -> dict[str, Any]:
        return dict(self._info)

    def recommend(self, req: RecommendRequest) -> RecommendResponse:
        return RecommendResponse.model_validate_json(self._pool.submit(_recommend, req.model_dump_json()).result())

    def score(self, req: ScoreRequest) -> ScoreResponse:
        return ScoreResponse.model_validate_json(self._pool.submit(_score, req.model_dump_json()).result())

    async def call_async(self, method: str, req: RecommendRequest | ScoreRequest) -> tuple[float, Any]:
        """``recommend`` or ``score`` awaited on the caller's event loop -> (seconds queued for a worker,
        response). Exceptions raised in the worker (BadInputError included) are raised here."""
        waited, text = await asyncio.wrap_future(
            self._pool.submit(_timed, method, req.model_dump_json(), time.monotonic()))
        return waited, _RESPONSES[method].model_validate_json(text)

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def __del__(self) -> None:  # the app dropped it after a reload: let submitted work finish, then exit
        pool = getattr(self, "_pool", None)
        if pool is not None:
            # the workers' interpreter teardown (freeing the bundle, torch) would compete with the new
            # pool's requests at full priority
            for pid in list(getattr(pool, "_processes", None) or {}):
                try:
                    os.setpriority(os.PRIO_PROCESS, pid, LOAD_NICENESS)
                except OSError:
                    pass
            pool.shutdown(wait=False)


def load_pool_funnel(path: str) -> ProcessPoolFunnel:
    """Loader for ``untwine serve --processes N`` (N and the torch threads come from the environment the
    server sets: ``UNTWINE_FUNNEL_PROCESSES``, ``UNTWINE_TORCH_THREADS``)."""
    return ProcessPoolFunnel(path, int(os.environ.get("UNTWINE_FUNNEL_PROCESSES", "2")),
                             int(os.environ.get("UNTWINE_TORCH_THREADS", "1")))
