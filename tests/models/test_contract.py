"""The ranking-model contract, checked for every registered model (a new model is covered automatically).

build_model(name, space, config) -> nn.Module; forward(Batch) -> {task: float32 logits (B,)} in schema order.
"""
from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from untwine.models import MODELS, build_model

NAMES = MODELS.names()


def small_config(name: str, **extra) -> dict:
    """A small config for any registered model: tiny embeddings, one small hidden layer if it has an MLP."""
    fields = MODELS.get(name).config.model_fields
    cfg = {"embedding_dim": 4}
    if "hidden" in fields:
        cfg["hidden"] = [8, 6]
    if "cross_layers" in fields:
        cfg["cross_layers"] = 2
    if "expert_dim" in fields:
        cfg["expert_dim"] = 8
    if "expert_hidden" in fields:
        cfg["expert_hidden"] = [7]
    cfg.update(extra)
    return cfg


# model variants: every registered model with a small config, plus the DCN-V2 structures / DCN-Mix
VARIANTS = [(n, {}) for n in NAMES]
if "dcnv2" in NAMES:
    VARIANTS += [("dcnv2", {"structure": "stacked"}), ("dcnv2", {"low_rank": 2, "num_experts": 3}),
                 ("dcnv2", {"low_rank": 2, "num_experts": 1}),
                 ("dcnv2", {"structure": "stacked", "low_rank": 2, "num_experts": 2}),
                 ("dcnv2", {"numeric": "raw"})]
if "dnn" in NAMES:
    VARIANTS += [("dnn", {"numeric": "raw"}), ("dnn", {"batch_norm": True, "dropout": 0.2}),
                 ("dnn", {"numeric_encoder": "bucket"}), ("dnn", {"numeric_encoder": "mnse"}),
                 ("dnn", {"numeric_encoder": {"name": "mnse", "combine": "concat", "transform": "log1p"}}),
                 ("dnn", {"vector_encoder": "similarity"}), ("dnn", {"vector_encoder": "drop"})]
if "hetero_moe" in NAMES:
    # the Moments pCTR shape (GwPFM over 3 groups needs a width divisible by 3), ME-DCN-V2, and the rest
    VARIANTS += [("hetero_moe", {"tables": [6, 4], "experts": [{"type": "gwpfm"}, {"type": "flat_dnn", "hidden": [5]},
                                                              {"type": "ipnn", "table": 1}]}),
                 ("hetero_moe", {"tables": [4, 4], "combine": "mean",
                                 "experts": [{"type": "cross", "project": False},
                                             {"type": "cross", "table": 1, "project": False}]}),
                 ("hetero_moe", {"tables": [6], "gate_input": "experts",
                                 "experts": [{"type": "fm"}, {"type": "gwpfm", "intra": True}, {"type": "cross"}]}),
                 ("hetero_moe", {"numeric": "raw", "experts": [{"type": "flat_dnn"}, {"type": "ipnn"}]})]
VARIANTS += [("mmoe", {"num_experts": 1}), ("ple", {"levels": 1}), ("ple", {"levels": 3, "task_experts": 2}),
             ("stem", {"shared_experts": 2, "task_experts": 2, "expert_hidden": [7, 5]})]
if "tin" in NAMES:
    VARIANTS += [("tin", {"sequence_encoder": {"name": "tim", "temporal_encoding": False}}),
                 ("tin", {"sequence_encoder": {"name": "tim", "target_aware_representation": False}}),
                 ("tin", {"sequence_encoder": {"name": "tim", "time_combine": "concat"}}),
                 ("tin", {"sequence_encoder": {"name": "tim", "attention_norm": True, "keep_history": True}})]


def variant_id(name: str, extra: dict) -> str:
    return name + "".join(f"-{k}={v}" for k, v in extra.items())


VARIANT_IDS = [variant_id(n, extra) for n, extra in VARIANTS]

# parameters that legitimately receive no (or an identically zero) gradient, per variant id:
# with a single expert the DCN-Mix softmax gate is the constant 1, so its weights get a zero gradient.
ALLOWED_NO_GRAD: dict[str, set[str]] = {
    "dcnv2-low_rank=2-num_experts=1": {"cross.gates.0.weight"},
    "mmoe-num_experts=1": {"gate.linear.weight", "gate.linear.bias"},
}


def test_registry_lists_the_built_in_models():
    assert {"lr", "fm", "dnn", "deepfm", "dcnv2"} <= set(NAMES)


def test_unknown_model_name_raises(make_space):
    with pytest.raises(KeyError, match="unknown model"):
        build_model("no-such-model", make_space())


@pytest.mark.parametrize("name,extra", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("T", [1, 2])
@pytest.mark.parametrize("B", [1, 7])
def test_output_is_task_dict_of_float32_logits(make_space, make_batch, name, extra, T, B):
    space = make_space(T)
    torch.manual_seed(0)
    model = build_model(name, space, small_config(name, **extra))
    assert isinstance(model, torch.nn.Module)
    for mode in ("train", "eval"):
        getattr(model, mode)()
        if mode == "train" and B == 1 and extra.get("batch_norm"):
            continue  # BatchNorm cannot train on a single row
        out = model(make_batch(space, B, seed=B))
        assert isinstance(out, dict)
        assert list(out) == space.schema.task_names  # exactly the tasks, in schema label order
        for t, v in out.items():
            assert v.dtype == torch.float32, t
            assert v.shape == (B,), t
            assert torch.isfinite(v).all(), t


@pytest.mark.parametrize("name", NAMES)
def test_two_tasks_get_different_logits(make_space, make_batch, name):
    space = make_space(2)
    torch.manual_seed(0)
    model = build_model(name, space, small_config(name, embedding_init_std=0.1))
    with torch.no_grad():
        for p in model.parameters():  # zero-initialised biases would make the task heads tie
            p.add_(0.05 * torch.randn_like(p))
    out = model(make_batch(space, 7))
    assert not torch.allclose(out["click"], out["buy"])


@pytest.mark.parametrize("name,extra", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_empty_batch_gives_empty_logits(make_space, make_batch, name, extra, mode):
    """A batch of 0 rows is not an error: every task gets an empty float32 (0,) tensor."""
    if mode == "train" and extra.get("batch_norm"):
        pytest.skip("BatchNorm cannot compute batch statistics of 0 rows (torch's own error)")
    space = make_space(2)
    torch.manual_seed(0)
    model = getattr(build_model(name, space, small_config(name, **extra)), mode)()
    out = model(make_batch(space, 0))
    assert list(out) == space.schema.task_names
    for v in out.values():
        assert v.shape == (0,) and v.dtype == torch.float32


@pytest.mark.parametrize("name,extra", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("space_kw", [{}, {"multi": False, "seq": False, "numeric": False, "vector": False}],
                         ids=["full", "categorical-only"])
def test_every_parameter_gets_a_gradient(make_space, make_batch, name, extra, space_kw):
    space = make_space(2, **space_kw)
    torch.manual_seed(0)
    model = build_model(name, space, small_config(name, **extra)).train()
    out = model(make_batch(space, 7, seed=1))
    torch.stack(list(out.values())).sum().backward()
    allowed = ALLOWED_NO_GRAD.get(variant_id(name, extra), set())
    assert allowed <= {n for n, _ in model.named_parameters()}  # the allow-list names real parameters
    for pname, p in model.named_parameters():
        if pname in allowed:
            continue
        assert p.grad is not None, f"{name}: {pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}: {pname} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name}: {pname} got an all-zero gradient"


@pytest.mark.parametrize("name,extra", VARIANTS, ids=VARIANT_IDS)
def test_seeded_build_is_deterministic(make_space, name, extra):
    space = make_space(2)
    cfg = small_config(name, **extra)

    def state(seed):
        torch.manual_seed(seed)
        return build_model(name, space, cfg).state_dict()

    a, a2, b = state(11), state(11), state(12)
    assert list(a) == list(a2) == list(b)
    for k in a:
        assert torch.equal(a[k], a2[k]), k
    assert any(a[k].is_floating_point() and not torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", NAMES)
def test_eval_forward_is_deterministic(make_space, make_batch, name):
    space = make_space(2)
    cfg = small_config(name)
    if "dropout" in MODELS.get(name).config.model_fields:
        cfg["dropout"] = 0.5  # eval must switch it off
    torch.manual_seed(0)
    model = build_model(name, space, cfg).eval()
    batch = make_batch(space, 7)
    with torch.no_grad():
        first, second = model(batch), model(batch)
    for t in first:
        assert torch.equal(first[t], second[t])


@pytest.mark.parametrize("name", NAMES)
def test_unknown_config_key_raises(make_space, name):
    with pytest.raises(ValidationError):
        build_model(name, make_space(), {"hiden": [8]})
    with pytest.raises(ValidationError):
        build_model(name, make_space(), {"embedding_dim": 0})


def test_config_object_is_frozen_and_typed(make_space):
    model = build_model("dnn", make_space(), {"hidden": [8]})
    assert model.config.hidden == (8,)
    with pytest.raises(ValidationError):
        model.config.hidden = (4,)


@pytest.mark.parametrize("name", NAMES)
def test_every_input_kind_influences_the_output(make_space, make_batch, name):
    """Each feature (categorical column, multi, sequence, side field, numeric, vector) reaches the logits."""
    space = make_space(1)
    torch.manual_seed(0)
    model = build_model(name, space, small_config(name, embedding_init_std=0.3)).eval()
    base = make_batch(space, 7, seed=2)
    ref = model(base)["click"]

    def changed(mutate) -> bool:
        b = make_batch(space, 7, seed=2)
        mutate(b)
        return not torch.equal(model(b)["click"], ref)

    s = space.schema
    for j, f in enumerate(s.categorical):
        # shift every id to another id in [1, V)
        assert changed(lambda b: b.categorical[:, j].copy_(b.categorical[:, j] % (space.vocab_size(f) - 1) + 1)), f.name
    for f in s.multi_categorical:
        assert changed(lambda b: b.multi[f.name].fill_(2)), f.name
    for key in [f.name for f in s.sequences] + [f"{f.name}.{k}" for f in s.sequences for k in f.side_fields]:
        assert changed(lambda b: b.seq[key].fill_(3)), key
    for k, f in enumerate(s.numeric):
        assert changed(lambda b: b.numeric[:, k].add_(1.0)), f.name
    for f in s.vectors:
        assert changed(lambda b: b.vectors[f.name].mul_(-2.0)), f.name


@pytest.mark.parametrize("name", NAMES)
def test_numeric_raw_column_is_not_read(make_space, make_batch, name):
    """Models read the normalised block; numeric_raw (NaN where missing) must not leak into logits."""
    space = make_space(2)
    torch.manual_seed(0)
    for numeric in ("embed", "raw"):
        model = build_model(name, space, small_config(name, numeric=numeric)).eval()
        b = make_batch(space, 5)
        b.numeric_raw = torch.full_like(b.numeric_raw, float("nan"))
        for v in model(b).values():
            assert torch.isfinite(v).all()


@pytest.mark.parametrize("name", [n for n in ("dnn", "dcnv2") if n in NAMES])
def test_numeric_raw_and_embed_both_work(make_space, make_batch, name):
    space = make_space(2)
    n_num = len(space.schema.numeric)
    outs = {}
    for numeric in ("embed", "raw"):
        torch.manual_seed(0)
        model = build_model(name, space, small_config(name, numeric=numeric, embedding_init_std=0.3)).eval()
        emb = model.embedding
        assert emb.numeric_mode == numeric
        if numeric == "raw":
            assert emb.dense_dim == n_num
            assert emb.output_dim == emb.num_fields * 4 + n_num
        else:
            assert emb.dense_dim == 0 and emb.output_dim == emb.num_fields * 4
        batch = make_batch(space, 6)
        out = model(batch)
        batch.numeric[:, 0] += 1.0
        moved = model(batch)
        for t in out:
            assert out[t].shape == (6,)
            assert not torch.equal(out[t], moved[t]), f"{numeric}: numeric input ignored"
        outs[numeric] = out
    # the two modes give different embedding widths
    torch.manual_seed(0)
    w_embed = build_model(name, space, small_config(name, numeric="embed")).embedding.output_dim
    torch.manual_seed(0)
    w_raw = build_model(name, space, small_config(name, numeric="raw")).embedding.output_dim
    assert w_embed - w_raw == n_num * 4 - n_num


# Numeric-only schemas: every model works when no feature produces an embedding field.


@pytest.mark.parametrize("name,numeric", [(n, m) for n in NAMES for m in ("embed", "raw")])
def test_numeric_only_schema(name, numeric):
    if name == "two_tower":
        pytest.skip("two_tower needs item-group and user-group features (tested in tests/models/test_two_tower.py)")
    from untwine.core.batch import Batch
    from untwine.core.features import FeatureSpace
    from untwine.core.schema import Feature, Label, Schema
    space = FeatureSpace(schema=Schema(features=[Feature(name="x", kind="numeric"), Feature(name="z", kind="numeric")],
                                       labels=[Label(name="y")]))
    torch.manual_seed(0)
    model = build_model(name, space, small_config(name, numeric=numeric))
    out = model(Batch(numeric=torch.randn(4, 2), numeric_raw=torch.randn(4, 2)))
    assert list(out) == ["y"] and out["y"].shape == (4,) and out["y"].dtype == torch.float32
