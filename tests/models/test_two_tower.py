"""Two-tower: each tower reads only its own group, the score is the scaled dot product, the history
shares the item id's embedding rows, and target-aware user sequences are refused."""
import numpy as np
import pytest
import torch

from untwine.models import build_model
from untwine.retrieval.two_tower import item_log_q


def _model(space, **cfg):
    torch.manual_seed(0)
    return build_model("two_tower", space, {"embedding_dim": 4, "user_hidden": [8], "item_hidden": [8],
                                            "output_dim": 5, **cfg}).eval()


def test_user_vector_ignores_item_features_and_item_vector_ignores_user_features(make_space, make_batch):
    space = make_space(1, vector=False)
    model = _model(space)
    a, b = make_batch(space, 6, seed=1), make_batch(space, 6, seed=2)
    cols = space.schema.categorical
    item_cols = [j for j, f in enumerate(cols) if f.group.value == "item"]
    mixed = make_batch(space, 6, seed=1)
    mixed.categorical[:, item_cols] = b.categorical[:, item_cols]  # a's user side, b's item side
    for name in ("tags", "genres"):  # multi-valued features default to the context group: user side
        assert space.schema.feature(name).group.value == "context"
    with torch.no_grad():
        torch.testing.assert_close(model.user_vectors(mixed), model.user_vectors(a))
        torch.testing.assert_close(model.item_vectors(mixed), model.item_vectors(b))
        assert not torch.allclose(model.item_vectors(a), model.item_vectors(b))


def test_score_is_the_scaled_dot_product_of_unit_vectors(make_space, make_batch):
    space = make_space(2, vector=False)
    model = _model(space, temperature=0.2)
    with torch.no_grad():
        model.task_scale.copy_(torch.tensor([1.0, 2.0]))
        model.task_bias.copy_(torch.tensor([0.0, -1.0]))
        batch = make_batch(space, 7)
        u, v = model.towers(batch)
        out = model(batch)
    torch.testing.assert_close(u.norm(dim=1), torch.ones(7))
    dot = (u * v).sum(1) / 0.2
    torch.testing.assert_close(out["click"], dot)
    torch.testing.assert_close(out["buy"], 2 * dot - 1)


def test_history_and_target_item_share_embedding_rows(make_space, make_batch):
    space = make_space(1, vector=False)
    model = _model(space)
    emb = model.embedding
    assert emb.offsets["hist"] == emb.offsets["item_id"]
    batch = make_batch(space, 4)
    model.zero_grad()
    model.user_vectors(batch).sum().backward()
    grad_rows = emb.table.weight.grad.abs().sum(1).nonzero().flatten()
    lo, hi = emb.offsets["item_id"], emb.offsets["item_id"] + space.vocab_size("item_id")
    assert ((grad_rows >= lo) & (grad_rows < hi)).any(), "the user tower must train item-id rows through the history"


def test_target_aware_user_sequence_is_refused(make_space):
    with pytest.raises(ValueError, match="cannot see the candidate"):
        _model(make_space(1, vector=False), sequence_encoder="din")


def test_raw_numerics_join_their_own_tower(make_space, make_batch):
    space = make_space(1, vector=False)  # price: context group (user side), age: user group
    model = _model(space, numeric="raw")
    batch = make_batch(space, 5)
    other = make_batch(space, 5)
    other.numeric = batch.numeric.clone()
    other.numeric[:, 0] += 3.0
    with torch.no_grad():
        assert not torch.allclose(model.user_vectors(batch), model.user_vectors(other))
        torch.testing.assert_close(model.item_vectors(batch), model.item_vectors(other))


def test_item_log_q_is_the_log_share_of_training_positives():
    lq = item_log_q(np.array([0, 0, 0, 2]), n_items=4)
    np.testing.assert_allclose(np.exp(lq), [0.75, 0.25, 0.25, 0.25], rtol=1e-6)  # unseen -> one occurrence
