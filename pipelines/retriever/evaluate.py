"""Ranking, purchase exclusion, the popularity and ALS baselines and the retrieval metrics on D+1."""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp

from pipelines import io
from pipelines.retriever.data import RetrieverInputs
from pipelines.retriever.layout import EVAL_BLOCK_USERS, EVAL_KS, POPULARITY_DAYS
from retrieval.baselines import ALS_FACTORS, ALS_ITERATIONS, als_available, als_recommend, fit_als
from retrieval.metrics import metrics_at_k

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- ranking, exclusion, baselines


def purchase_mask(inputs: RetrieverInputs, data_dir: Path, users: np.ndarray | None = None) -> sp.csr_matrix:
    """[U, N] 0/1 CSR of the (user row, item_idx) pairs with a purchase in the training window.

    Reads events of the window's days through `io.scan_events`; `users` ([U] str) defaults to the rows
    of users.parquet.
    """
    users = inputs.user_ids if users is None else users
    first, last = inputs.window
    pairs = (
        io.scan_events(Path(data_dir), first, last)
        .filter(pl.col("event") == "purchase")
        .select("user_id", "item_id")
        .unique()
        .collect()
    )
    rows = pl.DataFrame({"user_id": users}).with_row_index("_u")
    cols = pl.DataFrame({"item_id": inputs.item_ids}).with_row_index("_i")
    hit = pairs.join(rows, on="user_id").join(cols, on="item_id")
    u = hit["_u"].to_numpy().astype(np.int64)
    i = hit["_i"].to_numpy().astype(np.int64)
    return sp.csr_matrix((np.ones(len(u), np.float32), (u, i)), shape=(len(users), inputs.n_items))


def drop_excluded(ranked: np.ndarray, exclude: sp.csr_matrix | None, k: int) -> np.ndarray:
    """The first k positions of each row that the row does not exclude.

    Args:
        ranked: [U, K'] int64 item positions, best first (-1 = none).
        exclude: [U, N] sparse mask of excluded positions per row, or None.
        k: how many to keep (K' must be >= k + the largest number of exclusions of a row to fill k).

    Returns:
        [U, k] int64 positions, -1 where fewer than k remain.

    >>> drop_excluded(np.array([[3, 1, 2]]), sp.csr_matrix(([1.0], ([0], [1])), shape=(1, 4)), 2)
    array([[3, 2]])
    """
    ranked = np.asarray(ranked, dtype=np.int64)
    bad = ranked < 0
    if exclude is not None and exclude.nnz:
        n = exclude.shape[1]
        coo = exclude.tocoo()
        keys = coo.row.astype(np.int64) * n + coo.col.astype(np.int64)
        rows = np.arange(ranked.shape[0], dtype=np.int64)[:, None]
        bad |= np.isin(rows * n + np.maximum(ranked, 0), keys)
    keep = np.argsort(bad, axis=1, kind="stable")[:, :k]  # (U, k): kept positions first, order preserved
    out = np.take_along_axis(ranked, keep, axis=1)
    out[np.take_along_axis(bad, keep, axis=1)] = -1
    if out.shape[1] < k:
        out = np.pad(out, ((0, 0), (0, k - out.shape[1])), constant_values=-1)
    return out


def popularity_counts(inputs: RetrieverInputs, days: int = POPULARITY_DAYS) -> np.ndarray:
    """[N] int64 positives per item_idx in retriever_train/valid over the last `days` days up to D."""
    since = inputs.dt - timedelta(days=days - 1)
    recent = inputs.positives.filter(pl.col("day") >= since)
    return np.bincount(recent["item_idx"].to_numpy(), minlength=inputs.n_items).astype(np.int64)


def popularity_positions(
    counts: np.ndarray,
    n_users: int,
    k: int,
    exclude: sp.csr_matrix | None,
    block_users: int = EVAL_BLOCK_USERS,
) -> np.ndarray:
    """[U, k] item positions by decreasing count (ties: smaller position), minus each row's exclusions."""
    extra = int(np.diff(exclude.indptr).max(initial=0)) if exclude is not None else 0
    order = np.argsort(-counts, kind="stable")[: k + extra]  # (k',)
    out = np.empty((n_users, k), np.int64)
    for lo in range(0, n_users, block_users):  # rows are independent: blocks bound the temporaries
        hi = min(lo + block_users, n_users)
        block = np.broadcast_to(order, (hi - lo, order.shape[0]))  # (B, k')
        out[lo:hi] = drop_excluded(block, exclude[lo:hi] if exclude is not None else None, k)
    return out


def als_positions(
    inputs: RetrieverInputs,
    user_rows: np.ndarray,
    k: int,
    exclude: sp.csr_matrix | None,
    seed: int,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Implicit ALS (Hu, Koren, Volinsky 2008) fitted on the window's positives; top-k per user.

    Args:
        inputs: the run's inputs (positives of retriever_train + retriever_valid, users, items).
        user_rows: [Q] int64 rows of users.parquet to rank for.
        k: results per user.
        exclude: [U, N] mask over all users (rows of users.parquet) or None.
        seed: ALS initialisation seed.

    Returns:
        ([Q, k] int64 item positions, -1 where fewer exist; figures).
    """
    t0 = time.perf_counter()
    rows = pl.DataFrame({"user_id": inputs.user_ids}).with_row_index("_u")
    # one entry per positive; the CSR conversion sums repeated (user, item) pairs into their count. (A polars
    # group_by of the pairs first gave the same matrix and held ~0.35 GB more on the large preset.)
    pos = inputs.positives.select("user_id", "item_idx").join(rows, on="user_id", how="inner")
    conf = sp.csr_matrix(
        (
            np.ones(pos.height, np.float32),
            (pos["_u"].to_numpy().astype(np.int64), pos["item_idx"].to_numpy()),
        ),
        shape=(len(inputs.user_ids), inputs.n_items),
    )
    conf.sum_duplicates()
    ids = als_recommend(fit_als(conf, seed), user_rows, k, exclude, inputs.n_items)[0]
    return ids, {
        "factors": ALS_FACTORS,
        "iterations": ALS_ITERATIONS,
        "fit_s": round(time.perf_counter() - t0, 2),
    }


def ranking_metrics(
    ranked: np.ndarray,
    relevant: list[set[int]],
    n_items: int,
    ks: tuple[int, ...] = EVAL_KS,
    block_users: int = EVAL_BLOCK_USERS,
) -> dict[str, float]:
    """recall@K, ndcg@K, hit_rate@K and coverage@K (share of the catalogue in some user's top K).

    ranked: [Q, K_max] int64 item positions (item_idx, -1 = none); relevant: Q sets of item positions
    (`relevant_positions`: items outside the catalogue have codes <= -2, so they count as relevant but are
    never ranked). Integer ids keep this cheap: on 60k users x 100 string ids the sorts inside the metrics
    took ~60 s and ~1.4 GB.
    """
    ks = tuple(k for k in ks if k <= ranked.shape[1])
    # per block of `block_users` users: each metric is a mean over the users with a relevant item, so the
    # blocks' means weighted by their number of such users give the mean over all users; coverage is the
    # union of the blocks' top-K items
    sums: dict[str, float] = {}
    evaluated = 0
    covered = {k: np.zeros(n_items, bool) for k in ks}  # (N,) per K
    for lo in range(0, ranked.shape[0], block_users):
        block, rel = ranked[lo : lo + block_users], relevant[lo : lo + block_users]
        n_block = sum(1 for r in rel if len(r))
        if n_block:
            for name, values in metrics_at_k(block, rel, ks).items():
                for k, v in values.items():
                    sums[f"{name}@{k}"] = sums.get(f"{name}@{k}", 0.0) + v * n_block
        evaluated += n_block
        for k in ks:
            top = block[:, :k]
            covered[k][top[top >= 0]] = True
    if not evaluated:
        metrics_at_k(ranked, relevant, ks)  # no user has a relevant item: raises the metrics' own error
    out = {key: round(total / evaluated, 6) for key, total in sums.items()}
    for k in ks:
        out[f"coverage@{k}"] = round(float(covered[k].sum()) / n_items, 6)
    return out


def relevant_positions(inputs: RetrieverInputs, item_ids: list[list[str]]) -> list[set[int]]:
    """Q lists of relevant item ids -> Q sets of item positions (item_idx).

    An id outside the catalogue (an item first seen on the evaluation day) cannot be ranked but still
    counts in recall's denominator: each such id gets its own code <= -2 (-1 is ranked padding).
    """
    flat = pl.DataFrame(
        {
            "_q": np.repeat(np.arange(len(item_ids), dtype=np.int64), [len(v) for v in item_ids]),
            "item_id": pl.Series([i for v in item_ids for i in v], dtype=pl.String),
        }
    )
    catalogue = (
        pl.DataFrame({"item_id": inputs.item_ids})
        .with_row_index("_i")
        .with_columns(pl.col("_i").cast(pl.Int64))
    )
    unknown = flat.join(catalogue, on="item_id", how="anti").select("item_id").unique().sort("item_id")
    unknown = unknown.with_columns((-2 - pl.int_range(pl.len(), dtype=pl.Int64)).alias("_i"))
    codes = pl.concat([catalogue.select("item_id", "_i"), unknown.select("item_id", "_i")])
    coded = flat.join(codes, on="item_id", how="left", maintain_order="left")
    out: list[set[int]] = [set() for _ in item_ids]
    for q, i in zip(coded["_q"].to_list(), coded["_i"].to_list(), strict=True):
        out[q].add(i)
    return out


def eval_user_rows(inputs: RetrieverInputs) -> np.ndarray:
    """[E] int64 ascending rows of users.parquet of the users with a positive on D+1 (none without eval)."""
    if inputs.eval_pairs is None:
        return np.zeros(0, dtype=np.int64)
    rows = pl.DataFrame({"user_id": inputs.user_ids}).with_row_index("_u")
    hit = rows.join(inputs.eval_pairs.select("user_id").unique(), on="user_id", how="semi")
    return np.sort(hit["_u"].to_numpy().astype(np.int64))


def evaluate(
    inputs: RetrieverInputs,
    model_ranked: np.ndarray,
    exclude: sp.csr_matrix | None,
    seed: int,
    baselines: bool = True,
    *,
    ranked_rows: np.ndarray | None = None,
    block_users: int = EVAL_BLOCK_USERS,
) -> dict[str, Any]:
    """Metrics of the model's ranking of every user and of the baselines, on the positives of D+1.

    Args:
        inputs: the run's inputs; inputs.eval_pairs must be present.
        model_ranked: [U, K_max] int64 item positions (item_idx, -1 = none) per row of users.parquet, best
            first (K_max >= 100); or, with `ranked_rows`, [R, K_max] for the users.parquet rows
            `ranked_rows` only.
        exclude: [U, N] purchases excluded from every method's ranking, or None.
        seed: ALS seed.
        baselines: compute popularity (and ALS when installed) too.
        ranked_rows: [R] int64 ascending users.parquet row of each row of `model_ranked`; must hold every
            row of `eval_user_rows(inputs)` (None: model_ranked has a row per user).
    """
    if inputs.eval_pairs is None:
        return {"present": False}
    k_max = max(EVAL_KS)
    rows = pl.DataFrame({"user_id": inputs.user_ids}).with_row_index("_u")
    grouped = (
        inputs.eval_pairs.group_by("user_id")
        .agg(pl.col("item_id").cast(pl.String))
        .join(rows, on="user_id", how="left")
        .sort("user_id")
    )
    known = grouped.filter(pl.col("_u").is_not_null())
    user_rows = known["_u"].to_numpy().astype(np.int64)
    relevant = relevant_positions(inputs, known["item_id"].to_list())
    out: dict[str, Any] = {
        "present": True,
        "day": (inputs.dt + timedelta(days=1)).isoformat(),
        "eval_users": grouped.height,
        "users_evaluated": len(user_rows),
        "users_without_features": grouped.height - len(user_rows),
        "ks": list(EVAL_KS),
    }
    if not len(user_rows):
        out["model"] = {"status": "no eval user has a row in users.parquet"}
        return out
    if ranked_rows is None:
        ranked = model_ranked[user_rows]
    else:
        at = np.searchsorted(ranked_rows, user_rows)  # (Q,)
        if (at >= len(ranked_rows)).any() or (
            ranked_rows[np.minimum(at, len(ranked_rows) - 1)] != user_rows
        ).any():
            raise ValueError(
                "evaluate: ranked_rows lacks users.parquet rows of eval users; fix: rank every row of "
                "eval_user_rows(inputs)"
            )
        ranked = model_ranked[at]
    out["model"] = ranking_metrics(ranked, relevant, inputs.n_items, block_users=block_users)
    if not baselines:
        return out
    sub_excl = exclude[user_rows] if exclude is not None else None
    pop = popularity_positions(popularity_counts(inputs), len(user_rows), k_max, sub_excl, block_users)
    out["popularity_7d"] = ranking_metrics(pop, relevant, inputs.n_items, block_users=block_users)
    if als_available():
        als, figures = als_positions(inputs, user_rows, k_max, exclude, seed)
        out["als"] = {**ranking_metrics(als, relevant, inputs.n_items, block_users=block_users), **figures}
    else:
        out["als"] = {"status": "not installed (pip install implicit to add the ALS baseline)"}
    return out
