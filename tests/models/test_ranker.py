"""Tests of the ranker: shapes of every model/structure, the input block, FM identity, LR by hand."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models.config import RankerConfig
from models.inputs import FieldLayout
from models.ranker import FactorizationMachine, build_ranker, cross_matrices, lookup_distinct

LAYOUT = FieldLayout(("user_id", "item_id", "category"), (6, 10, 4))


def _batch(B: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sparse = torch.stack([torch.randint(0, s, (B,), generator=g) for s in LAYOUT.sizes], dim=1)  # (B, 3)
    return {
        "sparse": sparse,
        "hist": torch.randint(0, 10, (B, 4), generator=g),
        "counts": torch.rand(B, 2, generator=g),
        "numeric": torch.randn(B, 3, generator=g),
        "text": torch.randn(B, 5, generator=g),
        "has_text": (torch.arange(B) % 2 == 0).float(),
        "image": torch.randn(B, 6, generator=g),
        "has_image": torch.ones(B),
        "label": (torch.arange(B) % 2).float(),
    }


def _build(**overrides):
    cfg = RankerConfig(field_dim=4, rank=3, experts=2, mlp=[8, 4], **overrides)
    return build_ranker(cfg, LAYOUT, "item_id", n_counts=2, n_numeric=3, text_dim=5, image_dim=6, seed=0)


@pytest.mark.parametrize("B", [1, 7])
@pytest.mark.parametrize(
    "model,structure",
    list(itertools.product(["dcnmix", "dcnv2"], ["stacked", "parallel", "crossnet_only"]))
    + [("lr", "stacked"), ("fm", "stacked")],
)
def test_every_model_gives_one_float_logit_per_row(B, model, structure):
    net = _build(model=model, structure=structure, batch_norm=(B > 1))
    out = net(_batch(B))
    assert out.shape == (B,)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    out.sum().backward()  # every model is trainable through the same call


def test_input_block_width_and_history_mean():
    # N = F*D + D (hist) + 2 counts + 3 numeric + D (text) + D (image) = 3*4 + 4 + 2 + 3 + 4 + 4 = 29
    net = _build()
    assert net.inputs.out_dim == 29 and net.cross.in_dim == 29
    b = _batch(2)
    b["hist"] = torch.tensor([[3, 5, 0, 0], [0, 0, 0, 0]])
    x0 = net.inputs(b)
    W = net.inputs.embedding.weight
    off = LAYOUT.offsets[1]  # item_id rows start at 6
    # row 0: mean of item rows 3 and 5 (padding 0 ignored); row 1: empty history -> zeros
    torch.testing.assert_close(x0[0, 12:16], (W[off + 3] + W[off + 5]) / 2)
    torch.testing.assert_close(x0[1, 12:16], torch.zeros(4))
    # field block is the table rows at offsets + buckets
    torch.testing.assert_close(x0[0, 4:8], W[off + b["sparse"][0, 1]])


def test_missing_modality_contributes_zero_and_gate_stays_finite():
    net = _build()
    net.eval()
    b = _batch(3)
    b["has_text"] = torch.tensor([0.0, 1.0, 0.0])
    out = net(b)
    b2 = dict(b)
    b2["text"] = b["text"].clone()
    b2["text"][[0, 2]] = 1e6  # garbage in the missing rows must not matter
    out2 = net(b2)
    torch.testing.assert_close(out2[[0, 2]], out[[0, 2]])
    assert torch.isfinite(out2).all()
    x0 = net.inputs(b2)
    torch.testing.assert_close(x0[[0, 2], 21:25], torch.zeros(2, 4))  # the text slot
    # a present modality does change the input block
    b3 = dict(b)
    b3["text"] = b["text"] + 1.0
    assert not torch.allclose(net.inputs(b3)[1, 21:25], net.inputs(b)[1, 21:25])


def test_fm_pairwise_equals_double_sum():
    v = torch.randn(7, 5, 3, generator=torch.Generator().manual_seed(1))  # (B, F, D)
    explicit = torch.zeros(7)
    for f in range(5):
        for g in range(f + 1, 5):
            explicit += (v[:, f] * v[:, g]).sum(-1)
    torch.testing.assert_close(FactorizationMachine.pairwise(v), explicit, rtol=1e-5, atol=1e-5)


def test_fm_tiny_by_hand():
    # 2 fields, D=2: v_a = [1, 2], v_b = [3, -1] -> <v_a, v_b> = 3 - 2 = 1; bias 0.5, weights 0.25 and -1
    # logit = 0.5 + 0.25 - 1 + 1 = 0.75
    layout = FieldLayout(("a", "b"), (2, 2))
    fm = build_ranker(RankerConfig(model="fm", field_dim=2), layout, None, 0, 0, 0, 0, seed=0)
    with torch.no_grad():
        fm.bias.fill_(0.5)
        fm.weights.weight[1] = 0.25  # field a bucket 1 -> row 1
        fm.weights.weight[3] = -1.0  # field b bucket 1 -> row 2 + 1
        fm.embedding.weight[1] = torch.tensor([1.0, 2.0])
        fm.embedding.weight[3] = torch.tensor([3.0, -1.0])
    torch.testing.assert_close(fm({"sparse": torch.tensor([[1, 1]])}), torch.tensor([0.75]))


def test_lr_by_hand():
    # weights of the used rows 0.5 and -2, counts [1, 2] with coefs [1, 1], numeric [3] with coef 2,
    # linear bias 0, model bias 0.1: logit = 0.1 + 0.5 - 2 + (1 + 2) + 2*3 = 7.6
    layout = FieldLayout(("a", "b"), (3, 2))
    lr = build_ranker(RankerConfig(model="lr"), layout, None, 2, 1, 0, 0, seed=0)
    with torch.no_grad():
        lr.bias.fill_(0.1)
        lr.weights.weight[2] = 0.5  # a=2
        lr.weights.weight[3] = -2.0  # b=0 -> row 3
        lr.linear.weight.copy_(torch.tensor([[1.0, 1.0, 2.0]]))
        lr.linear.bias.zero_()
    b = {
        "sparse": torch.tensor([[2, 0]]),
        "counts": torch.tensor([[1.0, 2.0]]),
        "numeric": torch.tensor([[3.0]]),
    }
    torch.testing.assert_close(lr(b), torch.tensor([7.6]))


def test_embedding_l2_counts_each_used_row_once():
    # rows used: a=1 (row 1) twice, b=0 (row 3) and b=1 (row 4) -> {1, 3, 4}
    layout = FieldLayout(("a", "b"), (3, 2))
    lr = build_ranker(RankerConfig(model="lr"), layout, None, 0, 0, 0, 0)
    with torch.no_grad():
        lr.weights.weight.copy_(torch.tensor([[10.0], [1.0], [10.0], [2.0], [3.0]]))
    l2 = lr.embedding_l2({"sparse": torch.tensor([[1, 0], [1, 1]])})
    torch.testing.assert_close(l2, torch.tensor(1.0 + 4.0 + 9.0))


def test_out_of_range_bucket_names_the_field():
    net = _build()
    b = _batch(2)
    b["sparse"][1, 2] = 4  # category has 4 buckets: 4 is out of range
    with pytest.raises(ValueError, match="category"):
        net(b)
    with pytest.raises(ValueError, match="hist_field"):
        build_ranker(RankerConfig(), LAYOUT, "nope", 0, 0, 0, 0)


def test_cross_matrices_shapes():
    mats = cross_matrices(_build(cross_layers=3))
    assert len(mats) == 3 and all(m.shape == (29, 29) for m in mats)
    assert len(cross_matrices(_build(model="dcnv2"))) == 2
    with pytest.raises(ValueError, match="no cross network"):
        cross_matrices(_build(model="lr"))


def test_seeded_build_is_reproducible_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b = _build(), _build()
    assert torch.equal(torch.random.get_rng_state(), state)
    for (na, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(pa, pb), na


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 1000), B=st.integers(2, 6), model=st.sampled_from(["dcnmix", "dcnv2", "lr", "fm"]))
def test_rows_scored_independently_in_eval(seed, B, model):
    # in eval mode (no dropout, BN frozen) a row's logit does not depend on the rest of the batch
    net = _build(model=model).eval()
    b = _batch(B, seed)
    full = net(b)
    one = net({k: v[-1:] for k, v in b.items()})
    torch.testing.assert_close(one, full[-1:], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("structure", ["stacked", "parallel"])
def test_batch_norm_model_scores_a_single_row_in_eval(structure):
    # BatchNorm needs B > 1 to train, but a trained model must score one row (running statistics)
    net = _build(structure=structure, batch_norm=True)
    net(_batch(7)).sum().backward()  # one training pass updates the running stats
    net.eval()
    assert net(_batch(1)).shape == (1,)
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in net.mlp)


def test_lookup_distinct_reads_each_row_once_and_matches_the_plain_lookup():
    # rows [[3, 1], [1, 1]] and [2, 3]: distinct rows {1, 2, 3}; row 1 is read 3 times, row 3 twice
    table = torch.nn.Embedding(5, 2, sparse=True)
    a, b = torch.tensor([[3, 1], [1, 1]]), torch.tensor([2, 3])
    ea, eb = lookup_distinct(table, a, b)
    torch.testing.assert_close(ea, table.weight[a].detach())
    torch.testing.assert_close(eb, table.weight[b].detach())
    (ea.sum() + 10 * eb.sum()).backward()
    grad = table.weight.grad
    assert grad.is_sparse and grad._nnz() == 3  # one entry per distinct row, not 6
    # d/dw: row 1 -> 3 reads in a (3), row 2 -> once in b (10), row 3 -> once in a, once in b (1 + 10)
    expected = torch.tensor([[0.0, 0], [3, 3], [10, 10], [11, 11], [0, 0]])
    torch.testing.assert_close(grad.to_dense(), expected)


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 1000), B=st.integers(1, 9))
def test_sparse_and_dense_tables_give_the_same_logits_and_gradients(seed, B):
    net = _build(dropout=0.0)
    batch = _batch(B, seed)
    table = net.inputs.embedding
    dense_out = net(batch)
    dense_out.sum().backward()
    dense_grad = table.weight.grad.clone()
    net.zero_grad(set_to_none=True)
    table.sparse = True
    sparse_out = net(batch)
    sparse_out.sum().backward()
    torch.testing.assert_close(sparse_out, dense_out)
    torch.testing.assert_close(table.weight.grad.to_dense(), dense_grad)


def test_lookup_distinct_gradient_is_reproducible_on_two_threads():
    # 1024 x 30 reads of 50 rows: each distinct row's gradient sums ~600 terms. With advanced indexing
    # (distinct[inverse]) the CPU backward accumulates them with atomic adds across threads, so two runs
    # differed in the last bits (measured: the nightly flow's scores changed between identical reruns);
    # through F.embedding the summation order is fixed. Five runs must give bit-identical gradients.
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        rows = torch.randint(0, 50, (1024, 30), generator=torch.Generator().manual_seed(1))
        w = torch.randn(1024, 30, 16, generator=torch.Generator().manual_seed(2))
        grads = []
        for _ in range(5):
            torch.manual_seed(0)
            table = torch.nn.Embedding(50, 16)
            (out,) = lookup_distinct(table, rows)
            (out * w).sum().backward()
            grads.append(table.weight.grad.clone())
    finally:
        torch.set_num_threads(n)
    assert all(torch.equal(grads[0], g) for g in grads[1:])


def test_affinity_input_widens_the_ids_block_and_survives_a_checkpoint(tmp_path):
    from models.train import load_checkpoint, save_checkpoint

    cfg = RankerConfig(field_dim=4, rank=4, experts=2, mlp=[8], cross_layers=1)
    layout = FieldLayout(("user", "item_id"), (5, 9))
    plain = build_ranker(cfg, layout, seed=0)
    net = build_ranker(cfg, layout, n_affinity=2, seed=0)
    assert net.inputs.out_dim == plain.inputs.out_dim + 2
    batch = {"sparse": torch.tensor([[1, 2], [3, 4]]), "affinity": torch.tensor([[0.5, -1.0], [0.0, 0.2]])}
    net.eval()
    x0 = net.inputs(batch)
    torch.testing.assert_close(x0[:, -2:], batch["affinity"])  # the last columns of the ids block
    with pytest.raises(ValueError, match="affinity"):
        net({"sparse": batch["sparse"]})
    path = save_checkpoint(tmp_path / "m.pt", net)
    loaded, meta = load_checkpoint(path)
    assert meta["n_affinity"] == 2
    torch.testing.assert_close(loaded(batch), net(batch))


def test_learned_affinity_reads_the_profile_and_weighs_its_directions(tmp_path):
    from models.ranker import LearnedAffinity
    from models.train import load_checkpoint, save_checkpoint

    # P = I: the products summed are the mean cosine of the history (the profile is a mean of unit vectors)
    la = LearnedAffinity((2, 0), rank=2)
    with torch.no_grad():
        la.proj[0].weight.copy_(torch.eye(2))
    profile = torch.tensor([[0.5, 0.5], [1.0, 0.0], [0.0, 0.0]])
    x = torch.tensor([[3.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    out = la(profile, [(x, torch.tensor([1.0, 1.0, 1.0]))])
    assert out.shape == (3, 2)
    torch.testing.assert_close(out.sum(1), torch.tensor([0.5, 0.0, 0.0]))
    assert la(profile, [(x, torch.tensor([0.0, 1.0, 1.0]))])[0].abs().sum() == 0  # no text: zero

    cfg = RankerConfig(field_dim=4, rank=4, experts=2, mlp=[8], cross_layers=1, affinity_rank=3)
    layout = FieldLayout(("user", "item_id"), (5, 9))
    fixed = build_ranker(
        cfg.model_copy(update={"affinity_rank": 0}), layout, text_dim=3, image_dim=2, n_affinity=6
    )
    net = build_ranker(cfg, layout, text_dim=3, image_dim=2, n_affinity=6, seed=0)
    assert net.inputs.out_dim == fixed.inputs.out_dim + 2 * 3
    g = torch.Generator().manual_seed(0)
    batch = {
        "sparse": torch.tensor([[1, 2], [3, 4]]),
        "affinity": torch.rand(2, 6, generator=g),
        "text": torch.rand(2, 3, generator=g),
        "image": torch.rand(2, 2, generator=g),
        "profile": torch.rand(2, 5, generator=g),
    }
    net.eval()
    with pytest.raises(ValueError, match="profile"):
        net({k: v for k, v in batch.items() if k != "profile"})
    path = save_checkpoint(tmp_path / "m.pt", net)
    loaded, meta = load_checkpoint(path)
    assert meta["config"]["affinity_rank"] == 3
    torch.testing.assert_close(loaded(batch), net(batch))
    # a checkpoint written before the learned affinity existed (no affinity_rank) rebuilds without it
    old = build_ranker(
        cfg.model_copy(update={"affinity_rank": 0}), layout, text_dim=3, image_dim=2, n_affinity=6
    )
    old.build_args["config"].pop("affinity_rank")
    again, _ = load_checkpoint(save_checkpoint(tmp_path / "old.pt", old))
    assert again.inputs.learned is None
