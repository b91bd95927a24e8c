"""Reference tests for the interaction layers against naive per-sample / per-pair implementations."""
from __future__ import annotations

import itertools

import pytest
import torch

from untwine.nn.interaction import BiInteraction, CrossNetV2, FactorizationMachine, GroupwisePFM, InnerProduct, LowRankCrossNet


# ---------------------------------------------------------------- factorization machine

def naive_fm(v: torch.Tensor) -> torch.Tensor:
    """sum_{i<j} <v_i, v_j> by an explicit loop over field pairs and samples."""
    B, F, _ = v.shape
    out = torch.zeros(B, dtype=v.dtype)
    for b in range(B):
        total = torch.zeros((), dtype=v.dtype)
        for i, j in itertools.combinations(range(F), 2):
            total = total + torch.dot(v[b, i], v[b, j])
        out[b] = total
    return out


@pytest.mark.parametrize("B,F,D", [(5, 4, 3), (3, 7, 6), (1, 3, 2), (0, 4, 3), (4, 2, 1), (6, 1, 5)])
def test_fm_equals_explicit_pairwise_sum(B, F, D):
    g = torch.Generator().manual_seed(B * 100 + F * 10 + D)
    v = torch.randn(B, F, D, generator=g, dtype=torch.float64)
    out = FactorizationMachine()(v)
    assert out.shape == (B,)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, naive_fm(v), rtol=1e-10, atol=1e-10)


def test_fm_single_field_is_zero():
    v = torch.randn(4, 1, 8, dtype=torch.float64)
    torch.testing.assert_close(FactorizationMachine()(v), torch.zeros(4, dtype=torch.float64))


def test_fm_hand_case():
    # fields (1,2), (3,-1), (0,4): <a,b>=1, <a,c>=8, <b,c>=-4 -> 5
    v = torch.tensor([[[1.0, 2.0], [3.0, -1.0], [0.0, 4.0]]], dtype=torch.float64)
    assert FactorizationMachine()(v).item() == pytest.approx(5.0)


# ---------------------------------------------------------------- DCN-V2 full-rank cross net

def naive_cross_v2(net: CrossNetV2, x0: torch.Tensor) -> torch.Tensor:
    """x_{l+1} = x0 * (W_l x_l + b_l) + x_l, one sample and one coordinate at a time."""
    B, d = x0.shape
    out = torch.empty_like(x0)
    for s in range(B):
        x = x0[s].clone()
        for layer in net.layers:
            W, b = layer.weight, layer.bias
            new = torch.empty_like(x)
            for i in range(d):
                wx = sum(W[i, k] * x[k] for k in range(d))
                new[i] = x0[s, i] * (wx + b[i]) + x[i]
            x = new
        out[s] = x
    return out


def naive_cross_v1(ws: list[torch.Tensor], bs: list[torch.Tensor], x0: torch.Tensor) -> torch.Tensor:
    """DCN (V1): x_{l+1} = x0 (x_l . w_l) + b_l + x_l."""
    out = []
    for s in range(x0.shape[0]):
        x = x0[s]
        for w, b in zip(ws, bs):
            x = x0[s] * torch.dot(x, w) + b + x
        out.append(x)
    return torch.stack(out)


@pytest.mark.parametrize("B,d,layers", [(4, 5, 1), (3, 6, 3), (1, 2, 2), (0, 3, 2)])
def test_cross_v2_equals_naive_loop(B, d, layers):
    torch.manual_seed(0)
    net = CrossNetV2(d, layers).double()
    with torch.no_grad():  # non-zero biases so a dropped/misplaced bias shows
        for layer in net.layers:
            layer.bias.normal_()
    x0 = torch.randn(B, d, dtype=torch.float64)
    out = net(x0)
    assert out.shape == (B, d)
    torch.testing.assert_close(out, naive_cross_v2(net, x0), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("grad", [True, False])
def test_cross_v2_under_bf16_autocast_matches_the_textbook_expression_bitwise(grad):
    """The cast-first, in-place forward gives the values, and gradients, of x0 * layer(x) + x under autocast."""
    torch.manual_seed(2)
    net = CrossNetV2(24, 3)
    x0 = torch.randn(64, 24, requires_grad=grad)

    def textbook(x0):
        x = x0
        for layer in net.layers:
            x = x0 * layer(x) + x
        return x

    with torch.set_grad_enabled(grad), torch.autocast("cpu", dtype=torch.bfloat16):
        got, want = net(x0), textbook(x0)
    assert got.dtype == want.dtype == torch.float32
    assert torch.equal(got, want)
    if grad:
        g = torch.randn_like(got)
        got_grads = torch.autograd.grad(got, [x0, *net.parameters()], g)
        want_grads = torch.autograd.grad(want, [x0, *net.parameters()], g)
        for a, b in zip(got_grads, want_grads):
            assert torch.equal(a, b)


def test_cross_v2_zero_layers_is_identity():
    x0 = torch.randn(3, 4)
    torch.testing.assert_close(CrossNetV2(4, 0)(x0), x0)


def test_cross_v2_rank_one_reproduces_dcn_v1():
    """W_l = 1 w_l^T (every row equal to w_l) gives x0 (x_l . w_l) + x_l: DCN-V1 with zero bias.

    (With a bias the V2 layer adds x0 * b_l where V1 adds b_l, so the reduction is exact for b = 0.)"""
    torch.manual_seed(1)
    d, L = 6, 3
    net = CrossNetV2(d, L).double()
    ws = [torch.randn(d, dtype=torch.float64) for _ in range(L)]
    with torch.no_grad():
        for layer, w in zip(net.layers, ws):
            layer.weight.copy_(w.expand(d, d))  # W[i, :] = w for all i
            layer.bias.zero_()
    x0 = torch.randn(5, d, dtype=torch.float64)
    zeros = [torch.zeros(d, dtype=torch.float64)] * L
    torch.testing.assert_close(net(x0), naive_cross_v1(ws, zeros, x0), rtol=1e-10, atol=1e-10)


def test_cross_v2_rank_one_bias_enters_elementwise_with_x0():
    """With W = 1 w^T and bias b the V2 layer is x0 (x.w) + x0*b + x (one layer), not V1's + b."""
    torch.manual_seed(2)
    d = 4
    net = CrossNetV2(d, 1).double()
    w, b = torch.randn(d, dtype=torch.float64), torch.randn(d, dtype=torch.float64)
    with torch.no_grad():
        net.layers[0].weight.copy_(w.expand(d, d))
        net.layers[0].bias.copy_(b)
    x0 = torch.randn(3, d, dtype=torch.float64)
    expected = x0 * (x0 @ w).unsqueeze(1) + x0 * b + x0
    torch.testing.assert_close(net(x0), expected, rtol=1e-10, atol=1e-10)


def test_cross_v2_diagonal_w_is_not_dcn_v1():
    """A diagonal W_l = diag(w_l) gives x0 * w * x_l + x_l, which is NOT DCN-V1 in general."""
    torch.manual_seed(3)
    d, L = 6, 2
    net = CrossNetV2(d, L).double()
    ws = [torch.randn(d, dtype=torch.float64) for _ in range(L)]
    with torch.no_grad():
        for layer, w in zip(net.layers, ws):
            layer.weight.copy_(torch.diag(w))
            layer.bias.zero_()
    x0 = torch.randn(5, d, dtype=torch.float64)
    zeros = [torch.zeros(d, dtype=torch.float64)] * L
    v1 = naive_cross_v1(ws, zeros, x0)
    out = net(x0)
    assert not torch.allclose(out, v1, rtol=1e-3, atol=1e-3)
    # ... and what it does compute is the element-wise (Hadamard) recursion
    x = x0
    for w in ws:
        x = x0 * (w * x) + x
    torch.testing.assert_close(out, x, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------- DCN-Mix (low-rank experts)

def naive_low_rank(net: LowRankCrossNet, x0: torch.Tensor) -> torch.Tensor:
    """Paper formula (Wang et al. 2021, eq. 4), per sample:
    x_{l+1} = sum_e G_e(x_l) * x0 * (U_e tanh(C_e tanh(V_e^T x_l)) + b_l) + x_l,  G = softmax_e(g_e . x_l)."""
    E = net.U[0].shape[0]
    out = []
    for s in range(x0.shape[0]):
        x = x0[s]
        for U, V, C, b in zip(net.U, net.V, net.C, net.bias):
            logits = torch.stack([(g.weight[0] * x).sum() for g in net.gates])
            gate = torch.exp(logits - logits.max())
            gate = gate / gate.sum()
            mix = torch.zeros_like(x)
            for e in range(E):
                v = torch.tanh(V[e].T @ x)
                v = torch.tanh(C[e] @ v)
                u = U[e] @ v + b
                mix = mix + gate[e] * (x0[s] * u)
            x = mix + x
        out.append(x)
    return torch.stack(out)


def _low_rank(d, layers, rank, experts, symmetric_c=False, seed=0):
    torch.manual_seed(seed)
    net = LowRankCrossNet(d, layers, rank, experts).double()
    with torch.no_grad():
        for b in net.bias:
            b.normal_()
        if symmetric_c:
            for C in net.C:
                C.copy_(C + C.transpose(1, 2))
    return net


@pytest.mark.parametrize("B,d,layers,rank", [(4, 6, 2, 3), (1, 5, 1, 2), (3, 4, 3, 4)])
def test_low_rank_one_expert_matches_naive(B, d, layers, rank):
    # symmetric C_e so the check does not depend on the C vs C^T convention (see the strict test below)
    net = _low_rank(d, layers, rank, 1, symmetric_c=True)
    x0 = torch.randn(B, d, dtype=torch.float64)
    out = net(x0)
    assert out.shape == (B, d)
    torch.testing.assert_close(out, naive_low_rank(net, x0), rtol=1e-10, atol=1e-10)


def test_low_rank_mixture_matches_naive_gates():
    net = _low_rank(5, 2, 2, 3, symmetric_c=True, seed=4)
    x0 = torch.randn(4, 5, dtype=torch.float64)
    torch.testing.assert_close(net(x0), naive_low_rank(net, x0), rtol=1e-10, atol=1e-10)


def test_low_rank_uses_c_not_c_transpose():
    net = _low_rank(6, 2, 3, 1, symmetric_c=False, seed=5)
    x0 = torch.randn(4, 6, dtype=torch.float64)
    torch.testing.assert_close(net(x0), naive_low_rank(net, x0), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("B", [0, 1, 5])
def test_low_rank_output_shape(B):
    net = LowRankCrossNet(8, num_layers=2, rank=2, num_experts=3)
    assert net(torch.randn(B, 8)).shape == (B, 8)


def test_low_rank_gradient_reaches_every_parameter():
    torch.manual_seed(6)
    net = LowRankCrossNet(6, num_layers=2, rank=2, num_experts=3)
    with torch.no_grad():
        for b in net.bias:
            b.normal_()
    net(torch.randn(5, 6)).pow(2).sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} got an all-zero gradient"


def test_low_rank_single_expert_gate_is_constant():
    """With one expert the softmax gate is identically 1: its weights get a zero gradient (by design)."""
    torch.manual_seed(7)
    net = LowRankCrossNet(4, num_layers=1, rank=2, num_experts=1)
    net(torch.randn(3, 4)).sum().backward()
    torch.testing.assert_close(net.gates[0].weight.grad, torch.zeros_like(net.gates[0].weight))
    assert net.U[0].grad.abs().sum() > 0


# ---------------------------------------------------------------- FM per dimension, IPNN, GwPFM

def test_bi_interaction_sums_to_the_fm_score():
    v = torch.randn(6, 5, 4, dtype=torch.float64)
    bi = BiInteraction()(v)
    assert bi.shape == (6, 4)
    naive = torch.stack([sum(v[:, i] * v[:, j] for i, j in itertools.combinations(range(5), 2))])[0]
    torch.testing.assert_close(bi, naive)
    torch.testing.assert_close(bi.sum(1), naive_fm(v))


@pytest.mark.parametrize("F", [1, 2, 5])
def test_inner_product_equals_naive_pairs(F):
    g = torch.Generator().manual_seed(F)
    v = torch.randn(4, F, 3, generator=g, dtype=torch.float64)
    layer = InnerProduct(F)
    out = layer(v)
    assert layer.num_pairs == F * (F - 1) // 2
    naive = torch.stack([torch.cat([v[b].flatten(), torch.tensor(
        [torch.dot(v[b, i], v[b, j]).item() for i, j in itertools.combinations(range(F), 2)], dtype=v.dtype)])
        for b in range(4)])
    torch.testing.assert_close(out, naive)


def naive_gwpfm(v: torch.Tensor, groups: list[int], w: dict[tuple[int, int], float], intra: bool) -> torch.Tensor:
    """Phi by the double loop over features of every group pair (SPEC 3): <v_{i,h}, v_{j,g}>."""
    B, F, G, _ = v.shape
    out = torch.zeros(B, dtype=v.dtype)
    for b in range(B):
        for g in range(G):
            for h in range(g if intra else g + 1, G):
                for i in range(F):
                    for j in range(F):
                        if groups[i] != g or groups[j] != h or (g == h and j <= i):
                            continue
                        out[b] += w[(g, h)] * torch.dot(v[b, i, h], v[b, j, g])
    return out


@pytest.mark.parametrize("groups", [[0, 1, 2, 0, 1, 1, 2], [0, 0, 1], [1, 0, 1, 0], [0, 0, 0]])
@pytest.mark.parametrize("intra", [False, True])
def test_gwpfm_equals_its_naive_double_loop(groups, intra):
    g = torch.Generator().manual_seed(len(groups) * 10 + intra)
    G = max(groups) + 1
    layer = GroupwisePFM(groups, intra=intra).double()
    with torch.no_grad():
        layer.pair_weight.copy_(torch.randn(layer.num_pairs, generator=g, dtype=torch.float64))
    w = {(int(r), int(c)): float(x) for r, c, x in zip(layer.rows, layer.cols, layer.pair_weight.detach())}
    v = torch.randn(5, len(groups), G, 3, generator=g, dtype=torch.float64)
    assert layer(v).shape == (5, layer.num_pairs, 3)
    torch.testing.assert_close(layer.score(v), naive_gwpfm(v, groups, w, intra))


def test_gwpfm_reads_the_partner_groups_vector():
    """Feature i of group g meets j of group h through v_{i,h} and v_{j,g}, not its own group's vectors."""
    v = torch.zeros(1, 2, 2, 1)
    v[0, 0, 1, 0] = 2.0  # v_{0,h=1}
    v[0, 1, 0, 0] = 3.0  # v_{1,g=0}
    assert GroupwisePFM([0, 1]).score(v).item() == 6.0
    v[0, 0, 0, 0] = 100.0  # feature 0's own-group vector is not used across groups
    assert GroupwisePFM([0, 1]).score(v).item() == 6.0


def test_gwpfm_rejects_unused_group_numbers():
    with pytest.raises(ValueError, match="numbered 0..G-1"):
        GroupwisePFM([0, 2])


@pytest.mark.parametrize("d", [13, 390, 16])
@pytest.mark.parametrize("grad", [True, False])
def test_cross_v2_in_fp32_at_any_width_matches_the_textbook_expression(d, grad):
    """Odd widths run zero-padded to a multiple of 8 (faster products): the values and the gradients of
    x0, W_l and b_l are those of x0 * layer(x) + x at the real width, the parameters keep their shapes."""
    torch.manual_seed(4)
    net = CrossNetV2(d, 3)
    with torch.no_grad():
        for layer in net.layers:
            layer.bias.normal_()
    x0 = torch.randn(32, d, requires_grad=grad)

    def textbook(x0):
        x = x0
        for layer in net.layers:
            x = x0 * layer(x) + x
        return x

    with torch.set_grad_enabled(grad):
        got, want = net(x0), textbook(x0)
    assert got.shape == (32, d) and [tuple(p.shape) for p in net.parameters()] == [(d, d), (d,)] * 3
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    if grad:
        g = torch.randn_like(got)
        got_grads = torch.autograd.grad(got, [x0, *net.parameters()], g)
        want_grads = torch.autograd.grad(want, [x0, *net.parameters()], g)
        for a, b in zip(got_grads, want_grads):
            assert a.shape == b.shape
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_cross_v2_padding_is_taken_only_for_odd_widths_outside_autocast(monkeypatch):
    """The padded path is what runs for an odd fp32 width (so the test above exercises it), and only then."""
    calls = []
    original = CrossNetV2._fp32_padding

    def spy(self, x0):
        pad = original(self, x0)
        if pad:
            calls.append(pad)
        return pad

    monkeypatch.setattr(CrossNetV2, "_fp32_padding", spy)
    CrossNetV2(13, 2)(torch.randn(4, 13))
    CrossNetV2(16, 2)(torch.randn(4, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        CrossNetV2(13, 2)(torch.randn(4, 13))
    assert calls == [3]
