"""Tests of the DCN-V2 cross networks: shapes, equivalences, a hand-checked pass, gradients."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models.crossnet import CrossNetMix, CrossNetV2


def _seeded_mix(seed: int = 0, **kwargs) -> CrossNetMix:
    torch.manual_seed(seed)
    return CrossNetMix(**kwargs)


@pytest.mark.parametrize("B", [1, 7])
@pytest.mark.parametrize(
    "gate,activation,inner,experts",
    list(
        itertools.product(
            ["softmax", "sigmoid", "constant"],
            ["identity", "relu", "tanh", "hard_tanh"],
            [True, False],
            [1, 3],
        )
    ),
)
def test_crossnetmix_shape(B, gate, activation, inner, experts):
    net = _seeded_mix(
        in_dim=5, layers=2, experts=experts, rank=3, gate=gate, activation=activation, inner_matrix=inner
    )
    out = net(torch.randn(B, 5))
    assert out.shape == (B, 5)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("B", [1, 7])
def test_crossnetv2_shape(B):
    net = CrossNetV2(in_dim=4, layers=3)
    assert net(torch.randn(B, 4)).shape == (B, 4)


def test_wrong_width_is_an_error():
    with pytest.raises(ValueError, match=r"\[B, 5\]"):
        CrossNetMix(in_dim=5, rank=2)(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="gate"):
        CrossNetMix(in_dim=5, rank=2, gate="max")


def test_hand_checked_forward_n2_r1_k1():
    # N=2, R=1, K=1, L=1, identity g, no C.  x0 = [1, 2], U = [[1], [2]], V = [[3], [-1]], b = [0.5, -1]
    # V^T x0 = 3*1 - 1*2 = 1;  U * 1 = [1, 2];  + b = [1.5, 1];  x0 ⊙ . = [1.5, 2];  + x0 = [2.5, 4]
    net = CrossNetMix(in_dim=2, layers=1, experts=1, rank=1, activation="identity", inner_matrix=False)
    with torch.no_grad():
        net.U.copy_(torch.tensor([[[[1.0], [2.0]]]]))
        net.V.copy_(torch.tensor([[[[3.0], [-1.0]]]]))
        net.b.copy_(torch.tensor([[0.5, -1.0]]))
    out = net(torch.tensor([[1.0, 2.0]]))
    torch.testing.assert_close(out, torch.tensor([[2.5, 4.0]]))


def test_hand_checked_forward_with_inner_matrix():
    # same weights plus C = [[2]]: h = 2 * (V^T x0) = 2;  U h = [2, 4];  + b = [2.5, 3]
    # x0 ⊙ . = [2.5, 6];  + x0 = [3.5, 8]
    net = CrossNetMix(in_dim=2, layers=1, experts=1, rank=1, activation="identity", inner_matrix=True)
    with torch.no_grad():
        net.U.copy_(torch.tensor([[[[1.0], [2.0]]]]))
        net.V.copy_(torch.tensor([[[[3.0], [-1.0]]]]))
        net.C.copy_(torch.tensor([[[[2.0]]]]))
        net.b.copy_(torch.tensor([[0.5, -1.0]]))
    torch.testing.assert_close(net(torch.tensor([[1.0, 2.0]])), torch.tensor([[3.5, 8.0]]))


def test_k1_equals_low_rank_dcnv2_layer():
    # K=1, identity g, no C is x_{l+1} = x0 ⊙ (U (V^T x_l) + b_l) + x_l, i.e. full-rank DCN-V2 with W_l = U V^T
    net = _seeded_mix(1, in_dim=6, layers=2, experts=1, rank=2, activation="identity", inner_matrix=False)
    with torch.no_grad():
        net.b.normal_()
    full = CrossNetV2(in_dim=6, layers=2)
    with torch.no_grad():
        for layer in range(2):
            full.W[layer].copy_(net.U[layer, 0] @ net.V[layer, 0].T)
        full.b.copy_(net.b)
    x0 = torch.randn(7, 6)
    # explicit recursion, written out independently of both modules
    x = x0
    for layer in range(2):
        U, V = net.U[layer, 0], net.V[layer, 0]
        x = x0 * ((x @ V) @ U.T + net.b[layer]) + x
    torch.testing.assert_close(net(x0), x)
    torch.testing.assert_close(full(x0), x, rtol=1e-5, atol=1e-5)
    # and the effective matrix is the one we built
    torch.testing.assert_close(net.effective_matrices()[1], full.W[1].detach())


def test_constant_gate_is_mean_of_experts():
    # one layer, K=3, constant gate: x1 = mean_i E_i(x0) + x0; each E_i(x0) is what a K=1 net with
    # expert i's weights adds to x0
    mix = _seeded_mix(2, in_dim=5, layers=1, experts=3, rank=2, gate="constant", activation="tanh")
    with torch.no_grad():
        mix.b.normal_()
    x0 = torch.randn(7, 5)
    singles = []
    for i in range(3):
        one = CrossNetMix(in_dim=5, layers=1, experts=1, rank=2, activation="tanh")
        with torch.no_grad():
            one.U.copy_(mix.U[:, i : i + 1])
            one.V.copy_(mix.V[:, i : i + 1])
            one.C.copy_(mix.C[:, i : i + 1])
            one.b.copy_(mix.b)
        singles.append(one(x0) - x0)
    expected = torch.stack(singles).mean(0) + x0
    torch.testing.assert_close(mix(x0), expected)
    assert mix.gate_weight is None  # no gate parameters to learn


def test_softmax_gate_sums_to_one_and_each_layer_has_its_own_gate():
    mix = _seeded_mix(3, in_dim=4, layers=3, experts=5, rank=2)
    assert mix.gate_weight.shape == (3, 4, 5)
    w = mix.gate_weights(torch.randn(7, 4), layer=1)
    torch.testing.assert_close(w.sum(-1), torch.ones(7))
    assert not torch.equal(mix.gate_weight[0], mix.gate_weight[1])


@pytest.mark.parametrize("gate", ["softmax", "sigmoid", "constant"])
def test_gradients_reach_every_expert(gate):
    mix = _seeded_mix(4, in_dim=6, layers=2, experts=3, rank=2, gate=gate, activation="tanh")
    with torch.no_grad():
        mix.b.normal_()
    mix(torch.randn(7, 6)).pow(2).sum().backward()
    for name in ("U", "V", "C"):
        grad = getattr(mix, name).grad  # (L, E, ., .)
        per_expert = grad.abs().flatten(2).sum(-1)  # (L, E)
        assert (per_expert > 0).all(), f"{name}: some expert got no gradient: {per_expert}"
    if gate != "constant":
        assert (mix.gate_weight.grad.abs().sum(1) > 0).all()


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    experts=st.integers(1, 4),
    rank=st.integers(1, 3),
    gate=st.sampled_from(["softmax", "sigmoid", "constant"]),
    B=st.integers(2, 6),
)
def test_rows_are_independent_and_zero_maps_to_zero(seed, experts, rank, gate, B):
    # no batch coupling (a batch of 1 gives the same row as inside a batch) and x0 = 0 -> x_L = 0
    mix = _seeded_mix(seed, in_dim=4, layers=2, experts=experts, rank=rank, gate=gate)
    x0 = torch.randn(B, 4, generator=torch.Generator().manual_seed(seed))
    full = mix(x0)
    torch.testing.assert_close(mix(x0[-1:]), full[-1:])
    assert torch.equal(mix(torch.zeros(1, 4)), torch.zeros(1, 4))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    mix = _seeded_mix(5, in_dim=6, layers=2, experts=3, rank=2)
    x0 = torch.randn(7, 6)
    cpu = mix(x0)
    gpu = mix.cuda()(x0.cuda()).cpu()
    torch.testing.assert_close(gpu, cpu, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("gate", ["softmax", "sigmoid", "constant"])
@pytest.mark.parametrize("experts", [1, 3])
def test_fused_forward_equals_mixing_expert_outputs(gate: str, experts: int):
    # forward() factors the mixture through x0; recompute it the long way from experts_out + gate_weights
    torch.manual_seed(0)
    net = CrossNetMix(in_dim=5, layers=2, experts=experts, rank=3, gate=gate, activation="tanh")
    with torch.no_grad():
        net.b.normal_()  # a non-zero bias exercises the (sum of gates) * b term
    x0 = torch.randn(7, 5)
    x = x0
    for layer in range(2):
        e = net.experts_out(x0, x, layer)  # (B, E, N)
        w = torch.ones(7, 1) if experts == 1 else net.gate_weights(x, layer)  # (B, E)
        x = torch.einsum("be,ben->bn", w, e) + x
    torch.testing.assert_close(net(x0), x, rtol=1e-5, atol=1e-5)
