import shutil
import socket
import subprocess
import time

import pytest


@pytest.fixture(scope="session")
def sim_stream(tmp_path_factory):
    """A small simulated log: a DNN trained on its train days, the valid + test days as an event stream."""
    from untwine.sim import SimConfig, run, write_log
    from untwine.sim.events import write_events
    from untwine.sim.writer import split_rows
    from untwine.train.config import ExperimentConfig
    from untwine.train.run import run_experiment

    root = tmp_path_factory.mktemp("sim_stream")
    log = run(SimConfig(n_impressions=20000, n_users=400, n_ads=80, seed=5))
    yaml_path = write_log(log, root / "data")
    splits = split_rows(log)
    counts = write_events(log, root / "events.jsonl", slice(splits["valid"].start, splits["test"].stop), seed=1)
    cfg = ExperimentConfig.from_dict({"dataset": str(yaml_path), "model": {"name": "dnn", "hidden": [32]},
                                      "train": {"epochs": 1, "batch_size": 256, "progress": False}})
    mp = pytest.MonkeyPatch()
    mp.setenv("UNTWINE_CACHE", str(root / "cache"))
    run_experiment(cfg, run_dir=root / "run", resume=False, log=lambda *_: None)
    mp.undo()
    return {"run": root / "run", "events": root / "events.jsonl", "counts": counts, "root": root}


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A throwaway redis-server on 127.0.0.1 (skips when Debian's redis-server is not installed)."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server not installed (apt-get install redis-server; .ci/run installs it)")
    pytest.importorskip("redis")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    d = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(d)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis

    client = redis.Redis(host="127.0.0.1", port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    else:
        proc.kill()
        pytest.skip("redis-server did not start")
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(timeout=10)
