"""The training-frames stage: one partition `frames/dt=D/` with every table the models train and score on.

Time split of a run date D with window W = data.train_window_days (docs/frames.md has the whole contract):

    history lookback   D-W+1-L .. D-W     read only as history (L = data.history_lookback_days)
    train              D-W+1   .. D-1     retriever_train / ranker_train rows
    valid              D                  retriever_valid / ranker_valid rows
    eval               D+1                eval_retrieval / eval_ranker, only when events/dt=D+1 exists

Every example carries features of its user as of its own `ts` (features.history.point_in_time_history):
no feature reads an event at or after the example's time. users.parquet holds features as of the end of D.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from features.config import ColumnsConfig, FeaturesConfig, SamplingConfig
from features.contract import infer_columns
from features.hashing import FieldSpec, Vocab, bucket_column, bucketize, build_vocab, collision_report
from features.history import HIST, count_column, point_in_time_history
from features.sampling import sample_negatives_with_stats
from pipelines import io
from pipelines.config import DataConfig
from pipelines.io import RunInfo

log = logging.getLogger(__name__)

DATASET = "frames"
_TS = pl.Datetime("us", "UTC")
_EVENT_COLS = ("user_id", "item_id", "event", "ts", "dt")


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


def fit_numeric_stats(train: pl.DataFrame, columns: Sequence[str]) -> dict[str, dict[str, float]]:
    """Mean and population std of each numeric column over the training rows (nulls ignored).

    A column with no non-null value or zero spread gets std 1.0, so standardising it only centres it.
    """
    stats: dict[str, dict[str, float]] = {}
    if not columns:
        return stats
    row = train.select(
        [pl.col(c).cast(pl.Float64).mean().alias(f"{c}|mean") for c in columns]
        + [pl.col(c).cast(pl.Float64).std(ddof=0).alias(f"{c}|std") for c in columns]
        + [pl.col(c).count().alias(f"{c}|n") for c in columns]
    ).row(0, named=True)
    for c in columns:
        mean, std = row[f"{c}|mean"], row[f"{c}|std"]
        stats[c] = {
            "mean": 0.0 if mean is None else float(mean),
            "std": 1.0 if std is None or std <= 0.0 else float(std),
            "count": int(row[f"{c}|n"]),
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
    """user_id, categorical attributes (raw), num_user_* (raw values, standardised later)."""
    return users.select(
        "user_id",
        *cols.user_categorical,
        *(pl.col(c).alias(numeric_column("user", c)) for c in cols.user_numeric),
    )


def _item_table(items: pl.DataFrame, cols: ColumnsConfig) -> pl.DataFrame:
    """item_id, item_idx (catalogue row number), categorical attributes (raw), num_item_* (raw)."""
    return items.select(
        "item_id",
        pl.int_range(pl.len(), dtype=pl.Int32).alias("item_idx"),
        *cols.item_categorical,
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
    catalogue: pl.DataFrame,
    sampling: SamplingConfig,
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """sample_negatives (with its draw statistics) for one split, from events up to the split's last day only.

    available: events per (dt, catalogue item) of the split days. real_negatives: views of the split days
    with no positive of the same (user, item) at or after the view, up to the split's end. exclude: every
    (user, item) with a positive up to the split's end (history lookback included).
    """
    end = max(split.days)
    in_days = pl.col("dt").is_in(list(split.days))
    available = (
        events.filter(in_days)
        .join(catalogue.select("item_id"), on="item_id", how="semi")
        .group_by("dt", "item_id")
        .agg(pl.len().cast(pl.UInt32).alias("count"))
        .sort("dt", "item_id")
    )
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
    return sample_negatives_with_stats(split_pos, available, real, exclude, sampling, split.seed)


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


def _negative_stats(
    split_pos: pl.DataFrame, negatives: pl.DataFrame, draws: dict[str, Any]
) -> dict[str, Any]:
    return {
        "positives": split_pos.height,
        "negatives": negatives.height,
        "ratio": round(negatives.height / split_pos.height, 4) if split_pos.height else None,
        **{k: draws[k] for k in ("real", "sampled", "unfilled", "hit_rate") if k in draws},
    }


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
) -> dict[str, Any]:
    """Build and commit `<out>/frames/dt=<dt>/`; returns its manifest.

    Reads events of [dt - W + 1 - L, dt + 1] lazily through `pipelines.io` (W = data.train_window_days,
    L = data.history_lookback_days), users.parquet and items.parquet. Negative sampling of train / valid /
    eval uses seeds seed, seed + 1, seed + 2. The files and their columns are described in docs/frames.md.
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

    events = (
        io.scan_events(data_dir, hist_from, eval_day)
        .select(*_EVENT_COLS)
        .filter(
            pl.col("ts").is_not_null() & pl.col("user_id").is_not_null() & pl.col("item_id").is_not_null()
        )
        .collect()
    )
    positives = events.filter(pl.col("event").is_in(list(sampling.positive_events)))
    item_buckets = bucketize(
        positives.select("item_id").unique().sort("item_id"), (item_id_field,), features.hash_seed
    ).select("item_id", pl.col(bucket_column(item_id_field.name)).alias("item_bucket"))
    hist_events = positives.join(item_buckets, on="item_id", how="left").select(
        "user_id", "ts", "item_bucket"
    )
    count_events = events.select("user_id", "ts")

    user_tab = _user_table(users, cols)
    item_tab = _item_table(items, cols)
    user_num = [numeric_column("user", c) for c in cols.user_numeric]
    item_num = [numeric_column("item", c) for c in cols.item_numeric]
    windows = [count_column(w) for w in features.history_windows_days]
    user_bkt = [bucket_column(f.name) for f in user_fields]
    item_bkt = [bucket_column(f.name) for f in item_fields]
    cross_bkt = [bucket_column(f.name) for f in cross_fields]
    ranker_cols = [
        "user_id", "item_id", "item_idx", "ts", "label", "source",
        *user_bkt, *item_bkt, *cross_bkt, HIST, *windows, *user_num, *item_num,
    ]  # fmt: skip
    retriever_cols = ["user_id", "item_id", "item_idx", "ts", *user_bkt, HIST, *windows, *user_num]

    # examples of every split, plus one row per active user at the end of D, decorated in ONE pass (the
    # history index over the events is built once); `_part` says where each row goes
    window_days = [first + timedelta(days=i) for i in range(window)]
    as_of = datetime.combine(eval_day, datetime.min.time(), tzinfo=UTC)  # end of D: ts < D+1 00:00
    parts: list[pl.DataFrame] = []
    neg_stats: dict[str, Any] = {}
    dropped: dict[str, int] = {}
    for split in splits:
        all_pos = positives.filter(pl.col("dt").is_in(list(split.days)))
        split_pos = _split_positives(positives, split.days, items)
        dropped[split.name] = (
            all_pos.height - all_pos.join(items.select("item_id"), on="item_id", how="semi").height
        )
        if split.days:
            negatives, draws = _negatives(events, positives, split_pos, split, items, sampling)
        else:  # W = 1: no training day
            negatives, draws = split_pos.head(0).with_columns(pl.lit("sampled").alias("source")), {}
        neg_stats[split.name] = _negative_stats(split_pos, negatives, draws)
        parts.append(_ranker_examples(split_pos, negatives).with_columns(pl.lit(split.name).alias("_part")))
    active = (
        events.filter(pl.col("dt").is_in(window_days))
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
    decorated = _decorate(
        pl.concat([*parts, active], how="vertical"),
        user_tab=user_tab,
        item_tab=item_tab,
        fields=(*user_fields, *item_fields, *cross_fields),
        hist_events=hist_events,
        count_events=count_events,
        features=features,
    )
    by_part = {
        name: df.drop("_part") for (name,), df in decorated.partition_by("_part", as_dict=True).items()
    }
    empty = decorated.clear().drop("_part")
    ranker = {s.name: _sort_examples(by_part.get(s.name, empty)) for s in splits}

    stats = fit_numeric_stats(ranker["train"], [*user_num, *item_num])
    if ranker["train"].height == 0:
        log.warning(
            "frames %s: no training rows (window of %d day); numeric features only centred at 0", dt, window
        )
    ranker = {k: standardise(v, stats).select(ranker_cols) for k, v in ranker.items()}
    users_out = (
        standardise(by_part.get("users", empty), stats)
        .select("user_id", *user_bkt, HIST, *windows, *user_num)
        .sort("user_id")
    )

    seen = events.filter(pl.col("dt").is_in(window_days)).select("item_id").unique()
    items_out = standardise(
        bucketize(item_tab, item_fields, features.hash_seed)
        .with_columns(pl.col("item_id").is_in(seen["item_id"].implode()).alias("seen"))
        .select("item_id", "item_idx", "seen", *item_bkt, *item_num),
        stats,
    )

    numeric_stats = {
        c: {"side": c.split("_")[1], "source": c.split("_", 2)[2], **stats[c], "fitted_on": "ranker_train"}
        for c in stats
    }
    collisions = {
        **collision_report(bucketize(user_tab, user_fields, features.hash_seed), user_fields),
        **collision_report(bucketize(item_tab, item_fields, features.hash_seed), item_fields),
    }
    if cross_fields:
        cross_rows = (
            pl.concat([ranker[k] for k in ranker], how="vertical")
            .select("user_id", "item_id")
            .join(user_tab, on="user_id", how="left")
            .join(item_tab, on="item_id", how="left")
        )
        collisions.update(
            collision_report(bucketize(cross_rows, cross_fields, features.hash_seed), cross_fields)
        )

    with io.staged_partition(out, DATASET, dt, run) as stage:
        stage.add_inputs(*(f"events/dt={d.isoformat()}" for d in read_days), io.USERS_FILE, io.ITEMS_FILE)
        stage.write_json("vocab.json", vocab.to_json())
        stage.write_json("numeric_stats.json", numeric_stats)
        stage.write_table(items_out, "items")
        stage.write_table(users_out, "users")
        for split in ("train", "valid"):
            positive_rows = ranker[split].filter(pl.col("label") == 1)
            stage.write_table(positive_rows.select(retriever_cols), f"retriever_{split}")
            stage.write_table(ranker[split], f"ranker_{split}")
        if has_eval:
            eval_pairs = (
                ranker["eval"]
                .filter(pl.col("label") == 1)
                .select("user_id", "item_id")
                .unique()
                .sort("user_id", "item_id")
            )
            stage.write_table(eval_pairs, "eval_retrieval")
            stage.write_table(ranker["eval"], "eval_ranker")
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
                "negatives": neg_stats,
                "positives_dropped_unknown_item": dropped,
                "seed": seed,
            }
        )
    manifest = io.read_manifest(out, DATASET, dt)
    log.info("frames %s: %s", dt, manifest["rows"])
    return manifest
