"""MLP structure and a hand computation with fixed weights."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from untwine.nn.mlp import MLP


def kinds(mlp: MLP) -> list[type]:
    return [type(m) for m in mlp.net]


@pytest.mark.parametrize("hidden,out_dim,expected", [
    ((16, 4), None, 4), ((16, 4), 3, 3), ((), 5, 5), ((), None, 8), ((7,), 1, 1), ((7,), None, 7)])
@pytest.mark.parametrize("B", [0, 1, 5])
def test_shapes_and_out_dim(hidden, out_dim, expected, B):
    mlp = MLP(8, hidden, out_dim=out_dim)
    assert mlp.out_dim == expected
    assert mlp(torch.randn(B, 8)).shape == (B, expected)
    linears = [m for m in mlp.net if isinstance(m, nn.Linear)]
    widths = [8, *hidden] + ([out_dim] if out_dim is not None else [])
    assert [(l.in_features, l.out_features) for l in linears] == list(zip(widths, widths[1:]))


def test_layer_order_plain():
    assert kinds(MLP(4, (6, 5), out_dim=2)) == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]


def test_out_dim_none_ends_with_activation():
    assert kinds(MLP(4, (6,))) == [nn.Linear, nn.ReLU]
    assert (MLP(4, (6,))(torch.randn(20, 4)) >= 0).all()


def test_batch_norm_and_dropout_inserted():
    mlp = MLP(4, (6, 5), out_dim=1, dropout=0.3, batch_norm=True)
    assert kinds(mlp) == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Dropout,
                          nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Dropout, nn.Linear]
    assert [m.num_features for m in mlp.net if isinstance(m, nn.BatchNorm1d)] == [6, 5]
    assert all(m.p == 0.3 for m in mlp.net if isinstance(m, nn.Dropout))


def test_no_dropout_module_at_zero_rate():
    assert nn.Dropout not in kinds(MLP(4, (6,), out_dim=1, dropout=0.0))


def test_dropout_active_in_train_only():
    torch.manual_seed(0)
    mlp = MLP(8, (64,), out_dim=None, dropout=0.5)
    x = torch.randn(4, 8)
    mlp.eval()
    torch.testing.assert_close(mlp(x), mlp(x))
    mlp.train()
    assert not torch.equal(mlp(x), mlp(x))


def test_hand_computation_one_hidden_layer():
    mlp = MLP(2, (3,), out_dim=1)
    with torch.no_grad():
        mlp.net[0].weight.copy_(torch.tensor([[1.0, 2.0], [-1.0, 1.0], [0.5, -3.0]]))
        mlp.net[0].bias.copy_(torch.tensor([0.0, 1.0, -1.0]))
        mlp.net[2].weight.copy_(torch.tensor([[2.0, -1.0, 4.0]]))
        mlp.net[2].bias.copy_(torch.tensor([0.5]))
    x = torch.tensor([[1.0, 1.0], [2.0, -1.0]])
    # row 1: h = relu([3, 1, -3.5]) = [3, 1, 0] -> 6 - 1 + 0 + 0.5 = 5.5
    # row 2: h = relu([0, -2, 3])  = [0, 0, 3] -> 0 - 0 + 12 + 0.5 = 12.5
    torch.testing.assert_close(mlp(x), torch.tensor([[5.5], [12.5]]))


def test_hand_computation_with_batch_norm_eval():
    mlp = MLP(2, (2,), out_dim=1, batch_norm=True).eval()
    with torch.no_grad():
        mlp.net[0].weight.copy_(torch.eye(2))
        mlp.net[0].bias.zero_()
        bn = mlp.net[1]
        bn.running_mean.copy_(torch.tensor([1.0, -1.0]))
        bn.running_var.copy_(torch.tensor([4.0, 1.0]))
        bn.weight.copy_(torch.tensor([2.0, 1.0]))
        bn.bias.copy_(torch.tensor([0.0, 0.5]))
        mlp.net[3].weight.copy_(torch.tensor([[1.0, 1.0]]))
        mlp.net[3].bias.zero_()
    x = torch.tensor([[5.0, -3.0]])
    eps = bn.eps
    h0 = max(2.0 * (5.0 - 1.0) / (4.0 + eps) ** 0.5, 0.0)
    h1 = max(1.0 * (-3.0 + 1.0) / (1.0 + eps) ** 0.5 + 0.5, 0.0)
    torch.testing.assert_close(mlp(x), torch.tensor([[h0 + h1]]))


def _reference(mlp: MLP, x: torch.Tensor) -> torch.Tensor:
    """The Sequential's own modules applied one by one (MKL linear, then a ReLU pass)."""
    for layer in mlp.net:
        x = layer(x)
    return x


@pytest.mark.parametrize("in_dim", [7, 390])
def test_scoring_through_the_fused_linear_relu_equals_the_layers_one_by_one(in_dim):
    torch.manual_seed(0)
    mlp = MLP(in_dim, (16, 8), out_dim=1).eval()
    x = torch.randn(2100, in_dim)
    with torch.inference_mode():
        got = mlp(x)
        want = _reference(mlp, x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_fused_kernel_runs_only_for_fp32_scoring(monkeypatch):
    """Taken with autograd off in fp32 for large batches (where this machine has it), never in training, under
    bf16 autocast or for small batches, so training's values and gradients are those of the layers one by one."""
    import untwine.nn.mlp as mlp_module

    if not mlp_module._onednn_linear_relu_available():
        pytest.skip("oneDNN's fused fp32 linear + ReLU does not run on this machine")
    calls = []
    op = torch.ops.mkldnn._linear_pointwise

    class Spy:
        def __call__(self, *args):
            calls.append(args[3])
            return op(*args)

    monkeypatch.setattr(mlp_module.torch.ops.mkldnn, "_linear_pointwise", Spy(), raising=False)
    torch.manual_seed(1)
    mlp = MLP(6, (5, 4), out_dim=1)
    x = torch.randn(mlp_module.FUSED_MIN_ROWS, 6, requires_grad=True)
    with torch.no_grad():
        mlp(x)
        assert calls == ["relu", "relu"]
        calls.clear()
        mlp(x[:500])
    assert calls == []
    calls.clear()
    out = mlp(x)
    assert calls == [] and torch.equal(out, _reference(mlp, x))
    out.sum().backward()
    assert x.grad is not None
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        mlp(x)
    assert calls == []
