"""The one streaming pass over the event partitions that splits the events by user block into scratch files."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import polars as pl

from pipelines import io
from pipelines.frames.blocks import user_block

log = logging.getLogger(__name__)

TS = pl.Datetime("us", "UTC")


_EVENT_COLS = ("user_id", "item_id", "event", "ts", "dt")


# folder inside the staged partition for the per-block events / examples files; removed before the commit
SCRATCH = "_scratch"


@dataclass(frozen=True)
class Scan:
    """What one streaming pass over the event partitions leaves behind (everything else is per block)."""

    events: int  # events read (non-null user, item, ts)
    day_counts: pl.DataFrame  # dt, item_id, count: events per (day, catalogue item) of the split days
    seen: pl.DataFrame  # item_id of every item with an event in the window days


def event_schema() -> dict[str, pl.DataType]:
    return {"user_id": pl.String, "item_id": pl.String, "event": pl.String, "ts": TS, "dt": pl.Date}


def scratch_file(scratch: Path, what: str, block: int) -> Path:
    return scratch / f"{what}-{block:05d}.parquet"


def read_scratch(scratch: Path, what: str, block: int, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    path = scratch_file(scratch, what, block)
    return pl.read_parquet(path) if path.exists() else pl.DataFrame(schema=schema)


def partition_events(
    data_dir: Path,
    days: Sequence[date],
    n_blocks: int,
    scratch: Path,
    catalogue: pl.DataFrame,
    split_days: Sequence[date],
    window_days: Sequence[date],
) -> Scan:
    """Read the event partitions one day at a time and append each day's events to the scratch file of
    their user block; aggregate the global pieces (available items per day, seen items) on the way.

    Peak memory: one day of events plus the per-day aggregates, whatever the number of days.
    """
    writers = [io.TableWriter(scratch_file(scratch, "events", b)) for b in range(n_blocks)]
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
    return Scan(n_events, day_counts, seen_items)
