"""The training-frames stage: one partition `frames/dt=D/` with every table the models train and score on.

Time split of a run date D with window W = data.train_window_days (docs/frames.md has the whole contract):

    history lookback   D-W+1-L .. D-W     read only as history (L = data.history_lookback_days)
    train              D-W+1   .. D-1     retriever_train / ranker_train rows
    valid              D                  retriever_valid / ranker_valid rows
    eval               D+1                eval_retrieval / eval_ranker, only when events/dt=D+1 exists

Every example carries features of its user as of its own `ts` (features.history.point_in_time_history):
no feature reads an event at or after the example's time. users.parquet holds features as of the end of D.

Memory is bounded by one user block, not by the number of events: users are split into blocks by murmur3
of user_id, every per-user piece (positives, negatives, history, counts) is computed one block at a time
and appended to the output files; only the global pieces (catalogue, items available per day, numeric
moments, users.parquet rows) are held whole (see `build_frames` and docs/frames.md).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from features.config import ColumnsConfig, FeaturesConfig, SamplingConfig
from features.contract import infer_columns
from features.hashing import (
    FieldSpec,
    Vocab,
    bucket_column,
    bucketize,
    build_vocab,
    collision_report,
    hash_series,
    strings_as_categorical,
)
from features.history import HIST, count_column, point_in_time_history
from features.sampling import sample_negatives_with_stats
from pipelines import io
from pipelines.config import DataConfig
from pipelines.io import RunInfo
from pipelines.names import FRAMES

log = logging.getLogger(__name__)

DATASET = FRAMES
_TS = pl.Datetime("us", "UTC")
_EVENT_COLS = ("user_id", "item_id", "event", "ts", "dt")
EVENTS_PER_BLOCK: int = DataConfig.model_fields["events_per_block"].default  # choose_blocks' default
_BLOCK_HASH_SEED = 0x0B10C5  # murmur3 seed of user_id -> block (not the features' hash seed)
# folder inside the staged partition for the per-block events / examples files; removed before the commit
_SCRATCH = "_scratch"


@dataclass(frozen=True)
class _Split:
    """Days of one split and the seed of its negative sampling."""

    name: str  # train / valid / eval
    days: tuple[date, ...]
    seed: int


# ---------------------------------------------------------------- columns and numeric features


def resolve_columns(users: pl.DataFrame, items: pl.DataFrame, columns: ColumnsConfig) -> ColumnsConfig:
    """The attribute columns of a run: the lists `columns` declares, the others inferred from the files
    by `features.contract.infer_columns` (strings/booleans -> categorical, numbers -> numeric; ids, title
    and image_path never), minus any column the other list of the same side declares.

    A declared column absent from its file, or a name used by both files, is an error (frames join both).
    """
    inferred = infer_columns(users.schema, items.schema)
    resolved: dict[str, list[str]] = {}
    for side, df, file in (("user", users, io.USERS_FILE), ("item", items, io.ITEMS_FILE)):
        for kind, other in (("categorical", "numeric"), ("numeric", "categorical")):
            given = getattr(columns, f"{side}_{kind}")
            if given is None:
                taken = set(getattr(columns, f"{side}_{other}") or [])
                resolved[f"{side}_{kind}"] = [
                    c for c in getattr(inferred, f"{side}_{kind}") if c not in taken
                ]
                continue
            missing = [c for c in given if c not in df.columns]
            if missing:
                raise ValueError(
                    f"{file}: columns.{side}_{kind} lists {missing}, absent from the file "
                    f"(columns {df.columns}); fix: correct columns.{side}_{kind}"
                )
            resolved[f"{side}_{kind}"] = list(given)
    user_cols = set(resolved["user_categorical"]) | set(resolved["user_numeric"])
    item_cols = set(resolved["item_categorical"]) | set(resolved["item_numeric"])
    both = sorted(user_cols & item_cols)
    if both:
        raise ValueError(
            f"{io.USERS_FILE} and {io.ITEMS_FILE} both have attribute column(s) {both}; fix: rename them in "
            "one file (e.g. user_region / item_region) or leave one out of the columns section"
        )
    return ColumnsConfig(**resolved)


def numeric_column(side: str, name: str) -> str:
    """Name of a standardised numeric feature: `num_user_<name>` / `num_item_<name>`."""
    return f"num_{side}_{name}"


Moments = dict[str, tuple[int, float, float]]  # column -> (count, mean, M2 = sum of squared deviations)


def numeric_moments(rows: pl.DataFrame, columns: Sequence[str]) -> Moments:
    """(count, mean, M2) of each numeric column over `rows` (nulls ignored), in float64.

    Moments of disjoint row sets combine exactly with `merge_moments`, so the statistics of a table
    written block by block are fitted without holding the table.
    """
    if not columns:
        return {}
    x = [pl.col(c).cast(pl.Float64) for c in columns]
    row = rows.select(
        [e.count().alias(f"{c}|n") for c, e in zip(columns, x, strict=True)]
        + [e.mean().alias(f"{c}|mean") for c, e in zip(columns, x, strict=True)]
        + [((e - e.mean()) ** 2).sum().alias(f"{c}|m2") for c, e in zip(columns, x, strict=True)]
    ).row(0, named=True)
    out: Moments = {}
    for c in columns:
        n = int(row[f"{c}|n"])
        out[c] = (n, float(row[f"{c}|mean"] or 0.0), float(row[f"{c}|m2"] or 0.0) if n else 0.0)
    return out


def merge_moments(a: Moments, b: Moments) -> Moments:
    """Moments of the union of two disjoint row sets (Chan, Golub and LeVeque 1979, pairwise update):

        n = na + nb,  delta = mean_b - mean_a,  mean = mean_a + delta * nb / n,
        M2 = M2_a + M2_b + delta^2 * na * nb / n

    >>> merge_moments({"x": (2, 1.0, 2.0)}, {"x": (1, 4.0, 0.0)})  # {0, 2} and {4}: mean 2, M2 8
    {'x': (3, 2.0, 8.0)}
    """
    out: Moments = {}
    for c in {**a, **b}:
        na, ma, m2a = a.get(c, (0, 0.0, 0.0))
        nb, mb, m2b = b.get(c, (0, 0.0, 0.0))
        n = na + nb
        if n == 0:
            out[c] = (0, 0.0, 0.0)
            continue
        delta = mb - ma
        out[c] = (n, ma + delta * nb / n, m2a + m2b + delta * delta * na * nb / n)
    return out


def stats_from_moments(moments: Moments, columns: Sequence[str]) -> dict[str, dict[str, float]]:
    """Mean and population std (sqrt(M2 / n)) of each column; std 1.0 when no value or zero spread,
    so standardising such a column only centres it."""
    stats: dict[str, dict[str, float]] = {}
    for c in columns:
        n, mean, m2 = moments.get(c, (0, 0.0, 0.0))
        std = (m2 / n) ** 0.5 if n else 0.0
        stats[c] = {
            "mean": float(mean) if n else 0.0,
            "std": float(std) if std > 0.0 else 1.0,
            "count": int(n),
        }
    return stats


def standardise(df: pl.DataFrame, stats: dict[str, dict[str, float]]) -> pl.DataFrame:
    """Replace each column in `stats` present in `df` by (x - mean) / std as Float32, 0 for null."""
    return df.with_columns(
        ((pl.col(c).cast(pl.Float64) - s["mean"]) / s["std"]).fill_null(0.0).cast(pl.Float32).alias(c)
        for c, s in stats.items()
        if c in df.columns
    )


# ---------------------------------------------------------------- inputs


def _unique_ids(df: pl.DataFrame, key: str, file: str) -> None:
    if key not in df.columns:
        raise ValueError(f"{file}: no column {key!r} (columns {df.columns}); fix: add the id column")
    dup = df.filter(pl.col(key).is_duplicated())[key].unique().sort().head(5).to_list()
    if dup:
        raise ValueError(f"{file}: {key} is not unique (e.g. {dup}); fix: keep one row per {key}")
    if df[key].null_count():
        raise ValueError(f"{file}: {key} has nulls; fix: drop the rows without an id")


def _user_table(users: pl.DataFrame, cols: ColumnsConfig) -> pl.DataFrame:
    """user_id, categorical attributes (raw; String ones as Categorical), num_user_* (raw, standardised later)."""
    return users.select(
        "user_id",
        *strings_as_categorical(users.schema, cols.user_categorical),
        *(pl.col(c).alias(numeric_column("user", c)) for c in cols.user_numeric),
    )


def _item_table(items: pl.DataFrame, cols: ColumnsConfig) -> pl.DataFrame:
    """item_id, item_idx (catalogue row number), categorical attributes (raw; String ones as Categorical),
    num_item_* (raw)."""
    return items.select(
        "item_id",
        pl.int_range(pl.len(), dtype=pl.Int32).alias("item_idx"),
        *strings_as_categorical(items.schema, cols.item_categorical),
        *(pl.col(c).alias(numeric_column("item", c)) for c in cols.item_numeric),
    )


def _fields(vocab: Vocab, side: str) -> tuple[FieldSpec, ...]:
    return tuple(f for f in vocab.fields if f.side == side)


def _item_id_field(vocab: Vocab) -> FieldSpec:
    hits = [f for f in vocab.fields if f.side == "item" and tuple(f.sources) == ("item_id",)]
    if len(hits) != 1:
        raise ValueError(
            f"vocab has {len(hits)} item fields hashed from item_id alone; fix: features.hashing.build_vocab "
            "must give exactly one (it feeds `hist`)"
        )
    return hits[0]


# ---------------------------------------------------------------- user blocks


def choose_blocks(n_events: int, events_per_block: int = EVENTS_PER_BLOCK) -> int:
    """Number of user blocks for `n_events` events read: ceil(n_events / events_per_block), at least 1.

    >>> choose_blocks(0), choose_blocks(1_000_000), choose_blocks(18_500_000)
    (1, 1, 19)
    """
    if events_per_block < 1:
        raise ValueError(f"choose_blocks: events_per_block={events_per_block}; fix: pass a value >= 1")
    return max(1, -(-n_events // events_per_block))


def user_block(user_id: pl.Series, n_blocks: int) -> pl.Series:
    """[n] String user ids -> [n] Int32 block in [0, n_blocks): murmur3_x86_32(user_id) mod n_blocks.

    Stable across processes and library versions (mmh3 through features.hashing.hash_series, which hashes
    the distinct ids only); every event of a user lands in the same block.
    """
    if n_blocks < 1:
        raise ValueError(f"user_block: n_blocks={n_blocks}; fix: pass n_blocks >= 1")
    if n_blocks == 1:
        return pl.Series(user_id.name, [0] * user_id.len(), dtype=pl.Int32)
    # hash_series gives 1 + h mod n_blocks (0 only for a missing / empty id, which goes to block 0)
    return (hash_series(user_id, n_blocks + 1, _BLOCK_HASH_SEED) - 1).clip(lower_bound=0).cast(pl.Int32)


def block_seed(seed: int, block: int) -> int:
    """Seed of the negative sampling of one (split, block): a SeedSequence of (seed, block), so blocks
    draw independent streams and the same seed and block count give the same negatives."""
    return int(np.random.SeedSequence([seed % 2**63, block]).generate_state(1, dtype=np.uint64)[0] >> 1)


@dataclass(frozen=True)
class _Scan:
    """What one streaming pass over the event partitions leaves behind (everything else is per block)."""

    events: int  # events read (non-null user, item, ts)
    day_counts: pl.DataFrame  # dt, item_id, count: events per (day, catalogue item) of the split days
    seen: pl.DataFrame  # item_id of every item with an event in the window days


def _event_schema() -> dict[str, pl.DataType]:
    return {"user_id": pl.String, "item_id": pl.String, "event": pl.String, "ts": _TS, "dt": pl.Date}


def _scratch_file(scratch: Path, what: str, block: int) -> Path:
    return scratch / f"{what}-{block:05d}.parquet"


def _read_scratch(scratch: Path, what: str, block: int, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    path = _scratch_file(scratch, what, block)
    return pl.read_parquet(path) if path.exists() else pl.DataFrame(schema=schema)


def _partition_events(
    data_dir: Path,
    days: Sequence[date],
    n_blocks: int,
    scratch: Path,
    catalogue: pl.DataFrame,
    split_days: Sequence[date],
    window_days: Sequence[date],
) -> _Scan:
    """Read the event partitions one day at a time and append each day's events to the scratch file of
    their user block; aggregate the global pieces (available items per day, seen items) on the way.

    Peak memory: one day of events plus the per-day aggregates, whatever the number of days.
    """
    writers = [io.TableWriter(_scratch_file(scratch, "events", b)) for b in range(n_blocks)]
    counts: list[pl.DataFrame] = []
    seen: list[pl.DataFrame] = []
    n_events = 0
    try:
        for day in days:
            ev = (
                io.scan_events(data_dir, day, day)
                .select(*_EVENT_COLS)
                .filter(
                    pl.col("ts").is_not_null()
                    & pl.col("user_id").is_not_null()
                    & pl.col("item_id").is_not_null()
                )
                .collect()
            )
            n_events += ev.height
            if day in split_days:
                counts.append(
                    ev.join(catalogue.select("item_id"), on="item_id", how="semi")
                    .group_by("dt", "item_id")
                    .agg(pl.len().cast(pl.UInt32).alias("count"))
                )
            if day in window_days:
                seen.append(ev.select("item_id").unique())
            blocks = ev.with_columns(user_block(ev["user_id"], n_blocks).alias("_block"))
            for (b,), part in blocks.partition_by("_block", as_dict=True).items():
                writers[int(b)].write(part.drop("_block"))
    finally:
        for w in writers:
            w.close()
    day_counts = (
        pl.concat(counts, how="vertical").sort("dt", "item_id")
        if counts
        else pl.DataFrame(schema={"dt": pl.Date, "item_id": pl.String, "count": pl.UInt32})
    )
    seen_items = (
        pl.concat(seen, how="vertical").unique() if seen else pl.DataFrame(schema={"item_id": pl.String})
    )
    return _Scan(n_events, day_counts, seen_items)


# ---------------------------------------------------------------- examples


def _decorate(
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


def _sort_examples(df: pl.DataFrame) -> pl.DataFrame:
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
    split: _Split,
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
        pl.col("ts").cast(_TS),
        pl.lit(0, pl.Int8).alias("label"),
        pl.col("source").cast(pl.String),
    )
    return pl.concat([pos, neg], how="vertical")


_DRAW_KEYS = ("real", "sampled", "unfilled", "draws", "draws_hit_positive")


def _add_counts(total: dict[str, int], part: dict[str, Any]) -> dict[str, int]:
    return {k: total.get(k, 0) + int(part.get(k, 0)) for k in {*total, *part}}


def _negative_stats(counts: dict[str, int], sampled: bool) -> dict[str, Any]:
    """Manifest entry of one split from the counts summed over blocks (draws only when it sampled)."""
    pos, neg = counts.get("positives", 0), counts.get("negatives", 0)
    out: dict[str, Any] = {"positives": pos, "negatives": neg, "ratio": round(neg / pos, 4) if pos else None}
    if sampled:
        out.update({k: counts.get(k, 0) for k in ("real", "sampled", "unfilled")})
        draws = counts.get("draws", 0)
        out["hit_rate"] = counts.get("draws_hit_positive", 0) / draws if draws else 0.0
    return out


@dataclass
class _Totals:
    """Sums over blocks of everything the manifest and numeric_stats.json report."""

    moments: Moments = field(default_factory=dict)
    negatives: dict[str, dict[str, int]] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    cross_pairs: list[pl.DataFrame] = field(default_factory=list)


def _block_examples(
    events: pl.DataFrame,
    block: int,
    splits: Sequence[_Split],
    scan: _Scan,
    catalogue: pl.DataFrame,
    sampling: SamplingConfig,
    totals: _Totals,
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


def _active_users(events: pl.DataFrame, window_days: Sequence[date], as_of: datetime) -> pl.DataFrame:
    """One as-of row per user of the block with an event in the window days (users.parquet rows)."""
    return (
        events.filter(pl.col("dt").is_in(list(window_days)))
        .select("user_id")
        .unique()
        .sort("user_id")
        .select(
            "user_id",
            pl.lit(None, pl.String).alias("item_id"),
            pl.lit(as_of).cast(_TS).alias("ts"),
            pl.lit(None, pl.Int8).alias("label"),
            pl.lit(None, pl.String).alias("source"),
            pl.lit("users").alias("_part"),
        )
    )


def _history_inputs(
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


def _cross_sources(
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


class _Writers:
    """One `stage.table_writer` per example file, opened together and closed together."""

    def __init__(self, stage: io.StagedPartition, names: Sequence[str]) -> None:
        self._stack = contextlib.ExitStack()
        self.w = {n: self._stack.enter_context(stage.table_writer(n)) for n in names}
        self._empty: dict[str, pl.DataFrame] = {}

    def write(self, name: str, df: pl.DataFrame) -> None:
        if df.height:
            self.w[name].write(df)
        else:
            self._empty.setdefault(name, df)

    def close(self, complete: bool = True) -> None:
        """Close every file; when `complete`, a file that got no rows is written with its schema only.
        (After an error the partition is discarded whole, so nothing more is written.)"""
        if complete:
            for name, df in self._empty.items():
                if self.w[name].rows == 0:
                    self.w[name].write(df)
        self._stack.close()


@dataclass(frozen=True)
class _Layout:
    """Column lists of the output files of one run."""

    fields: tuple[FieldSpec, ...]  # every hashed field of the examples: user, item, cross
    cross_fields: tuple[FieldSpec, ...]
    user_num: list[str]
    item_num: list[str]
    item_bkt: list[str]
    ranker: list[str]  # ranker_* / eval_ranker
    retriever: list[str]  # retriever_*
    users: list[str]  # users.parquet

    @classmethod
    def of(cls, cols: ColumnsConfig, vocab: Vocab, features: FeaturesConfig) -> _Layout:
        user_f, item_f, cross_f = _fields(vocab, "user"), _fields(vocab, "item"), _fields(vocab, "cross")
        user_num = [numeric_column("user", c) for c in cols.user_numeric]
        item_num = [numeric_column("item", c) for c in cols.item_numeric]
        windows = [count_column(w) for w in features.history_windows_days]
        user_bkt = [bucket_column(f.name) for f in user_f]
        item_bkt = [bucket_column(f.name) for f in item_f]
        cross_bkt = [bucket_column(f.name) for f in cross_f]
        return cls(
            fields=(*user_f, *item_f, *cross_f),
            cross_fields=cross_f,
            user_num=user_num,
            item_num=item_num,
            item_bkt=item_bkt,
            ranker=[
                "user_id",
                "item_id",
                "item_idx",
                "ts",
                "label",
                "source",
                *user_bkt,
                *item_bkt,
                *cross_bkt,
                HIST,
                *windows,
                *user_num,
                *item_num,
            ],  # fmt: skip
            retriever=["user_id", "item_id", "item_idx", "ts", *user_bkt, HIST, *windows, *user_num],
            users=["user_id", *user_bkt, HIST, *windows, *user_num],
        )


def _example_schema() -> dict[str, pl.DataType]:
    """Columns of the scratch examples files (undecorated examples; _part = split name)."""
    return {
        "user_id": pl.String, "item_id": pl.String, "ts": _TS, "label": pl.Int8, "source": pl.String,
        "_part": pl.String,
    }  # fmt: skip


def _examples_pass(
    scratch: Path,
    n_blocks: int,
    splits: Sequence[_Split],
    scan: _Scan,
    catalogue: pl.DataFrame,
    user_tab: pl.DataFrame,
    item_tab: pl.DataFrame,
    layout: _Layout,
    sampling: SamplingConfig,
) -> _Totals:
    """Pass 1 over the blocks: examples and negatives of each block to its scratch `examples` file; the
    numeric moments of the training rows, negative counts and cross pairs summed over blocks."""
    totals = _Totals()
    num_u = user_tab.select("user_id", *layout.user_num)
    num_i = item_tab.select("item_id", *layout.item_num)
    for b in range(n_blocks):
        events = _read_scratch(scratch, "events", b, _event_schema())
        examples = _block_examples(events, b, splits, scan, catalogue, sampling, totals)
        examples.write_parquet(_scratch_file(scratch, "examples", b))
        train = (
            examples.filter(pl.col("_part") == "train")
            .join(num_u, on="user_id", how="left")
            .join(num_i, on="item_id", how="left")
        )
        block_moments = numeric_moments(train, [*layout.user_num, *layout.item_num])
        totals.moments = merge_moments(totals.moments, block_moments)
        if layout.cross_fields:
            totals.cross_pairs.append(_cross_sources(examples, user_tab, item_tab, layout.cross_fields))
    return totals


def _features_pass(
    stage: io.StagedPartition,
    scratch: Path,
    n_blocks: int,
    splits: Sequence[_Split],
    user_tab: pl.DataFrame,
    item_tab: pl.DataFrame,
    layout: _Layout,
    stats: dict[str, dict[str, float]],
    features: FeaturesConfig,
    sampling: SamplingConfig,
    item_id_field: FieldSpec,
    window_days: Sequence[date],
    as_of: datetime,
) -> pl.DataFrame:
    """Pass 2 over the blocks: point-in-time features of the block's examples and active users (one
    history pass), standardisation with the final `stats`, one append per block to every example file.

    Returns the users.parquet rows (one per active user, sorted by user_id): O(users), not O(events).
    """
    names = ["retriever_train", "ranker_train", "retriever_valid", "ranker_valid"]
    if any(s.name == "eval" for s in splits):
        names += ["eval_retrieval", "eval_ranker"]
    writers = _Writers(stage, names)
    users_parts: list[pl.DataFrame] = []
    try:
        for b in range(n_blocks):
            events = _read_scratch(scratch, "events", b, _event_schema())
            examples = _read_scratch(scratch, "examples", b, _example_schema())
            hist_events, count_events = _history_inputs(events, sampling, item_id_field, features.hash_seed)
            block_users = pl.concat([examples.select("user_id"), events.select("user_id")]).unique()
            decorated = _decorate(
                pl.concat([examples, _active_users(events, window_days, as_of)], how="vertical"),
                user_tab=user_tab.join(block_users, on="user_id", how="semi"),
                item_tab=item_tab,
                fields=layout.fields,
                hist_events=hist_events,
                count_events=count_events,
                features=features,
            )
            del events, examples, hist_events, count_events
            by_part = {
                name: df.drop("_part")
                for (name,), df in decorated.partition_by("_part", as_dict=True).items()
            }
            empty = decorated.clear().drop("_part")
            del decorated
            for split in splits:
                rows = standardise(_sort_examples(by_part.get(split.name, empty)), stats).select(
                    layout.ranker
                )
                if split.name == "eval":
                    pairs = rows.filter(pl.col("label") == 1).select("user_id", "item_id").unique()
                    writers.write("eval_retrieval", pairs.sort("user_id", "item_id"))
                    writers.write("eval_ranker", rows)
                else:
                    writers.write(
                        f"retriever_{split.name}", rows.filter(pl.col("label") == 1).select(layout.retriever)
                    )
                    writers.write(f"ranker_{split.name}", rows)
            users_parts.append(standardise(by_part.get("users", empty), stats).select(layout.users))
    except BaseException:
        writers.close(complete=False)
        raise
    writers.close()
    return pl.concat(users_parts, how="vertical").sort("user_id")


# ---------------------------------------------------------------- the stage


def build_frames(
    data_dir: Path,
    out: Path,
    dt: date,
    data: DataConfig,
    columns: ColumnsConfig,
    features: FeaturesConfig,
    sampling: SamplingConfig,
    seed: int,
    run: RunInfo,
    *,
    n_blocks: int | None = None,
) -> dict[str, Any]:
    """Build and commit `<out>/frames/dt=<dt>/`; returns its manifest.

    Reads events of [dt - W + 1 - L, dt + 1] through `pipelines.io` (W = data.train_window_days,
    L = data.history_lookback_days), users.parquet and items.parquet. The files and their columns are
    described in docs/frames.md.

    Memory does not grow with the number of events: one pass over the event partitions (a day at a time)
    splits the events by user block (murmur3 of user_id mod `n_blocks`; default `choose_blocks` of the
    events read, ~data.events_per_block events a block) into scratch files inside the staged partition and
    aggregates the global pieces (items available per day, seen items); then each block is processed
    alone, twice: (1) examples and negatives, adding to the numeric moments of the training rows, (2) once
    the statistics are known, point-in-time features, standardisation, and one append to every output file.
    Negative sampling of train / valid / eval uses `block_seed(seed + k, block)` for k = 0, 1, 2.
    """
    data_dir, out = Path(data_dir), Path(out)
    window = data.train_window_days
    first = dt - timedelta(days=window - 1)
    hist_from = first - timedelta(days=data.history_lookback_days)
    eval_day = dt + timedelta(days=1)

    available_days = io.event_files(data_dir)
    if dt not in available_days:
        raise ValueError(
            f"{io.event_partition_dir(data_dir, dt)}: no events for the run date {dt}; "
            "fix: pass a date with an event partition or add the partition"
        )
    if n_blocks is not None and n_blocks < 1:
        raise ValueError(f"build_frames: n_blocks={n_blocks}; fix: pass n_blocks >= 1 or None (automatic)")
    read_days = sorted(d for d in available_days if hist_from <= d <= eval_day)
    has_eval = eval_day in available_days
    splits = [_Split("train", tuple(first + timedelta(days=i) for i in range(window - 1)), seed)]
    splits.append(_Split("valid", (dt,), seed + 1))
    if has_eval:
        splits.append(_Split("eval", (eval_day,), seed + 2))

    users = io.read_users(data_dir)
    items = io.read_items(data_dir)
    _unique_ids(users, "user_id", str(io.users_path(data_dir)))
    _unique_ids(items, "item_id", str(io.items_path(data_dir)))
    cols = resolve_columns(users, items, columns)
    vocab = build_vocab(list(cols.user_categorical), list(cols.item_categorical), features)
    user_fields, item_fields = _fields(vocab, "user"), _fields(vocab, "item")
    cross_fields = _fields(vocab, "cross")
    item_id_field = _item_id_field(vocab)
    user_tab = _user_table(users, cols)
    item_tab = _item_table(items, cols)
    layout = _Layout.of(cols, vocab, features)
    window_days = [first + timedelta(days=i) for i in range(window)]
    split_days = {d for s in splits for d in s.days}
    as_of = datetime.combine(eval_day, datetime.min.time(), tzinfo=UTC)  # end of D: ts < D+1 00:00
    if n_blocks is None:
        n_events = io.scan_events(data_dir, hist_from, eval_day).select(pl.len()).collect().item()
        n_blocks = choose_blocks(n_events, data.events_per_block)

    with io.staged_partition(out, DATASET, dt, run) as stage:
        scratch = stage.path(_SCRATCH)
        scratch.mkdir()
        scan = _partition_events(
            data_dir, read_days, n_blocks, scratch, items, sorted(split_days), window_days
        )
        log.info("frames %s: %d events in %d user blocks", dt, scan.events, n_blocks)
        totals = _examples_pass(scratch, n_blocks, splits, scan, items, user_tab, item_tab, layout, sampling)
        stats = stats_from_moments(totals.moments, [*layout.user_num, *layout.item_num])
        n_train = totals.negatives.get("train", {})
        if n_train.get("positives", 0) + n_train.get("negatives", 0) == 0:
            log.warning(
                "frames %s: no training rows (window of %d day); numeric features only centred at 0",
                dt,
                window,
            )
        users_out = _features_pass(
            stage, scratch, n_blocks, splits, user_tab, item_tab, layout, stats, features, sampling,
            item_id_field, window_days, as_of,
        )  # fmt: skip
        shutil.rmtree(scratch)

        stage.write_table(users_out, "users")
        items_out = standardise(
            bucketize(item_tab, item_fields, features.hash_seed)
            .with_columns(pl.col("item_id").is_in(scan.seen["item_id"].implode()).alias("seen"))
            .select("item_id", "item_idx", "seen", *layout.item_bkt, *layout.item_num),
            stats,
        )
        stage.write_table(items_out, "items")
        numeric_stats = {
            c: {
                "side": c.split("_")[1],
                "source": c.split("_", 2)[2],
                **stats[c],
                "fitted_on": "ranker_train",
            }
            for c in stats
        }
        collisions = {
            **collision_report(bucketize(user_tab, user_fields, features.hash_seed), user_fields),
            **collision_report(bucketize(item_tab, item_fields, features.hash_seed), item_fields),
        }
        if cross_fields:
            pairs = pl.concat(totals.cross_pairs, how="vertical").unique()
            collisions.update(
                collision_report(bucketize(pairs, cross_fields, features.hash_seed), cross_fields)
            )
        stage.add_inputs(*(f"events/dt={d.isoformat()}" for d in read_days), io.USERS_FILE, io.ITEMS_FILE)
        stage.write_json("vocab.json", vocab.to_json())
        stage.write_json("numeric_stats.json", numeric_stats)
        stage.extra.update(
            {
                "window": {
                    "run_date": dt.isoformat(),
                    "history_from": hist_from.isoformat(),
                    "train_days": [d.isoformat() for d in splits[0].days],
                    "valid_day": dt.isoformat(),
                    "users_as_of": as_of.isoformat(),
                },
                "eval": {"day": eval_day.isoformat(), "present": has_eval},
                "columns": cols.model_dump(),
                "collisions": collisions,
                "negatives": {
                    s.name: _negative_stats(totals.negatives.get(s.name, {}), bool(s.days)) for s in splits
                },
                "positives_dropped_unknown_item": {s.name: totals.dropped.get(s.name, 0) for s in splits},
                "seed": seed,
                "blocks": n_blocks,
                "events_read": scan.events,
            }
        )
    manifest = io.read_manifest(out, DATASET, dt)
    log.info("frames %s: %s", dt, manifest["rows"])
    return manifest
