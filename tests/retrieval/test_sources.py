"""Candidate sources and their merge on hand-made events (expected values worked out in the comments)."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import polars as pl

from retrieval import sources as src


def _ev(rows: list[tuple[int, int, float, int]]) -> pl.DataFrame:
    """(user, item, weight, hour of 2024-01-01) -> an events frame."""
    return pl.DataFrame(
        {
            "u": pl.Series([r[0] for r in rows], dtype=pl.UInt32),
            "i": pl.Series([r[1] for r in rows], dtype=pl.Int32),
            "w": pl.Series([r[2] for r in rows], dtype=pl.Float32),
            "ts": [datetime(2024, 1, 1, r[3], tzinfo=UTC) for r in rows],
        }
    )


def test_covisitation_counts_the_partner_weight_within_the_window() -> None:
    # user 0: 1 then 2 (cart, weight 4); user 1: 1 then 2 (view, 1); user 2: 1 then 3 but 10 h apart
    ev = _ev([(0, 1, 1, 1), (0, 2, 4, 2), (1, 1, 1, 1), (1, 2, 1, 2), (2, 1, 1, 1), (2, 3, 1, 11)])
    covis = src.covisitation(ev, window_s=3600 * 5)
    # (1 -> 2) = 4 + 1 = 5; (2 -> 1) = 1 + 1 = 2; (1, 3) is outside the 5 h window
    assert covis.sort("a", "b").rows() == [(1, 2, 5.0), (2, 1, 2.0)]


def test_covis_candidates_never_propose_a_seed_and_sum_over_seeds() -> None:
    seed = pl.DataFrame({"u": pl.Series([0, 0], dtype=pl.UInt32), "i": pl.Series([1, 2], dtype=pl.Int32),
                         "sw": pl.Series([1.0, 0.5], dtype=pl.Float32)})  # fmt: skip
    covis = pl.DataFrame({"a": [1, 1, 2], "b": [2, 3, 3], "covis": [9.0, 2.0, 4.0]}).cast(
        {"a": pl.Int32, "b": pl.Int32, "covis": pl.Float32}
    )
    got = src.covis_candidates(seed, covis, 5)
    # item 2 is a seed: dropped; item 3 = 1.0 * 2 + 0.5 * 4 = 4
    assert got.select("i", "score", "rank").rows() == [(3, 4.0, 1)]


def test_ann_candidates_follow_the_mean_of_the_seed_vectors() -> None:
    emb = np.array([[1, 0], [0, 1], [0.9, 0.1], [0.1, 0.9]], np.float32)
    seed = pl.DataFrame({"u": pl.Series([7], dtype=pl.UInt32), "i": pl.Series([0], dtype=pl.Int32),
                         "sw": pl.Series([1.0], dtype=pl.Float32)})  # fmt: skip
    got = src.ann_candidates(seed, emb, 2)
    assert got["i"].to_list() == [2, 3] and got["u"].to_list() == [7, 7]  # item 0 is the seed


def test_merge_unions_excludes_and_keeps_each_source() -> None:
    users = pl.Series([0, 1], dtype=pl.UInt32)
    lists = {
        "recent": pl.DataFrame({"u": [0], "i": [5], "score": [1.0], "rank": [1]}),
        "covis": pl.DataFrame({"u": [0, 0], "i": [5, 6], "score": [3.0, 2.0], "rank": [1, 2]}),
    }
    lists = {
        k: v.cast({"u": pl.UInt32, "i": pl.Int32, "score": pl.Float32, "rank": pl.Int32})
        for k, v in lists.items()
    }
    pop = pl.DataFrame({"i": [6, 7], "score": [10.0, 9.0], "rank": [1, 2]}).cast(
        {"i": pl.Int32, "score": pl.Float32, "rank": pl.Int32}
    )
    exclude = pl.DataFrame({"u": [1], "i": [7]}).cast({"u": pl.UInt32, "i": pl.Int32})
    got = src.merge(lists, pop, users, exclude, k=10)
    u0 = got.filter(pl.col("u") == 0)
    # item 5: 1/61 + 1/61 (recent, covis); item 6: 1/62 + 1/61 (covis, popular); item 7: 1/62
    assert u0["i"].to_list() == [5, 6, 7]
    assert u0["sources"].to_list() == [
        0b000011,
        0b100010,
        0b100000,
    ]  # bits: recent, covis, ann, category, popular
    assert u0.filter(pl.col("i") == 6)["rank_covis"].item() == 2
    assert got.filter(pl.col("u") == 1)["i"].to_list() == [6]  # user 1 bought 7: only the popular 6 left
    names = got.select(src.primary_source(pl.col("sources")).alias("s"))["s"].to_list()
    assert names == ["recent", "covis", "popular", "popular"]


def test_recent_ranks_heavy_fresh_events_first() -> None:
    ev = _ev([(0, 1, 1, 1), (0, 2, 4, 2), (0, 3, 1, 3)])
    got = src.recent(ev, pl.Series([0], dtype=pl.UInt32), 2, datetime(2024, 1, 2, tzinfo=UTC))
    assert got["i"].to_list() == [2, 3]  # the cart (weight 4) beats the later view; k = 2 drops item 1


def test_covisitation_does_not_depend_on_the_partitions() -> None:
    rng = np.random.default_rng(3)
    n = 3_000
    ev = pl.DataFrame(
        {
            "u": pl.Series(rng.integers(0, 60, n), dtype=pl.UInt32),
            "i": pl.Series(rng.integers(0, 200, n), dtype=pl.Int32),
            "w": pl.Series(rng.choice([1.0, 2.0, 4.0], n), dtype=pl.Float32),
            "ts": [datetime(2024, 1, 1, int(h), tzinfo=UTC) for h in rng.integers(0, 24, n)],
        }
    )
    whole = src.covisitation(ev, window_s=3 * 3600, neighbours=5)
    assert whole.height > 200
    for parts in (2, 7):
        assert src.covisitation(ev, window_s=3 * 3600, neighbours=5, partitions=parts).equals(whole)
