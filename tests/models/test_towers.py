"""Shape, norm and missing-modality tests of the dual-tower retriever."""

from __future__ import annotations

import pytest
import torch

from models.config import RetrieverConfig
from models.inputs import FieldLayout
from models.losses import info_nce
from models.towers import TwoTower

USER = FieldLayout(("gender", "region"), (3, 5))
ITEM = FieldLayout(("item_id", "category"), (20, 4))
DT, DI = 6, 5


def _model(**over: object) -> TwoTower:
    torch.manual_seed(0)
    cfg = RetrieverConfig(dim=8, field_dim=4, hidden=[16], **over)
    return TwoTower(
        cfg, USER, ITEM, n_counts=2, n_user_numeric=1, n_item_numeric=3, text_dim=DT, image_dim=DI
    )


def _user_batch(b: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    return {
        "sparse": torch.stack(
            [torch.randint(0, 3, (b,), generator=g), torch.randint(0, 5, (b,), generator=g)], 1
        ),
        "hist": torch.randint(0, 20, (b, 4), generator=g),
        "counts": torch.rand(b, 2, generator=g),
        "numeric": torch.randn(b, 1, generator=g),
    }


def _item_batch(b: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    return {
        "sparse": torch.stack(
            [torch.randint(0, 20, (b,), generator=g), torch.randint(0, 4, (b,), generator=g)], 1
        ),
        "numeric": torch.randn(b, 3, generator=g),
        "text": torch.randn(b, DT, generator=g),
        "has_text": torch.ones(b),
        "image": torch.randn(b, DI, generator=g) * 50,  # large norm on purpose: normalised inside
        "has_image": torch.ones(b),
    }


@pytest.mark.parametrize("b", [1, 7])
def test_shapes_and_unit_norm(b: int) -> None:
    g = torch.Generator().manual_seed(b)
    m = _model()
    u = m.user_embedding(_user_batch(b, g))
    v = m.item_embedding(_item_batch(b, g))
    assert u.shape == (b, 8) and v.shape == (b, 8)
    assert u.dtype == torch.float32
    torch.testing.assert_close(u.norm(dim=1), torch.ones(b))
    torch.testing.assert_close(v.norm(dim=1), torch.ones(b))


def test_missing_text_equals_zeroed_text() -> None:
    g = torch.Generator().manual_seed(1)
    m = _model()
    batch = _item_batch(3, g)
    batch["has_text"] = torch.tensor([0.0, 1.0, 0.0])
    garbage = dict(batch)  # rows 0 and 2 have has_text = 0 but random values in the text slot
    zeroed = dict(batch, text=batch["text"] * batch["has_text"][:, None])  # the same rows, text zeroed
    torch.testing.assert_close(m.item_embedding(garbage), m.item_embedding(zeroed))
    # and the flag matters: with has_text = 1 the row-0 output changes
    flipped = dict(batch, has_text=torch.ones(3))
    assert not torch.allclose(m.item_embedding(flipped)[0], m.item_embedding(garbage)[0])


def test_missing_image_contributes_nothing_to_the_projection() -> None:
    m = _model()
    x = torch.randn(2, DI) * 1e4  # a huge-norm image that must not dominate when absent
    out = m.item_tower.image(x, torch.tensor([0.0, 1.0]))
    assert (out[0] == 0).all()
    # present row: |gate * W x/|x| + b| is bounded by the weights, not by |x| = 1e4 * ...
    assert out[1].norm() < 10


def test_modalities_off_ignore_text_and_image() -> None:
    g = torch.Generator().manual_seed(2)
    m = _model(use_text=False, use_image=False)
    batch = _item_batch(2, g)
    other = dict(batch, text=torch.randn(2, DT, generator=g), image=torch.randn(2, DI, generator=g))
    torch.testing.assert_close(m.item_embedding(batch), m.item_embedding(other))
    del other["text"], other["image"], other["has_text"], other["has_image"]
    torch.testing.assert_close(m.item_embedding(batch), m.item_embedding(other))


def test_history_padding_is_masked_and_shares_the_item_id_table() -> None:
    m = _model()
    # [7, 0, 0] pools to the embedding of bucket 7 alone; [7, 7, 0] to the same mean
    pooled = m.user_tower.pool_history(torch.tensor([[7, 0, 0], [7, 7, 0], [0, 0, 0]]))
    item_row_7 = m.item_tower.fields.table.weight[ITEM.offsets[0] + 7]
    torch.testing.assert_close(pooled[0], item_row_7)
    torch.testing.assert_close(pooled[1], item_row_7)
    assert (pooled[2] == 0).all()  # no history -> zero vector
    # the item_id table appears once among the parameters
    n_tables = sum(1 for name, _ in m.named_parameters() if name.endswith("table.weight"))
    assert n_tables == 2  # user fields + item fields


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="item_id"):
        TwoTower(RetrieverConfig(), USER, FieldLayout(("category",), (4,)), 0, 0, 0, DT, DI)
    with pytest.raises(ValueError, match="use_image"):
        TwoTower(RetrieverConfig(), USER, ITEM, 0, 0, 0, DT, 0)
    m = _model()
    g = torch.Generator().manual_seed(3)
    batch = _user_batch(2, g)
    batch["sparse"] = batch["sparse"][:, :1]
    with pytest.raises(ValueError, match="sparse"):
        m.user_embedding(batch)


def test_a_few_steps_reduce_the_loss() -> None:
    # 6 users whose positives are items 1..6; the towers must learn to match them
    g = torch.Generator().manual_seed(4)
    m = _model(use_text=False, use_image=False)
    users = _user_batch(6, g)
    items = _item_batch(6, g)
    items["sparse"][:, 0] = torch.arange(1, 7)
    opt = torch.optim.Adam(m.parameters(), lr=0.02)
    losses = []
    for _ in range(30):
        q, v = m(users, items)
        loss = info_nce(q, v, 0.1, use_logq=False, use_remove_hits=False)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
