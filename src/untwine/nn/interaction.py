"""Feature-interaction layers: factorization machine and DCN-V2 cross networks."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# fp32 products whose width is not a multiple of 8 take a slow edge path in MKL's AVX2 kernels: on T1 a
# 390 x 390 layer's forward + backward products ran 1.5x longer than 392 x 392 ones, 273 x 273 1.3x longer than
# 280 x 280 (benchmarks/results/profile/gemm_alignment_avx2.md)
FP32_ALIGN = 8


class FactorizationMachine(nn.Module):
    """Second-order FM term over fields: sum_{i<j} <v_i, v_j> (Rendle, ICDM 2010).

    Computed in O(F D) as 0.5 * sum_d [(sum_i v_id)^2 - sum_i v_id^2].

    Example::

        >>> FactorizationMachine()(torch.ones(2, 3, 4)).tolist()  # 3 pairs x <1,1> = 3 x 4
        [12.0, 12.0]
    """

    def forward(self, emb: Tensor) -> Tensor:  # (B, F, D) -> (B,)
        square_of_sum = emb.sum(dim=1).pow(2)
        sum_of_square = emb.pow(2).sum(dim=1)
        return 0.5 * (square_of_sum - sum_of_square).sum(dim=1)


class CrossNetV2(nn.Module):
    """DCN-V2 full-rank cross network: x_{l+1} = x_0 * (W_l x_l + b_l) + x_l (Wang et al., WWW 2021).

    Note: DCN (V1) is the special case W_l = 1 w_l^T (rank one), not a diagonal W_l.

    Example::

        >>> CrossNetV2(8, num_layers=2)(torch.randn(4, 8)).shape
        torch.Size([4, 8])
    """

    def __init__(self, dim: int, num_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(dim, dim) for _ in range(num_layers))

    def forward(self, x0: Tensor) -> Tensor:  # (B, d) -> (B, d)
        pad = self._fp32_padding(x0)
        if pad:
            # x0 widened by zero columns and each W_l, b_l by zero rows and columns (copies of the parameters,
            # so their shapes and gradients stay d x d): the extra coordinates stay exactly zero (x0 is zero
            # there), so the first d columns are the unpadded result
            x0 = F.pad(x0, (0, pad))
        x = x0
        for layer in self.layers:
            h = (F.linear(x, F.pad(layer.weight, (0, pad, 0, pad)), F.pad(layer.bias, (0, pad))) if pad
                 # under bf16 autocast the layer gives bf16 and x0 is fp32: a mixed-dtype multiply takes
                 # PyTorch's slow casting path, so the product is cast first (the same fp32 values) and the
                 # sum written into it; without autograd the cast's fresh output takes the product too
                 else layer(x).to(x0.dtype))
            x = (h.mul_(x0) if not torch.is_grad_enabled() else x0 * h).add_(x)
        return x[:, :-pad] if pad else x

    def _fp32_padding(self, x0: Tensor) -> int:
        """Zero columns that round the width up to ``FP32_ALIGN``; 0 when aligned, without layers or under
        autocast (whose bf16 kernels were not measured at these widths), and for layers that are not fp32
        ``nn.Linear`` (a scoring copy's int8 layers, nn/quantize.py)."""
        pad = -x0.shape[1] % FP32_ALIGN
        if not pad or not self.layers or torch.is_autocast_enabled(x0.device.type):
            return 0
        first = self.layers[0]
        return pad if isinstance(first, nn.Linear) and first.weight.dtype == torch.float32 else 0


class LowRankCrossNet(nn.Module):
    """DCN-V2 mixture of low-rank experts (DCN-Mix): W_l replaced by a gated sum of U_e g(C_e g(V_e^T x)).

    Example::

        >>> LowRankCrossNet(8, num_layers=2, rank=2, num_experts=3)(torch.randn(4, 8)).shape
        torch.Size([4, 8])
    """

    def __init__(self, dim: int, num_layers: int, rank: int, num_experts: int = 4) -> None:
        super().__init__()
        self.U = nn.ParameterList(nn.Parameter(torch.empty(num_experts, dim, rank)) for _ in range(num_layers))
        self.V = nn.ParameterList(nn.Parameter(torch.empty(num_experts, dim, rank)) for _ in range(num_layers))
        self.C = nn.ParameterList(nn.Parameter(torch.empty(num_experts, rank, rank)) for _ in range(num_layers))
        self.bias = nn.ParameterList(nn.Parameter(torch.zeros(dim)) for _ in range(num_layers))
        self.gates = nn.ModuleList(nn.Linear(dim, 1, bias=False) for _ in range(num_experts))
        for p in [*self.U, *self.V, *self.C]:
            nn.init.xavier_normal_(p)

    def forward(self, x0: Tensor) -> Tensor:  # (B, d) -> (B, d)
        x = x0
        for U, V, C, b in zip(self.U, self.V, self.C, self.bias):
            gate = torch.softmax(torch.cat([g(x) for g in self.gates], dim=1), dim=1)  # (B, E)
            v = torch.tanh(torch.einsum("bd,edr->ber", x, V))  # (B, E, r)
            v = torch.tanh(torch.einsum("ber,esr->bes", v, C))  # C_e v
            u = torch.einsum("bes,eds->bed", v, U) + b  # (B, E, d)
            expert = x0.unsqueeze(1) * u  # (B, E, d)
            x = (gate.unsqueeze(-1) * expert).sum(dim=1) + x
        return x


class BiInteraction(nn.Module):
    """FM's pairwise term kept per dimension: sum_{i<j} v_i * v_j (B, D) (NFM's bi-interaction pooling);
    its sum over D is :class:`FactorizationMachine`'s score. O(F D)."""

    def forward(self, emb: Tensor) -> Tensor:  # (B, F, D) -> (B, D)
        return 0.5 * (emb.sum(dim=1).pow(2) - emb.pow(2).sum(dim=1))


class InnerProduct(nn.Module):
    """IPNN's product layer (Qu et al., ICDM 2016): the flattened fields (linear part) beside the inner
    products <v_i, v_j> of every field pair i < j, in row-major pair order -> (B, F D + F (F - 1) / 2).

    Example::

        >>> InnerProduct(3)(torch.ones(2, 3, 4))[0, -3:].tolist()  # 3 pairs of <1, 1> over 4 dims
        [4.0, 4.0, 4.0]
    """

    def __init__(self, num_fields: int) -> None:
        super().__init__()
        rows, cols = torch.triu_indices(num_fields, num_fields, offset=1)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)
        self.num_pairs = len(rows)

    def forward(self, emb: Tensor) -> Tensor:  # (B, F, D)
        gram = emb @ emb.transpose(1, 2)  # (B, F, F); F is small, the pairs are the upper triangle
        return torch.cat([emb.flatten(1), gram[:, self.rows, self.cols]], dim=1)


class GroupwisePFM(nn.Module):
    """GwPFM (Tencent, KDD 2024): fields in G groups; feature i keeps one vector v_{i,h} per group h and
    each group pair a learned scalar w_{g,h}:

        Phi = sum_{g<h} w_{g,h} sum_{i in g} sum_{j in h} <v_{i,h}, v_{j,g}>   (+ optionally g = h, i < j).

    The double sum over features factorises: with S_{g,h} = sum_{i in g} v_{i,h}, the (g, h) term is
    w_{g,h} <S_{g,h}, S_{h,g}> and the intra-group term 0.5 (|S_{g,g}|^2 - sum_{i in g} |v_{i,g}|^2), so
    the cost is O(F G d) and no feature pair is materialised. ``forward`` returns the per-pair terms kept
    per dimension (B, P, d) for an expert's projection; ``score`` sums them to Phi (B,).

    Args:
        groups: the group index (0..G-1) of each field.
        intra: add the within-group terms g = h.
    """

    def __init__(self, groups: list[int], intra: bool = False) -> None:
        super().__init__()
        g = max(groups) + 1
        if sorted(set(groups)) != list(range(g)):
            raise ValueError(f"GwPFM groups must be numbered 0..G-1 with every group used, got {groups}")
        self.num_groups, self.intra = g, intra
        member = torch.zeros(g, len(groups))
        member[groups, torch.arange(len(groups))] = 1.0
        self.register_buffer("member", member, persistent=False)  # (G, F)
        rows, cols = torch.triu_indices(g, g, offset=0 if intra else 1)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)
        self.num_pairs = len(rows)
        self.pair_weight = nn.Parameter(torch.ones(self.num_pairs))

    def forward(self, vectors: Tensor) -> Tensor:  # (B, F, G, d): v_{i,h} = vectors[:, i, h] -> (B, P, d)
        s = torch.einsum("gf,bfhd->bghd", self.member, vectors)  # S_{g,h}
        r, c = self.rows, self.cols
        terms = s[:, r, c] * s[:, c, r]  # (B, P, d); on the diagonal this is S_{g,g}^2
        if self.intra:
            own = torch.einsum("gf,bfgd->bgd", self.member, vectors.pow(2))  # sum_{i in g} v_{i,g}^2
            diag = r == c
            terms = torch.where(diag.view(1, -1, 1), 0.5 * (terms - own[:, r]), terms)
        return terms * self.pair_weight.view(1, -1, 1)

    def score(self, vectors: Tensor) -> Tensor:  # (B, F, G, d) -> Phi (B,)
        return self(vectors).sum(dim=(1, 2))
