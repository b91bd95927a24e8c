import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from untwine.train.config import ExperimentConfig
from untwine.train.run import evaluate_run, run_experiment

from conftest import experiment

QUIET = dict(log=lambda *_: None)


def run(dataset, run_dir, overrides=(), resume=False, **train):
    cfg = ExperimentConfig.from_dict(experiment(dataset, **train), list(overrides))
    return run_experiment(cfg, run_dir=run_dir, resume=resume, **QUIET)


def test_learns_rule_and_writes_run_dir(learnable, tmp_path):
    r = run(learnable, tmp_path / "run")
    assert r.test["y"]["auc"] > 0.85  # the rule is learnable; noise caps AUC near 0.9
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"config.yaml", "feature_space.json", "vocab", "best.safetensors", "last.pt", "metrics.jsonl",
            "result.json"} <= files
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r_["epoch"] for r_ in records if r_["split"] == "train"] == list(range(r.epochs_run))
    assert records[-1]["split"] == "test"


@pytest.mark.parametrize("opt", ["adam", "sparse_adam", "adagrad"])
def test_embedding_optimizers_all_learn(learnable, tmp_path, opt):
    lr = 0.05 if opt == "adagrad" else 3e-3
    r = run(learnable, tmp_path / opt, embedding_optimizer=opt, embedding_lr=lr)
    assert r.test["y"]["auc"] > 0.8


def test_early_stopping_keeps_best_epoch_weights(learnable, tmp_path):
    r = run(learnable, tmp_path / "run", epochs=30, patience=1, lr=0.03)  # a high lr overfits fast
    assert r.epochs_run < 30 and r.epochs_run == r.best_epoch + 2
    valid_aucs = [rec["metrics"]["y"]["auc"] for rec in map(json.loads, (tmp_path / "run" / "metrics.jsonl")
                                                             .read_text().splitlines()) if rec["split"] == "valid"]
    assert r.valid["y"]["auc"] == pytest.approx(max(valid_aucs), abs=1e-12)


def test_same_seed_same_weights_other_seed_differs(learnable, tmp_path):
    a = run(learnable, tmp_path / "a", epochs=2, seed=5)
    b = run(learnable, tmp_path / "b", epochs=2, seed=5)
    c = run(learnable, tmp_path / "c", epochs=2, seed=6)
    wa, wb, wc = (load_file(str(tmp_path / n / "best.safetensors")) for n in "abc")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)
    assert a.test == b.test


def test_resume_continues_where_it_stopped(learnable, tmp_path):
    full = run(learnable, tmp_path / "full", epochs=4, patience=10)
    run(learnable, tmp_path / "part", epochs=2, patience=10)  # "interrupted" after 2 epochs
    resumed = run(learnable, tmp_path / "part", epochs=4, patience=10, resume=True)
    assert resumed.epochs_run == 4
    train_epochs = [json.loads(line)["epoch"] for line in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()
                    if json.loads(line)["split"] == "train"]
    assert train_epochs == [0, 1, 2, 3]
    wf, wp = load_file(str(tmp_path / "full" / "best.safetensors")), load_file(str(tmp_path / "part" / "best.safetensors"))
    for k in wf:
        torch.testing.assert_close(wf[k], wp[k], rtol=1e-5, atol=1e-6)


def test_multitask_losses_and_metrics_per_task(tmp_path):
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import yaml

    rng = np.random.default_rng(1)
    for split in ("train", "valid", "test"):
        n = 2000
        u = rng.integers(0, 10, n)
        click = (u % 2 == 0) ^ (rng.random(n) < 0.1)
        buy = click & ((u % 4 == 0) ^ (rng.random(n) < 0.1))
        pq.write_table(pa.table({"u": u.astype(str), "click": click.astype(np.int8), "buy": buy.astype(np.int8)}),
                       tmp_path / f"{split}.parquet")
    (tmp_path / "dataset.yaml").write_text(yaml.safe_dump({
        "name": "mt", "train": "train.parquet", "valid": "valid.parquet", "test": "test.parquet",
        "schema": {"features": [{"name": "u", "kind": "categorical"}],
                   "labels": [{"name": "click"}, {"name": "buy", "mask_column": "click", "weight": 0.5}]}}))
    r = run(tmp_path / "dataset.yaml", tmp_path / "run")
    assert set(r.test) == {"click", "buy", "mean"}
    assert r.test["buy"]["rows"] == int(pq.read_table(tmp_path / "test.parquet").column("click").to_numpy().sum())
    assert r.test["click"]["auc"] > 0.8 and r.test["buy"]["auc"] > 0.8


def test_evaluate_run_reproduces_test_metrics_and_handles_unseen(learnable, tmp_path):
    r = run(learnable, tmp_path / "run", epochs=2)
    again = evaluate_run(tmp_path / "run")
    assert again["y"]["auc"] == pytest.approx(r.test["y"]["auc"], abs=1e-9)


def test_unknown_keys_are_errors(learnable):
    with pytest.raises(Exception, match="lrr"):
        ExperimentConfig.from_dict(experiment(learnable), ["train.lrr=0.1"])
    with pytest.raises(Exception, match="hiden"):
        ExperimentConfig.from_dict(experiment(learnable), ["model.hiden=[4]"])


def test_overrides_are_parsed_as_yaml(learnable):
    cfg = ExperimentConfig.from_dict(experiment(learnable), ["train.lr=0.5", "model.hidden=[4,2]"])
    assert cfg.train.lr == 0.5 and cfg.model.options()["hidden"] == [4, 2]


def test_monitor_that_the_data_cannot_give_fails_early(learnable, tmp_path):
    import yaml

    spec = yaml.safe_load(learnable.read_text())
    spec["schema"].pop("group_key")
    learnable.write_text(yaml.safe_dump(spec))
    with pytest.raises(ValueError, match="needs a group_key"):
        run(learnable, tmp_path / "r", monitor="gauc")
    with pytest.raises(ValueError, match="monitor_task='clik'"):
        run(learnable, tmp_path / "r", monitor_task="clik")
    assert not (tmp_path / "r").exists()


def test_fresh_run_in_an_old_run_dir_starts_a_fresh_log(learnable, tmp_path):
    run(learnable, tmp_path / "run", epochs=2)
    run(learnable, tmp_path / "run", epochs=1, resume=False)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r_["epoch"] for r_ in lines if r_["split"] == "train"] == [0]


def test_task_metrics_report_a_masked_task_without_rows_instead_of_failing():
    from untwine.train.trainer import task_metrics

    pred = {"probs": np.array([[0.2, 0.5], [0.7, 0.5], [0.4, 0.5]]), "labels": np.array([[0, 0], [1, 0], [0, 0]]),
            "masks": np.array([[1, 0], [1, 0], [1, 0]])}  # no clicked row: the conversion task has nothing to score
    out = task_metrics(pred, ["click", "buy"])
    assert out["buy"] == {"rows": 0}
    assert out["click"]["rows"] == 3 and out["click"]["auc"] == 1.0
    assert out["mean"]["auc"] == 1.0  # the mean over the tasks that have rows


@pytest.mark.parametrize("opt", ["adam", "sparse_adam"])
def test_fused_adam_takes_the_same_steps_as_the_default_kernel(opt, make_space, make_batch):
    """Same update rule, one kernel: after a few steps the weights agree to float rounding."""
    import copy

    import torch.nn.functional as F

    from untwine.models.base import build_model
    from untwine.train.config import TrainConfig
    from untwine.train.trainer import build_optimizers

    space = make_space()
    torch.manual_seed(0)
    model = build_model("dnn", space, {"hidden": [16]})
    twin = copy.deepcopy(model)
    fused = build_optimizers(model, TrainConfig(embedding_optimizer=opt, fused_optimizer=True))
    plain = build_optimizers(twin, TrainConfig(embedding_optimizer=opt, fused_optimizer=False))
    assert any(o.defaults.get("fused") for o in fused) and not any(o.defaults.get("fused") for o in plain)
    for step in range(5):
        batch = make_batch(space, 32, seed=step)
        for m, opts in ((model, fused), (twin, plain)):
            loss = F.binary_cross_entropy_with_logits(next(iter(m(batch).values())), batch.labels[:, 0])
            for o in opts:
                o.zero_grad(set_to_none=True)
            loss.backward()
            for o in opts:
                o.step()
    for (k, a), b in zip(model.state_dict().items(), twin.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=k)


def test_bf16_training_learns_and_keeps_fp32_weights(learnable, tmp_path):
    r = run(learnable, tmp_path / "bf16", precision="bf16")
    assert r.test["y"]["auc"] > 0.85
    weights = load_file(str(tmp_path / "bf16" / "best.safetensors"))
    assert all(v.dtype == torch.float32 for v in weights.values())
    again = evaluate_run(tmp_path / "bf16")  # evaluation runs in fp32 and reproduces the reported numbers
    assert again["y"]["auc"] == pytest.approx(r.test["y"]["auc"], abs=1e-9)


def test_bf16_predictions_are_scored_in_fp32_after_the_bf16_forward(learnable, tmp_path):
    """A bf16 forward, but probabilities from fp32 logits: no quantisation into bf16's 256 levels."""
    from untwine.train.run import load_run, run_split_loader
    from untwine.train.trainer import predict

    run(learnable, tmp_path / "r", precision="bf16", epochs=2)
    cfg, space, model = load_run(tmp_path / "r")
    p16 = predict(model, run_split_loader(tmp_path / "r", cfg, space, "test"), precision="bf16")["probs"]
    p32 = predict(model, run_split_loader(tmp_path / "r", cfg, space, "test"))["probs"]
    assert p16.dtype == np.float32 and np.abs(p16 - p32).max() < 0.05
    assert len(np.unique(p16)) > 50  # far more distinct values than bf16 probabilities would allow near 0.5
