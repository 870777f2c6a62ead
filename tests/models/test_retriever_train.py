"""Training loop, loss adjustments, checkpoints and warm start of the dual-tower retriever."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models.config import RetrieverConfig
from models.inputs import FieldLayout
from models.losses import info_nce
from models.retriever_train import (
    batch_loss,
    build_args,
    encode,
    gather_rows,
    load_retriever,
    save_retriever,
    train_retriever,
    warm_start_retriever,
)
from models.towers import TwoTower
from retrieval.metrics import popularity_ranking, recall_at_k

# Planted data: 4 user segments, 20 items in 4 categories of 5 (item j has category j // 5 + 1). A user
# of segment s only buys items of category s, item k of a category with weight 5 - k (5, 4, 3, 2, 1).
USER = FieldLayout(("segment",), (5,))  # bucket 0 = null, segments 1..4
ITEM = FieldLayout(("item_id", "category"), (21, 5))  # item j -> item_id bucket j + 1
N_ITEMS, PER_CAT = 20, 5


def _cfg(**over: object) -> RetrieverConfig:
    base = dict(
        dim=8, field_dim=8, hidden=[16], temperature=0.1, lr=0.03, epochs=6, patience=2, batch_size=32,
        use_text=False, use_image=False,
    )  # fmt: skip
    base.update(over)
    return RetrieverConfig(**base)


def _model(cfg: RetrieverConfig, item: FieldLayout = ITEM, seed: int = 0) -> TwoTower:
    torch.manual_seed(seed)
    return TwoTower(cfg, USER, item, n_counts=0, n_user_numeric=0, n_item_numeric=0, text_dim=0, image_dim=0)


CATALOGUE = {
    "sparse": torch.stack(
        [torch.arange(N_ITEMS) + 1, torch.arange(N_ITEMS) // PER_CAT + 1], dim=1
    ),  # (20, 2)
    "item_idx": torch.arange(N_ITEMS),
}


def _planted(rows: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """-> segment [rows] int64 in 1..4, item_idx [rows] int64 of the bought item."""
    rng = np.random.default_rng(seed)
    seg = rng.integers(1, 5, size=rows)
    k = rng.choice(PER_CAT, size=rows, p=np.arange(PER_CAT, 0, -1) / 15.0)
    item = (seg - 1) * PER_CAT + k
    return torch.from_numpy(seg), torch.from_numpy(item)


SEG, ITEM_IDX = _planted(640, seed=1)


def _batches(bs: int = 32):
    def make():
        for lo in range(0, SEG.shape[0], bs):
            seg, idx = SEG[lo : lo + bs], ITEM_IDX[lo : lo + bs]
            users = {"sparse": seg[:, None], "hist": torch.zeros(seg.shape[0], 1, dtype=torch.long)}
            yield users, gather_rows(CATALOGUE, idx)

    return make


# validation: one user per segment; relevant = the 5 items of its category
QUERIES = {"sparse": torch.arange(1, 5)[:, None], "hist": torch.zeros(4, 1, dtype=torch.long)}
RELEVANT = [set(range(s * PER_CAT, (s + 1) * PER_CAT)) for s in range(4)]


def _ranked(model: TwoTower, k: int = 5) -> np.ndarray:
    u = encode(model.user_embedding, QUERIES, 64, "cpu")
    v = encode(model.item_embedding, CATALOGUE, 64, "cpu")
    return torch.topk(u @ v.T, k, dim=1).indices.numpy()


def _recall5(model: TwoTower) -> float:
    return recall_at_k(_ranked(model), RELEVANT, [5])[5]


def _log_p() -> torch.Tensor:
    counts = torch.bincount(ITEM_IDX, minlength=N_ITEMS).double()
    return torch.log((counts / counts.sum()).clamp_min(1e-12)).float()


def _train(cfg: RetrieverConfig, seed: int = 0, model: TwoTower | None = None, **kw):
    model = model or _model(cfg, seed=seed)
    res = train_retriever(
        model, _batches(), _recall5, cfg, seed=seed, device="cpu", item_log_q=_log_p(), progress=False, **kw
    )
    return model, res


def test_learns_the_planted_segments_and_beats_popularity():
    model, res = _train(_cfg())
    assert res.train_loss[-1] < res.train_loss[0]
    # popularity: the top 5 by count are the four "weight 5" items plus one "weight 4" item, so each
    # segment finds 1 (3 segments) or 2 (1 segment) of its 5 items: expected recall@5 ~ (3 + 2) / 20 = 0.25
    counts = np.bincount(ITEM_IDX.numpy(), minlength=N_ITEMS)
    pop = np.broadcast_to(popularity_ranking(counts, 5), (4, 5))
    pop_recall = recall_at_k(pop, RELEVANT, [5])[5]
    assert pop_recall <= 0.3
    # the model separates the segments perfectly: every segment's top 5 is its own category -> 1.0
    assert res.best_score == 1.0
    assert _recall5(model) == 1.0  # best weights are loaded back
    assert res.samples_per_s > 0 and len(res.history) == len(res.train_loss) >= 1


def test_mixed_negatives_train_and_need_a_sampler():
    class Uniform:
        n_items = N_ITEMS

        def __init__(self) -> None:
            self.rng = np.random.default_rng(0)

        def sample(self, n: int) -> np.ndarray:
            return self.rng.integers(0, N_ITEMS, size=n)

    cfg = _cfg(mixed_negatives=8, epochs=3)
    _, res = _train(cfg, sampler=Uniform(), catalogue=CATALOGUE)
    assert res.best_score >= 0.9
    with pytest.raises(ValueError, match="mixed_negatives"):
        _train(cfg)


def test_same_seed_same_weights_and_global_rng_untouched():
    cfg = _cfg(epochs=2)
    a, b = _model(cfg, seed=3), _model(cfg, seed=3)  # _model seeds the global RNG itself
    state = torch.random.get_rng_state()
    m1, r1 = _train(cfg, seed=3, model=a)
    m2, r2 = _train(cfg, seed=3, model=b)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert r1.history == r2.history and r1.train_loss == r2.train_loss
    for k, v in m1.state_dict().items():
        assert torch.equal(v, m2.state_dict()[k]), k


def test_early_stopping_keeps_the_first_of_equal_scores():
    # a constant validation score never improves after epoch 0: with patience 2 the loop runs epochs
    # 0, 1, 2 and stops (3 entries of history), and epoch 0's weights are the ones kept
    cfg = _cfg(epochs=8, patience=2)
    model = _model(cfg)
    snap = {}

    def flat(m: TwoTower) -> float:
        if not snap:
            snap.update({k: v.clone() for k, v in m.state_dict().items()})
        return 0.5

    res = train_retriever(model, _batches(), flat, cfg, 0, "cpu", _log_p(), progress=False)
    assert res.history == [0.5, 0.5, 0.5] and res.best_epoch == 0
    for k, v in model.state_dict().items():
        assert torch.equal(v, snap[k]), k


def _one_batch(b: int, seed: int) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(seed)
    users = {
        "sparse": torch.randint(0, 5, (b, 1), generator=g),
        "hist": torch.randint(0, 21, (b, 3), generator=g),
    }
    items = gather_rows(CATALOGUE, torch.randint(0, N_ITEMS, (b,), generator=g))
    return users, items


def test_uniform_log_q_is_a_constant_shift_and_changes_nothing():
    # with p_j = 1/N for every item the in-batch log q is log(B/N) for every column, and with B' = B mixed
    # negatives their log q log(B'/N) is the same constant: subtracting one constant from a whole row of
    # logits leaves the softmax unchanged, so the loss equals the loss without the correction
    cfg_on, cfg_off = _cfg(logq_correction=True), _cfg(logq_correction=False)
    model = _model(cfg_on)
    users, items = _one_batch(6, seed=0)
    flat = torch.full((N_ITEMS,), -math.log(N_ITEMS))
    extra = torch.tensor([0, 7, 7, 19, 3, 11])
    on = batch_loss(model, users, items, cfg_on, flat, extra, CATALOGUE)
    off = batch_loss(model, users, items, cfg_off, None, extra, CATALOGUE)
    torch.testing.assert_close(on, off)
    # a popular item (larger p) gets a larger log q subtracted: the loss changes
    skewed = flat.clone()
    skewed[items["item_idx"][0]] = math.log(0.5)
    assert not torch.allclose(batch_loss(model, users, items, cfg_on, skewed, extra, CATALOGUE), on)


@settings(max_examples=20, deadline=None)
@given(b=st.integers(2, 8), seed=st.integers(0, 1000), mixed=st.booleans())
def test_loss_invariant_to_shuffling_pairs_together(b: int, seed: int, mixed: bool):
    cfg = _cfg()
    model = _model(cfg)
    users, items = _one_batch(b, seed)
    perm = torch.randperm(b, generator=torch.Generator().manual_seed(seed + 1))
    extra = torch.tensor([1, 5, 5]) if mixed else None
    base = batch_loss(model, users, items, cfg, _log_p(), extra, CATALOGUE)
    shuffled = batch_loss(
        model, gather_rows(users, perm), gather_rows(items, perm), cfg, _log_p(), extra, CATALOGUE
    )
    torch.testing.assert_close(base, shuffled)


def test_item_batch_without_item_idx_is_an_error():
    cfg = _cfg()
    users, items = _one_batch(3, 0)
    del items["item_idx"]
    with pytest.raises(ValueError, match="item_idx"):
        batch_loss(_model(cfg), users, items, cfg, _log_p())


@pytest.mark.parametrize("b", [1, 7])
def test_encode_in_chunks_matches_one_pass(b: int):
    model = _model(_cfg()).eval()
    users, _ = _one_batch(b, 2)
    with torch.no_grad():
        whole = model.user_embedding(users)
    torch.testing.assert_close(encode(model.user_embedding, users, 3, "cpu"), whole)
    assert encode(model.user_embedding, users, 3, "cpu").shape == (b, 8)


def test_checkpoint_round_trip(tmp_path):
    cfg = _cfg(epochs=1)
    model, _ = _train(cfg)
    path = save_retriever(tmp_path / "model.pt", model, {"run_id": "r1"})
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # the temp file was renamed away
    loaded, meta = load_retriever(path)
    assert meta["run_id"] == "r1" and meta["config"] == cfg.model_dump()
    assert meta["item_layout"] == {"names": ["item_id", "category"], "sizes": [21, 5]}
    assert build_args(loaded) == build_args(model)
    torch.testing.assert_close(
        encode(loaded.item_embedding, CATALOGUE, 8, "cpu"), encode(model.item_embedding, CATALOGUE, 8, "cpu")
    )
    with pytest.raises(ValueError, match="build arguments"):
        save_retriever(tmp_path / "x.pt", model, {"config": {}})
    torch.save({"format": 1, "kind": "ranker"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a retriever checkpoint"):
        load_retriever(tmp_path / "other.pt")


def test_warm_start_copies_matching_tensors_only(tmp_path):
    cfg = _cfg(epochs=1)
    trained, _ = _train(cfg)
    path = save_retriever(tmp_path / "model.pt", trained)
    # same shapes: everything is copied, the outputs are those of the trained model
    same = _model(cfg, seed=9)
    copied = warm_start_retriever(same, path)
    assert copied == sorted(trained.state_dict())
    torch.testing.assert_close(
        encode(same.item_embedding, CATALOGUE, 8, "cpu"), encode(trained.item_embedding, CATALOGUE, 8, "cpu")
    )
    # the item table grew (more item_id buckets): the shared item table keeps its fresh values
    bigger = _model(cfg, item=FieldLayout(("item_id", "category"), (31, 5)), seed=9)
    fresh = bigger.item_tower.fields.table.weight.detach().clone()
    copied = warm_start_retriever(bigger, path)
    assert "item_tower.fields.table.weight" not in copied
    assert "user_tower.fields.table.weight" in copied
    assert torch.equal(bigger.item_tower.fields.table.weight, fresh)


def test_symmetric_loss_and_learnt_temperature_train_and_are_saved(tmp_path):
    cfg = _cfg(symmetric=True, learn_temperature=True, temperature=0.1, min_temperature=0.02, epochs=4)
    model, res = _train(cfg)
    assert res.best_score >= 0.9  # the two-way loss still separates the planted segments
    figures = res.figures()
    assert len(figures["temperature_history"]) == len(res.history)
    learnt = figures["learnt_temperature"]
    assert 0.02 <= learnt <= 1.0 and learnt != pytest.approx(0.1, abs=1e-4)  # it moved, inside the clamp
    assert float(model.temperature().detach()) == pytest.approx(
        learnt, abs=1e-6
    )  # best epoch's tau is loaded back
    loaded, meta = load_retriever(save_retriever(tmp_path / "model.pt", model))
    assert "tau.log_scale" in loaded.state_dict() and meta["config"]["learn_temperature"] is True
    assert float(loaded.temperature().detach()) == pytest.approx(learnt, abs=1e-6)


def test_learnt_temperature_gets_a_gradient_and_defaults_add_nothing():
    cfg = _cfg(learn_temperature=True)
    model = _model(cfg)
    users, items = _one_batch(6, seed=1)
    batch_loss(model, users, items, cfg, _log_p()).backward()
    assert model.tau.log_scale.grad is not None and float(model.tau.log_scale.grad) != 0.0
    # defaults: a plain float tau, no extra tensor in the state dict, no temperature in the figures
    plain = _model(_cfg())
    assert plain.tau is None and plain.temperature() == 0.1
    assert not any(k.startswith("tau") for k in plain.state_dict())
    _, res = _train(_cfg(epochs=1), model=plain)
    assert "learnt_temperature" not in res.figures()
    with pytest.raises(ValueError, match="retriever.temperature"):
        _cfg(learn_temperature=True, temperature=5.0)


def test_symmetric_option_changes_the_batch_loss_by_the_item_to_user_term():
    users, items = _one_batch(6, seed=2)
    one_way, two_way = _cfg(), _cfg(symmetric=True)
    model = _model(one_way)
    a = batch_loss(model, users, items, one_way, _log_p())
    b = batch_loss(model, users, items, two_way, _log_p())
    u, v = model(users, items)
    rows = items["item_idx"]
    back = info_nce(v, u, 0.1, use_logq=False, item_ids=rows)  # item -> user: items as queries, hits masked
    torch.testing.assert_close(b, 0.5 * (a + back))
