"""The score stage's funnel figures: NDCG@k / Recall@k of the ranker, retriever and popularity orders on D+1, summed per block of users."""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from pipelines import io
from pipelines.names import FRAMES
from pipelines.ranking.layout import FUNNEL_K, POPULARITY_DAYS
from retrieval.metrics import ndcg_at_k, recall_at_k

log = logging.getLogger(__name__)


def rank_by_score(df: pl.DataFrame) -> pl.DataFrame:
    """Rank each user's rows by `score` (descending; ties by `retriever_rank`, then item_id): rank 1..K.

    df: rows with user_id, item_id, score and optionally retriever_rank. Returns it sorted by user, rank.
    """
    tie = ["retriever_rank"] if "retriever_rank" in df.columns else []
    out = df.sort(
        ["user_id", "score", *tie, "item_id"], descending=[False, True, *([False] * len(tie)), False]
    )
    return out.with_columns((pl.int_range(pl.len(), dtype=pl.Int32).over("user_id") + 1).alias("rank"))


def _top_lists(df: pl.DataFrame, order: str, users: pl.DataFrame, k: int) -> np.ndarray:
    """[U, k] str item ids of each user of `users` by ascending `order`, padded with "" (no such id)."""
    lists = (
        df.sort(["user_id", order])
        .group_by("user_id", maintain_order=True)
        .agg(pl.col("item_id").head(k).alias("top"))
    )
    aligned = users.join(lists, on="user_id", how="left", maintain_order="left")
    pad = pl.lit([""] * k, dtype=pl.List(pl.String))
    arr = aligned.select(
        pl.concat_list([pl.col("top").fill_null(pl.lit([], dtype=pl.List(pl.String))), pad])
        .list.head(k)
        .list.to_array(k)
    ).to_series()
    return np.asarray(arr.to_numpy(), dtype=str).reshape(users.height, k)


def funnel_metrics(
    scored: pl.DataFrame, positives: pl.DataFrame, popular: list[str], k: int = FUNNEL_K
) -> dict[str, Any]:
    """NDCG@k and Recall@k of three orders against the positives of D+1, on the same users.

    scored: [P rows] user_id, item_id, rank (the ranker's order), retriever_rank (the retriever's order);
    positives: user_id, item_id pairs with a positive on D+1 (frames eval_retrieval); popular: the most
    popular item ids, best first. Users: those with a positive on D+1 and at least one candidate.
    candidate_recall is recall over all of a user's candidates (the ceiling of any re-ranking).
    """
    rel = positives.unique(["user_id", "item_id"]).group_by("user_id").agg(pl.col("item_id").alias("rel"))
    users = rel.join(scored.select("user_id").unique(), on="user_id", how="semi").sort("user_id")
    if users.height == 0:
        return {"users": 0, "k": k, "note": "no user with a D+1 positive has candidates"}
    relevant = [set(r) for r in users["rel"].to_list()]
    ids = users.select("user_id")
    ranker = _top_lists(scored, "rank", ids, k)
    retriever = _top_lists(scored, "retriever_rank", ids, k)
    pop = np.broadcast_to(np.asarray((list(popular) + [""] * k)[:k], dtype=str), (users.height, k))
    k_max = int(scored.group_by("user_id").len()["len"].max())
    all_cands = _top_lists(scored, "retriever_rank", ids, k_max)
    out: dict[str, Any] = {"users": users.height, "k": k, "positives_users_total": rel.height}
    for name, ranked in (("ranker", ranker), ("retriever", retriever), ("popularity", pop)):
        out[name] = {
            f"ndcg@{k}": ndcg_at_k(ranked, relevant, [k])[k],
            f"recall@{k}": recall_at_k(ranked, relevant, [k])[k],
        }
    out["candidate_recall"] = recall_at_k(all_cands, relevant, [k_max])[k_max]
    out["candidates_per_user_max"] = k_max
    return out


class FunnelAccumulator:
    """`funnel_metrics` computed block by block: feed disjoint groups of users, read the result at the end.

    Each `add` takes every scored candidate of some users (no user split across two calls) and adds the
    sums over those users of each NDCG@k / Recall@k (the block's mean times its number of users, from the
    same `retrieval.metrics` functions); `result` divides by the number of users. Equal to `funnel_metrics`
    over the concatenated blocks up to float rounding (~1e-16 relative).
    """

    _ORDERS = ("ranker", "retriever", "popularity")

    def __init__(self, positives: pl.DataFrame, popular: list[str], k: int = FUNNEL_K) -> None:
        """positives: user_id, item_id pairs with a positive on D+1; popular: item ids, best first."""
        self.k = k
        self._rel = (
            positives.unique(["user_id", "item_id"]).group_by("user_id").agg(pl.col("item_id").alias("rel"))
        )
        self._popular = np.asarray((list(popular) + [""] * k)[:k], dtype=str)  # (k,)
        self._users = 0
        self._k_max = 0
        self._sums: dict[str, float] = {}

    def add(self, scored: pl.DataFrame) -> None:
        """scored: [P rows] user_id, item_id, rank, retriever_rank of whole users (see the class)."""
        if scored.height == 0:
            return
        k = self.k
        k_block = int(scored.group_by("user_id").len()["len"].max())  # longest candidate list of the block
        self._k_max = max(self._k_max, k_block)
        users = self._rel.join(scored.select("user_id").unique(), on="user_id", how="semi").sort("user_id")
        n = users.height
        if n == 0:
            return
        relevant = [set(r) for r in users["rel"].to_list()]
        ids = users.select("user_id")
        lists = {
            "ranker": _top_lists(scored, "rank", ids, k),
            "retriever": _top_lists(scored, "retriever_rank", ids, k),
            "popularity": np.broadcast_to(self._popular, (n, k)),
        }
        for name, ranked in lists.items():
            for metric, fn in (("ndcg", ndcg_at_k), ("recall", recall_at_k)):
                key = f"{name}.{metric}"
                self._sums[key] = self._sums.get(key, 0.0) + fn(ranked, relevant, [k])[k] * n
        all_cands = _top_lists(scored, "retriever_rank", ids, k_block)
        key = "candidate_recall"
        self._sums[key] = self._sums.get(key, 0.0) + recall_at_k(all_cands, relevant, [k_block])[k_block] * n
        self._users += n

    def result(self) -> dict[str, Any]:
        """The dict `funnel_metrics` returns for all the users added so far."""
        k, n = self.k, self._users
        if n == 0:
            return {"users": 0, "k": k, "note": "no user with a D+1 positive has candidates"}
        out: dict[str, Any] = {"users": n, "k": k, "positives_users_total": self._rel.height}
        for name in self._ORDERS:
            out[name] = {
                f"ndcg@{k}": self._sums[f"{name}.ndcg"] / n,
                f"recall@{k}": self._sums[f"{name}.recall"] / n,
            }
        out["candidate_recall"] = self._sums["candidate_recall"] / n
        out["candidates_per_user_max"] = self._k_max
        return out


def popular_items(
    out: Path, dt: date, k: int, days: int = POPULARITY_DAYS
) -> tuple[list[str], dict[str, Any]]:
    """The k items with the most positives in the last `days` days up to D (frames retriever files)."""
    since = datetime.combine(dt - timedelta(days=days - 1), datetime.min.time(), tzinfo=UTC)
    frames = [
        io.scan_table(out, FRAMES, dt, name).select("item_id", "ts")
        for name in ("retriever_train", "retriever_valid")
    ]
    pos = pl.concat(frames).filter(pl.col("ts") >= since)
    counts = pos.group_by("item_id").len().sort(["len", "item_id"], descending=[True, False]).collect()
    first = pos.select(pl.col("ts").min()).collect().item()
    return counts["item_id"].head(k).to_list(), {
        "days": days,
        "since": since.isoformat(),
        "earliest_positive": None if first is None else first.isoformat(),
        "positives": int(counts["len"].sum()),
    }
