"""What every importer shares: the event schema, the layout error, checks of the source, writing days."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl

from pipelines import io

log = logging.getLogger(__name__)

EVENT_SCHEMA: dict[str, pl.DataType] = {
    "user_id": pl.String(),
    "item_id": pl.String(),
    "event": pl.String(),
    "ts": pl.Datetime("us", "UTC"),
}


class SourceLayoutError(ValueError):
    """A source folder that does not look as the importer expects; the message names file, column and fix."""


def require_file(path: Path, kind: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: missing {kind} source file; fix: pass --src pointing at the unpacked {kind} folder "
            f"(see docs/real-data.md for the expected layout)"
        )
    return path


def require_columns(path: Path, present: Sequence[str], required: Sequence[str]) -> None:
    missing = [c for c in required if c not in present]
    if missing:
        raise SourceLayoutError(
            f"{path}: missing column(s) {missing} (found {list(present)}); fix: use the file as published "
            f"upstream, or rename its columns to {list(required)}"
        )


def read_csv_strings(path: Path, separator: str = ",", quote_char: str | None = '"') -> pl.DataFrame:
    """Read a CSV with every column as a string (types are set by each importer, explicitly)."""
    return pl.read_csv(path, separator=separator, quote_char=quote_char, infer_schema=False)


def check_destination(dst: Path) -> None:
    """Refuse to mix an import with an existing data set (stale partitions would survive)."""
    existing = [p for p in (io.users_path(dst), io.items_path(dst), io.events_root(dst)) if p.exists()]
    if existing:
        raise FileExistsError(
            f"{dst}: already holds an input data set ({', '.join(p.name for p in existing)}); "
            "fix: import into a new or empty --data folder (or delete the old one first)"
        )


def require_unique(df: pl.DataFrame, col: str, path: Path) -> None:
    dup = df.height - df.get_column(col).n_unique()
    if dup:
        example = df.filter(pl.col(col).is_duplicated()).get_column(col).head(3).to_list()
        raise SourceLayoutError(
            f"{path}: column {col!r} has {dup} duplicated value(s), e.g. {example}; fix: deduplicate the "
            "source file (ids must be unique)"
        )


def write_events(dst: Path, events: pl.DataFrame) -> dict[str, int]:
    """Write events to one partition per UTC date of `ts`; returns rows per date (ISO strings).

    events: [n] rows with user_id, item_id, event (string) and ts (Datetime us UTC); other columns are
    dropped. Each partition is sorted by (ts, user_id, item_id, event) so a re-import writes the same bytes.
    """
    frame = events.select(
        pl.col("user_id").cast(pl.String),
        pl.col("item_id").cast(pl.String),
        pl.col("event").cast(pl.String),
        pl.col("ts").cast(pl.Datetime("us", "UTC")),
    ).with_columns(pl.col("ts").dt.date().alias("dt"))
    rows: dict[str, int] = {}
    for (dt,), part in sorted(frame.partition_by("dt", as_dict=True).items()):
        part = part.drop("dt").sort("ts", "user_id", "item_id", "event")
        io.write_input_events(dst, dt, part)
        rows[dt.isoformat()] = part.height
    return rows


def import_summary(
    kind: str, src: Path, dst: Path, users: int, items: int, events: pl.DataFrame
) -> dict[str, Any]:
    counts = events.get_column("event").value_counts().sort("event")
    by_type = dict(zip(counts.get_column("event"), counts.get_column("count"), strict=True))
    return summary_of_counts(kind, src, dst, users, items, by_type, events.get_column("ts").dt.date())


def summary_of_counts(
    kind: str, src: Path, dst: Path, users: int, items: int, by_type: dict[str, int], dates: pl.Series
) -> dict[str, Any]:
    """The summary dict from counts (events by type) and the event dates (any length: only min/max are read)."""
    n = sum(by_type.values())
    return {
        "kind": kind,
        "src": str(src),
        "data": str(dst),
        "users": users,
        "items": items,
        "events": n,
        "events_by_type": dict(sorted(by_type.items())),
        "first_date": dates.min().isoformat() if n else None,
        "last_date": dates.max().isoformat() if n else None,
    }
