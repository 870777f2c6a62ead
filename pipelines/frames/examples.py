"""Examples of one user block: positives, sampled negatives, active users and their point-in-time decoration."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import polars as pl

from features.config import FeaturesConfig, SamplingConfig
from features.hashing import (
    FieldSpec,
    bucket_column,
    bucketize,
)
from features.history import point_in_time_history
from features.sampling import sample_negatives_with_stats
from pipelines.frames.blocks import block_seed
from pipelines.frames.numeric import Moments
from pipelines.frames.scratch import TS, Scan

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Split:
    """Days of one split and the seed of its negative sampling."""

    name: str  # train / valid / eval
    days: tuple[date, ...]
    seed: int


# ---------------------------------------------------------------- examples


def decorate(
    examples: pl.DataFrame,
    *,
    user_tab: pl.DataFrame,
    item_tab: pl.DataFrame,
    fields: Sequence[FieldSpec],
    hist_events: pl.DataFrame,
    count_events: pl.DataFrame,
    features: FeaturesConfig,
) -> pl.DataFrame:
    """Attach raw attributes, bkt_* of `fields`, hist and cnt_* (point in time) to examples (user_id, ts, ...).

    Raw categorical columns are dropped after hashing; num_* stay raw (standardised by the caller).
    """
    df = examples.join(user_tab, on="user_id", how="left", maintain_order="left").join(
        item_tab, on="item_id", how="left", maintain_order="left"
    )
    df = bucketize(df, fields, features.hash_seed)
    raw_cat = {s for f in fields for s in f.sources} - {"user_id", "item_id"}
    df = df.drop([c for c in raw_cat if c in df.columns])
    return point_in_time_history(
        df,
        hist_events,
        features.history_len,
        features.history_windows_days,
        count_events=count_events,
    )


def sort_examples(df: pl.DataFrame) -> pl.DataFrame:
    keys = [c for c in ("ts", "user_id", "label", "item_id", "source") if c in df.columns]
    return df.sort(keys, descending=[k == "label" for k in keys])


def _split_positives(positives: pl.DataFrame, days: Sequence[date], catalogue: pl.DataFrame) -> pl.DataFrame:
    """Positive events of `days` on catalogue items: user_id, item_id, ts, dt (one row per user/item/ts)."""
    return (
        positives.filter(pl.col("dt").is_in(list(days)))
        .join(catalogue.select("item_id"), on="item_id", how="semi")
        .select("user_id", "item_id", "ts", "dt")
        .unique(subset=["user_id", "item_id", "ts"], keep="first")
        .sort("ts", "user_id", "item_id")
    )


def _negatives(
    events: pl.DataFrame,
    positives: pl.DataFrame,
    split_pos: pl.DataFrame,
    split: Split,
    day_counts: pl.DataFrame,
    catalogue: pl.DataFrame,
    sampling: SamplingConfig,
    seed: int,
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """sample_negatives (with its draw statistics) for one split of one user block, from events up to the
    split's last day only.

    available: events per (dt, catalogue item) of the split days over ALL users (`day_counts`, from the
    global pass), so popularity does not depend on the block. real_negatives: the block's views of the
    split days with no positive of the same (user, item) at or after the view, up to the split's end.
    exclude: every (user, item) of the block with a positive up to the split's end (lookback included).
    A user's events all sit in one block, so these per-user pieces are complete.
    """
    end = max(split.days)
    in_days = pl.col("dt").is_in(list(split.days))
    available = day_counts.filter(in_days)
    known_pos = positives.filter(pl.col("dt") <= end)
    last_pos = known_pos.group_by("user_id", "item_id").agg(pl.col("ts").max().alias("_last_pos"))
    real = (
        events.filter(in_days & (pl.col("event") == "view"))
        .join(catalogue.select("item_id"), on="item_id", how="semi")
        .join(last_pos, on=["user_id", "item_id"], how="left")
        .filter(pl.col("_last_pos").is_null() | (pl.col("_last_pos") < pl.col("ts")))
        .select("user_id", "item_id", "ts", "dt")
        .unique(keep="first")
        .sort("ts", "user_id", "item_id")
    )
    exclude = known_pos.select("user_id", "item_id").unique().sort("user_id", "item_id")
    return sample_negatives_with_stats(split_pos, available, real, exclude, sampling, seed)


def _ranker_examples(split_pos: pl.DataFrame, negatives: pl.DataFrame) -> pl.DataFrame:
    pos = split_pos.select(
        "user_id", "item_id", "ts", pl.lit(1, pl.Int8).alias("label"), pl.lit("positive").alias("source")
    )
    neg = negatives.select(
        "user_id",
        "item_id",
        pl.col("ts").cast(TS),
        pl.lit(0, pl.Int8).alias("label"),
        pl.col("source").cast(pl.String),
    )
    return pl.concat([pos, neg], how="vertical")


_DRAW_KEYS = ("real", "sampled", "unfilled", "draws", "draws_hit_positive")


def _add_counts(total: dict[str, int], part: dict[str, Any]) -> dict[str, int]:
    return {k: total.get(k, 0) + int(part.get(k, 0)) for k in {*total, *part}}


def negative_stats(counts: dict[str, int], sampled: bool) -> dict[str, Any]:
    """Manifest entry of one split from the counts summed over blocks (draws only when it sampled)."""
    pos, neg = counts.get("positives", 0), counts.get("negatives", 0)
    out: dict[str, Any] = {"positives": pos, "negatives": neg, "ratio": round(neg / pos, 4) if pos else None}
    if sampled:
        out.update({k: counts.get(k, 0) for k in ("real", "sampled", "unfilled")})
        draws = counts.get("draws", 0)
        out["hit_rate"] = counts.get("draws_hit_positive", 0) / draws if draws else 0.0
    return out


@dataclass
class Totals:
    """Sums over blocks of everything the manifest and numeric_stats.json report."""

    moments: Moments = field(default_factory=dict)
    negatives: dict[str, dict[str, int]] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    cross_pairs: list[pl.DataFrame] = field(default_factory=list)


def block_examples(
    events: pl.DataFrame,
    block: int,
    splits: Sequence[Split],
    scan: Scan,
    catalogue: pl.DataFrame,
    sampling: SamplingConfig,
    totals: Totals,
) -> pl.DataFrame:
    """Examples of one user block, undecorated: user_id, item_id, ts, label, source, _part (split name).

    Adds the block's negative-sampling counts and unknown-item positives to `totals`.
    """
    positives = events.filter(pl.col("event").is_in(list(sampling.positive_events)))
    parts = []
    for split in splits:
        all_pos = positives.filter(pl.col("dt").is_in(list(split.days)))
        split_pos = _split_positives(positives, split.days, catalogue)
        known = all_pos.join(catalogue.select("item_id"), on="item_id", how="semi").height
        totals.dropped[split.name] = totals.dropped.get(split.name, 0) + all_pos.height - known
        if split.days:
            seed = block_seed(split.seed, block)
            negatives, draws = _negatives(
                events, positives, split_pos, split, scan.day_counts, catalogue, sampling, seed
            )
        else:  # W = 1: no training day
            negatives, draws = split_pos.head(0).with_columns(pl.lit("sampled").alias("source")), {}
        counts = {"positives": split_pos.height, "negatives": negatives.height}
        counts.update({k: draws[k] for k in _DRAW_KEYS if k in draws})
        totals.negatives[split.name] = _add_counts(totals.negatives.get(split.name, {}), counts)
        parts.append(_ranker_examples(split_pos, negatives).with_columns(pl.lit(split.name).alias("_part")))
    return pl.concat(parts, how="vertical")


def active_users(events: pl.DataFrame, window_days: Sequence[date], as_of: datetime) -> pl.DataFrame:
    """One as-of row per user of the block with an event in the window days (users.parquet rows)."""
    return (
        events.filter(pl.col("dt").is_in(list(window_days)))
        .select("user_id")
        .unique()
        .sort("user_id")
        .select(
            "user_id",
            pl.lit(None, pl.String).alias("item_id"),
            pl.lit(as_of).cast(TS).alias("ts"),
            pl.lit(None, pl.Int8).alias("label"),
            pl.lit(None, pl.String).alias("source"),
            pl.lit("users").alias("_part"),
        )
    )


def history_inputs(
    events: pl.DataFrame, sampling: SamplingConfig, item_id_field: FieldSpec, hash_seed: int
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(hist_events: user_id, ts, item_bucket of the positives; count_events: user_id, ts of every event)."""
    positives = events.filter(pl.col("event").is_in(list(sampling.positive_events)))
    item_buckets = bucketize(
        positives.select("item_id").unique().sort("item_id"), (item_id_field,), hash_seed
    ).select("item_id", pl.col(bucket_column(item_id_field.name)).alias("item_bucket"))
    hist_events = positives.join(item_buckets, on="item_id", how="left").select(
        "user_id", "ts", "item_bucket"
    )
    return hist_events, events.select("user_id", "ts")


def cross_sources(
    examples: pl.DataFrame, user_tab: pl.DataFrame, item_tab: pl.DataFrame, cross: Sequence[FieldSpec]
) -> pl.DataFrame:
    """Distinct source-value pairs of the crossed fields over the examples' (user, item) pairs: the
    collision report of a cross counts distinct pairs, so the union over blocks gives the global report."""
    src = sorted({s for f in cross for s in f.sources})
    return (
        examples.select("user_id", "item_id")
        .join(user_tab, on="user_id", how="left")
        .join(item_tab, on="item_id", how="left")
        .select(src)
        .unique()
    )
