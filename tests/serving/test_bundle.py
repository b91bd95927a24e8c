"""Bundles end to end on a small simulated log: export, hash verification, identical scores after the
round trip, the funnel's request path (OOV users and items), and the HTTP service over a real bundle."""
import asyncio
import json
import shutil

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from untwine.retrieval.run import RecallConfig, run_recall
from untwine.serving.bundle import BundleError, export_bundle, verify_bundle
from untwine.serving.contract import RecommendRequest, ScoreRequest
from untwine.serving.funnel import BundleFunnel
from untwine.sim import SimConfig, write_dataset
from untwine.train.config import ExperimentConfig
from untwine.train.run import load_run, run_experiment


@pytest.fixture(scope="module")
def bundle_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundle")
    import os
    old = os.environ.get("UNTWINE_CACHE")
    os.environ["UNTWINE_CACHE"] = str(root / "cache")
    try:
        yaml_path = write_dataset(SimConfig(n_impressions=20_000, n_users=500, n_ads=300, days=4, seed=3), root / "data")
        rank_cfg = ExperimentConfig.from_dict({"dataset": str(yaml_path), "tasks": ["click"],
                                               "model": {"name": "dcnv2", "hidden": [16], "cross_layers": 1},
                                               "train": {"epochs": 1, "batch_size": 512, "progress": False}})
        run_experiment(rank_cfg, run_dir=root / "rank", resume=False, log=lambda *_: None)
        recall_cfg = RecallConfig.model_validate({
            "dataset": str(yaml_path),
            "model": {"name": "two_tower", "embedding_dim": 4, "user_hidden": [8], "item_hidden": [8], "output_dim": 8},
            "train": {"epochs": 1, "batch_size": 128, "progress": False},
            "channels": {"itemcf": {"type": "itemcf", "top_n": 20}, "popularity": {"type": "popularity"},
                         "coldstart": {"type": "coldstart", "feature": "category", "min_exposures": 40,
                                       "guaranteed_impressions": 3}},
            "ks": [10]})
        run_recall(recall_cfg, run_dir=root / "recall", log=lambda *_: None)
        bundle = export_bundle([root / "recall", root / "rank"], root / "bundle",
                               {"recall_total": 60, "prerank_size": 40, "index": {"kind": "flat"},
                                "quotas": {"two_tower": 30, "itemcf": 10, "popularity": 10, "coldstart": 10}},
                               log=lambda *_: None)
        yield root, bundle, yaml_path
    finally:
        if old is None:
            os.environ.pop("UNTWINE_CACHE", None)
        else:
            os.environ["UNTWINE_CACHE"] = old


def _request_user(funnel: BundleFunnel) -> dict:
    return {"user_id": "7", "age": "2", "gender": "1", "city_tier": "3", "hour": "14", "weekday": "2",
            "position": "1", "user_ext_vec": [0.1] * 32}


def test_manifest_lists_every_file_with_its_hash(bundle_env):
    _, bundle, _ = bundle_env
    manifest = verify_bundle(bundle)
    files = {str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(manifest["files"]) == files
    assert "recall/index.faiss" in files and "rank/best.safetensors" in files
    assert not any(f.endswith((".pt", ".pkl", ".pickle")) for f in files), "nothing in a bundle may need unpickling"


def test_tampered_bundle_is_refused(bundle_env, tmp_path):
    _, bundle, _ = bundle_env
    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    weights = copy / "rank" / "best.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="altered"):
        BundleFunnel.load(copy)
    shutil.copy2(bundle / "rank" / "best.safetensors", weights)
    (copy / "rank" / "extra.bin").write_bytes(b"x")
    with pytest.raises(BundleError, match="not in the manifest"):
        verify_bundle(copy)


def test_scores_through_the_bundle_equal_the_run_model(bundle_env):
    root, bundle, _ = bundle_env
    funnel = BundleFunnel.load(bundle)
    _, space, model = load_run(root / "rank")
    items = list(funnel.item_ids[:25])
    user = _request_user(funnel)
    history = list(funnel.item_ids[30:35])
    got = funnel.score(ScoreRequest(user=user, history=history, items=items)).scores
    # reference: the same rows through the run's own encoder path (one record per candidate)
    from untwine.retrieval.data import encode_rows
    from untwine.data.encode import load_vocabs, table_from_records
    import pyarrow as pa
    vocabs = load_vocabs(space, root / "rank" / "vocab")
    cat = funnel.catalogue
    recs = []
    for i in range(25):
        rec = {**user, **{c: cat.column(c)[i].as_py() for c in cat.column_names}}
        rec[space.schema.timestamp] = 0.0
        rec["hist_ad_id"] = history
        rec["hist_ts"] = [0.0] * len(history)
        rec["hist_category"] = [funnel._catalogue_value("category", h) for h in history]
        recs.append(rec)
    user_ts = funnel._record(user, history, space)  # the funnel's own timestamp for the request
    for rec in recs:
        rec[space.schema.timestamp] = int(user_ts[space.schema.timestamp])
        rec["hist_ts"] = [rec[space.schema.timestamp]] * len(history)
    batch = encode_rows(table_from_records(recs, space.schema), space, vocabs)
    with torch.no_grad():
        want = torch.sigmoid(model(batch)["click"]).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_recommend_returns_k_unseen_items_with_channels(bundle_env):
    _, bundle, _ = bundle_env
    funnel = BundleFunnel.load(bundle)
    history = list(funnel.item_ids[:5])
    resp = funnel.recommend(RecommendRequest(user=_request_user(funnel), history=history, k=10, debug=True))
    ids = [it.item_id for it in resp.items]
    assert len(ids) == 10 and len(set(ids)) == 10
    assert not set(ids) & set(history), "history items must not be recommended again"
    assert {it.channel for it in resp.items} <= {"two_tower", "itemcf", "popularity", "coldstart"}
    assert set(resp.timings_ms) >= {"recall", "prerank", "rank", "rerank", "total"}
    assert resp.debug["prerank"] <= 40


def test_unknown_user_and_items_are_served_through_oov(bundle_env):
    _, bundle, _ = bundle_env
    funnel = BundleFunnel.load(bundle)
    user = {**_request_user(funnel), "user_id": "never-seen"}
    resp = funnel.recommend(RecommendRequest(user=user, history=["no-such-ad"], k=5))
    assert len(resp.items) == 5
    scored = funnel.score(ScoreRequest(user=user, history=[], items=["no-such-ad", funnel.item_ids[0]]))
    assert scored.unknown_items == ["no-such-ad"] and all(0 < s < 1 for s in scored.scores)


def test_http_service_over_a_real_bundle(bundle_env):
    _, bundle, _ = bundle_env
    from untwine.serving.app import create_app
    from untwine.serving.bundle import load_funnel

    client = TestClient(create_app(load_funnel, str(bundle)))
    funnel = BundleFunnel.load(bundle)
    r = client.post("/recommend", json={"user": _request_user(funnel), "history": [], "k": 3})
    assert r.status_code == 200, r.text
    assert len(r.json()["items"]) == 3 and r.json()["bundle"] == funnel.bundle_id
    bad = client.post("/recommend", json={"user": {"user_ext_vec": "not a list"}, "history": [], "k": 3})
    assert bad.status_code == 422 and "user_ext_vec" in bad.text
    assert client.get("/health").json()["status"] == "ok"
    assert json.loads(json.dumps(client.get("/health").json()))["describe"]["items"] == len(funnel.item_ids)


def test_recommended_scores_equal_the_score_endpoint(bundle_env):
    """recommend reuses the two-tower's encoded request row for the ranker (same features, identical
    vocabularies); its scores must equal the ranker's own encoding through /score."""
    _, bundle, _ = bundle_env
    funnel = BundleFunnel.load(bundle)
    assert funnel.shared_rows
    user, history = _request_user(funnel), list(funnel.item_ids[10:14])
    rec = funnel.recommend(RecommendRequest(user={**user, "impression_ts": 1_700_000_000}, history=history, k=8))
    ids = [it.item_id for it in rec.items]
    scored = funnel.score(ScoreRequest(user={**user, "impression_ts": 1_700_000_000}, history=history, items=ids))
    np.testing.assert_allclose([it.score for it in rec.items], scored.scores, rtol=1e-5, atol=1e-7)


def test_process_pool_funnel_serves_the_bundle_and_forwards_bad_input(bundle_env):
    from untwine.data.readers import BadInputError
    from untwine.serving.pool import ProcessPoolFunnel

    _, bundle, _ = bundle_env
    funnel = BundleFunnel.load(bundle)
    pool = ProcessPoolFunnel(str(bundle), processes=2)
    try:
        assert pool.bundle_id == funnel.bundle_id and pool.describe()["items"] == len(funnel.item_ids)
        req = ScoreRequest(user=_request_user(funnel), history=[], items=list(funnel.item_ids[:6]))
        np.testing.assert_allclose(pool.score(req).scores, funnel.score(req).scores, rtol=1e-6)
        with pytest.raises(BadInputError, match="user_ext_vec"):
            pool.score(ScoreRequest(user={"user_ext_vec": "oops"}, history=[], items=["1"]))

        async def on_the_loop():  # the app's path: awaited, the worker's wait for a free process reported
            waited, scored = await pool.call_async("score", req)
            with pytest.raises(BadInputError, match="user_ext_vec"):
                await pool.call_async("score", ScoreRequest(user={"user_ext_vec": "oops"}, history=[], items=["1"]))
            return waited, scored

        waited, scored = asyncio.run(on_the_loop())
        assert 0 <= waited < 60 and scored.scores == pool.score(req).scores
    finally:
        pool.close()


def test_cold_start_items_stop_after_their_guaranteed_impressions(bundle_env):
    """The funnel counts what it shows (not what the warm-up or recall saw); a new item whose quota is
    used up is no longer proposed by the cold-start channel."""
    _, bundle, _ = bundle_env
    funnel = BundleFunnel.load(bundle)
    cold = funnel.channels["coldstart"]
    assert len(cold.new_items) and cold.served().sum() == 0, "the warm-up must not count impressions"
    shown = {}
    for i in range(12):
        resp = funnel.recommend(RecommendRequest(user=_request_user(funnel), history=list(funnel.item_ids[i:i + 3]),
                                                 k=10))
        for it in resp.items:
            shown[it.item_id] = shown.get(it.item_id, 0) + 1
    new_ids = set(funnel.item_ids[cold.new_items])
    counted = dict(zip(funnel.item_ids[cold.new_items], cold.served()))
    assert sum(counted.values()) == sum(n for i, n in shown.items() if i in new_ids) > 0
    exhausted = cold.new_items[cold.remaining() == 0]
    assert len(exhausted), "12 requests of 10 should use up some 3-impression quotas"
    ids, _ = cold.retrieve([np.array([], dtype=np.int64)], len(cold.new_items))
    assert not set(ids[0][ids[0] >= 0]) & set(exhausted), "an exhausted new item must leave the channel"


def test_pool_workers_load_below_the_server_and_serve_at_its_priority(bundle_env):
    """A reload's new workers must not compete with the serving ones while they load: they fork from a
    fork server at nice 19 (so they are niced from their first instruction), and once loaded return to
    the priority of the process that made the pool (where the OS allows raising it again)."""
    import os
    from multiprocessing import forkserver

    from untwine.serving.pool import LOAD_NICENESS, ProcessPoolFunnel

    _, bundle, _ = bundle_env
    pool = ProcessPoolFunnel(str(bundle), processes=1)
    try:
        server_pid = forkserver._forkserver._forkserver_pid
        assert os.getpriority(os.PRIO_PROCESS, server_pid) >= LOAD_NICENESS
        worker_niceness = pool._pool.submit(os.getpriority, os.PRIO_PROCESS, 0).result()
        own = os.getpriority(os.PRIO_PROCESS, 0)
        if os.geteuid() == 0:
            assert worker_niceness == own
        else:  # unprivileged processes cannot lower their niceness again
            assert worker_niceness >= own
    finally:
        pool.close()


def test_fork_server_preloads_the_main_module_by_name(monkeypatch):
    """Workers re-import the parent's main module; the fork server preloads it by its import name (so the
    workers find it already imported), or as "__main__" when run as a plain script."""
    import sys
    import types

    from untwine.serving.pool import _main_module

    main = types.ModuleType("__main__")
    main.__spec__ = types.SimpleNamespace(name="untwine.serving.server")
    monkeypatch.setitem(sys.modules, "__main__", main)
    assert _main_module() == "untwine.serving.server"
    main.__spec__ = None
    assert _main_module() == "__main__"


@pytest.mark.parametrize("precision, atol", [("bf16", 0.02), ("int8", 0.02)])
def test_rank_precision_scores_near_the_fp32_bundle(bundle_env, tmp_path, monkeypatch, precision, atol):
    """A bundle exported with rank_precision bf16 / int8 scores with the ranker in that format (the fp32
    ranker kept beside it) and lands near the fp32 bundle's scores. The test model is narrower than
    INT8_MIN_WIDTH, so the width floor is lowered to quantize its cross and MLP layers."""
    import untwine.nn.quantize as quantize
    from untwine.nn.quantize import Int8Linear, int8_available

    if precision == "int8" and not int8_available():
        pytest.skip("this torch build has no FBGEMM int8 linear")
    monkeypatch.setattr(quantize, "INT8_MIN_WIDTH", 8)
    root, bundle, _ = bundle_env
    fp32 = BundleFunnel.load(bundle)
    other = export_bundle([root / "recall", root / "rank"], tmp_path / "b",
                          {"recall_total": 60, "prerank_size": 40, "index": {"kind": "flat"},
                           "quotas": {"two_tower": 30, "itemcf": 10, "popularity": 10, "coldstart": 10},
                           "rank_precision": precision}, log=lambda *_: None)
    funnel = BundleFunnel.load(other)
    int8_layers = [m for m in funnel.scorer.modules() if isinstance(m, Int8Linear)]
    assert (len(int8_layers) > 0) == (precision == "int8")
    assert not any(isinstance(m, Int8Linear) for m in funnel.ranker.modules())
    req = ScoreRequest(user=_request_user(funnel), history=list(funnel.item_ids[30:35]), items=list(funnel.item_ids[:40]))
    want, got = np.array(fp32.score(req).scores), np.array(funnel.score(req).scores)
    assert np.abs(got - want).max() < atol
    assert not np.array_equal(got, want)  # really another format
    out = funnel.recommend(RecommendRequest(user=req.user, history=req.history, k=5))
    assert len(out.items) == 5
    assert funnel.describe()["rank_precision"] == precision and fp32.describe()["rank_precision"] == "fp32"
