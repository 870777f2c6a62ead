"""Retrieval metrics: hand-worked cases, validation and monotonicity in K."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retrieval.metrics import (
    catalogue_coverage,
    hit_matrix,
    hit_rate_at_k,
    ndcg_at_k,
    popularity_ranking,
    recall_at_k,
)

RANKED = np.array([[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12], [1, 5, 9, 2]])
# user 0: hits at ranks 1 and 3 of 2 relevant; user 1: hit at rank 0; user 2: none; user 3: no relevant
# items at all, so it is left out of every mean (3 users evaluated)
RELEVANT = [{2, 4}, {5}, {99}, set()]


def test_hit_matrix_hand_case() -> None:
    hits, n_rel = hit_matrix(RANKED, RELEVANT)
    expected = np.zeros((4, 4), dtype=bool)
    expected[0, [1, 3]] = True
    expected[1, 0] = True
    np.testing.assert_array_equal(hits, expected)
    np.testing.assert_array_equal(n_rel, [2, 1, 1, 0])


def test_recall_hand_case() -> None:
    # @1: (0 + 1 + 0) / 3; @2: (1/2 + 1 + 0) / 3; @4: (1 + 1 + 0) / 3
    got = recall_at_k(RANKED, RELEVANT, [1, 2, 4])
    assert got == pytest.approx({1: 1 / 3, 2: 0.5, 4: 2 / 3})


def test_hit_rate_hand_case() -> None:
    # @1: only user 1; @2 and @4: users 0 and 1
    assert hit_rate_at_k(RANKED, RELEVANT, [1, 2, 4]) == pytest.approx({1: 1 / 3, 2: 2 / 3, 4: 2 / 3})


def test_ndcg_hand_case() -> None:
    d1, d3 = 1 / math.log2(3), 1 / math.log2(5)  # discounts of ranks 1 and 3
    # user 0 @2: DCG = d1, IDCG = 1 + d1 (2 relevant); @4: DCG = d1 + d3, same IDCG. user 1: 1. user 2: 0
    expected = {2: (d1 / (1 + d1) + 1) / 3, 4: ((d1 + d3) / (1 + d1) + 1) / 3}
    assert ndcg_at_k(RANKED, RELEVANT, [2, 4]) == pytest.approx(expected)
    # ideal ranking -> 1
    assert ndcg_at_k(np.array([[4, 2, 7]]), [{2, 4}], [1, 3]) == pytest.approx({1: 1.0, 3: 1.0})


def test_string_ids_give_the_same_figures() -> None:
    ranked = RANKED.astype(str)
    relevant = [{str(i) for i in r} for r in RELEVANT]
    assert recall_at_k(ranked, relevant, [2]) == pytest.approx(recall_at_k(RANKED, RELEVANT, [2]))
    assert ndcg_at_k(ranked, relevant, [4]) == pytest.approx(ndcg_at_k(RANKED, RELEVANT, [4]))


def test_validation() -> None:
    with pytest.raises(ValueError, match="twice"):
        recall_at_k(np.array([[2, 2, 3]]), [{2}], [3])
    with pytest.raises(ValueError, match="align"):
        recall_at_k(RANKED, RELEVANT[:2], [1])
    with pytest.raises(ValueError, match="K must be"):
        recall_at_k(RANKED, RELEVANT, [5])
    with pytest.raises(ValueError, match="no user"):
        recall_at_k(RANKED[:1], [set()], [1])
    with pytest.raises(ValueError, match="int or str"):
        recall_at_k(RANKED, [{"2"}, {"5"}, {"9"}, set()], [1])


def test_padding_is_not_a_duplicate() -> None:
    # -1 pads (from retrieval.index.search) may repeat; they are never relevant
    assert recall_at_k(np.array([[7, -1, -1]]), [{7, 8}], [3]) == {3: 0.5}


def test_catalogue_coverage() -> None:
    # top-2 lists hold {1, 2, 5, 6, 9, 10, 1, 5} -> 6 distinct of 20
    assert catalogue_coverage(RANKED, 20, k=2) == pytest.approx(0.3)
    # all columns: 12 distinct of 20
    assert catalogue_coverage(RANKED, 20) == pytest.approx(0.6)
    assert catalogue_coverage(np.array([["a", ""], ["b", ""]]), 4, missing="") == pytest.approx(0.5)


def test_popularity_ranking() -> None:
    counts = np.array([3, 7, 7, 0, 1])
    # 7 (b), 7 (c: tie, later position), 3 (a)
    np.testing.assert_array_equal(popularity_ranking(counts, 3, np.array(list("abcde"))), ["b", "c", "a"])
    np.testing.assert_array_equal(popularity_ranking(counts, 10), [1, 2, 0, 4, 3])
    # used as a baseline: the same list for every user
    top = np.broadcast_to(popularity_ranking(counts, 2), (2, 2))
    assert recall_at_k(top, [{2}, {0}], [2]) == {2: 0.5}


@settings(max_examples=50, deadline=None)
@given(
    n_users=st.integers(1, 6),
    n_items=st.integers(3, 15),
    seed=st.integers(0, 10_000),
)
def test_recall_and_hit_rate_monotone_in_k(n_users: int, n_items: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    ranked = np.stack([rng.permutation(n_items) for _ in range(n_users)])  # full-catalogue rankings
    relevant = [
        set(rng.choice(n_items, rng.integers(1, n_items + 1), replace=False).tolist()) for _ in range(n_users)
    ]
    ks = list(range(1, n_items + 1))
    rec = recall_at_k(ranked, relevant, ks)
    hit = hit_rate_at_k(ranked, relevant, ks)
    ndcg = ndcg_at_k(ranked, relevant, ks)
    assert all(rec[a] <= rec[a + 1] + 1e-12 for a in ks[:-1])
    assert all(hit[a] <= hit[a + 1] for a in ks[:-1])
    assert rec[n_items] == pytest.approx(1.0)  # the whole catalogue is ranked: every relevant item is found
    assert all(0.0 <= v <= 1.0 + 1e-12 for v in ndcg.values())
