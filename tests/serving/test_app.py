"""The HTTP service against a fake funnel: contract, status codes, body limit, metrics, reload under load."""
from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anyio
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from untwine.data.readers import BadInputError
from untwine.serving.app import BodySizeLimitMiddleware, create_app
from untwine.serving.contract import (
    Funnel, RecommendedItem, RecommendRequest, RecommendResponse, ScoreRequest, ScoreResponse,
)
from untwine.serving.server import resolve_loader

LOOPBACK = ("127.0.0.1", 50000)
USER = {"user_id": "42", "age": "3", "hour": 14}


def _score(bundle: str, user_id: str, item: str) -> float:
    digest = hashlib.sha256(f"{bundle}|{user_id}|{item}".encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32


class FakeFunnel:
    """Deterministic hash scores over a fixed catalogue; ``sleep_s`` stands in for CPU time."""

    def __init__(self, bundle_id: str = "fake-v1", n_items: int = 100, sleep_s: float = 0.0,
                 fail_with: Exception | None = None) -> None:
        self.bundle_id = bundle_id
        self.catalogue = [f"i{n}" for n in range(n_items)]
        self.known = set(self.catalogue)
        self.sleep_s = sleep_s
        self.fail_with = fail_with
        self.calls = 0
        self._lock = threading.Lock()

    def _enter(self, user: dict) -> str:
        with self._lock:
            self.calls += 1
        if self.sleep_s:
            time.sleep(self.sleep_s)
        if self.fail_with is not None:
            raise self.fail_with
        user_id = user.get("user_id")
        if not isinstance(user_id, str):
            raise BadInputError(f"user_id: expected a string, got {type(user_id).__name__}")
        return user_id

    def recommend(self, req: RecommendRequest) -> RecommendResponse:
        user_id = self._enter(req.user)
        skip = set(req.exclude) | set(req.history)
        ranked = sorted((i for i in self.catalogue if i not in skip), key=lambda i: -_score(self.bundle_id, user_id, i))
        items = [RecommendedItem(item_id=i, score=_score(self.bundle_id, user_id, i), channel="fake")
                 for i in ranked[:req.k]]
        return RecommendResponse(items=items, bundle=self.bundle_id,
                                 timings_ms={"recall": 0.1, "prerank": 0.0, "rank": 0.3, "rerank": 0.05, "total": 0.5})

    def score(self, req: ScoreRequest) -> ScoreResponse:
        user_id = self._enter(req.user)
        return ScoreResponse(scores=[_score(self.bundle_id, user_id, i) for i in req.items],
                             unknown_items=[i for i in req.items if i not in self.known], bundle=self.bundle_id,
                             timings_ms={"rank": 0.2})

    def describe(self) -> dict:
        return {"items": len(self.catalogue), "channels": ["fake"], "models": {"rank": "hash"}}


class Loader:
    """Maps a path to a FakeFunnel: ``<name>`` -> bundle id ``<name>``; paths in ``broken`` raise."""

    def __init__(self, sleep_s: float = 0.0, load_s: float = 0.0) -> None:
        self.sleep_s = sleep_s
        self.load_s = load_s
        self.broken: set[str] = set()
        self.loaded: list[str] = []
        self.funnels: dict[str, FakeFunnel] = {}
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()

    def __call__(self, path: str) -> FakeFunnel:
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            if self.load_s:
                time.sleep(self.load_s)
            if path in self.broken:
                raise FileNotFoundError(f"{path}/manifest.json")
            funnel = FakeFunnel(bundle_id=Path(path).name, sleep_s=self.sleep_s)
            self.loaded.append(path)
            self.funnels[path] = funnel
            return funnel
        finally:
            with self._lock:
                self.active -= 1


@pytest.fixture
def loader() -> Loader:
    return Loader()


@pytest.fixture
def client(loader):
    with TestClient(create_app(loader, "fake-v1", max_body_bytes=64 << 10), client=LOOPBACK) as c:
        yield c


def recommend_body(**over) -> dict:
    return {"user": USER, "history": ["i1", "i2"], "k": 5, **over}


def score_body(**over) -> dict:
    return {"user": USER, "history": ["i1"], "items": ["i3", "i4", "nope"], **over}


def metric_samples(text: str) -> dict[str, list]:
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


# ------------------------------------------------------------------------------------ happy paths

def test_fake_funnel_satisfies_the_protocol():
    assert isinstance(FakeFunnel(), Funnel)


def test_recommend_shape(client):
    r = client.post("/recommend", json=recommend_body(exclude=["i7"]), headers={"X-Request-ID": "abc-123"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"items", "timings_ms", "bundle", "request_id", "debug"}
    assert body["bundle"] == "fake-v1" and body["request_id"] == "abc-123" == r.headers["x-request-id"]
    assert len(body["items"]) == 5
    assert all(set(it) == {"item_id", "score", "channel"} for it in body["items"])
    ids = [it["item_id"] for it in body["items"]]
    assert not {"i1", "i2", "i7"} & set(ids)
    scores = [it["score"] for it in body["items"]]
    assert scores == sorted(scores, reverse=True)
    assert {"recall", "prerank", "rank", "rerank", "total", "queue"} <= set(body["timings_ms"])


def test_request_id_generated_when_absent_or_unsafe(client):
    r = client.post("/recommend", json=recommend_body(), headers={"X-Request-ID": "bad id\n"})
    assert r.status_code == 200
    assert len(r.json()["request_id"]) == 32 and r.json()["request_id"] == r.headers["x-request-id"]


def test_score_aligned_with_items(client):
    r = client.post("/score", json=score_body())
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["bundle"] == "fake-v1" and body["unknown_items"] == ["nope"]
    assert body["scores"] == [_score("fake-v1", "42", i) for i in ["i3", "i4", "nope"]]


# ---------------------------------------------------------------------------------------- 4xx

@pytest.mark.parametrize("path,body,where", [
    ("/recommend", {"user": USER, "k": 5}, "history"),                       # missing field
    ("/recommend", recommend_body(k="5"), "k"),                              # wrong type (strict: no coercion)
    ("/recommend", recommend_body(history="i1"), "history"),                 # wrong type
    ("/recommend", recommend_body(user={"age": {"nested": 1}}), "user"),     # not a scalar or list
    ("/recommend", recommend_body(extra=1), "extra"),                        # unknown field
    ("/recommend", recommend_body(k=0), "k"),
    ("/recommend", recommend_body(k=201), "k"),
    ("/recommend", recommend_body(history=[f"i{n}" for n in range(501)]), "history"),
    ("/score", score_body(items=[f"i{n}" for n in range(2001)]), "items"),  # too many items
    ("/score", score_body(items=[]), "items"),
    ("/score", score_body(items=[""]), "items"),
])
def test_invalid_requests_are_422_with_the_reason(client, loader, path, body, where):
    r = client.post(path, json=body)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert any(where in map(str, err["loc"]) for err in detail), detail
    assert all("input" not in err for err in detail)  # the offending input is not echoed back
    assert loader.funnels["fake-v1"].calls == 0


def test_malformed_json_is_422(client):
    r = client.post("/recommend", content=b'{"user": {', headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert r.json()["detail"][0]["type"] == "json_invalid"


def test_bad_input_error_is_422_with_its_message(client):
    r = client.post("/recommend", json=recommend_body(user={"user_id": 42}))
    assert r.status_code == 422
    assert r.json() == {"detail": "user_id: expected a string, got int"}


def test_internal_error_is_a_short_500(loader):
    loader_with_bug = lambda path: FakeFunnel(bundle_id=path, fail_with=RuntimeError("secret /etc/x"))  # noqa: E731
    with TestClient(create_app(loader_with_bug, "buggy"), client=LOOPBACK) as c:
        r = c.post("/score", json=score_body(), headers={"X-Request-ID": "r1"})
    assert r.status_code == 500
    assert r.json() == {"detail": "internal error", "request_id": "r1"}


def test_broken_response_contract_is_500():
    class Short(FakeFunnel):
        def score(self, req):
            return ScoreResponse(scores=[0.5], bundle=self.bundle_id)

    with TestClient(create_app(lambda p: Short(bundle_id=p), "short"), client=LOOPBACK) as c:
        assert c.post("/score", json=score_body()).status_code == 500


# ------------------------------------------------------------------------------------- body limit

def test_oversized_body_with_content_length_is_413(client, loader):
    body = json.dumps(recommend_body(user={"user_id": "42", "blob": "x" * 4000 * 20}))
    r = client.post("/recommend", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "65536 bytes" in r.json()["detail"]
    assert loader.funnels["fake-v1"].calls == 0


def test_oversized_chunked_body_is_413(client):
    blob = json.dumps(recommend_body(user={"user_id": "42", "blob": "x" * 4000 * 20})).encode()
    r = client.post("/recommend", content=iter([blob]), headers={"content-type": "application/json"})
    assert "content-length" not in {k.lower() for k in r.request.headers}
    assert r.status_code == 413


def test_chunked_body_under_the_limit_passes(client):
    r = client.post("/recommend", content=iter([json.dumps(recommend_body()).encode()]),
                    headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text


def test_body_limit_counts_streamed_chunks():
    """Pure ASGI: many small chunks, no Content-Length, stop at the first byte over the limit."""
    reached_app = False

    async def app(scope, receive, send):
        nonlocal reached_app
        reached_app = True

    async def run() -> tuple[list[dict], int]:
        chunks = [b"x" * 100] * 20
        read = 0

        async def receive():
            nonlocal read
            read += 1
            return {"type": "http.request", "body": chunks[read - 1], "more_body": read < len(chunks)}

        sent: list[dict] = []

        async def send(message):
            sent.append(message)

        await BodySizeLimitMiddleware(app, max_body_bytes=1000)({"type": "http", "headers": []}, receive, send)
        return sent, read

    sent, read = anyio.run(run)
    assert sent[0]["status"] == 413 and not reached_app
    assert read == 11  # 1100 bytes > 1000: the rest of the body is never pulled


# ------------------------------------------------------------------------------ health and metrics

def test_health(client):
    body = client.get("/health").json()
    assert body["status"] == "ok" and body["bundle"] == "fake-v1" and body["reloads"] == 0
    assert body["describe"] == {"items": 100, "channels": ["fake"], "models": {"rank": "hash"}}
    assert body["uptime_s"] >= 0


def test_metrics_exposition(client):
    for _ in range(3):
        assert client.post("/recommend", json=recommend_body()).status_code == 200
    assert client.post("/recommend", json=recommend_body(k=0)).status_code == 422
    assert client.post("/score", json=score_body()).status_code == 200
    families = metric_samples(client.get("/metrics").text)

    requests = {(s.labels["endpoint"], s.labels["status"]): s.value
                for s in families["untwine_requests"] if s.name == "untwine_requests_total"}
    assert requests[("/recommend", "200")] == 3 and requests[("/recommend", "422")] == 1
    assert requests[("/score", "200")] == 1
    counts = {s.labels["endpoint"]: s.value for s in families["untwine_request_latency_seconds"]
              if s.name == "untwine_request_latency_seconds_count"}
    assert counts["/recommend"] == 4
    buckets = [s for s in families["untwine_request_latency_seconds"]
               if s.name.endswith("_bucket") and s.labels["endpoint"] == "/recommend"]
    assert {b.labels["le"] for b in buckets} >= {"0.001", "0.2", "+Inf"}
    stages = {s.labels["stage"]: s.value for s in families["untwine_stage_latency_seconds"]
              if s.name == "untwine_stage_latency_seconds_count"}
    assert stages["recall"] == 3 and stages["rank"] == 4 and stages["queue"] == 4
    assert families["untwine_bundle_items"][0].value == 100
    assert families["untwine_bundle_info"][0].labels["bundle"] == "fake-v1"


def test_two_apps_have_separate_registries(loader):
    with TestClient(create_app(loader, "a"), client=LOOPBACK) as a, \
            TestClient(create_app(loader, "b"), client=LOOPBACK) as b:
        a.post("/score", json=score_body())
        sa = metric_samples(a.get("/metrics").text)["untwine_requests"]
        sb = metric_samples(b.get("/metrics").text)["untwine_requests"]
    assert any(s.labels.get("endpoint") == "/score" for s in sa)
    assert not any(s.labels.get("endpoint") == "/score" for s in sb)


# ------------------------------------------------------------------------------------------ reload

def test_reload_swaps_the_funnel(client, loader):
    r = client.post("/admin/reload", json={"path": "fake-v2"})
    assert r.status_code == 200, r.text
    assert r.json()["bundle"] == "fake-v2" and r.json()["previous"] == "fake-v1"
    assert client.post("/score", json=score_body()).json()["bundle"] == "fake-v2"
    health = client.get("/health").json()
    assert health["bundle"] == "fake-v2" and health["reloads"] == 1
    # no body: the current path again
    assert client.post("/admin/reload").json()["bundle"] == "fake-v2"
    assert loader.loaded == ["fake-v1", "fake-v2", "fake-v2"]
    reloads = {s.labels["result"]: s.value for s in metric_samples(client.get("/metrics").text)["untwine_reloads"]
               if s.name == "untwine_reloads_total"}
    assert reloads == {"ok": 2}


def test_failed_reload_keeps_the_old_funnel(client, loader):
    loader.broken.add("gone")
    r = client.post("/admin/reload", json={"path": "gone"})
    assert r.status_code == 409
    detail = r.json()["detail"]
    assert detail["bundle"] == "fake-v1" and "FileNotFoundError" in detail["error"]
    assert client.post("/score", json=score_body()).json()["bundle"] == "fake-v1"
    health = client.get("/health").json()
    assert health["reloads"] == 0 and health["failed_reloads"] == 1 and "gone" in health["last_reload_error"]


def test_reload_rejects_a_loader_that_returns_no_funnel(client):
    client.app.state.serving.loader = lambda path: object()
    r = client.post("/admin/reload", json={"path": "x"})
    assert r.status_code == 409 and "not a Funnel" in r.json()["detail"]["error"]


def test_admin_token(loader):
    with TestClient(create_app(loader, "fake-v1", admin_token="s3cret"), client=("10.1.2.3", 5)) as c:
        assert c.post("/admin/reload", json={"path": "v2"}).status_code == 401
        assert c.post("/admin/reload", json={"path": "v2"}, headers={"X-Admin-Token": "nope"}).status_code == 403
        # refused before the body is looked at
        assert c.post("/admin/reload", json={"bogus": 1}).status_code == 401
        r = c.post("/admin/reload", json={"path": "v2"}, headers={"X-Admin-Token": "s3cret"})
        assert r.status_code == 200 and r.json()["bundle"] == "v2"


def test_admin_without_token_is_loopback_only(loader):
    with TestClient(create_app(loader, "fake-v1"), client=("10.1.2.3", 5)) as c:
        assert c.post("/admin/reload").status_code == 403
        assert c.post("/score", json=score_body()).status_code == 200


def test_in_flight_request_keeps_its_funnel():
    loader = Loader(sleep_s=0.3)
    with TestClient(create_app(loader, "old"), client=LOOPBACK) as c, ThreadPoolExecutor(1) as pool:
        slow = pool.submit(c.post, "/score", json=score_body())
        while loader.funnels["old"].calls == 0:  # the request is inside the old funnel
            time.sleep(0.005)
        assert c.post("/admin/reload", json={"path": "new"}).json()["bundle"] == "new"
        assert slow.result().json()["bundle"] == "old"


def test_concurrent_reloads_are_serialised():
    loader = Loader(load_s=0.1)
    with TestClient(create_app(loader, "v0"), client=LOOPBACK) as c, ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda n: c.post("/admin/reload", json={"path": f"v{n}"}), [1, 2, 3]))
        assert [r.status_code for r in results] == [200, 200, 200]
        assert loader.max_active == 1
        assert c.get("/health").json()["reloads"] == 3


def test_reload_under_load_has_no_errors():
    loader = Loader(sleep_s=0.002)
    stop = threading.Event()
    seen: list[tuple[int, str, float]] = []  # (status, bundle, time the request was sent)
    with TestClient(create_app(loader, "blue", funnel_threads=4), client=LOOPBACK) as c:
        def hammer() -> None:
            while not stop.is_set():
                sent = time.perf_counter()
                r = c.post("/score", json=score_body())
                seen.append((r.status_code, r.json().get("bundle"), sent))

        threads = [threading.Thread(target=hammer) for _ in range(6)]
        for t in threads:
            t.start()
        for n in range(6):
            time.sleep(0.05)
            assert c.post("/admin/reload", json={"path": "green" if n % 2 == 0 else "blue"}).status_code == 200
        last_reload_done = time.perf_counter()
        time.sleep(0.1)
        stop.set()
        for t in threads:
            t.join()
    assert len(seen) > 50
    statuses = Counter(s for s, _, _ in seen)
    assert statuses == {200: len(seen)}, statuses
    assert {b for _, b, _ in seen} == {"blue", "green"}
    # the swap happens before the reload answers, so every request sent after that answer sees the last bundle
    after = [b for _, b, t in seen if t > last_reload_done]
    assert after and set(after) == {"blue"}


def test_file_watch_reloads_on_manifest_change(tmp_path, loader):
    bundle = tmp_path / "bundle-v1"
    bundle.mkdir()
    manifest = bundle / "manifest.json"
    manifest.write_text("{}")
    with TestClient(create_app(loader, str(bundle), watch_interval_s=0.02), client=LOOPBACK) as c:
        time.sleep(0.1)
        assert c.get("/health").json()["reloads"] == 0  # nothing changed, nothing reloaded
        stat = manifest.stat()
        os.utime(manifest, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
        deadline = time.monotonic() + 3
        while c.get("/health").json()["reloads"] == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert c.get("/health").json()["reloads"] == 1
    assert loader.loaded == [str(bundle), str(bundle)]


# ------------------------------------------------------------------------------------------ server

def test_resolve_loader_spec():
    assert resolve_loader("json:loads") is json.loads
    with pytest.raises(ValueError, match="module:function"):
        resolve_loader("json.loads")
    with pytest.raises(ValueError, match="has no"):
        resolve_loader("json:nope")


def test_build_app_freezes_the_start_up_heap(loader):
    """A full collection while serving must not walk the start-up heap (it stalled every request in
    flight for 60-110 ms): build_app collects once and freezes what is left."""
    import gc

    from untwine.serving.server import ServeSettings, build_app

    gc.unfreeze()
    try:
        app = build_app(ServeSettings(bundle_path="fake-v1", log_level="warning"), loader=loader)
        assert app.state.serving.current.funnel.bundle_id == "fake-v1"
        funnel = app.state.serving.current.funnel
        assert gc.get_freeze_count() > 0
        assert not any(o is funnel for o in gc.get_objects()), "the loaded funnel must be in the frozen heap"
    finally:
        gc.unfreeze()


class AsyncFakeFunnel(FakeFunnel):
    """A FakeFunnel that runs "elsewhere" (as the worker-process pool does): the app must await
    ``call_async`` on its loop, report the wait it returns as the queue stage, and never use its threads."""

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.async_calls: list[str] = []

    async def call_async(self, method: str, req):
        self.async_calls.append(method)
        return 0.0125, getattr(self, method)(req)


def test_a_funnel_with_call_async_is_awaited_not_run_on_a_pool_thread():
    funnels: list[AsyncFakeFunnel] = []

    def load(path: str) -> AsyncFakeFunnel:
        funnels.append(AsyncFakeFunnel(bundle_id=path))
        return funnels[-1]

    def pool_threads() -> set[int]:  # other tests' apps may leave theirs behind: only new ones count
        return {t.ident for t in threading.enumerate() if t.name.startswith("untwine-funnel")}

    before = pool_threads()
    with TestClient(create_app(load, "async-v1"), client=LOOPBACK) as c:
        r = c.post("/recommend", json=recommend_body())
        assert r.status_code == 200 and len(r.json()["items"]) == 5
        assert r.json()["timings_ms"]["queue"] == pytest.approx(12.5)
        s = c.post("/score", json=score_body())
        assert s.status_code == 200 and len(s.json()["scores"]) == 3
        bad = c.post("/recommend", json=recommend_body(user={"user_id": 7}))
        assert bad.status_code == 422 and "user_id" in bad.json()["detail"]
    assert funnels[0].async_calls == ["recommend", "score", "recommend"]
    assert pool_threads() <= before
