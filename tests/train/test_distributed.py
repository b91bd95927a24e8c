"""Two processes under torchrun: equal weights at the end, metrics over every rank's predictions."""
import json
import os
import subprocess
import sys
import textwrap

import pyarrow.parquet as pq
import torch
from safetensors.torch import load_file

from conftest import experiment

SCRIPT = textwrap.dedent("""
    import json, os, sys
    import torch
    from safetensors.torch import save_file
    from untwine.train.config import ExperimentConfig
    from untwine.train.run import run_experiment
    torch.set_num_threads(1)
    cfg = ExperimentConfig.from_dict(json.loads(sys.argv[1]))
    res = run_experiment(cfg, run_dir=sys.argv[2], resume=False, log=lambda *_: None)
    rank = int(os.environ["RANK"])
    # the weights each rank ends with (best epoch reloaded on every rank)
    state = {k: v.contiguous() for k, v in res.model_object.state_dict().items()}
    save_file(state, os.path.join(sys.argv[2], f"rank{rank}.safetensors"))
    with open(os.path.join(sys.argv[2], f"rank{rank}.json"), "w") as fh:
        json.dump({"test": res.test, "valid": res.valid}, fh)
""")


def test_two_processes_agree(learnable, tmp_path):
    script = tmp_path / "ddp_run.py"
    script.write_text(SCRIPT)
    cfg = experiment(learnable, epochs=6, batch_size=100)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--rdzv-backend=c10d", "--rdzv-endpoint=localhost:0",
                           str(script), json.dumps(cfg), str(tmp_path / "run")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    w0, w1 = (load_file(str(tmp_path / "run" / f"rank{r}.safetensors")) for r in (0, 1))
    assert w0.keys() == w1.keys()
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    r0, r1 = (json.loads((tmp_path / "run" / f"rank{r}.json").read_text()) for r in (0, 1))
    n_test = pq.read_table(learnable.parent / "test.parquet").num_rows
    assert r0["test"]["y"]["rows"] == r1["test"]["y"]["rows"] == n_test
    assert r0["test"] == r1["test"]
    assert r0["test"]["y"]["auc"] > 0.7
