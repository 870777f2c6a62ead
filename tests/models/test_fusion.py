"""Tests of the fusion strategies (models/fusion.py), alone and inside the ranker and the item tower."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.config import RankerConfig, RetrieverConfig
from models.fusion import (
    AttentionFusion,
    ConcatFusion,
    CrossAttentionFusion,
    LateFusion,
    build_fusion,
)
from models.inputs import FieldLayout
from models.losses import info_nce
from models.metrics import auc
from models.ranker import build_ranker, quantize_int8
from models.retriever_train import load_retriever, save_retriever
from models.towers import TwoTower
from models.train import load_checkpoint, predict, save_checkpoint, tensor_batches, train_ranker

KINDS = ["concat", "late", "attention", "cross_attention"]


@pytest.fixture(autouse=True)
def _one_torch_thread():
    # as in test_train.py: on the shared 2-core box torch's intra-op threads spin-wait and tiny models crawl
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


DI, M, W, K = 5, 2, 4, 3  # ids width, modalities, token width, late score width


def _fusion(kind: str, weighting: str = "sum", seed: int = 0):
    torch.manual_seed(seed)
    return build_fusion(kind, ids_dim=DI, n_modalities=M, width=W, heads=2, score_dim=K, weighting=weighting)


def _inputs(B: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randn(B, DI, generator=g)
    tokens = torch.randn(B, M, W, generator=g)
    present = (torch.rand(B, M, generator=g) < 0.6).float()
    main = torch.randn(B, K, generator=g)
    return ids, tokens, present, main


def _apply(f, ids, tokens, present, main):
    """x and combine(main) of one fusion module."""
    return f(ids, tokens, present), f.combine(main, tokens, present)


# ---------------------------------------------------------------- the modules alone


@pytest.mark.parametrize("B", [1, 7])
@pytest.mark.parametrize("kind,weighting", [(k, "sum") for k in KINDS] + [("late", "softmax")])
def test_shapes(kind, weighting, B):
    f = _fusion(kind, weighting)
    x, out = _apply(f, *_inputs(B))
    assert x.shape == (B, f.out_dim) and x.dtype == torch.float32
    assert out.shape == (B, K)
    expected = {"concat": DI + M * W, "late": DI, "attention": DI + W, "cross_attention": DI + W}[kind]
    assert f.out_dim == expected


@pytest.mark.parametrize("kind,weighting", [(k, "sum") for k in KINDS] + [("late", "softmax")])
def test_all_missing_rows_are_finite_with_finite_gradients(kind, weighting):
    f = _fusion(kind, weighting)
    ids, tokens, present, main = _inputs(4)
    present = torch.zeros_like(present)
    ids.requires_grad_(True)
    x, out = _apply(f, ids, tokens * 1e6, present, main)
    assert torch.isfinite(x).all() and torch.isfinite(out).all()
    (x.sum() + out.sum()).backward()
    assert torch.isfinite(ids.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in f.parameters() if p.grad is not None)


@pytest.mark.parametrize("kind,weighting", [(k, "sum") for k in KINDS] + [("late", "softmax")])
def test_a_masked_token_does_not_change_the_output(kind, weighting):
    # garbage (huge, inf, NaN) in the missing slots gives the same x and combine output as zeros there
    f = _fusion(kind, weighting).eval()
    ids, tokens, present, main = _inputs(6, seed=1)
    present[0] = torch.tensor([0.0, 1.0])  # text missing
    present[1] = torch.tensor([1.0, 0.0])  # image missing
    present[2] = 0.0  # both missing
    missing = present == 0  # (B, M)
    clean = tokens.masked_fill(missing[..., None], 0.0)
    x0, out0 = _apply(f, ids, clean, present, main)
    for garbage in (1e6, float("inf"), float("nan")):
        x1, out1 = _apply(f, ids, tokens.masked_fill(missing[..., None], garbage), present, main)
        torch.testing.assert_close(x1, x0, rtol=0, atol=0)
        torch.testing.assert_close(out1, out0, rtol=0, atol=0)
    # and a present token does change it (the check above can fail)
    if kind != "late":
        x2, _ = _apply(f, ids, tokens + 1.0, present, main)
        assert not torch.allclose(x2[3:], x0[3:])
    else:
        _, out2 = _apply(f, ids, tokens + 1.0, present, main)
        assert not torch.allclose(out2[~missing.all(1)], out0[~missing.all(1)])


@pytest.mark.parametrize(
    "kind,weighting", [(k, "sum") for k in KINDS if k != "concat"] + [("late", "softmax")]
)
def test_every_parameter_gets_a_gradient(kind, weighting):
    f = _fusion(kind, weighting)
    ids, tokens, _, main = _inputs(5, seed=2)
    tokens.requires_grad_(True)
    x, out = _apply(f, ids, tokens, torch.ones(5, M), main)
    (x.pow(2).sum() + out.pow(2).sum()).backward()
    for name, p in f.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert tokens.grad.abs().sum() > 0


@pytest.mark.parametrize("kind,weighting", [(k, "sum") for k in KINDS] + [("late", "softmax")])
def test_same_seed_same_module(kind, weighting):
    a, b = _fusion(kind, weighting, seed=5), _fusion(kind, weighting, seed=5)
    inputs = _inputs(3)
    for ya, yb in zip(_apply(a, *inputs), _apply(b, *inputs), strict=True):
        assert torch.equal(ya, yb)


def test_concat_by_hand():
    f = ConcatFusion(2, 2, 1, presence_flags=True)
    ids = torch.tensor([[1.0, 2.0]])
    tokens = torch.tensor([[[3.0], [9.0]]])
    present = torch.tensor([[1.0, 0.0]])
    # [ids, text, has_text, image (masked -> 0), has_image]
    torch.testing.assert_close(f(ids, tokens, present), torch.tensor([[1.0, 2.0, 3.0, 1.0, 0.0, 0.0]]))


def test_late_sum_and_softmax_by_hand():
    f = LateFusion(ids_dim=1, n_modalities=2, width=1, score_dim=1, weighting="sum")
    with torch.no_grad():
        f.weight.copy_(torch.tensor([2.0, -1.0]))
    tokens = torch.tensor([[[3.0], [4.0]], [[3.0], [4.0]]])  # (2, 2, 1): text token 3, image token 4
    present = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    main = torch.tensor([[0.5], [0.5]])
    # row 0: 0.5 + 2 s_text - s_image; row 1 (image missing): 0.5 + 2 s_text
    h_text, h_image = f.heads[0](torch.tensor([[3.0]])), f.heads[1](torch.tensor([[4.0]]))
    expected = torch.cat([0.5 + 2 * h_text - h_image, 0.5 + 2 * h_text])
    torch.testing.assert_close(f.combine(main, tokens, present), expected)

    g = LateFusion(ids_dim=1, n_modalities=2, width=2, score_dim=2, weighting="softmax")
    with torch.no_grad():
        g.weight.copy_(torch.log(torch.tensor([1.0, 2.0, 1.0])))  # shares 1/4, 1/2, 1/4 when all present
    tokens = torch.randn(2, 2, 2, generator=torch.Generator().manual_seed(0))
    main = torch.tensor([[3.0, 4.0], [3.0, 4.0]])  # unit: [0.6, 0.8]
    u_text = F.normalize(g.heads[0](tokens[:, 0]), dim=-1)
    u_image = F.normalize(g.heads[1](tokens[:, 1]), dim=-1)
    u_main = torch.tensor([0.6, 0.8])
    present = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    out = g.combine(main, tokens, present)
    # row 0: 1/4 main + 1/2 text + 1/4 image; row 1 (text missing): shares 1 : 1 of main and image
    torch.testing.assert_close(out[0], 0.25 * u_main + 0.5 * u_text[0] + 0.25 * u_image[0])
    torch.testing.assert_close(out[1], 0.5 * u_main + 0.5 * u_image[1])
    torch.testing.assert_close(g.weights(), torch.tensor([0.25, 0.5, 0.25]))


def test_attention_with_every_modality_missing_is_the_ids_token_alone():
    # one key: the attention weight is 1, so the block is LN(t0 + W_o (W_v t0 + b_v) + b_o), t0 = P ids
    f = AttentionFusion(DI, M, W, heads=2).eval()
    ids, tokens, _, _ = _inputs(3)
    t0 = f.ids_proj(ids)  # (B, W)
    w_v, b_v = f.attn.in_proj_weight[2 * W :], f.attn.in_proj_bias[2 * W :]
    a = f.attn.out_proj(t0 @ w_v.T + b_v)
    expected = torch.cat([ids, f.norm(t0 + a)], 1)
    torch.testing.assert_close(f(ids, tokens, torch.zeros(3, M)), expected)


def test_cross_attention_by_hand():
    # two present modalities: each token's one key is the other token, weight 1:
    #   t' = LN_t(t + W_o (W_v i + b_v) + b_o), i' = LN_i(i + ...(t)); pooled = mean(LN(P ids), t', i')
    # image missing: t' = LN_t(t) (residual only), pooled = mean(LN(P ids), t')
    f = CrossAttentionFusion(DI, M, W, heads=2).eval()
    ids, tokens, _, _ = _inputs(2)
    t, i = tokens[:, 0], tokens[:, 1]

    def attend(m: int, kv: torch.Tensor) -> torch.Tensor:
        attn = f.attn[m]
        return attn.out_proj(kv @ attn.in_proj_weight[2 * W :].T + attn.in_proj_bias[2 * W :])

    ids_tok = f.ids_norm(f.ids_proj(ids))
    both = (ids_tok + f.norm[0](t + attend(0, i)) + f.norm[1](i + attend(1, t))) / 3
    text_only = (ids_tok + f.norm[0](t)) / 2
    out = f(ids, tokens, torch.tensor([[1.0, 1.0], [1.0, 0.0]]))
    torch.testing.assert_close(out[0, DI:], both[0])
    torch.testing.assert_close(out[1, DI:], text_only[1])
    # one modality only: no attention module, the residual path
    one = CrossAttentionFusion(DI, 1, W, heads=2)
    assert len(one.attn) == 0
    assert torch.isfinite(one(ids, tokens[:, :1], torch.ones(2, 1))).all()


def test_no_modality_gives_concat_and_bad_settings_name_the_key():
    for kind in KINDS:
        f = build_fusion(kind, ids_dim=DI, n_modalities=0, width=W)
        assert isinstance(f, ConcatFusion) and f.out_dim == DI
    with pytest.raises(ValueError, match="fusion"):
        build_fusion("early", ids_dim=DI, n_modalities=M, width=W)
    with pytest.raises(ValueError, match="fusion_heads"):
        build_fusion("attention", ids_dim=DI, n_modalities=M, width=5, heads=2)
    with pytest.raises(ValueError, match="ranker.fusion_heads"):
        RankerConfig(fusion="attention", field_dim=6, fusion_heads=4)
    with pytest.raises(ValueError, match="retriever.fusion_heads"):
        RetrieverConfig(fusion="cross_attention", field_dim=6, fusion_heads=4)
    f = _fusion("attention")
    ids, tokens, present, _ = _inputs(2)
    with pytest.raises(ValueError, match="tokens"):
        f(ids, tokens[:, :1], present)


# ---------------------------------------------------------------- inside the ranker

LAYOUT = FieldLayout(("user_id", "item_id", "category"), (6, 10, 4))


def _ranker_batch(B: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "sparse": torch.stack([torch.randint(0, s, (B,), generator=g) for s in LAYOUT.sizes], dim=1),
        "hist": torch.randint(0, 10, (B, 4), generator=g),
        "counts": torch.rand(B, 2, generator=g),
        "numeric": torch.randn(B, 3, generator=g),
        "text": torch.randn(B, 5, generator=g),
        "has_text": (torch.arange(B) % 2 == 0).float(),
        "image": torch.randn(B, 6, generator=g),
        "has_image": (torch.arange(B) % 3 != 0).float(),
        "label": (torch.arange(B) % 2).float(),
    }


def _ranker(fusion: str, seed: int = 0, **over):
    cfg = RankerConfig(field_dim=4, rank=3, experts=2, mlp=[8, 4], fusion=fusion, **over)
    return build_ranker(cfg, LAYOUT, "item_id", n_counts=2, n_numeric=3, text_dim=5, image_dim=6, seed=seed)


@pytest.mark.parametrize("B", [1, 7])
@pytest.mark.parametrize("fusion", KINDS)
def test_ranker_shapes_all_missing_and_gradients(fusion, B):
    net = _ranker(fusion)
    b = _ranker_batch(B)
    b["has_text"], b["has_image"] = torch.zeros(B), torch.zeros(B)
    out = net(b)
    assert out.shape == (B,) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
    net.zero_grad()
    net(_ranker_batch(B, seed=1) | {"has_text": torch.ones(B), "has_image": torch.ones(B)}).sum().backward()
    for name, p in net.inputs.named_parameters():  # the projections and the fusion's own weights learn
        if name.startswith(("text", "image", "fusion")):
            assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("fusion", KINDS)
def test_ranker_missing_modality_values_do_not_matter_and_seed_repeats(fusion):
    net = _ranker(fusion).eval()
    b = _ranker_batch(6)
    out = net(b)
    garbage = dict(b, text=b["text"].masked_fill(b["has_text"][:, None] == 0, 1e6))
    garbage["image"] = b["image"].masked_fill(b["has_image"][:, None] == 0, -1e6)
    torch.testing.assert_close(net(garbage), out, rtol=0, atol=0)
    torch.testing.assert_close(_ranker(fusion).eval()(b), out, rtol=0, atol=0)
    present = dict(b, text=b["text"] + 1.0)
    assert not torch.allclose(net(present)[b["has_text"] == 1], out[b["has_text"] == 1])


def _content_task(n: int, seed: int) -> dict[str, torch.Tensor]:
    """Labels from the text alone: label = [text . a > 0]; ids are noise; a third of the images missing."""
    g = torch.Generator().manual_seed(seed)
    text = torch.randn(n, 5, generator=g)
    a = torch.tensor([1.0, -1.0, 0.5, 0.0, 2.0])
    return {
        "sparse": torch.stack([torch.randint(0, s, (n,), generator=g) for s in LAYOUT.sizes], dim=1),
        "hist": torch.randint(0, 10, (n, 4), generator=g),
        "counts": torch.rand(n, 2, generator=g),
        "numeric": torch.randn(n, 3, generator=g),
        "text": text,
        "has_text": torch.ones(n),
        "image": torch.randn(n, 6, generator=g),
        "has_image": (torch.arange(n) % 3 != 0).float(),
        "label": (text @ a > 0).float(),
    }


def _fit(cfg: RankerConfig, train: dict, valid: dict):
    net = build_ranker(cfg, LAYOUT, "item_id", 2, 3, 5, 6, seed=0)
    epoch = itertools.count()  # a new shuffle each epoch
    res = train_ranker(
        net,
        lambda: tensor_batches(train, cfg.batch_size, shuffle=True, seed=next(epoch)),
        lambda: tensor_batches(valid, 300),
        cfg,
        seed=0,
    )
    return net, res


@pytest.mark.parametrize("fusion", KINDS)
def test_ranker_end_to_end_learns_a_text_only_label(fusion):
    cfg = RankerConfig(
        field_dim=4, rank=3, experts=2, mlp=[16], fusion=fusion, lr=0.02, epochs=4, patience=2, batch_size=50,
        dropout=0.0,
    )  # fmt: skip
    train, valid = _content_task(600, seed=0), _content_task(300, seed=1)
    net, res = _fit(cfg, train, valid)
    net2, res2 = _fit(cfg, train, valid)
    # the ids are noise: only the text path can reach this (measured 0.998-1.0 for every strategy)
    assert res.best_auc > 0.9, res.history
    assert res.history == res2.history  # same seed, same data: same run
    unlabelled = {k: v for k, v in valid.items() if k != "label"}
    logits = predict(net, tensor_batches(unlabelled, 128))
    assert auc(valid["label"].numpy(), logits) == pytest.approx(res.best_auc)
    np.testing.assert_array_equal(logits, predict(net2, tensor_batches(unlabelled, 128)))


@pytest.mark.parametrize("fusion", ["late", "attention", "cross_attention"])
def test_ranker_checkpoint_round_trip_and_int8(fusion, tmp_path):
    net = _ranker(fusion).eval()
    b = _ranker_batch(5)
    path = save_checkpoint(tmp_path / "model.pt", net)
    loaded, meta = load_checkpoint(path)
    assert meta["config"]["fusion"] == fusion
    torch.testing.assert_close(loaded(b), net(b), rtol=0, atol=0)
    q = quantize_int8(net)
    torch.testing.assert_close(q(b), net(b), rtol=0.1, atol=0.1)  # INT8 Linear layers: close, not equal


# ---------------------------------------------------------------- inside the item tower

USER = FieldLayout(("segment",), (7,))
ITEM = FieldLayout(("item_id", "category"), (20, 4))
DT, DIM = 6, 5


def _tower(fusion: str, seed: int = 0, **over) -> TwoTower:
    torch.manual_seed(seed)
    cfg = RetrieverConfig(dim=8, field_dim=4, hidden=[16], fusion=fusion, **over)
    return TwoTower(
        cfg, USER, ITEM, n_counts=0, n_user_numeric=0, n_item_numeric=2, text_dim=DT, image_dim=DIM
    )


def _items(b: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "sparse": torch.stack(
            [torch.randint(0, 20, (b,), generator=g), torch.randint(0, 4, (b,), generator=g)], 1
        ),
        "numeric": torch.randn(b, 2, generator=g),
        "text": torch.randn(b, DT, generator=g),
        "has_text": (torch.arange(b) % 2 == 0).float(),
        "image": torch.randn(b, DIM, generator=g) * 50,
        "has_image": (torch.arange(b) % 3 != 0).float(),
    }


@pytest.mark.parametrize("B", [1, 7])
@pytest.mark.parametrize("fusion", KINDS)
def test_item_tower_shapes_all_missing_and_unit_norm(fusion, B):
    m = _tower(fusion)
    items = _items(B) | {"has_text": torch.zeros(B), "has_image": torch.zeros(B)}
    v = m.item_embedding(items)
    assert v.shape == (B, 8) and torch.isfinite(v).all()
    torch.testing.assert_close(v.norm(dim=1), torch.ones(B))
    v.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)


@pytest.mark.parametrize("fusion", KINDS)
def test_item_tower_missing_values_do_not_matter_and_gradients_flow(fusion):
    m = _tower(fusion)
    items = _items(6)
    v = m.item_embedding(items)
    garbage = dict(items, text=items["text"].masked_fill(items["has_text"][:, None] == 0, 1e6))
    torch.testing.assert_close(m.item_embedding(garbage), v, rtol=0, atol=0)
    torch.testing.assert_close(_tower(fusion).item_embedding(items), v, rtol=0, atol=0)
    m.item_embedding(items | {"has_text": torch.ones(6), "has_image": torch.ones(6)}).pow(3).sum().backward()
    for name, p in m.item_tower.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("fusion", KINDS)
def test_two_tower_end_to_end_matches_users_to_items_by_content(fusion, tmp_path):
    # 6 segments; the positive of segment s is item s, whose ids are all the null bucket: the towers can
    # tell the items apart by their text and image only (item 0's image is missing)
    g = torch.Generator().manual_seed(4)
    m = _tower(fusion)
    users = {"sparse": torch.arange(1, 7)[:, None], "hist": torch.zeros(6, 1, dtype=torch.long)}
    items = {
        "sparse": torch.zeros(6, 2, dtype=torch.long),
        "numeric": torch.zeros(6, 2),
        "text": torch.randn(6, DT, generator=g),
        "has_text": torch.ones(6),
        "image": torch.randn(6, DIM, generator=g),
        "has_image": torch.tensor([0.0, 1, 1, 1, 1, 1]),
    }
    opt = torch.optim.Adam(m.parameters(), lr=0.02)
    losses = []
    for _ in range(40):
        q, v = m(users, items)
        loss = info_nce(q, v, 0.1, use_logq=False, use_remove_hits=False)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses[::10]
    m.eval()
    q, v = m(users, items)
    assert torch.equal((q @ v.T).argmax(1), torch.arange(6))  # every segment's best item is its own
    loaded, meta = load_retriever(save_retriever(tmp_path / "model.pt", m))
    assert meta["config"]["fusion"] == fusion
    torch.testing.assert_close(loaded.item_embedding(items), v, rtol=0, atol=0)
