"""A one-row block (a request's user features beside many candidates) is computed once and broadcast:
the fields equal those of the block repeated on every row."""
import torch

from untwine.nn.embedding import FieldEmbedding


def test_one_row_sequence_vector_and_multi_blocks_broadcast_like_repeated_rows(make_space, make_batch):
    space = make_space(1, vector=True)
    torch.manual_seed(0)
    emb = FieldEmbedding(space, 4, init_std=0.3).eval()
    batch = make_batch(space, 6)
    shared = make_batch(space, 6)
    for d in (shared.seq, shared.multi, shared.vectors):
        for k in list(d):
            if not k.startswith("user_img") and not k == "img":  # the similarity pair stays per row
                d[k] = d[k][:1]
    repeated = make_batch(space, 6)
    for d, src in ((repeated.seq, shared.seq), (repeated.multi, shared.multi), (repeated.vectors, shared.vectors)):
        for k, v in src.items():
            d[k] = v.expand(6, *v.shape[1:]).clone()
    with torch.no_grad():
        got, _ = emb(shared)
        want, _ = emb(repeated)
    assert got.shape == want.shape == (6, emb.num_fields, 4)
    torch.testing.assert_close(got, want)
    assert not torch.allclose(emb(batch)[0], want), "the test must change something"
