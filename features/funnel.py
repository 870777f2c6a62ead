"""Features of (user, candidate) pairs for the funnel's ranker, as of an instant T (events with ts < T only).

    pairs   [P rows]  u (UInt32), i (Int32) and the merge's columns (rrf, sources, score_<s>, rank_<s>)
    events  [V rows]  u, i, w (Float32 event weight), ev (String event type), ts, and `cat` (item category,
                      null when the catalogue has none)
    items   [N rows]  i, cat (the catalogue's category of each item), the popularity columns of `item_table`

`pair_features` appends the numeric columns of `feature_names(sources)` (one row per pair, nulls filled), every one read
from events strictly before T, so a label event on day T never reaches its own features:

    src_<s>          reciprocal rank 1 / rank_<s> in source s (0 when s did not propose the item)
    covis, ann       log1p co-visitation score, ANN inner product (0 when absent); rrf: the fusion score
    item_<w>d        log1p of the item's events in the last w days (popularity at 1, 7 and 30 days)
    ui_<event>       log1p of the user's events of that type on this item (views, clicks, carts)
    ui_days          days since the user last touched this item (capped at CAP_DAYS; CAP_DAYS when never)
    u_7d, u_days     log1p of the user's events in 7 days; days since its last event
    cat_share        share of the user's events in the item's category (0 without categories)
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

import polars as pl

CAP_DAYS = 60.0
POP_DAYS = (1, 7, 30)
UI_EVENTS = ("view", "click", "cart")


def feature_names(sources: Sequence[str]) -> tuple[str, ...]:
    """The columns `pair_features` appends, in order, for candidate sources `sources`.

    >>> feature_names(["recent"])[:4]
    ('src_recent', 'covis', 'ann', 'rrf')
    """
    return (
        *(f"src_{s}" for s in sources),
        "covis",
        "ann",
        "rrf",
        *(f"item_{d}d" for d in POP_DAYS),
        *(f"ui_{e}" for e in UI_EVENTS),
        "ui_days",
        "u_7d",
        "u_days",
        "cat_share",
    )


def _days_before(as_of: datetime, ts: pl.Expr) -> pl.Expr:
    return ((pl.lit(as_of) - ts).dt.total_seconds() / 86_400.0).clip(upper_bound=CAP_DAYS)


def item_table(events: pl.DataFrame | pl.LazyFrame, as_of: datetime, catalogue: pl.DataFrame) -> pl.DataFrame:
    """i, cat, item_<w>d for w in POP_DAYS: every item of `catalogue` (i, cat) with log1p of its events in the
    last w days before `as_of` (0 without events)."""
    cols = [
        (pl.col("ts") >= as_of - timedelta(days=d)).sum().cast(pl.Float32).log1p().alias(f"item_{d}d")
        for d in POP_DAYS
    ]
    counts = events.lazy().filter(pl.col("ts") < as_of).group_by("i").agg(cols).collect()
    return catalogue.join(counts, on="i", how="left").with_columns(
        *[pl.col(f"item_{d}d").fill_null(0.0) for d in POP_DAYS]
    )


def pair_features(
    pairs: pl.DataFrame, events: pl.DataFrame, items: pl.DataFrame, as_of: datetime, sources: Sequence[str]
) -> pl.DataFrame:
    """`pairs` with the `feature_names(sources)` columns appended (Float32, no nulls); row order kept.

    sources: the candidate sources of the merge, whose `rank_<s>` columns `pairs` has.

    events: the users' events (every user of `pairs`, others allowed), before `as_of` or not (later ones are
    dropped here); items: `item_table(events of everyone, as_of, catalogue)`.
    """
    ev = events.filter(pl.col("ts") < as_of)
    users = pairs.select("u").unique()
    ev = ev.join(users, on="u", how="semi")
    ui = ev.group_by("u", "i").agg(
        *[(pl.col("ev") == e).sum().cast(pl.Float32).log1p().alias(f"ui_{e}") for e in UI_EVENTS],
        _days_before(as_of, pl.col("ts").max()).cast(pl.Float32).alias("ui_days"),
    )
    per_user = ev.group_by("u").agg(
        (pl.col("ts") >= as_of - timedelta(days=7)).sum().cast(pl.Float32).log1p().alias("u_7d"),
        _days_before(as_of, pl.col("ts").max()).cast(pl.Float32).alias("u_days"),
        pl.len().alias("_n"),
    )
    cat_counts = ev.filter(pl.col("cat").is_not_null()).group_by("u", "cat").agg(pl.len().alias("_c"))
    out = (
        pairs.with_row_index("_row")
        .join(ui, on=["u", "i"], how="left")
        .join(per_user, on="u", how="left")
        .join(items, on="i", how="left")
        .join(cat_counts, on=["u", "cat"], how="left")
        .sort("_row")
    )
    src = [(1.0 / pl.col(f"rank_{s}")).fill_null(0.0).cast(pl.Float32).alias(f"src_{s}") for s in sources]
    return out.with_columns(
        *src,
        pl.col("score_covis").fill_null(0.0).log1p().cast(pl.Float32).alias("covis"),
        pl.col("score_ann").fill_null(0.0).cast(pl.Float32).alias("ann"),
        *[pl.col(f"item_{d}d").fill_null(0.0) for d in POP_DAYS],
        *[pl.col(f"ui_{e}").fill_null(0.0) for e in UI_EVENTS],
        pl.col("ui_days").fill_null(CAP_DAYS),
        pl.col("u_7d").fill_null(0.0),
        pl.col("u_days").fill_null(CAP_DAYS),
        (pl.col("_c").fill_null(0) / pl.col("_n").fill_null(1).clip(lower_bound=1))
        .cast(pl.Float32)
        .alias("cat_share"),
    ).drop("_row", "_n", "_c", "cat")
