"""The funnel's evaluation: every returning user with history counts; the anchors on the same users."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from pipelines import io
from pipelines.config import FunnelConfig
from pipelines.funnel.inputs import Inputs
from pipelines.funnel.layout import NDCG_K, RECALL_K
from pipelines.funnel.lists import Sources, confidence
from pipelines.names import TWO_TOWER
from retrieval.baselines import als_available, als_recommend, fit_als
from retrieval.metrics import list_metrics


def not_enough(n: int) -> str:
    """What a metric says instead of a number when it has too few positives to mean anything."""
    return f"not enough positives ({n})"


def evaluate(
    inp: Inputs,
    s: Sources,
    relevant: pl.DataFrame,
    users: pl.Series,
    collected: dict[str, list[pl.DataFrame]],
    covered: int,
    out: Path,
    dt: date,
    cfg: FunnelConfig,
    seed: int,
) -> dict[str, Any]:
    """Recall@50 and NDCG@10 of every list on the horizon's positives, over every returning user with
    history (`users`); popularity, ALS and the two-tower lists on the same users and exclusions.

    collected: list name -> the hits of its top RECALL_K (u, i, rank rows that are in `relevant`), which is
    all `list_metrics` reads; covered: the users of `users` with a published list."""
    n = users.len()
    out_: dict[str, Any] = {
        "present": True,
        "users": n,
        "positives": relevant.join(pl.DataFrame({"u": users}), on="u", how="semi").height,
    }
    lists = {name: pl.concat(parts) for name, parts in collected.items()}
    if io.is_committed(out, TWO_TOWER, dt):
        lists["two_tower"] = two_tower_hits(out, dt, inp, s.exclude, relevant.join(users.to_frame(), on="u"))
    if "als" in lists:
        pass  # the ALS source alone: fitted on the same events, same users and exclusions
    elif als_available() and n:
        lists["als"] = als_lists(inp, s, users, seed)
    else:
        out_["als"] = {"status": "not installed (pip install implicit to add the ALS baseline)"}
    ulist = pl.DataFrame({"u": users})
    out_["coverage"] = round(covered / n, 6) if n else None
    for name, df in lists.items():
        if n < cfg.min_eval_users:
            out_[name] = not_enough(n)
        else:
            out_[name] = list_metrics(df, relevant, ulist, [NDCG_K, RECALL_K])
    pop = out_.get("popularity")
    if isinstance(pop, dict):
        for m in list(out_.values()):
            if isinstance(m, dict) and f"recall@{RECALL_K}" in m and pop[f"recall@{RECALL_K}"] > 0:
                m["recall_vs_popularity"] = round(m[f"recall@{RECALL_K}"] / pop[f"recall@{RECALL_K}"], 3)
                if pop[f"ndcg@{NDCG_K}"] > 0:
                    m["ndcg_vs_popularity"] = round(m[f"ndcg@{NDCG_K}"] / pop[f"ndcg@{NDCG_K}"], 3)
    return out_


def two_tower_hits(
    out: Path, dt: date, inp: Inputs, exclude: pl.DataFrame, relevant: pl.DataFrame
) -> pl.DataFrame:
    """u, i, rank: the hits of the retriever's committed lists (two_tower/dt=D) on `relevant` (u, i), ranked
    as if the excluded pairs had been removed first; the lists are streamed, never held whole."""
    tt = (
        io.scan_table(out, TWO_TOWER, dt)
        .join(inp.users.lazy(), on="user_id")
        .join(inp.items.lazy(), on="item_id")
        .select(pl.col("u").cast(pl.UInt32), pl.col("i").cast(pl.Int32), pl.col("rank").cast(pl.Int32))
        .join(relevant.select("u").unique().lazy(), on="u", how="semi")
    )
    hits = tt.join(relevant.lazy(), on=["u", "i"], how="semi").join(exclude.lazy(), on=["u", "i"], how="anti")
    gone = tt.join(exclude.lazy(), on=["u", "i"], how="semi").select("u", pl.col("rank").alias("_gone"))
    hits, gone = pl.collect_all([hits, gone], engine="streaming")
    shift = (
        hits.join(gone, on="u")
        .filter(pl.col("_gone") < pl.col("rank"))
        .group_by("u", "i")
        .agg(pl.len().cast(pl.Int32).alias("_shift"))
    )
    return hits.join(shift, on=["u", "i"], how="left").select(
        "u", "i", (pl.col("rank") - pl.col("_shift").fill_null(0)).alias("rank")
    )


def als_lists(inp: Inputs, s: Sources, users: pl.Series, seed: int) -> pl.DataFrame:
    """The ALS baseline when the ALS source is off (funnel.als_k = 0): fitted on the same events."""
    n_i = inp.items.height
    conf = confidence(s.window(), s.exclude_csr.shape)
    excl = s.exclude_csr
    rows = users.to_numpy().astype(np.int64)
    top = als_recommend(fit_als(conf, seed), rows, RECALL_K, excl, n_i)[0]  # (Q, 50)
    df = pl.DataFrame({"u": np.repeat(rows, top.shape[1]).astype(np.uint32), "i": top.ravel().astype(np.int32),
                       "rank": np.tile(np.arange(1, top.shape[1] + 1, dtype=np.int32), len(rows))})  # fmt: skip
    return df.filter(pl.col("i") >= 0)
