"""Cross networks of DCN-V2: the full-rank cross layer and the low-rank mixture of experts (DCN-Mix).

Reference: R. Wang, R. Shivanna, D. Cheng, S. Jain, D. Lin, L. Hong, E. Chi, "DCN V2: Improved Deep & Cross
Network and Practical Lessons for Web-scale Learning to Rank Systems", WWW 2021 (arXiv:2008.13535).

Every variant has the same contract: `forward(x0: [B, N]) -> [B, N]`, where x0 is the input of the first
layer and is re-used by every layer (the "x_0 ⊙" term). A low-rank DCN-V2 layer is `CrossNetMix` with
`experts=1`, `activation="identity"` and `inner_matrix=False`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

GateKind = Literal["softmax", "sigmoid", "constant"]
ActivationKind = Literal["identity", "relu", "tanh", "hard_tanh"]

_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "identity": lambda t: t,
    "relu": F.relu,
    "tanh": torch.tanh,
    "hard_tanh": F.hardtanh,
}
_GATES = ("softmax", "sigmoid", "constant")


def _uniform_(t: torch.Tensor, fan_in: int, fan_out: int) -> torch.Tensor:
    """Glorot-uniform init of a stack of [fan_in, fan_out] matrices, in place."""
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    with torch.no_grad():
        return t.uniform_(-bound, bound)


def _check_input(x0: torch.Tensor, in_dim: int, name: str) -> None:
    if x0.dim() != 2 or x0.shape[1] != in_dim:
        raise ValueError(
            f"{name}: expected input [B, {in_dim}], got {tuple(x0.shape)}; "
            f"fix: flatten the input block to [B, N] with N == in_dim"
        )


class CrossNetV2(nn.Module):
    """Full-rank DCN-V2 cross network (paper eq. 1).

        x_{l+1} = x_0 ⊙ (W_l x_l + b_l) + x_l,   W_l: [N, N], b_l: [N]

    Args:
        in_dim: N, width of the input block.
        layers: L, number of stacked cross layers.

    >>> CrossNetV2(in_dim=6, layers=2)(torch.zeros(3, 6)).shape
    torch.Size([3, 6])
    """

    def __init__(self, in_dim: int, layers: int) -> None:
        super().__init__()
        if in_dim < 1 or layers < 1:
            raise ValueError(f"CrossNetV2: in_dim={in_dim} and layers={layers} must both be >= 1")
        self.in_dim = in_dim
        self.layers = layers
        self.W = nn.Parameter(_uniform_(torch.empty(layers, in_dim, in_dim), in_dim, in_dim))  # (L, N, N)
        self.b = nn.Parameter(torch.zeros(layers, in_dim))  # (L, N)

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        """x0: [B, N] float32 input block. Returns [B, N] float32, x_L."""
        _check_input(x0, self.in_dim, "CrossNetV2")
        x = x0
        for layer in range(self.layers):
            x = x0 * (x @ self.W[layer].T + self.b[layer]) + x  # (B, N)
        return x

    def effective_matrices(self) -> list[torch.Tensor]:
        """Each layer's cross matrix W_l, [N, N] float32, detached."""
        return [self.W[layer].detach() for layer in range(self.layers)]


class CrossNetMix(nn.Module):
    """DCN-Mix: a mixture of K low-rank experts per cross layer (paper eq. 3-4).

        x_{l+1} = sum_{i=1..K} G_i(x_l) E_i(x_l) + x_l
        E_i(x_l) = x_0 ⊙ (U_i g(C_i g(V_i^T x_l)) + b_l),   U_i, V_i: [N, R], C_i: [R, R], b_l: [N]

    Each layer l has its own U, V, C (per expert), its own bias b_l shared by the experts of the layer, and
    its own gate G(x_l) = gate(x_l A_l + a_l), A_l: [N, K]: softmax over the experts, an independent sigmoid
    per expert, or the constant 1/K (the plain mean of the experts). With `inner_matrix=False` the C_i
    step and its inner g are dropped: E_i(x_l) = x_0 ⊙ (U_i g(V_i^T x_l) + b_l). With K=1 the gate is
    skipped (weight 1), so K=1, identity g and no C is the low-rank DCN-V2 layer x_0 ⊙ (U V^T x_l + b_l) + x_l.
    All experts of a layer are one einsum over the stacked [K, N, R] weights.

    Args:
        in_dim: N, width of the input block.
        layers: L, number of cross layers.
        experts: K, experts per layer.
        rank: R, rank of each expert.
        gate: "softmax", "sigmoid" or "constant".
        activation: g, one of "identity", "relu", "tanh", "hard_tanh".
        inner_matrix: whether each expert has the [R, R] matrix C_i.

    >>> CrossNetMix(in_dim=6, layers=2, experts=3, rank=2)(torch.zeros(1, 6)).shape
    torch.Size([1, 6])
    """

    def __init__(
        self,
        in_dim: int,
        layers: int = 2,
        experts: int = 4,
        rank: int = 32,
        gate: GateKind = "softmax",
        activation: ActivationKind = "tanh",
        inner_matrix: bool = True,
    ) -> None:
        super().__init__()
        if min(in_dim, layers, experts, rank) < 1:
            raise ValueError(
                f"CrossNetMix: in_dim={in_dim}, layers={layers}, experts={experts}, rank={rank} must all be >= 1"
            )
        if gate not in _GATES:
            raise ValueError(f"CrossNetMix: gate={gate!r}; fix: use one of {_GATES}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"CrossNetMix: activation={activation!r}; fix: use one of {tuple(_ACTIVATIONS)}")
        self.in_dim, self.layers, self.experts, self.rank = in_dim, layers, experts, rank
        self.gate_kind: GateKind = gate
        self.activation = activation
        self.inner_matrix = inner_matrix
        L, E, N, R = layers, experts, in_dim, rank
        self.U = nn.Parameter(_uniform_(torch.empty(L, E, N, R), N, R))  # (L, E, N, R)
        self.V = nn.Parameter(_uniform_(torch.empty(L, E, N, R), N, R))  # (L, E, N, R)
        self.C = (
            nn.Parameter(_uniform_(torch.empty(L, E, R, R), R, R)) if inner_matrix else None
        )  # (L, E, R, R)
        self.b = nn.Parameter(torch.zeros(L, N))  # (L, N), shared across the experts of a layer
        self.uses_gate = experts > 1 and gate != "constant"
        if self.uses_gate:
            self.gate_weight = nn.Parameter(_uniform_(torch.empty(L, N, E), N, E))  # (L, N, E)
            self.gate_bias = nn.Parameter(torch.zeros(L, E))  # (L, E)
        else:
            self.gate_weight = None
            self.gate_bias = None

    def gate_weights(self, x: torch.Tensor, layer: int) -> torch.Tensor:
        """x: [B, N] float32, the layer input x_l. Returns [B, E] float32, G(x_l) of `layer`."""
        B, E = x.shape[0], self.experts
        if not self.uses_gate:
            return x.new_full((B, E), 1.0 / E)  # (B, E); K=1 -> weight 1
        logits = x @ self.gate_weight[layer] + self.gate_bias[layer]  # (B, E)
        return torch.softmax(logits, dim=-1) if self.gate_kind == "softmax" else torch.sigmoid(logits)

    def experts_out(self, x0: torch.Tensor, x: torch.Tensor, layer: int) -> torch.Tensor:
        """x0: [B, N] float32 input block; x: [B, N] float32 layer input x_l.

        Returns [B, E, N] float32, E_i(x_l) for every expert i of `layer`.
        """
        h = self.hidden(x, layer)  # (B, E, R)
        u = torch.einsum("ber,enr->ben", h, self.U[layer])  # (B, E, N) = U_i h
        return x0.unsqueeze(1) * (u + self.b[layer])  # (B, E, N)

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        """x0: [B, N] float32 input block. Returns [B, N] float32, x_L.

        The gate is a scalar per expert, so the mixture factors through x_0:
            sum_i G_i E_i = x_0 ⊙ (sum_i G_i U_i h_i + (sum_i G_i) b_l),   h_i = g(C_i g(V_i^T x_l))
        and sum_i G_i U_i h_i is ONE matmul of the gated hidden states [B, E*R] with the stacked U [E*R, N].
        This equals mixing `experts_out` (tested) without building the [B, E, N] tensor of expert outputs.
        """
        _check_input(x0, self.in_dim, "CrossNetMix")
        B, E, N, R = x0.shape[0], self.experts, self.in_dim, self.rank
        x = x0
        for layer in range(self.layers):
            h = self.hidden(x, layer)  # (B, E, R)
            if E == 1:
                gated, gate_sum = h, None  # K=1 skips the gate (weight 1)
            else:
                weights = self.gate_weights(x, layer)  # (B, E)
                gated = h * weights.unsqueeze(-1)  # (B, E, R)
                gate_sum = weights.sum(dim=-1, keepdim=True)  # (B, 1); 1 for softmax and constant gates
            u_stack = self.U[layer].transpose(1, 2).reshape(E * R, N)  # (E*R, N), row e*R+r = U_e[:, r]
            mixed_u = gated.reshape(B, E * R) @ u_stack  # (B, N) = sum_i G_i U_i h_i
            bias = self.b[layer] if gate_sum is None else gate_sum * self.b[layer]  # (N,) or (B, N)
            x = x0 * (mixed_u + bias) + x  # (B, N)
        return x

    def hidden(self, x: torch.Tensor, layer: int) -> torch.Tensor:
        """x: [B, N] float32 layer input x_l. Returns [B, E, R] float32, h_i = g(C_i g(V_i^T x_l)) per expert."""
        g = _ACTIVATIONS[self.activation]
        h = g(torch.einsum("bn,enr->ber", x, self.V[layer]))  # (B, E, R) = g(V_i^T x_l)
        if self.C is not None:
            h = g(torch.einsum("ber,esr->bes", h, self.C[layer]))  # (B, E, R) = g(C_i h)
        return h

    def effective_matrices(self) -> list[torch.Tensor]:
        """Each layer's cross matrix sum_i U_i C_i V_i^T (C_i = I when off), [N, N] float32, detached.

        This is the layer's linear map when g is the identity; for a non-linear g it is the map the experts
        apply around x_l = 0 up to the slope of g, which is what the singular-value diagnostic looks at.
        """
        U, V = self.U.detach(), self.V.detach()  # (L, E, N, R)
        if self.C is not None:
            UC = torch.einsum("lenr,lers->lens", U, self.C.detach())  # (L, E, N, R)
        else:
            UC = U
        W = torch.einsum("lenr,lemr->lnm", UC, V)  # (L, N, N)
        return list(W.unbind(0))
