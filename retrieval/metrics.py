"""Retrieval metrics over full-catalogue rankings (numpy).

Each user has a ranked list of candidate ids (the top of a ranking over the whole catalogue, not over a
sampled subset) and a set of relevant ids (e.g. the items bought in the evaluation window). With
``hit[u, r] = 1`` when the item at rank r of user u is relevant (ranks from 0):

* ``recall@K    = sum_{r<K} hit[u, r] / |rel_u|``
* ``hit_rate@K  = 1 if sum_{r<K} hit[u, r] > 0 else 0``
* ``ndcg@K      = DCG / IDCG``, ``DCG = sum_{r<K} hit[u, r] / log2(r + 2)``, ``IDCG = sum_{r<min(K, |rel_u|)}
  1 / log2(r + 2)`` (binary relevance)

averaged over the users with at least one relevant item (users without are not counted; their number is
logged). Every metric is computed for all K of a list in one pass from the [U, K_max] hit matrix.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Collection, Sequence

import numpy as np
import polars as pl

log = logging.getLogger(__name__)


def hit_matrix(ranked: np.ndarray, relevant: Sequence[Collection]) -> tuple[np.ndarray, np.ndarray]:
    """Which ranked candidates are relevant, vectorised over users.

    Args:
        ranked: [U, K] int64 or str candidate ids per user, best first (padding such as -1 or "" is fine as
            long as it is not a relevant id).
        relevant: U collections of relevant ids, one per user.

    Returns:
        hits: [U, K] bool, ``hits[u, r] = ranked[u, r] in relevant[u]``.
        n_relevant: [U] int64 number of distinct relevant ids per user.

    >>> hit_matrix(np.array([[3, 1, 2]]), [{1, 9}])[0]
    array([[False,  True, False]])
    """
    ranked = np.asarray(ranked)
    if ranked.ndim != 2:
        raise ValueError(f"ranked must be a [U, K] array of ids, got shape {ranked.shape}")
    u, k = ranked.shape
    if len(relevant) != u:
        raise ValueError(f"relevant has {len(relevant)} users but ranked has {u} rows; align them by user")
    rel_sets = [set(r) for r in relevant]
    n_relevant = np.fromiter((len(r) for r in rel_sets), dtype=np.int64, count=u)
    rel_flat = np.asarray(list(itertools.chain.from_iterable(rel_sets)))
    if rel_flat.size == 0:
        return np.zeros((u, k), dtype=bool), n_relevant
    if (rel_flat.dtype.kind == "U") != (ranked.dtype.kind == "U"):
        raise ValueError(
            f"ranked ids ({ranked.dtype}) and relevant ids ({rel_flat.dtype}) must both be int or str"
        )
    # integer codes shared by both sides, then one key per (user, item) pair
    vocab, codes = np.unique(np.concatenate([ranked.ravel(), rel_flat]), return_inverse=True)
    n_codes = len(vocab)
    ranked_key = np.repeat(np.arange(u, dtype=np.int64), k) * n_codes + codes[: u * k]
    rel_key = np.repeat(np.arange(u, dtype=np.int64), n_relevant) * n_codes + codes[u * k :]
    hits = np.isin(ranked_key, rel_key).reshape(u, k)  # (U, K)
    # a relevant id listed twice in one row would be counted twice: reject it
    hit_keys = ranked_key[hits.ravel()]
    if len(np.unique(hit_keys)) != len(hit_keys):
        raise ValueError("ranked lists a relevant id twice for one user; deduplicate each user's candidates")
    return hits, n_relevant


def _check_ks(ks: Sequence[int], k_max: int) -> list[int]:
    ks = [int(k) for k in ks]
    if not ks or min(ks) < 1 or max(ks) > k_max:
        raise ValueError(f"every K must be in [1, {k_max}] (the ranked lists' length), got {ks}")
    return ks


def _evaluated(n_relevant: np.ndarray) -> np.ndarray:
    keep = n_relevant > 0
    if not keep.all():
        log.info(
            "retrieval metrics: %d of %d users have no relevant item and are skipped",
            (~keep).sum(),
            len(keep),
        )
    if not keep.any():
        raise ValueError("no user has a relevant item; check the evaluation window")
    return keep


def recall_at_k(ranked: np.ndarray, relevant: Sequence[Collection], ks: Sequence[int]) -> dict[int, float]:
    """Mean recall@K over users with a relevant item, for each K in `ks`.

    Args:
        ranked: [U, K_max] int64 or str candidate ids, best first.
        relevant: U collections of relevant ids.
        ks: the cut-offs, each in [1, K_max].

    >>> recall_at_k(np.array([[1, 2, 3], [4, 5, 6]]), [{2, 3}, {9}], [1, 3])
    {1: 0.0, 3: 0.5}
    """
    hits, n_rel = hit_matrix(ranked, relevant)
    return _recall(hits, n_rel, _check_ks(ks, hits.shape[1]))


def hit_rate_at_k(ranked: np.ndarray, relevant: Sequence[Collection], ks: Sequence[int]) -> dict[int, float]:
    """Share of users (with a relevant item) having at least one relevant id in their top K, for each K.

    Args:
        ranked: [U, K_max] int64 or str candidate ids, best first.
        relevant: U collections of relevant ids.
        ks: the cut-offs, each in [1, K_max].
    """
    hits, n_rel = hit_matrix(ranked, relevant)
    return _hit_rate(hits, n_rel, _check_ks(ks, hits.shape[1]))


def ndcg_at_k(ranked: np.ndarray, relevant: Sequence[Collection], ks: Sequence[int]) -> dict[int, float]:
    """Mean binary-relevance NDCG@K over users with a relevant item, for each K.

    Args:
        ranked: [U, K_max] int64 or str candidate ids, best first.
        relevant: U collections of relevant ids.
        ks: the cut-offs, each in [1, K_max].
    """
    hits, n_rel = hit_matrix(ranked, relevant)
    return _ndcg(hits, n_rel, _check_ks(ks, hits.shape[1]))


def metrics_at_k(
    ranked: np.ndarray, relevant: Sequence[Collection], ks: Sequence[int]
) -> dict[str, dict[int, float]]:
    """recall@K, ndcg@K and hit_rate@K from one hit matrix (the three functions above each build one).

    >>> metrics_at_k(np.array([[1, 2, 3], [4, 5, 6]]), [{2, 3}, {9}], [1, 3])["recall"]
    {1: 0.0, 3: 0.5}
    """
    hits, n_rel = hit_matrix(ranked, relevant)
    ks = _check_ks(ks, hits.shape[1])
    return {
        "recall": _recall(hits, n_rel, ks),
        "ndcg": _ndcg(hits, n_rel, ks),
        "hit_rate": _hit_rate(hits, n_rel, ks),
    }


def _recall(hits: np.ndarray, n_rel: np.ndarray, ks: list[int]) -> dict[int, float]:
    keep = _evaluated(n_rel)
    cum = np.cumsum(hits[keep], axis=1)  # (U', K)
    return {k: float((cum[:, k - 1] / n_rel[keep]).mean()) for k in ks}


def _hit_rate(hits: np.ndarray, n_rel: np.ndarray, ks: list[int]) -> dict[int, float]:
    keep = _evaluated(n_rel)
    cum = np.cumsum(hits[keep], axis=1)  # (U', K)
    return {k: float((cum[:, k - 1] > 0).mean()) for k in ks}


def _ndcg(hits: np.ndarray, n_rel: np.ndarray, ks: list[int]) -> dict[int, float]:
    keep = _evaluated(n_rel)
    hits, n_rel = hits[keep], n_rel[keep]
    discount = 1.0 / np.log2(np.arange(hits.shape[1]) + 2.0)  # (K,)
    dcg = np.cumsum(hits * discount[None, :], axis=1)  # (U', K)
    ideal = np.cumsum(discount)  # (K,): IDCG with r relevant items at the top = ideal[r - 1]
    out = {}
    for k in ks:
        idcg = ideal[np.minimum(n_rel, k) - 1]  # (U',)
        out[k] = float((dcg[:, k - 1] / idcg).mean())
    return out


def catalogue_coverage(
    ranked: np.ndarray, n_catalogue: int, k: int | None = None, missing: object = None
) -> float:
    """Share of the catalogue that appears in at least one user's top K.

    Args:
        ranked: [U, K_max] int64 or str candidate ids.
        n_catalogue: N, the number of items that could have been recommended.
        k: the cut-off (None: all K_max columns).
        missing: a padding id to ignore (e.g. -1 or "" from retrieval.index.search), or None.

    >>> catalogue_coverage(np.array([[1, 2], [2, -1]]), 4, missing=-1)
    0.5
    """
    ranked = np.asarray(ranked)
    if n_catalogue < 1:
        raise ValueError(f"n_catalogue must be >= 1, got {n_catalogue}")
    top = ranked[:, :k] if k is not None else ranked
    distinct = np.unique(top)
    if missing is not None:
        distinct = distinct[distinct != missing]
    return len(distinct) / n_catalogue


def popularity_ranking(item_counts: np.ndarray, k: int, ids: np.ndarray | None = None) -> np.ndarray:
    """The K most popular items, the baseline every retriever must beat.

    Args:
        item_counts: [N] float or int popularity of each item (e.g. purchases in the training window).
        k: how many to return (clipped to N).
        ids: [N] int64 or str id of each item; None means the ids are the positions 0..N-1.

    Returns:
        [K] ids by decreasing count; ties go to the smaller position. Broadcast it to every user with
        ``np.broadcast_to(top, (U, K))`` to score it with the metrics above.

    >>> popularity_ranking(np.array([5, 9, 5, 1]), 3)
    array([1, 0, 2])
    """
    counts = np.asarray(item_counts)
    if counts.ndim != 1:
        raise ValueError(f"item_counts must be [N], got shape {counts.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    order = np.argsort(-counts, kind="stable")[:k]  # (K,)
    if ids is None:
        return order.astype(np.int64)
    ids = np.asarray(ids)
    if ids.shape != counts.shape:
        raise ValueError(f"ids must match item_counts' shape {counts.shape}, got {ids.shape}")
    return ids[order]


def list_metrics(
    ranked: pl.DataFrame, relevant: pl.DataFrame, users: pl.DataFrame, ks: Sequence[int]
) -> dict[str, float]:
    """Recall@k and NDCG@k (binary gains) of long ranked lists, averaged over `users`, who all count.

    Args:
        ranked: [P rows] u, i, rank (1 = best), any users; rows past max(ks) are ignored.
        relevant: [Q rows] u, i distinct relevant pairs.
        users: [U rows] u: the users averaged over; a user without a ranked row scores 0.

    Returns:
        {"recall@k": ..., "ndcg@k": ...} for each k; recall divides by the user's number of relevant items
        (at least 1 is assumed: pass users that have relevant items).

    >>> r = pl.DataFrame({"u": [0, 0], "i": [7, 8], "rank": [1, 2]})
    >>> rel = pl.DataFrame({"u": [0, 1], "i": [8, 9]})
    >>> list_metrics(r, rel, pl.DataFrame({"u": [0, 1]}), [2])["recall@2"]  # user 0 finds 1 of 1, user 1 none
    0.5
    """
    n_users = users.height
    if n_users == 0:
        raise ValueError("list_metrics: no user to evaluate; check the evaluation window")
    k_max = max(ks)
    n_rel = relevant.join(users, on="u", how="semi").group_by("u").agg(pl.len().alias("n_rel"))
    hits = (
        ranked.filter(pl.col("rank") <= k_max)
        .join(users, on="u", how="semi")
        .join(relevant, on=["u", "i"], how="semi")
        .join(n_rel, on="u", how="left")
    )
    out: dict[str, float] = {}
    for k in ks:
        top = hits.filter(pl.col("rank") <= k)
        recall = top.group_by("u").agg((pl.len() / pl.col("n_rel").first()).alias("r"))["r"].sum()
        ideal = n_rel.with_columns(pl.col("n_rel").clip(upper_bound=k).alias("m"))
        idcg = {m: float(np.sum(1.0 / np.log2(np.arange(2, m + 2)))) for m in range(1, k + 1)}
        per_user = top.group_by("u").agg(
            (1.0 / (pl.col("rank").cast(pl.Float64) + 1.0).log(2)).sum().alias("d")
        )
        per_user = per_user.join(ideal, on="u").with_columns(
            pl.col("m").replace_strict(idcg, return_dtype=pl.Float64).alias("idcg")
        )
        out[f"recall@{k}"] = round(float(recall or 0.0) / n_users, 6)
        out[f"ndcg@{k}"] = round(float((per_user["d"] / per_user["idcg"]).sum()) / n_users, 6)
    return out
