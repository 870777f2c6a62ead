from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from features.hashing import FieldSpec, Vocab
from models.train import prefetch
from pipelines import batches as B
from pipelines import io

D = date(2024, 3, 1)
RUN = io.RunInfo(run_id="t", config_hash="h", code_revision="test", config={})
VOCAB = Vocab(
    (
        FieldSpec("user_id", ("user_id",), 10, "user"),
        FieldSpec("gender", ("gender",), 3, "user"),
        FieldSpec("item_id", ("item_id",), 20, "item"),
        FieldSpec("gender_x_item_id", ("gender", "item_id"), 7, "cross"),
    )
)


def _frame() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "user_id": ["u1", "u2", "u3"],
            "item_idx": pl.Series([2, 0, 1], dtype=pl.Int32),
            "label": pl.Series([1, 0, 1], dtype=pl.Int8),
            "bkt_user_id": pl.Series([4, 5, 6], dtype=pl.Int32),
            "bkt_gender": pl.Series([1, 2, 0], dtype=pl.Int32),
            "bkt_item_id": pl.Series([11, 12, 13], dtype=pl.Int32),
            "bkt_gender_x_item_id": pl.Series([3, 4, 5], dtype=pl.Int32),
            "hist": pl.Series([[7, 8, 9], [], [5]], dtype=pl.List(pl.Int32)),
            "cnt_1d": pl.Series([0, 1, 3], dtype=pl.UInt32),
            "num_user_age": pl.Series([0.5, -1.0, 0.0], dtype=pl.Float32),
            "num_item_price": pl.Series([1.0, 2.0, 3.0], dtype=pl.Float32),
        }
    )


CONTENT = B.ItemContent(
    text=np.array([[1, 0], [0, 1], [0, 0]], np.float32),
    has_text=np.array([1, 1, 0], np.float32),
    image=np.array([[0.6, 0.8, 0], [0, 0, 1], [1, 0, 0]], np.float32),
    has_image=np.array([1, 1, 1], np.float32),
)


def test_pad_hist_truncates_and_pads():
    col = pa.array([[7, 8, 9], [], [5]], type=pa.list_(pa.int32()))
    # L=2: [7, 8] (truncated), [0, 0] (empty), [5, 0] (padded)
    assert B._pad_hist(col, 2).tolist() == [[7, 8], [0, 0], [5, 0]]


def test_spec_for_sides_and_to_batch_by_hand():
    df = _frame()
    spec = B.spec_for(VOCAB, df.schema, ("user", "item", "cross"), hist_len=2, item_content=True, label=True)
    assert spec.fields == ("user_id", "gender", "item_id", "gender_x_item_id")
    assert spec.counts == ("cnt_1d",) and spec.numeric == ("num_user_age", "num_item_price")
    assert spec.layout(VOCAB).sizes == (10, 3, 20, 7)
    b = B.to_batch(df, spec, CONTENT)
    assert b["sparse"].tolist() == [[4, 1, 11, 3], [5, 2, 12, 4], [6, 0, 13, 5]]
    assert b["hist"].tolist() == [[7, 8], [0, 0], [5, 0]]
    np.testing.assert_allclose(b["counts"][:, 0].numpy(), np.log1p([0, 1, 3]), rtol=1e-6)
    # item_idx [2, 0, 1] gathers rows 2, 0, 1 of the content
    assert b["text"].tolist() == [[0, 0], [1, 0], [0, 1]] and b["has_text"].tolist() == [0, 1, 1]
    assert b["label"].tolist() == [1.0, 0.0, 1.0]


def test_item_side_spec_has_no_user_features():
    spec = B.spec_for(VOCAB, _frame().schema, ("item",), hist_len=5, item_content=False, label=False)
    assert spec.fields == ("item_id",) and spec.counts == () and spec.hist_len == 0
    assert spec.numeric == ("num_item_price",)


def test_missing_column_is_a_clear_error():
    spec = B.spec_for(VOCAB, _frame().schema, ("user",), hist_len=2, item_content=False, label=True)
    with pytest.raises(ValueError, match=r"lacks columns \['label'\]"):
        B.to_batch(_frame().drop("label"), spec)


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 300), batch=st.integers(1, 64), seed=st.integers(0, 10))
def test_stream_visits_every_row_once(tmp_path_factory, n: int, batch: int, seed: int):
    path = tmp_path_factory.mktemp("s") / "f.parquet"
    pl.DataFrame({"bkt_user_id": pl.Series(range(n), dtype=pl.Int32), "label": [1] * n}).write_parquet(
        path, row_group_size=37
    )
    spec = B.BatchSpec(("user_id",), (), (), 0, False, True)
    for shuffle in (None, seed):
        got = [b["sparse"][:, 0] for b in B.stream_batches(path, spec, batch, shuffle_seed=shuffle)]
        ids = np.concatenate([g.numpy() for g in got])
        assert sorted(ids.tolist()) == list(range(n))
        assert all(len(g) == batch for g in got[:-1])  # only the last batch may be short
        if shuffle is None:
            assert ids.tolist() == list(range(n))
    again = np.concatenate(
        [b["sparse"][:, 0].numpy() for b in B.stream_batches(path, spec, batch, shuffle_seed=seed)]
    )
    assert again.tolist() == ids.tolist()  # deterministic for a seed


def test_load_item_content_aligns_by_item_idx(tmp_path: Path):
    vocab = Vocab((FieldSpec("item_id", ("item_id",), 5, "item"),))
    with io.staged_partition(tmp_path, "frames", D, RUN) as st_:
        st_.write_table(
            pl.DataFrame(
                {
                    "item_id": ["a", "b", "c"],
                    "item_idx": pl.Series([0, 1, 2], dtype=pl.Int32),
                    "bkt_item_id": pl.Series([3, 1, 3], dtype=pl.Int32),  # a and c collide
                }
            ),
            "items",
        )
        st_.write_json("vocab.json", vocab.to_json())
    emb = pl.DataFrame(
        {
            "item_id": ["c", "a"],  # other order; "b" has no embedding row
            "text_emb": pl.Series([[0.0, 1.0], [1.0, 0.0]], dtype=pl.Array(pl.Float32, 2)),
            "image_emb": pl.Series([[1.0], [1.0]], dtype=pl.Array(pl.Float32, 1)),
            "has_text": [True, True],
            "has_image": [False, True],
        }
    )
    with io.staged_partition(tmp_path, "embeddings", D, RUN) as st_:
        st_.write_table(emb, "items")
    c = B.load_item_content(tmp_path, D)
    assert c.text.tolist() == [[1, 0], [0, 0], [0, 1]]
    assert c.has_text.tolist() == [1, 0, 1] and c.has_image.tolist() == [1, 0, 0]
    assert (c.text_dim, c.image_dim, len(c)) == (2, 1, 3)
    # bucket -> item_idx: the first item of a bucket, -1 for an empty bucket and for the null bucket 0
    assert c.item_of_bucket.tolist() == [-1, 1, -1, 0, -1]


def test_prefetched_stream_equals_the_serial_stream(tmp_path: Path):
    # the training loop reads frames through models.train.prefetch (a background thread): same batches,
    # same order, for the file order and for a shuffled epoch; 50 rows in batches of 8 -> 7 batches
    path = tmp_path / "f.parquet"
    n = 50
    pl.DataFrame(
        {
            "bkt_user_id": pl.Series(range(n), dtype=pl.Int32),
            "hist": pl.Series([[i, i + 1] for i in range(n)], dtype=pl.List(pl.Int32)),
            "label": [i % 2 for i in range(n)],
        }
    ).write_parquet(path, row_group_size=13)
    spec = B.BatchSpec(("user_id",), (), (), 3, False, True)
    for shuffle in (None, 4):
        serial = list(B.stream_batches(path, spec, 8, shuffle_seed=shuffle))
        ahead = list(prefetch(B.stream_batches(path, spec, 8, shuffle_seed=shuffle), 2))
        assert len(serial) == len(ahead) == 7
        for s, a in zip(serial, ahead, strict=True):
            assert s.keys() == a.keys()
            assert all(torch.equal(s[k], a[k]) for k in s)


def test_item_content_only_drops_a_modality_to_width_zero() -> None:
    from pipelines.batches import ItemContent

    content = ItemContent(
        text=np.ones((3, 4), np.float32),
        has_text=np.ones(3, np.float32),
        image=np.ones((3, 2), np.float32),
        has_image=np.ones(3, np.float32),
    )
    text_only = content.only(image=False)
    assert (text_only.text_dim, text_only.image_dim) == (4, 0)
    assert text_only.has_image.sum() == 0 and text_only.has_text.sum() == 3
    image_only = content.only(text=False)
    assert (image_only.text_dim, image_only.image_dim) == (0, 2)


def _content(text: np.ndarray, image: np.ndarray, item_of_bucket: list[int]) -> B.ItemContent:
    n = len(text)
    return B.ItemContent(
        text=text.astype(np.float32),
        has_text=np.ones(n, np.float32),
        image=image.astype(np.float32),
        has_image=(np.abs(image).sum(1) > 0).astype(np.float32),
        item_of_bucket=np.array(item_of_bucket),
    )


def test_content_affinity_hand_worked():
    # items 0..2; text: e0, e1, (e0 + e1) / sqrt 2; image: item 2 has none; buckets 1, 2, 3 -> items 0, 1, 2
    text = np.array([[1.0, 0.0], [0.0, 1.0], [2**-0.5, 2**-0.5]])
    image = np.array([[1.0], [1.0], [0.0]])
    c = _content(text, image, [-1, 0, 1, 2])
    hist = np.array([[1, 1, 0], [1, 2, 0], [0, 0, 0], [3, 0, 0], [1, 3, 0]])
    # history (the item itself left out): e0 e0; e0 e1; none; none (only item 2 itself); e0
    items = np.array([2, 2, 0, 2, 2])
    got = B.content_affinity(hist, items, c)
    assert got.affinity.shape == (5, 2 * B.AFFINITY_PER_MODALITY) and got.profile.shape == (5, 3)
    r = 2**-0.5
    text_cols = got.affinity[:, :3]  # cos of the mean, mean cos, max cos
    assert text_cols[:, 0] == pytest.approx([r, 1.0, 0.0, 0.0, r], abs=1e-6)
    assert text_cols[:, 1] == pytest.approx([r, r, 0.0, 0.0, r], abs=1e-6)
    assert text_cols[:, 2] == pytest.approx([r, r, 0.0, 0.0, r], abs=1e-6)
    assert got.profile[:, :2] == pytest.approx(
        np.array([[1, 0], [0.5, 0.5], [0, 0], [0, 0], [1, 0]]), abs=1e-6
    )
    # image: item 2 has no image -> 0; the profile is still the history's (the model masks the item side)
    assert got.affinity[:, 3:] == pytest.approx(np.zeros((5, 3)), abs=1e-6)
    assert got.profile[:, 2] == pytest.approx([1.0, 1.0, 0.0, 0.0, 1.0], abs=1e-6)
    one = B.content_affinity(np.array([[2, 0, 0]]), np.array([0]), c)
    assert one.affinity[0, 3:] == pytest.approx([1.0, 1.0, 1.0])


def test_content_affinity_mean_and_max_differ_from_the_cosine_of_the_mean():
    # history: e0, e0, e1 against item e0: mean direction (2, 1)/sqrt 5 -> cos 2/sqrt 5; mean cos 2/3; max 1
    c = _content(
        np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]]), np.zeros((4, 0)), [-1, 0, 1, 2, 3]
    )
    got = B.content_affinity(np.array([[1, 3, 2]]), np.array([3]), c.only(image=False))
    assert got.affinity[0].tolist() == pytest.approx([2 / 5**0.5, 2 / 3, 1.0], abs=1e-6)
    assert got.profile[0].tolist() == pytest.approx([2 / 3, 1 / 3], abs=1e-6)


def test_content_affinity_follows_the_kept_modalities():
    c = _content(np.eye(2), np.ones((2, 1)), [-1, 0, 1])
    k = B.AFFINITY_PER_MODALITY
    assert c.affinity_dim == 2 * k
    assert c.only(image=False).affinity_dim == k
    got = B.content_affinity(np.array([[1]]), np.array([0]), c.only(image=False))
    assert got.affinity.shape == (1, k) and got.profile.shape == (1, 2)
    assert c.only(text=False, image=False).affinity_dim == 0
