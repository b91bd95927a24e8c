"""Feature-interaction layers: factorization machine and DCN-V2 cross networks."""
from __future__ import annotations

import torch
from torch import Tensor, nn


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
        x = x0
        for layer in self.layers:
            x = x0 * layer(x) + x
        return x


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
