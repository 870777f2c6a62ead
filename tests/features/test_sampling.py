"""Tests of features.sampling: ranker negatives, logQ probabilities and the uniform item sampler."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.config import SamplingConfig
from features.sampling import (
    UniformItemSampler,
    item_sampling_probs,
    sample_negatives,
    sample_negatives_with_stats,
)

D1, D2 = date(2024, 1, 1), date(2024, 1, 2)


def _t(hour: int, day: date = D1) -> datetime:
    return datetime(day.year, day.month, day.day) + timedelta(hours=hour)


def _events(rows: list[tuple]) -> pl.DataFrame:
    return pl.DataFrame(
        rows,
        schema={"user_id": pl.String, "item_id": pl.String, "ts": pl.Datetime("us"), "dt": pl.Date},
        orient="row",
    )


def _available(day: date, counts: dict[str, int]) -> pl.DataFrame:
    return pl.DataFrame({"dt": [day] * len(counts), "item_id": list(counts), "count": list(counts.values())})


NO_REAL = _events([])


def test_tiny_example_by_hand() -> None:
    # u1 has positives a (10h), b (11h); u2 has positive a (9h); ratio 2, share 0.5, items a..e on D1.
    # u1: 4 slots, wants round(2 * 2 * 0.5) = 2 real; its real views are c and a, a is a positive -> only c
    #     (ts 8h); 3 sampled slots but only d, e remain (a, b excluded, c used) -> 2 sampled, 1 unfilled.
    # u2: 2 slots, wants round(1 * 2 * 0.5) = 1 real, has none -> 2 sampled from {b, c, d, e}, distinct,
    #     both with u2's positive ts 9h.
    pos = _events([("u1", "a", _t(10), D1), ("u1", "b", _t(11), D1), ("u2", "a", _t(9), D1)])
    real = _events([("u1", "c", _t(8), D1), ("u1", "a", _t(8), D1)])
    av = _available(D1, {"a": 10, "b": 5, "c": 3, "d": 2, "e": 1})
    cfg = SamplingConfig(ratio=2, real_negative_share=0.5)
    out, stats = sample_negatives_with_stats(pos, av, real, pos.select("user_id", "item_id"), cfg, seed=0)
    assert out.columns == ["user_id", "item_id", "ts", "dt", "source"]
    u1 = out.filter(pl.col("user_id") == "u1")
    assert u1.filter(pl.col("source") == "real").rows() == [("u1", "c", _t(8), D1, "real")]
    u1_sampled = u1.filter(pl.col("source") == "sampled")
    assert sorted(u1_sampled["item_id"]) == ["d", "e"]
    assert set(u1_sampled["ts"]) <= {_t(10), _t(11)}
    u2 = out.filter(pl.col("user_id") == "u2")
    assert u2.height == 2 and u2["item_id"].n_unique() == 2
    assert set(u2["item_id"]) <= {"b", "c", "d", "e"}
    assert set(u2["ts"]) == {_t(9)} and set(u2["source"]) == {"sampled"}
    assert (stats["real"], stats["sampled"], stats["unfilled"]) == (1, 4, 1)
    assert stats["negatives"] == out.height == 5
    assert 0 < stats["draws_hit_positive"] <= stats["draws"]
    assert stats["hit_rate"] == stats["draws_hit_positive"] / stats["draws"]


def _many_items(day: date, n: int = 200) -> pl.DataFrame:
    return _available(day, {f"i{k}": 1 + k % 7 for k in range(n)})


def test_ratio_and_real_share_respected() -> None:
    # u1: 2 positives, ratio 4 -> 8 negatives, share 0.5 -> 4 real (it has 10 real views) + 4 sampled.
    # u2: 2 positives, 1 real view -> 1 real, topped up with 7 sampled.
    pos = _events(
        [("u1", "i0", _t(10), D1), ("u1", "i1", _t(12), D1), ("u2", "i0", _t(9), D1), ("u2", "i2", _t(9), D1)]
    )
    real = _events([("u1", f"i{k}", _t(1), D1) for k in range(10, 20)] + [("u2", "i50", _t(2), D1)])
    cfg = SamplingConfig(ratio=4, real_negative_share=0.5, strategy="uniform")
    out = sample_negatives(pos, _many_items(D1), real, pos.select("user_id", "item_id"), cfg, seed=1)
    counts = out.group_by("user_id", "source").len().sort("user_id", "source").rows()
    assert counts == [("u1", "real", 4), ("u1", "sampled", 4), ("u2", "real", 1), ("u2", "sampled", 7)]
    real_u1 = out.filter((pl.col("user_id") == "u1") & (pl.col("source") == "real"))
    assert set(real_u1["item_id"]) <= {f"i{k}" for k in range(10, 20)}
    assert set(real_u1["ts"]) == {_t(1)}  # a real negative keeps its view's ts
    # every positive has `ratio` slots: the 4 sampled of u1 are spread 2 + 2 over its positives' ts
    sampled_u1 = out.filter((pl.col("user_id") == "u1") & (pl.col("source") == "sampled"))
    assert sorted(sampled_u1["ts"]) == [_t(10), _t(10), _t(12), _t(12)]


def test_share_zero_and_one() -> None:
    pos = _events([("u1", "i0", _t(10), D1)])
    real = _events([("u1", f"i{k}", _t(1), D1) for k in range(10, 20)])
    for share, want_real in ((0.0, 0), (1.0, 3)):
        cfg = SamplingConfig(ratio=3, real_negative_share=share)
        out = sample_negatives(pos, _many_items(D1), real, pos.select("user_id", "item_id"), cfg, seed=2)
        assert out.height == 3
        assert (out["source"] == "real").sum() == want_real


def test_deterministic_and_seed_dependent() -> None:
    pos = _events([(f"u{k % 5}", f"i{k}", _t(k % 24), D1) for k in range(40)])
    cfg = SamplingConfig(ratio=3)
    args = (pos, _many_items(D1), NO_REAL, pos.select("user_id", "item_id"), cfg)
    a, b = sample_negatives(*args, seed=7), sample_negatives(*args, seed=7)
    assert a.equals(b)
    # row order of the inputs does not matter either
    shuffled = pos.sample(fraction=1.0, shuffle=True, seed=3)
    c = sample_negatives(shuffled, *args[1:], seed=7)
    assert a.equals(c)
    assert not a.equals(sample_negatives(*args, seed=8))


def test_items_only_from_that_days_available_set() -> None:
    pos = _events([("u1", "x", _t(10, D1), D1), ("u1", "y", _t(10, D2), D2), ("u2", "x", _t(3, D2), D2)])
    av = pl.concat([_available(D1, {"a": 1, "b": 2, "c": 3}), _available(D2, {"p": 1, "q": 2, "r": 3})])
    cfg = SamplingConfig(ratio=2, real_negative_share=0.0)
    out = sample_negatives(pos, av, NO_REAL, pos.select("user_id", "item_id"), cfg, seed=0)
    assert set(out.filter(pl.col("dt") == D1)["item_id"]) <= {"a", "b", "c"}
    assert set(out.filter(pl.col("dt") == D2)["item_id"]) <= {"p", "q", "r"}
    assert out.height == 6


def test_popularity_sampling_follows_count_power_alpha() -> None:
    # 20k users with one positive each on an item that is not for sale: each draws one negative from
    # counts [1, 4, 9, 16, 64]; with alpha 0.5 the weights are [1, 2, 3, 4, 8] -> p = w / 18
    n = 20_000
    pos = pl.DataFrame({"user_id": np.arange(n), "item_id": ["zz"] * n, "ts": [_t(1)] * n, "dt": [D1] * n})
    av = _available(D1, {"a": 1, "b": 4, "c": 9, "d": 16, "e": 64})
    real = pos.head(0)
    cfg = SamplingConfig(ratio=1, real_negative_share=0.0, strategy="popularity", alpha=0.5)
    out = sample_negatives(pos, av, real, pos.select("user_id", "item_id"), cfg, seed=11)
    freq = out.group_by("item_id").len().sort("item_id")["len"].to_numpy()
    p = np.array([1, 2, 3, 4, 8]) / 18
    # chi-square with 4 degrees of freedom: the 0.999 quantile is 18.47
    chi2 = float(((freq - n * p) ** 2 / (n * p)).sum())
    assert chi2 < 18.47, (freq, n * p)
    uniform = sample_negatives(
        pos,
        av,
        real,
        pos.select("user_id", "item_id"),
        cfg.model_copy(update={"strategy": "uniform"}),
        seed=11,
    )
    freq_u = uniform.group_by("item_id").len()["len"].to_numpy()
    assert float(((freq_u - n / 5) ** 2 / (n / 5)).sum()) < 18.47


@settings(max_examples=25, deadline=None)
@given(
    pos_rows=st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 9), st.integers(0, 23), st.sampled_from([D1, D2])),
        min_size=1,
        max_size=12,
    ),
    extra_excl=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 9)), max_size=8),
    real_rows=st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 9), st.sampled_from([D1, D2])), max_size=10
    ),
    ratio=st.integers(1, 4),
    share=st.sampled_from([0.0, 0.5, 1.0]),
    seed=st.integers(0, 1000),
)
def test_property_no_excluded_no_duplicates_available_only(
    pos_rows: list, extra_excl: list, real_rows: list, ratio: int, share: float, seed: int
) -> None:
    pos = _events([(f"u{u}", f"i{i}", _t(h, d), d) for u, i, h, d in pos_rows])
    real = _events([(f"u{u}", f"i{i}", _t(0, d), d) for u, i, d in real_rows])
    excl = pl.concat(
        [
            pos.select("user_id", "item_id"),
            pl.DataFrame(
                {"user_id": [f"u{u}" for u, _ in extra_excl], "item_id": [f"i{i}" for _, i in extra_excl]},
                schema={"user_id": pl.String, "item_id": pl.String},
            ),
        ]
    )
    # day 1 sells i0..i9, day 2 only i0..i4
    av = pl.concat(
        [_available(D1, {f"i{k}": k + 1 for k in range(10)}), _available(D2, {f"i{k}": 1 for k in range(5)})]
    )
    cfg = SamplingConfig(ratio=ratio, real_negative_share=share)
    out, stats = sample_negatives_with_stats(pos, av, real, excl, cfg, seed)
    assert out.join(excl, on=["user_id", "item_id"], how="semi").height == 0  # never an excluded pair
    assert out.select("user_id", "dt", "item_id").is_duplicated().sum() == 0  # never twice a user-day
    sampled = out.filter(pl.col("source") == "sampled")
    assert sampled.join(av, on=["dt", "item_id"], how="anti").height == 0  # only that day's items
    assert out.height + stats["unfilled"] == ratio * pos.height  # every slot filled or counted unfilled
    assert out.equals(sample_negatives(pos, av, real, excl, cfg, seed))


def test_missing_column_is_named() -> None:
    with pytest.raises(ValueError, match=r"available frame lacks columns \['count'\]"):
        sample_negatives(
            NO_REAL, pl.DataFrame({"dt": [], "item_id": []}), NO_REAL, NO_REAL, SamplingConfig(), 0
        )


def test_item_sampling_probs_by_hand() -> None:
    # item 7 in 3 of 4 positives, item 3 in 1 -> 0.75, 0.25
    probs = item_sampling_probs(pl.DataFrame({"item_id": [7, 7, 3, 7], "user_id": [1, 2, 3, 4]}))
    assert probs.rows() == [(3, 0.25), (7, 0.75)]
    assert probs["prob"].sum() == pytest.approx(1.0)


def test_uniform_item_sampler() -> None:
    a, b = UniformItemSampler(10, seed=3), UniformItemSampler(10, seed=3)
    x = a.sample(5000)
    assert x.shape == (5000,) and x.dtype == np.int64
    assert x.min() >= 0 and x.max() <= 9
    assert np.array_equal(x, b.sample(5000))
    counts = np.bincount(x, minlength=10)
    assert float(((counts - 500) ** 2 / 500).sum()) < 27.88  # chi-square, 9 dof, 0.999 quantile
    assert UniformItemSampler(1, seed=0).sample(3).tolist() == [0, 0, 0]
    with pytest.raises(ValueError):
        UniformItemSampler(0, seed=0)
