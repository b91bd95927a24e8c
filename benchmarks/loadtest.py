"""Load test of ``untwine serve`` over loopback HTTP, with the server in its own process.

    python benchmarks/loadtest.py --bundle PATH --requests requests.json [--concurrency 1 8 32] [--duration 20]
                                  [--reload-during --reload-bundle PATH2]
    python benchmarks/loadtest.py --fake --duration 5 --out /tmp/untwine-loadtest-fake   # harness check only

The harness starts ``python -m untwine.serving.server BUNDLE --port P`` (or ``--server-cmd``), waits for
``/health``, checks one request by hand, then drives ``POST /recommend`` with ``wrk --latency`` (a Lua
script cycles through the request bodies of ``--requests``, a JSON list) at each concurrency for
``--duration`` seconds after a short warm-up. Without wrk (or with ``--client python``) an
``httpx.AsyncClient`` load generator runs in a separate process instead. Each run reports QPS,
p50/p90/p99/p99.9/max latency, non-2xx responses and socket errors as the client saw them, plus the
server's own view from ``/metrics`` (status counts, mean queue and funnel time per request).

``--reload-during`` POSTs ``/admin/reload`` (to ``--reload-bundle``) halfway through the concurrency-8
run and records the reload's status and duration and the errors of that run.

``--fake`` serves :func:`fake_funnel` (a small torch MLP scoring 500 random candidates out of 20k items
per request) so the harness can be exercised before a real bundle exists; its numbers measure the HTTP
layer plus a toy model, not untwine's funnel, and go to a temporary folder unless ``--out`` is given.
Results: ``<out>/loadtest.md`` and ``<out>/loadtest.json`` (default out: benchmarks/results/serving).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results" / "serving"
FAKE_LOADER = "benchmarks.loadtest:fake_funnel"
REAL_LOADER = "untwine.serving.bundle:load_funnel"
WRK = "/usr/bin/wrk"

# ------------------------------------------------------------------------------------ fake funnel

FAKE_ITEMS = 20_000
FAKE_CANDIDATES = 500
FAKE_DIM = 32
FAKE_USER_BUCKETS = 4096
FAKE_LOAD_SECONDS = 1.0  # a real bundle takes seconds to load: the reload-under-load run should feel it


class FakeMLPFunnel:
    """A stand-in with the real funnel's shape and a realistic per-request CPU cost (no recall index).

    recall: 500 candidates drawn at random (seeded by the user, so a request is reproducible);
    rank: a 96-128-64-1 MLP over [hashed user features, mean history embedding, item embedding];
    rerank: drop history/excluded items, top-k. Safe for concurrent calls (inference only).
    """

    def __init__(self, bundle_id: str, seed: int) -> None:
        import torch

        g = torch.Generator().manual_seed(seed)
        self.bundle_id = bundle_id
        self.item_ids = [f"item{n}" for n in range(FAKE_ITEMS)]
        self.index = {item: n for n, item in enumerate(self.item_ids)}
        self.oov = FAKE_ITEMS
        self.item_emb = torch.randn(FAKE_ITEMS + 1, FAKE_DIM, generator=g) * 0.1  # last row: OOV
        self.user_emb = torch.randn(FAKE_USER_BUCKETS, FAKE_DIM, generator=g) * 0.1
        self.mlp = torch.nn.Sequential(torch.nn.Linear(3 * FAKE_DIM, 128), torch.nn.ReLU(),
                                       torch.nn.Linear(128, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1)).eval()
        with torch.no_grad():
            for p in self.mlp.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)

    def _context(self, user: dict, history: list[str]):
        import zlib

        import torch

        keys = [zlib.crc32(f"{k}={v}".encode()) % FAKE_USER_BUCKETS for k, v in sorted(user.items())]
        u = self.user_emb[keys].mean(0) if keys else torch.zeros(FAKE_DIM)
        hist = [self.index[i] for i in history if i in self.index]
        h = self.item_emb[hist].mean(0) if hist else torch.zeros(FAKE_DIM)
        return torch.cat([u, h]), zlib.crc32(repr(sorted(user.items())).encode() + str(len(history)).encode())

    def _scores(self, ctx, rows):
        import torch

        x = torch.cat([ctx.expand(len(rows), -1), self.item_emb[rows]], dim=1)
        return torch.sigmoid(self.mlp(x).squeeze(1))

    def recommend(self, req):
        import torch

        from untwine.serving.contract import RecommendedItem, RecommendResponse

        t0 = time.perf_counter()
        with torch.inference_mode():
            ctx, seed = self._context(req.user, req.history)
            cands = torch.randint(0, FAKE_ITEMS, (FAKE_CANDIDATES,), generator=torch.Generator().manual_seed(seed))
            cands = torch.unique(cands)
            t1 = time.perf_counter()
            scores = self._scores(ctx, cands)
            t2 = time.perf_counter()
            blocked = {self.index[i] for i in (*req.history, *req.exclude) if i in self.index}
            if blocked:
                keep = torch.tensor([int(c) not in blocked for c in cands.tolist()])
                cands, scores = cands[keep], scores[keep]
            top = torch.topk(scores, min(req.k, len(scores)))
            items = [RecommendedItem(item_id=self.item_ids[int(cands[i])], score=float(s), channel="fake_random")
                     for s, i in zip(top.values.tolist(), top.indices.tolist())]
            t3 = time.perf_counter()
        ms = lambda a, b: (b - a) * 1000.0  # noqa: E731
        return RecommendResponse(items=items, bundle=self.bundle_id, timings_ms={
            "recall": ms(t0, t1), "prerank": 0.0, "rank": ms(t1, t2), "rerank": ms(t2, t3), "total": ms(t0, t3)})

    def score(self, req):
        import torch

        from untwine.serving.contract import ScoreResponse

        t0 = time.perf_counter()
        with torch.inference_mode():
            ctx, _ = self._context(req.user, req.history)
            rows = torch.tensor([self.index.get(i, self.oov) for i in req.items])
            scores = self._scores(ctx, rows).tolist()
        return ScoreResponse(scores=scores, unknown_items=[i for i in req.items if i not in self.index],
                             bundle=self.bundle_id, timings_ms={"rank": (time.perf_counter() - t0) * 1000.0})

    def describe(self) -> dict:
        return {"items": FAKE_ITEMS, "channels": ["fake_random"], "models": {"rank": "fake-mlp-96-128-64-1"},
                "fake": True}


def fake_funnel(path: str) -> FakeMLPFunnel:
    """Loader for ``--loader benchmarks.loadtest:fake_funnel``: the path only names the fake bundle."""
    import zlib

    time.sleep(FAKE_LOAD_SECONDS)
    return FakeMLPFunnel(bundle_id=f"fake:{Path(path).name}", seed=zlib.crc32(path.encode()))


def fake_requests(n: int, seed: int = 0) -> list[dict]:
    """Request bodies for the fake funnel: its item ids, a few user/context features."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        history = [f"item{rng.randrange(FAKE_ITEMS)}" for _ in range(rng.randrange(0, 50))]
        out.append({"user": {"user_id": str(rng.randrange(100_000)), "age": str(rng.randrange(7)),
                             "hour": rng.randrange(24), "device": rng.choice(["ios", "android", "web"])},
                    "history": history, "k": 20,
                    "exclude": [f"item{rng.randrange(FAKE_ITEMS)}" for _ in range(rng.randrange(0, 5))]})
    return out


# ------------------------------------------------------------------------------------ the clients

WRK_SCRIPT = r"""
-- cycles through pre-formatted POST requests, one JSON body per line of the file given after --
local requests = {}
local n = 0
local i = 0

init = function(args)
  local headers = {["Content-Type"] = "application/json"}
  for line in io.lines(args[1]) do
    if #line > 0 then
      n = n + 1
      requests[n] = wrk.format("POST", nil, headers, line)
    end
  end
  if n == 0 then error("no request bodies in " .. args[1]) end
  i = math.random(n) - 1  -- threads start at different bodies
end

request = function()
  i = i % n + 1
  return requests[i]
end

done = function(summary, latency, _)
  local e = summary.errors
  io.write(string.format(
    'UNTWINE_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,"errors":{"connect":%d,"read":%d,"write":%d,' ..
    '"timeout":%d,"status":%d},"latency_us":{"mean":%.1f,"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d}}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.timeout, e.status,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max))
end
"""


def run_wrk(url: str, bodies_file: Path, concurrency: int, duration_s: float, threads: int,
            timeout_s: float, script: Path) -> dict:
    cmd = [WRK, "-t", str(min(threads, concurrency)), "-c", str(concurrency), "-d", f"{duration_s:g}s",
           "--timeout", f"{timeout_s:g}s", "--latency", "-s", str(script), url, "--", str(bodies_file)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s + timeout_s + 30)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("UNTWINE_RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    raw = json.loads(line.split(" ", 1)[1])
    errors = raw["errors"]
    return {"client": "wrk", "requests": raw["requests"], "seconds": raw["duration_us"] / 1e6,
            "non_2xx": errors["status"],
            "socket_errors": errors["connect"] + errors["read"] + errors["write"] + errors["timeout"],
            "socket_error_kinds": {k: errors[k] for k in ("connect", "read", "write", "timeout")},
            "latency_ms": {k: v / 1000.0 for k, v in raw["latency_us"].items()}, "wrk_stdout": proc.stdout}


def python_client_main(url: str, bodies_file: str, concurrency: int, duration_s: float, timeout_s: float) -> None:
    """The fallback load generator (own process): closed loop, one connection per worker, prints JSON."""
    import asyncio

    import httpx

    bodies = [ln.encode() for ln in Path(bodies_file).read_text().splitlines() if ln]
    latencies: list[float] = []
    non_2xx = 0
    socket_errors: dict[str, int] = {}

    async def worker(client: httpx.AsyncClient, start: int, deadline: float) -> None:
        nonlocal non_2xx
        i = start
        while time.perf_counter() < deadline:
            body = bodies[i % len(bodies)]
            i += 1
            t0 = time.perf_counter()
            try:
                r = await client.post(url, content=body, headers={"content-type": "application/json"})
                await r.aread()
            except httpx.TransportError as e:
                socket_errors[type(e).__name__] = socket_errors.get(type(e).__name__, 0) + 1
                continue
            latencies.append(time.perf_counter() - t0)
            if not 200 <= r.status_code < 400:
                non_2xx += 1

    async def run() -> float:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(limits=limits, timeout=timeout_s) as client:
            t0 = time.perf_counter()
            await asyncio.gather(*(worker(client, w * 7919, t0 + duration_s) for w in range(concurrency)))
            return time.perf_counter() - t0

    seconds = asyncio.run(run())
    lat = sorted(latencies)

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(p / 100.0 * len(lat)))] * 1000.0 if lat else float("nan")

    print(json.dumps({"client": "python-httpx", "requests": len(lat), "seconds": seconds,
                      "non_2xx": non_2xx, "socket_errors": sum(socket_errors.values()),
                      "socket_error_kinds": socket_errors,
                      "latency_ms": {"mean": sum(lat) / len(lat) * 1000.0 if lat else float("nan"),
                                     "p50": pct(50), "p90": pct(90), "p99": pct(99), "p999": pct(99.9),
                                     "max": lat[-1] * 1000.0 if lat else float("nan")}}))


def run_python_client(url: str, bodies_file: Path, concurrency: int, duration_s: float, timeout_s: float) -> dict:
    cmd = [sys.executable, __file__, "_client", url, str(bodies_file), str(concurrency), str(duration_s),
           str(timeout_s)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s + timeout_s + 60)
    if proc.returncode != 0:
        raise RuntimeError(f"python client failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------- server

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_json(method: str, url: str, body: Any = None, headers: dict | None = None,
              timeout: float = 30.0) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        raw, status = e.read(), e.code
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def wait_for_health(base: str, proc: subprocess.Popen, timeout_s: float, log_file: Path) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}:\n{log_file.read_text()[-4000:]}")
        try:
            status, body = http_json("GET", base + "/health", timeout=2)
            if status == 200:
                return body
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"no /health after {timeout_s} s:\n{log_file.read_text()[-4000:]}")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def metric_snapshot(base: str) -> dict[str, float]:
    """Flattened samples of /metrics: 'name{k=v,...}' -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(base + "/metrics", timeout=10) as r:
        text = r.read().decode()
    flat = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            flat[f"{s.name}{{{labels}}}"] = s.value
    return flat


def server_view(before: dict[str, float], after: dict[str, float], endpoint: str) -> dict:
    """What the server counted between two snapshots: statuses of ``endpoint``, mean time per stage."""
    delta = {k: after[k] - before.get(k, 0.0) for k in after}
    statuses = {}
    prefix = "untwine_requests_total{"
    for key, n in delta.items():
        if key.startswith(prefix) and f"endpoint={endpoint}," in key + "," and n:
            statuses[key.split("status=")[1].rstrip("}")] = int(n)
    stage_ms = {}
    for key, total in delta.items():
        if key.startswith("untwine_stage_latency_seconds_sum{"):
            stage = key.split("stage=")[1].rstrip("}")
            count = delta.get(key.replace("_sum{", "_count{"), 0.0)
            if count:
                stage_ms[stage] = total / count * 1000.0
    lat_sum = delta.get(f"untwine_request_latency_seconds_sum{{endpoint={endpoint}}}", 0.0)
    lat_n = delta.get(f"untwine_request_latency_seconds_count{{endpoint={endpoint}}}", 0.0)
    return {"statuses": statuses, "mean_stage_ms": stage_ms,
            "mean_request_ms": lat_sum / lat_n * 1000.0 if lat_n else None}


# ------------------------------------------------------------------------------------------- main

def machine() -> dict:
    cpu, flags = "", set()
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "")
        flags = set(next((ln.split(":", 1)[1].split() for ln in lines if ln.startswith("flags")), []))
    except OSError:
        pass
    # machines of one kind differ here, and the ranker's bf16 speed with them (docs/serving.md)
    isa = ("AVX512 with bf16" if "avx512_bf16" in flags else "AVX512" if "avx512f" in flags
           else "AVX2" if "avx2" in flags else "unknown")
    return {"cpu": cpu, "cores": os.cpu_count(), "isa": isa, "python": platform.python_version(),
            "kernel": platform.release()}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", help="bundle path handed to the server")
    p.add_argument("--requests", type=Path, help="JSON list of /recommend request bodies")
    p.add_argument("--fake", action="store_true", help="serve the built-in fake funnel (harness check)")
    p.add_argument("--fake-requests", type=int, default=200, help="bodies generated for --fake")
    p.add_argument("--loader", default=None, help=f"server --loader (default {REAL_LOADER}; {FAKE_LOADER} for --fake)")
    p.add_argument("--server-cmd", default=None,
                   help="custom server command; {python} {bundle} {port} are substituted")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--duration", type=float, default=20.0, help="seconds per concurrency")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds at concurrency 8 before the runs")
    p.add_argument("--client", choices=["auto", "wrk", "python"], default="auto")
    p.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (each takes CPU from the server)")
    p.add_argument("--timeout", type=float, default=10.0, help="client timeout per request, seconds")
    p.add_argument("--torch-threads", type=int, default=1)
    p.add_argument("--funnel-threads", type=int, default=None)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--processes", type=int, default=1, help="server --processes (funnel worker processes)")
    p.add_argument("--reload-during", action="store_true", help="reload halfway through the concurrency-8 run")
    p.add_argument("--reload-bundle", default=None, help="bundle the reload loads (default: the same bundle)")
    p.add_argument("--startup-timeout", type=float, default=180.0)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if not args.fake and not args.bundle and not args.server_cmd:
        p.error("give --bundle (or --server-cmd), or --fake")
    if not args.fake and args.requests is None:
        p.error("--requests FILE is needed without --fake")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    out = args.out or (Path(tempfile.gettempdir()) / "untwine-loadtest-fake" if args.fake else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="untwine-loadtest-"))
    bundle = args.bundle or ("fake-v1" if args.fake else "")
    loader = args.loader or (FAKE_LOADER if args.fake else REAL_LOADER)
    reload_bundle = args.reload_bundle or ("fake-v2" if args.fake else bundle)

    if args.requests:
        bodies = json.loads(args.requests.read_text())
        requests_source = str(args.requests)
    else:
        bodies = fake_requests(args.fake_requests)
        requests_source = f"{args.fake_requests} generated by fake_requests()"
    if not isinstance(bodies, list) or not bodies or not all(isinstance(b, dict) for b in bodies):
        raise SystemExit("--requests must hold a non-empty JSON list of request objects")
    bodies_file = work / "bodies.jsonl"
    bodies_file.write_text("".join(json.dumps(b, separators=(",", ":")) + "\n" for b in bodies))
    script = work / "post.lua"
    script.write_text(WRK_SCRIPT)

    client = args.client
    if client == "auto":
        client = "wrk" if shutil.which(WRK) or Path(WRK).exists() else "python"

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    token = secrets.token_hex(16)
    if args.server_cmd:
        server_cmd = shlex.split(args.server_cmd.format(python=sys.executable, bundle=bundle, port=port))
    else:
        server_cmd = [sys.executable, "-m", "untwine.serving.server", bundle, "--port", str(port),
                      "--loader", loader, "--torch-threads", str(args.torch_threads), "--workers", str(args.workers),
                      "--processes", str(args.processes), "--log-level", "warning"]
        if args.funnel_threads:
            server_cmd += ["--funnel-threads", str(args.funnel_threads)]
    env = {**os.environ, "UNTWINE_ADMIN_TOKEN": token,
           "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    log_file = work / "server.log"
    print(f"server: {shlex.join(server_cmd)}  (log {log_file})", flush=True)
    with open(log_file, "wb") as log:
        proc = subprocess.Popen(server_cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    runs: list[dict] = []
    try:
        health = wait_for_health(base, proc, args.startup_timeout, log_file)
        status, first = http_json("POST", base + "/recommend", bodies[0])
        if status != 200:
            raise RuntimeError(f"the first request failed with {status}: {first}")
        smoke = {"status": status, "items": len(first["items"]), "timings_ms": first["timings_ms"],
                 "bundle": first["bundle"]}
        print(f"up: bundle {health['bundle']}, first request {smoke}", flush=True)

        def drive(concurrency: int, duration: float) -> dict:
            if client == "wrk":
                return run_wrk(base + "/recommend", bodies_file, concurrency, duration, args.wrk_threads,
                               args.timeout, script)
            return run_python_client(base + "/recommend", bodies_file, concurrency, duration, args.timeout)

        if args.warmup > 0:
            drive(8, args.warmup)
        for concurrency in args.concurrency:
            reload_record: dict | None = None
            reloader = None
            if args.reload_during and concurrency == 8:
                reload_record = {}

                def reload_midway(record: dict = reload_record) -> None:
                    time.sleep(args.duration / 2)
                    record["at_s"] = args.duration / 2
                    t0 = time.perf_counter()
                    code, body = http_json("POST", base + "/admin/reload", {"path": reload_bundle},
                                           headers={"X-Admin-Token": token}, timeout=args.startup_timeout)
                    record.update(status=code, response=body, took_s=round(time.perf_counter() - t0, 3))

                reloader = threading.Thread(target=reload_midway)
            before = metric_snapshot(base)
            if reloader:
                reloader.start()
            result = drive(concurrency, args.duration)
            if reloader:
                reloader.join()
            after = metric_snapshot(base)
            result.pop("wrk_stdout", None)
            result.update(concurrency=concurrency, qps=result["requests"] / result["seconds"],
                          server=server_view(before, after, "/recommend"))
            if reload_record is not None:
                _, h = http_json("GET", base + "/health")
                reload_record.update(bundle_after=h["bundle"], reloads_after=h["reloads"],
                                     errors_in_run=result["non_2xx"] + result["socket_errors"])
                result["reload"] = reload_record
            lat = result["latency_ms"]
            print(f"c={concurrency:>3}: {result['qps']:8.1f} req/s  p50 {lat['p50']:.2f}  p90 {lat['p90']:.2f}  "
                  f"p99 {lat['p99']:.2f} ms  non-2xx {result['non_2xx']}  socket errors {result['socket_errors']}"
                  + (f"  reload {reload_record}" if reload_record else ""), flush=True)
            runs.append(result)
        health_end = http_json("GET", base + "/health")[1]
    finally:
        stop_server(proc)

    report = {
        "fake": args.fake, "machine": machine(), "command": shlex.join([sys.executable, *sys.argv]),
        "server_command": shlex.join(server_cmd),
        "server": {"torch_threads": args.torch_threads if not args.server_cmd else None,
                   "funnel_threads": health.get("funnel_threads"), "workers": args.workers, "processes": args.processes,
                   "bundle": health["bundle"], "describe": health["describe"]},
        "client": {"kind": client, "wrk_threads": args.wrk_threads if client == "wrk" else None,
                   "timeout_s": args.timeout, "duration_s": args.duration, "warmup_s": args.warmup},
        "requests": {"source": requests_source, "bodies": len(bodies), "endpoint": "/recommend"},
        "smoke": smoke, "runs": runs, "health_end": health_end,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    (out / "loadtest.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "loadtest.md").write_text(markdown(report))
    print(f"wrote {out / 'loadtest.md'} and {out / 'loadtest.json'}")
    shutil.rmtree(work, ignore_errors=True)
    return report


def markdown(r: dict) -> str:
    m, s, c = r["machine"], r["server"], r["client"]
    lines = ["# untwine serve: load test", ""]
    if r["fake"]:
        lines += ["> **FAKE funnel** (`benchmarks/loadtest.py:fake_funnel`: a 96-128-64-1 torch MLP scoring 500",
                  "> random candidates out of 20k items per request). These numbers measure the HTTP layer and a",
                  "> toy model, not untwine's funnel.", ""]
    lines += [
        f"- date: {r['date']}",
        f"- machine: {m['cpu']}, {m['cores']} cores, {m.get('isa', 'ISA not recorded')}, Python {m['python']}, "
        f"kernel {m['kernel']}",
        f"- command: `{r['command']}`",
        f"- server: `{r['server_command']}`",
        f"- server threads: torch_threads={s['torch_threads']}, funnel_threads={s['funnel_threads']}, "
        f"workers={s['workers']}, funnel processes={s.get('processes', 1)}; bundle `{s['bundle']}` ({s['describe'].get('items', '?')} items)",
        f"- client: {c['kind']}" + (f" (-t {c['wrk_threads']})" if c["wrk_threads"] else "")
        + f", closed loop on loopback, {c['duration_s']:g} s per concurrency after {c['warmup_s']:g} s of warm-up, "
          f"timeout {c['timeout_s']:g} s; client and server share the machine's cores",
        f"- requests: POST {r['requests']['endpoint']}, {r['requests']['bodies']} bodies ({r['requests']['source']})",
        "",
        "| concurrency | requests | QPS | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | non-2xx | socket errors "
        "| server: mean queue ms | server: mean funnel total ms |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in r["runs"]:
        lat, sv = run["latency_ms"], run["server"]["mean_stage_ms"]
        fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
        lines.append(f"| {run['concurrency']} | {run['requests']} | {run['qps']:.1f} | {lat['p50']:.2f} | "
                     f"{lat['p90']:.2f} | {lat['p99']:.2f} | {lat['p999']:.2f} | {lat['max']:.2f} | "
                     f"{run['non_2xx']} | {run['socket_errors']} | {fmt(sv.get('queue'))} | {fmt(sv.get('total'))} |")
    for run in r["runs"]:
        if "reload" in run:
            rl = run["reload"]
            lines += ["", f"Reload during the concurrency-{run['concurrency']} run: POST /admin/reload at "
                          f"{rl.get('at_s', '?')} s answered {rl.get('status')} after {rl.get('took_s')} s "
                          f"(bundle after: `{rl.get('bundle_after')}`, reloads: {rl.get('reloads_after')}); "
                          f"errors in that run: {rl.get('errors_in_run')} "
                          f"(server-side statuses: {run['server']['statuses']})."]
    lines += ["", "Latency is measured by the client from sending a request to its last byte (wrk: per connection,",
              "closed loop, so a slow server lowers the offered rate rather than building a backlog).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_client":
        url, bodies_path, conc, dur, tmo = sys.argv[2:7]
        python_client_main(url, bodies_path, int(conc), float(dur), float(tmo))
    else:
        main()
