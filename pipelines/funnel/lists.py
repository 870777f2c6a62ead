"""The candidate lists as of an instant T: the sources' global pieces (`Sources`) and a block of users' lists."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp

from features.funnel import item_table
from pipelines.config import FunnelConfig
from pipelines.funnel.inputs import Inputs
from pipelines.funnel.layout import RECALL_K
from retrieval import sources as src
from retrieval.baselines import als_available, fit_als


@dataclass
class Sources:
    """The lists' inputs as of T: the event window, the global pieces (co-visitation pairs, the popularity
    lists, the ALS model, the purchases) and the users with history. The window is a view of Inputs.events
    (never copied): `window()` for global aggregates, `events_of(users)` for a block of users."""

    as_of: datetime
    since: datetime  # as_of - lookback: the window is since <= ts < as_of
    all_events: pl.DataFrame  # Inputs.events, sorted by u
    active: pl.Series  # [U] UInt32 sorted: the users with an event in the window
    covis: pl.DataFrame
    pop: pl.DataFrame
    categories: pl.DataFrame  # retrieval.sources.category_table
    als: Any  # implicit ALS fitted on the window, or None (not installed, or funnel.als_k = 0)
    exclude_csr: sp.csr_matrix  # [users, items] the purchases, as the ALS source filters them
    exclude: pl.DataFrame  # u, i purchased before as_of (empty without exclusion)
    items: pl.DataFrame  # features.funnel.item_table

    def window(self) -> pl.LazyFrame:
        """The events of the window, lazily (aggregate it; collecting it whole copies every column)."""
        return self.all_events.lazy().filter(_between(self.since, self.as_of))

    def events_of(self, users: pl.Series) -> pl.DataFrame:
        """The window's events of `users` ([U] UInt32): the rows between the smallest and the largest user
        (a slice: events are sorted by u), then filtered; a block of consecutive users costs its own rows."""
        if users.len() == 0:
            return self.all_events.clear()
        u = self.all_events["u"]
        lo = int(u.search_sorted(users.min(), side="left"))
        hi = int(u.search_sorted(users.max(), side="right"))
        rows = self.all_events.slice(lo, hi - lo)
        return rows.filter(pl.col("u").is_in(users.implode()) & _between(self.since, self.as_of))


def _between(since: datetime, until: datetime) -> pl.Expr:
    return pl.col("ts").is_between(since, until, closed="left")


def sources_as_of(
    inp: Inputs, as_of: datetime, lookback_days: int, cfg: FunnelConfig, exclude: bool, seed: int = 0
) -> Sources:
    since = as_of - timedelta(days=lookback_days)
    win = inp.events.lazy().filter(_between(since, as_of))
    active = win.select("u").unique().collect()["u"].sort()
    covis_ev = win.filter(pl.col("ts") >= as_of - timedelta(days=cfg.covis_days)).select("u", "i", "w", "ts")
    covis_ev = covis_ev.collect()
    covis = src.covisitation(
        covis_ev,
        window_s=cfg.covis_window_hours * 3600.0,
        span=cfg.covis_span,
        neighbours=cfg.covis_neighbours,
        partitions=max(1, -(-covis_ev.height // cfg.covis_block_events)),
    )
    del covis_ev
    pop = src.popular(win, as_of - timedelta(days=cfg.popular_days), cfg.popular_k)
    if exclude:
        bought = win.filter(pl.col("ev") == "purchase").select("u", "i").unique().collect()
    else:
        bought = pl.DataFrame(schema={"u": pl.UInt32, "i": pl.Int32})
    cats = src.category_table(win, as_of - timedelta(days=cfg.popular_days), cfg.category_k)
    shape = (inp.users.height, inp.items.height)
    excl = _csr(bought["u"], bought["i"], np.ones(bought.height, np.float32), shape)
    als = None
    if cfg.als_k and als_available() and active.len():
        als = fit_als(confidence(win, shape), seed)
    items = item_table(win, as_of, inp.catalogue)
    return Sources(as_of, since, inp.events, active, covis, pop, cats, als, excl, bought, items)


def confidence(events: pl.DataFrame | pl.LazyFrame, shape: tuple[int, int]) -> sp.csr_matrix:
    """[users, items] CSR of the summed event weights (the ALS input)."""
    conf = events.lazy().group_by("u", "i").agg(pl.col("w").sum()).collect()
    return _csr(conf["u"], conf["i"], conf["w"].to_numpy(), shape)


def _csr(rows: pl.Series, cols: pl.Series, values: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    r, c = rows.to_numpy().astype(np.int64), cols.to_numpy().astype(np.int64)
    m = sp.csr_matrix((values.astype(np.float32), (r, c)), shape=shape)
    m.sum_duplicates()
    return m


def user_lists(
    s: Sources,
    users: pl.Series,
    cfg: FunnelConfig,
    emb: np.ndarray | None,
    weights: dict[str, float] | None = None,
) -> tuple[dict, pl.DataFrame]:
    """(raw lists per source, merged list) as of s.as_of for `users` ([U] UInt32)."""
    ev = s.events_of(users)
    seed = src.seeds(ev, users, cfg.seeds)
    lists: dict[str, pl.DataFrame] = {}
    if cfg.recent_k:
        lists["recent"] = src.recent(ev, users, cfg.recent_k, s.as_of)
    if cfg.covis_k:
        lists["covis"] = src.covis_candidates(seed, s.covis, cfg.covis_k)
    if cfg.ann_k and emb is not None:
        lists["ann"] = src.ann_candidates(seed, emb, cfg.ann_k)
    if s.als is not None:
        lists["als"] = src.als_candidates(s.als, users, s.exclude_csr, cfg.als_k, s.exclude_csr.shape[1])
    if cfg.category_k and s.categories.height:
        lists["category"] = src.category_popular(ev, users, s.categories, cfg.category_k)
    return lists, src.merge(lists, s.pop, users, s.exclude, cfg.k, weights)


def fusion_weights(
    s: Sources, positives: pl.DataFrame, cfg: FunnelConfig, emb: np.ndarray | None, seed: int
) -> tuple[dict[str, float], int]:
    """Source weights of the merge (`retrieval.sources.fusion_weights`) measured on the lists as of s.as_of
    of a seeded sample of `funnel.fusion_users` users with a positive in `positives` (u, i) and history.
    Returns (weights, users measured on); every weight is 1 without such users."""
    users = positives.join(s.active.to_frame(), on="u", how="semi")["u"].unique().sort()
    if users.len() > cfg.fusion_users:
        rng = np.random.default_rng([seed, 7])
        users = pl.Series("u", np.sort(rng.choice(users.to_numpy(), cfg.fusion_users, replace=False)))
    if users.len() == 0:
        return {name: 1.0 for name in src.SOURCES}, 0
    lists, _ = user_lists(s, users, cfg, emb)
    lists = {n: df.join(s.exclude, on=["u", "i"], how="anti") for n, df in lists.items()}
    lists["popular"] = popular_for(s, users, cfg.popular_k)
    lists = {n: rerank(df.with_columns(pl.col("rank").alias("_r")), "_r", False) for n, df in lists.items()}
    found = src.fusion_weights(
        lists, positives.join(pl.DataFrame({"u": users}), on="u", how="semi"), RECALL_K
    )
    return {name: found.get(name, 1.0) for name in src.SOURCES}, users.len()


def popular_for(s: Sources, users: pl.Series, k: int) -> pl.DataFrame:
    """u, i, score, rank: the popularity list minus each user's exclusions, re-ranked."""
    df = pl.DataFrame({"u": users.cast(pl.UInt32)}).join(s.pop.select("i", "score"), how="cross")
    df = df.join(s.exclude, on=["u", "i"], how="anti").sort(
        "u", pl.col("score"), "i", descending=[False, True, False]
    )
    df = df.with_columns((pl.int_range(pl.len(), dtype=pl.Int32).over("u") + 1).alias("rank"))
    return df.filter(pl.col("rank") <= k)


def rerank(df: pl.DataFrame, by: str, descending: bool) -> pl.DataFrame:
    """u, i, rank by `by` within each user (ties: merged rank, then item)."""
    out = df.sort(["u", by, "rank", "i"], descending=[False, descending, False, False])
    return out.select("u", "i", (pl.int_range(pl.len(), dtype=pl.Int32).over("u") + 1).alias("rank"))
