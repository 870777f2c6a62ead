"""Candidate sources of the funnel, and their merge: what a user may be shown, from several signals.

Every source reads the same event frame, as of one instant T (only events with ts < T exist for it):

    events  [V rows]  u (UInt32 user code), i (Int32 item position), w (Float32 event weight), ts (Datetime)

and returns long lists `u, i, score, rank` (rank 1 = best) for the users asked for:

* `recent`: the user's own recently interacted items, most recent first (re-engagement: a carted or
  favourited item is often bought days later);
* `covisitation` + `covis_candidates`: item-to-item co-visitation. Two events of one user at most
  `window_s` seconds and `span` events apart make the pair (a, b) count the weight of b (and (b, a) the
  weight of a); each item keeps its `neighbours` strongest partners. A user's candidates are the partners of
  its seed items (its last distinct items, seed weight = event weight / position), scored by
  sum_seed seed_weight * covis(seed, b);
* `ann_candidates`: nearest items by inner product (FAISS) to the seed-weighted mean of the seed items'
  two-tower item embeddings;
* `als_candidates`: the top items of an implicit ALS model (Hu, Koren, Volinsky 2008) fitted on the
  summed event weights before T (`retrieval.baselines.fit_als`);
* `category_popular`: the most popular items of the category the user engaged with most (needs an item
  category; `cat` in the events);
* `popular`: the items with the most weighted events in the last days (one list, the same for everyone).

`merge` unions the lists on (u, i), keeps each source's score and rank as columns, a bitmask of the sources
that proposed the pair, and orders the union by reciprocal rank fusion (Cormack, Clarke, Buettcher 2009):
rrf(u, i) = sum_s 1 / (RRF_K + rank_s(u, i)). Purchased items are removed before the merge (`exclude`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp

SOURCES: tuple[str, ...] = ("recent", "covis", "ann", "als", "category", "popular")  # bit s of `sources`
RRF_K = 60  # the constant of reciprocal rank fusion from the paper
_U, _I = pl.UInt32, pl.Int32


def _ranked(df: pl.DataFrame, k: int) -> pl.DataFrame:
    """u, i, score -> the top k rows per user by score (ties: smaller i first), with rank 1..k."""
    out = df.sort(["u", "score", "i"], descending=[False, True, False])
    out = out.with_columns((pl.int_range(pl.len(), dtype=pl.Int32).over("u") + 1).alias("rank"))
    return out.filter(pl.col("rank") <= k).select(
        pl.col("u").cast(_U), pl.col("i").cast(_I), pl.col("score").cast(pl.Float32), "rank"
    )


def _empty() -> pl.DataFrame:
    return pl.DataFrame(schema={"u": _U, "i": _I, "score": pl.Float32, "rank": pl.Int32})


def recent(
    events: pl.DataFrame, users: pl.Series, k: int, as_of: datetime, half_life_days: float = 7.0
) -> pl.DataFrame:
    """The k distinct items each user interacted with last, most recent first.

    score = max event weight on the item * 2^(-age_days / half_life_days) of its last interaction, so a
    cart of yesterday outranks a view of last week; the rank follows the score.

    >>> from datetime import UTC
    >>> ev = pl.DataFrame({"u": [0, 0, 0], "i": [5, 6, 5], "w": [1.0, 4.0, 1.0],
    ...                    "ts": [datetime(2024, 1, d, tzinfo=UTC) for d in (1, 2, 3)]})
    >>> recent(ev, pl.Series([0], dtype=pl.UInt32), 2, datetime(2024, 1, 4, tzinfo=UTC))["i"].to_list()
    [6, 5]
    """
    ev = events.filter(pl.col("u").is_in(users.implode()))
    if ev.height == 0:
        return _empty()
    age = (pl.lit(as_of) - pl.col("last")).dt.total_seconds() / 86_400.0
    per = ev.group_by("u", "i").agg(pl.col("w").max().alias("wmax"), pl.col("ts").max().alias("last"))
    per = per.with_columns((pl.col("wmax") * (2.0 ** (-age / half_life_days))).alias("score"))
    return _ranked(per.select("u", "i", "score"), k)


def covisitation(
    events: pl.DataFrame,
    *,
    window_s: float = 86_400.0,
    span: int = 5,
    neighbours: int = 30,
    partitions: int = 1,
) -> pl.DataFrame:
    """Item-to-item co-visitation weights: a, b, covis (the `neighbours` strongest b of each a).

    Args:
        events: [V rows] u, i, w, ts (see the module docstring).
        window_s: two events further apart in time do not make a pair.
        span: an event pairs with the next `span` events of the same user (a bounded window keeps the
            pair count linear in the events: at most 2 * span pairs per event).
        neighbours: partners kept per item.
        partitions: the pairs are summed for one slice of the items a (a mod partitions) at a time, so memory
            follows the distinct pairs of a slice; the result does not depend on it.

    >>> from datetime import UTC
    >>> ev = pl.DataFrame({"u": [0, 0, 1, 1], "i": [1, 2, 1, 3], "w": [1.0, 3.0, 1.0, 2.0],
    ...                    "ts": [datetime(2024, 1, 1, h, tzinfo=UTC) for h in (1, 2, 1, 2)]})
    >>> covisitation(ev).filter(pl.col("a") == 1).rows()
    [(1, 2, 3.0), (1, 3, 2.0)]
    """
    if partitions < 1:
        raise ValueError(f"covisitation: partitions must be >= 1, got {partitions}")
    ev = events.select("u", "i", "w", "ts").sort("u", "ts", "i", "w")
    parts = []
    for part in range(partitions):
        pairs = pl.DataFrame(schema={"a": _I, "b": _I, "covis": pl.Float32})
        for lag in range(1, span + 1):  # one lag at a time, summed as it goes: memory follows distinct pairs
            nxt = ev.select(
                pl.col("i").alias("a"),
                pl.col("w").alias("wa"),
                pl.col("i").shift(-lag).alias("b"),
                pl.col("w").shift(-lag).alias("wb"),
                ((pl.col("ts").shift(-lag) - pl.col("ts")).dt.total_seconds()).alias("gap"),
                (pl.col("u").shift(-lag) == pl.col("u")).alias("same"),
            ).filter(pl.col("same") & (pl.col("gap") <= window_s) & (pl.col("a") != pl.col("b")))
            both = pl.concat(
                [
                    nxt.filter(pl.col("a") % partitions == part).select(
                        "a", "b", pl.col("wb").alias("covis")
                    ),
                    nxt.filter(pl.col("b") % partitions == part).select(
                        pl.col("b").alias("a"), pl.col("a").alias("b"), pl.col("wa").alias("covis")
                    ),
                ]
            ).select(pl.col("a").cast(_I), pl.col("b").cast(_I), pl.col("covis").cast(pl.Float32))
            pairs = pl.concat([pairs, both]).group_by("a", "b").agg(pl.col("covis").sum())
        top = pairs.sort(["a", "covis", "b"], descending=[False, True, False])
        parts.append(top.filter(pl.int_range(pl.len()).over("a") < neighbours))
    top = pl.concat(parts).sort(["a", "covis", "b"], descending=[False, True, False])
    return top.select(pl.col("a").cast(_I), pl.col("b").cast(_I), pl.col("covis").cast(pl.Float32))


def seeds(events: pl.DataFrame, users: pl.Series, n: int) -> pl.DataFrame:
    """The last n distinct items of each user as seeds: u, i, sw (seed weight = max event weight / position).

    >>> from datetime import UTC
    >>> ev = pl.DataFrame({"u": [0, 0, 0], "i": [5, 6, 5], "w": [1.0, 4.0, 2.0],
    ...                    "ts": [datetime(2024, 1, d, tzinfo=UTC) for d in (1, 2, 3)]})
    >>> seeds(ev, pl.Series([0], dtype=pl.UInt32), 5).rows()
    [(0, 5, 2.0), (0, 6, 2.0)]
    """
    ev = events.filter(pl.col("u").is_in(users.implode()))
    per = ev.group_by("u", "i").agg(pl.col("ts").max().alias("last"), pl.col("w").max().alias("wmax"))
    per = per.sort(["u", "last", "i"], descending=[False, True, False])
    per = per.with_columns((pl.int_range(pl.len()).over("u") + 1).alias("pos")).filter(pl.col("pos") <= n)
    return per.select(
        pl.col("u").cast(_U),
        pl.col("i").cast(_I),
        (pl.col("wmax") / pl.col("pos")).cast(pl.Float32).alias("sw"),
    ).sort("u", "i")


def covis_candidates(seed: pl.DataFrame, covis: pl.DataFrame, k: int) -> pl.DataFrame:
    """Top k co-visited items of each user: score = sum over its seeds of seed weight * covis(seed, item).

    seed: u, i, sw (`seeds`); covis: a, b, covis (`covisitation`). A seed item itself is not proposed.
    """
    if seed.height == 0 or covis.height == 0:
        return _empty()
    joined = seed.join(covis, left_on="i", right_on="a", how="inner")
    scored = joined.group_by("u", "b").agg((pl.col("sw") * pl.col("covis")).sum().alias("score"))
    scored = scored.rename({"b": "i"}).join(seed.select("u", "i"), on=["u", "i"], how="anti")
    return _ranked(scored, k)


def ann_candidates(seed: pl.DataFrame, item_emb: np.ndarray, k: int) -> pl.DataFrame:
    """Top k items by inner product with each user's seed-weighted mean item embedding (FAISS flat index).

    seed: u, i, sw (`seeds`); item_emb: [N, D] float32, row = item position. Seed items are not proposed.
    """
    import faiss

    if seed.height == 0 or item_emb.shape[0] == 0:
        return _empty()
    users = seed["u"].unique().sort()
    at = users.search_sorted(seed["u"]).to_numpy()  # (S,) row of each seed's user
    n_users, dim = users.len(), item_emb.shape[1]
    query = np.zeros((n_users, dim), np.float32)  # (U, D)
    np.add.at(query, at, item_emb[seed["i"].to_numpy()] * seed["sw"].to_numpy()[:, None])
    query /= np.maximum(np.linalg.norm(query, axis=1, keepdims=True), 1e-12)
    index = faiss.IndexFlatIP(dim)
    index.add(np.ascontiguousarray(item_emb, dtype=np.float32))
    k_fetch = min(item_emb.shape[0], k + int(seed.group_by("u").len()["len"].max()))
    scores, pos = index.search(query, k_fetch)  # (U, k') each
    df = pl.DataFrame(
        {
            "u": np.repeat(users.to_numpy(), k_fetch),
            "i": pos.ravel().astype(np.int32),
            "score": scores.ravel().astype(np.float32),
        }
    ).filter(pl.col("i") >= 0)
    df = df.join(seed.select("u", "i"), on=["u", "i"], how="anti")
    return _ranked(df, k)


def als_candidates(
    model: Any, users: pl.Series, exclude: sp.csr_matrix | None, k: int, n_items: int
) -> pl.DataFrame:
    """Top k items of each of `users` ([U] UInt32, rows of the model's user factors) by a fitted ALS model,
    minus `exclude` ([all users, N] CSR or None)."""
    from retrieval.baselines import als_recommend

    if users.len() == 0:
        return _empty()
    rows = users.to_numpy().astype(np.int64)
    ids, scores = als_recommend(model, rows, k, exclude, n_items)  # (U, k) each
    df = pl.DataFrame({"u": np.repeat(rows, ids.shape[1]), "i": ids.ravel(), "score": scores.ravel()}).filter(
        pl.col("i") >= 0
    )
    return _ranked(df.with_columns(pl.col("i").cast(_I)), k)


def popular(events: pl.DataFrame | pl.LazyFrame, since: datetime, k: int) -> pl.DataFrame:
    """The k items with the largest sum of event weights at or after `since`: i, score, rank (one list)."""
    top = (
        events.lazy()
        .filter(pl.col("ts") >= since)
        .group_by("i")
        .agg(pl.col("w").sum().alias("score"))
        .sort(["score", "i"], descending=[True, False])
        .head(k)
        .collect()
    )
    return top.select(
        pl.col("i").cast(_I),
        pl.col("score").cast(pl.Float32),
        pl.int_range(1, pl.len() + 1, dtype=pl.Int32).alias("rank"),
    )


def category_table(events: pl.DataFrame | pl.LazyFrame, since: datetime, k: int) -> pl.DataFrame:
    """cat, i, score: the k items of each category with the largest sum of event weights at or after `since`.

    events: u, i, w, ts, cat (String or Categorical; null = no category, left out).
    """
    return (
        events.lazy()
        .filter(pl.col("cat").is_not_null() & (pl.col("ts") >= since))
        .with_columns(pl.col("cat").cast(pl.String))
        .group_by("cat", "i")
        .agg(pl.col("w").sum().alias("score"))
        .sort(["cat", "score", "i"], descending=[False, True, False])
        .filter(pl.int_range(pl.len()).over("cat") < k)
        .collect()
    )


def category_popular(events: pl.DataFrame, users: pl.Series, table: pl.DataFrame, k: int) -> pl.DataFrame:
    """The popular items (`category_table`) of each user's top category: the category with the largest sum
    of the user's event weights (ties: the smaller name).

    >>> from datetime import UTC
    >>> ev = pl.DataFrame({"u": [0, 0, 1, 1, 1], "i": [1, 2, 3, 3, 4], "w": [1.0, 1.0, 2.0, 2.0, 1.0],
    ...                    "cat": ["a", "a", "a", "a", "b"],
    ...                    "ts": [datetime(2024, 1, 2, tzinfo=UTC)] * 5})
    >>> table = category_table(ev, datetime(2024, 1, 1, tzinfo=UTC), 2)
    >>> category_popular(ev, pl.Series([0], dtype=pl.UInt32), table, 2)["i"].to_list()
    [3, 1]
    """
    ev = events.filter(pl.col("cat").is_not_null() & pl.col("u").is_in(users.implode()))
    if ev.height == 0 or table.height == 0:
        return _empty()
    top = (
        ev.with_columns(pl.col("cat").cast(pl.String))
        .group_by("u", "cat")
        .agg(pl.col("w").sum().alias("_w"))
        .sort(["u", "_w", "cat"], descending=[False, True, False])
        .unique("u", keep="first", maintain_order=True)
    )
    return _ranked(top.join(table, on="cat").select("u", "i", "score"), k)


def merge(
    lists: dict[str, pl.DataFrame],
    pop: pl.DataFrame,
    users: pl.Series,
    exclude: pl.DataFrame,
    k: int,
    weights: Mapping[str, float] | None = None,
) -> pl.DataFrame:
    """Union of the sources' lists for `users`, minus `exclude`, ordered by reciprocal rank fusion.

    Args:
        lists: source name (one of SOURCES but "popular") -> u, i, score, rank.
        pop: the popularity list (i, score, rank), proposed to every user of `users`.
        users: [U] UInt32 user codes to produce lists for (each gets at least the popular items).
        exclude: u, i pairs never proposed (the user's purchases).
        k: rows kept per user.
        weights: source -> weight w_s of its term in rrf = sum_s w_s / (RRF_K + rank_s) (default 1 each;
            `fusion_weights` measures them).

    Returns:
        u, i, rrf (Float32), rank (1..k by rrf, ties by item), sources (UInt8 bitmask over SOURCES), and
        for each source s: `score_<s>` (Float32) and `rank_<s>` (Int32), null where s did not propose it.
    """
    w = {s: float((weights or {}).get(s, 1.0)) for s in SOURCES}
    block = pl.DataFrame({"u": users.cast(_U)})
    key = (pl.col("u").cast(pl.UInt64) * (1 << 32) + pl.col("i").cast(pl.UInt32)).alias("_key")
    wide: pl.DataFrame | None = None
    for s in SOURCES:  # one (key, score_s, rank_s) frame per source, full-joined on key = (u, i) as one u64
        if s == "popular":
            df = block.join(pop, how="cross")
        else:
            df = lists.get(s, _empty()).join(block, on="u", how="semi")
        df = df.select(
            key,
            pl.col("score").cast(pl.Float32).alias(f"score_{s}"),
            pl.col("rank").cast(pl.Int32).alias(f"rank_{s}"),
        )
        wide = df if wide is None else wide.join(df, on="_key", how="full", coalesce=True)
    excluded = exclude.join(block, on="u", how="semi").select(key)
    wide = wide.join(excluded, on="_key", how="anti").with_columns(
        (pl.col("_key") // (1 << 32)).cast(_U).alias("u"), (pl.col("_key") % (1 << 32)).cast(_I).alias("i")
    )
    terms = [(w[s] / (RRF_K + pl.col(f"rank_{s}").cast(pl.Float64))).fill_null(0.0) for s in SOURCES]
    bits = [
        pl.when(pl.col(f"rank_{s}").is_not_null()).then(1 << n).otherwise(0) for n, s in enumerate(SOURCES)
    ]
    wide = wide.with_columns(
        pl.sum_horizontal(terms).cast(pl.Float32).alias("rrf"),
        pl.sum_horizontal(bits).cast(pl.UInt8).alias("sources"),
    )
    wide = wide.sort(["u", "rrf", "i"], descending=[False, True, False])
    wide = wide.with_columns((pl.int_range(pl.len(), dtype=pl.Int32).over("u") + 1).alias("rank"))
    return wide.filter(pl.col("rank") <= k).select(
        "u", "i", "rrf", "rank", "sources", *[f"score_{s}" for s in SOURCES], *[f"rank_{s}" for s in SOURCES]
    )


def fusion_weights(
    lists: Mapping[str, pl.DataFrame], relevant: pl.DataFrame, k: int, floor: float = 0.05
) -> dict[str, float]:
    """Weights of the sources in `merge`: each source's hit rate in its top k on known positives, divided
    by the best source's (so the best weighs 1), at least `floor`.

    lists: source -> u, i, rank of the same users (popularity included); relevant: u, i positives of those
    users. A source with no list gets `floor`.

    >>> ls = {"a": pl.DataFrame({"u": [0, 1], "i": [5, 6], "rank": [1, 1]}),
    ...       "b": pl.DataFrame({"u": [0, 1], "i": [5, 9], "rank": [1, 1]})}
    >>> fusion_weights(ls, pl.DataFrame({"u": [0, 1], "i": [5, 6]}), 1)  # a finds 2, b 1
    {'a': 1.0, 'b': 0.5}
    """
    hits = {}
    for name, df in lists.items():
        top = df.filter(pl.col("rank") <= k).select(pl.col("u").cast(_U), pl.col("i").cast(_I))
        rel = relevant.select(pl.col("u").cast(_U), pl.col("i").cast(_I))
        hits[name] = top.join(rel, on=["u", "i"], how="semi").height
    best = max(hits.values(), default=0)
    if best == 0:
        return {name: 1.0 for name in lists}
    return {name: round(max(h / best, floor), 4) for name, h in hits.items()}


def primary_source(sources: pl.Expr, names: Sequence[str] = SOURCES) -> pl.Expr:
    """The first source (in SOURCES order) of a `sources` bitmask, as a string: what proposed the item."""
    expr = pl.lit(None, pl.String)
    for n, s in reversed(list(enumerate(names))):
        expr = pl.when((sources.cast(pl.Int32) & (1 << n)) > 0).then(pl.lit(s)).otherwise(expr)
    return expr
