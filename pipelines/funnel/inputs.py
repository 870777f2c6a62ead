"""The funnel's inputs: the events of the lookback coded to integers, the catalogue, its two-tower vectors."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl

from features.config import EVENT_TYPES
from pipelines import io
from pipelines.config import DataConfig, FunnelConfig
from pipelines.frames import layout as frames
from pipelines.names import FRAMES, RETRIEVER

CATEGORY_AUTO = ("category_l2", "category", "category_l1")


@dataclass
class Inputs:
    """Events with integer codes, the catalogue and its two-tower vectors."""

    users: pl.DataFrame  # user_id, u (UInt32): every user with an event read
    items: pl.DataFrame  # item_id, i (Int32): the catalogue, row = item position
    emb: np.ndarray | None  # [N, D] float32 two-tower item vectors, row = i; None: no retriever of D
    events: pl.DataFrame  # u, i, ev, w, ts, cat; sorted by u, ts (Sources slice it per user block)
    category: str | None  # the item column behind `cat`
    catalogue: pl.DataFrame  # i, cat: every item of `items`


def _category_column(items: pl.DataFrame, setting: str | None) -> str | None:
    if setting is None:
        return None
    if setting != "auto":
        if setting not in items.columns:
            raise ValueError(
                f"items.parquet has no column {setting!r} (funnel.category_column); fix: name one of "
                f"{items.columns} or set funnel.category_column=null"
            )
        return setting
    return next((c for c in CATEGORY_AUTO if c in items.columns), None)


def lookback_days(data: DataConfig) -> int:
    """Days of events behind each instant the funnel builds lists at: the frames window and its lookback."""
    return data.train_window_days + data.history_lookback_days


def read_window(dt: date, lookback_days: int, cfg: FunnelConfig) -> tuple[date, date]:
    """(first, last) day of the events the funnel stage of D reads: the lookback of its earliest training
    instant (D - train_days) and the evaluation horizon D+1 .. D+horizon_days (the days present are read).

    >>> read_window(date(2024, 3, 10), 3, FunnelConfig(train_days=2, horizon_days=7))
    (datetime.date(2024, 3, 6), datetime.date(2024, 3, 17))
    """
    first = dt - timedelta(days=lookback_days - 1)
    return first - timedelta(days=cfg.train_days), dt + timedelta(days=cfg.horizon_days)


def input_files(data_dir: Path, dt: date, lookback_days: int, cfg: FunnelConfig) -> list[Path]:
    """The input files the funnel stage of D reads: users, items, the event files of `read_window`."""
    return io.input_files(data_dir, *read_window(dt, lookback_days, cfg))


def load_inputs(data_dir: Path, out: Path, dt: date, first: date, last: date, cfg: FunnelConfig) -> Inputs:
    """Events of [first, last] coded to integers, the catalogue (frames order when the retriever of D ran,
    so that row i is item_emb.npy row i) and the category of each item."""
    raw_items = io.read_items(data_dir)
    category = _category_column(raw_items, cfg.category_column)
    emb = None
    if io.is_committed(out, RETRIEVER, dt) and io.is_committed(out, FRAMES, dt):
        items = io.read_table(out, FRAMES, dt, frames.ITEMS).select("item_id", pl.col("item_idx").alias("i"))
        emb = np.load(io.committed_path(out, RETRIEVER, dt, "item_emb.npy"))
    else:
        items = raw_items.select("item_id").sort("item_id").with_row_index("i")
    items = items.select(pl.col("item_id").cast(pl.String), pl.col("i").cast(pl.Int32)).sort("i")
    cats = raw_items.select(
        pl.col("item_id").cast(pl.String),
        (pl.col(category).cast(pl.String) if category else pl.lit(None, pl.String))
        .cast(pl.Categorical)
        .alias("cat"),
    )
    lf = io.scan_events(data_dir, first, last)
    users = lf.select("user_id").unique().sort("user_id").collect().with_row_index("u").select("user_id", "u")
    weights = {e: float(w) for e, w in cfg.event_weights.items()}
    events = (
        lf.join(users.lazy(), on="user_id")
        .join(items.lazy(), on="item_id")
        .join(cats.lazy(), on="item_id", how="left")
        .select(
            pl.col("u").cast(pl.UInt32),
            pl.col("i"),
            pl.col("event").cast(pl.String).cast(pl.Enum(EVENT_TYPES)).alias("ev"),
            pl.col("event")
            .cast(pl.String)
            .replace_strict(weights, default=1.0, return_dtype=pl.Float32)
            .alias("w"),
            "ts",
            "cat",
        )
        .sort("u", "ts", "i", "ev")
        .collect(engine="streaming")
    )
    catalogue = items.join(cats, on="item_id", how="left").select("i", "cat").sort("i")
    return Inputs(users, items, emb, events, category, catalogue)


def midnight(d: date) -> datetime:
    return datetime.combine(d, datetime.min.time(), tzinfo=UTC)


def positives(inp: Inputs, start: datetime, end: datetime, positive_events: list[str]) -> pl.DataFrame:
    return (
        inp.events.filter(
            pl.col("ts").is_between(start, end, closed="left") & pl.col("ev").is_in(positive_events)
        )
        .select("u", "i")
        .unique()
    )
