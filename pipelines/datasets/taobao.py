"""Taobao's UserBehavior.csv (also the Tmall multi-behaviour copy) -> one partition per day of the shop's time zone."""

from __future__ import annotations

import logging
import tempfile
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import polars as pl

from pipelines import io
from pipelines.datasets.common import (
    EVENT_SCHEMA,
    SourceLayoutError,
    check_destination,
    require_file,
    summary_of_counts,
    write_events,
)

log = logging.getLogger(__name__)

TAOBAO_FILE = "UserBehavior.csv"
TAOBAO_COLUMNS: tuple[str, ...] = ("user_id", "item_id", "category_id", "behavior_type", "timestamp")
# behavior_type -> contract event. A favourite is the strongest engagement signal short of the cart, so it
# takes the `click` slot (docs/real-data.md).
TAOBAO_EVENTS: dict[str, str] = {"pv": "view", "fav": "click", "cart": "cart", "buy": "purchase"}
# Sanity bounds of a time stamp (UTC; the release covers 2017-11-25 .. 2017-12-03 Beijing time): a row
# outside them is an error unless first_day/last_day drop it.
TAOBAO_TS_MIN = datetime(2000, 1, 1, tzinfo=UTC)
TAOBAO_TS_MAX = datetime(2100, 1, 1, tzinfo=UTC)
# scan-only columns: a 6th field (null in a valid row) and the 1-based line number, for error messages
_TAOBAO_EXTRA = "_extra"
_TAOBAO_LINE = "_line"


def taobao_wall_clock(seconds: pl.Expr, tz: str) -> pl.Expr:
    """Unix seconds -> Datetime(us, UTC) holding the wall-clock time of `tz`, labelled UTC.

    With tz="UTC" this is the instant itself. With another zone the instant is moved by that zone's offset,
    so that the UTC date of the result is the shop's local calendar date: 2017-11-25 23:30 in Beijing
    (15:30 UTC) is written as 2017-11-25 23:30 "UTC". Durations between events are kept, except across a
    daylight-saving change (none in Asia/Shanghai).

    >>> df = pl.DataFrame({"s": [1511623800]})  # 2017-11-25 15:30:00 UTC
    >>> df.select(taobao_wall_clock(pl.col("s"), "Asia/Shanghai")).item().isoformat()
    '2017-11-25T23:30:00+00:00'
    >>> df.select(taobao_wall_clock(pl.col("s"), "UTC")).item().isoformat()
    '2017-11-25T15:30:00+00:00'
    """
    return (
        pl.from_epoch(seconds, time_unit="s")
        .dt.cast_time_unit("us")
        .dt.replace_time_zone("UTC")
        .dt.convert_time_zone(tz)
        .dt.replace_time_zone(None)
        .dt.replace_time_zone("UTC")
    )


def taobao_item_category(counts: pl.LazyFrame) -> pl.LazyFrame:
    """Each item's most frequent non-null category; ties go to the smallest id (numerically where integer).

    counts: one row per (item_id, category) pair (category: string, may be null) with len, the rows of that
    pair. Returns one row per item_id of `counts` with `category` (null when the item never has one).

    >>> counts = pl.LazyFrame(
    ...     {"item_id": ["a", "a", "a", "b", "c"], "category": ["9", "10", None, None, "7"],
    ...      "len": [2, 2, 5, 1, 3]}
    ... )
    >>> taobao_item_category(counts).sort("item_id").collect().rows()
    [('a', '9'), ('b', None), ('c', '7')]
    """
    category = pl.col("category")
    order = [category.is_null(), pl.col("len"), category.cast(pl.Int64, strict=False), category]
    return counts.group_by("item_id").agg(
        category.sort_by(order, descending=[False, True, False, False], nulls_last=True).first()
    )


def _taobao_file(src: Path) -> Path:
    """`src` itself when it is a file, else `src`/UserBehavior.csv."""
    return require_file(src if src.is_file() else src / TAOBAO_FILE, "taobao")


def _time_zone(tz: str) -> str:
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {tz!r}; fix: pass an IANA zone name such as 'UTC' or 'Asia/Shanghai' (--tz)"
        ) from None
    return tz


def _taobao_scan(path: Path) -> pl.LazyFrame:
    """The five columns as strings, plus _extra (a 6th field: null in a valid row) and _line (1-based)."""
    return pl.scan_csv(
        path,
        has_header=False,
        schema={c: pl.String for c in (*TAOBAO_COLUMNS, _TAOBAO_EXTRA)},
        quote_char=None,
        missing_columns="insert",
        extra_columns="ignore",
        truncate_ragged_lines=True,
        row_index_name=_TAOBAO_LINE,
        row_index_offset=1,
    )


def _taobao_seconds() -> pl.Expr:
    return pl.col("timestamp").cast(pl.Int64, strict=False)


def _taobao_kept(seconds: pl.Expr, tz: str, first_day: date | None, last_day: date | None) -> pl.Expr:
    """Rows that the import keeps: all rows without first_day/last_day, else those with a time stamp within
    TAOBAO_TS_MIN .. TAOBAO_TS_MAX whose day in `tz` is within first_day .. last_day (inclusive)."""
    if first_day is None and last_day is None:
        return pl.lit(True)
    lo, hi = int(TAOBAO_TS_MIN.timestamp()), int(TAOBAO_TS_MAX.timestamp())
    keep = (seconds >= lo) & (seconds < hi)
    day = taobao_wall_clock(seconds, tz).dt.date()
    if first_day is not None:
        keep = keep & (day >= first_day)
    if last_day is not None:
        keep = keep & (day <= last_day)
    return keep.fill_null(False)


def _check_taobao(
    path: Path, scan: pl.LazyFrame, tz: str, first_day: date | None, last_day: date | None
) -> dict[str, int]:
    """Check the whole file in one streaming pass; raise SourceLayoutError on the first failing check (file,
    column, a sample value with its line, found by a second pass, and the fix). Returns rows and
    rows_outside_days (the rows that first_day/last_day drop).
    """
    seconds = _taobao_seconds()
    is_int = pl.col("timestamp").is_not_null() & seconds.is_not_null()
    kept = _taobao_kept(seconds, tz, first_day, last_day)
    lo, hi = int(TAOBAO_TS_MIN.timestamp()), int(TAOBAO_TS_MAX.timestamp())
    five = ", ".join(TAOBAO_COLUMNS)
    checks: list[tuple[str, pl.Expr, str, str]] = [  # (column, bad row, what, fix)
        (
            "6th field",
            pl.col(_TAOBAO_EXTRA).is_not_null(),
            "more than 5 comma-separated fields",
            f"write exactly 5 fields per row ({five}), no header",
        ),
        *[
            (
                col,
                pl.col(col).is_null(),
                "an empty value (or fewer than 5 fields)",
                f"every row needs {five}, comma-separated (only category_id may be empty)",
            )
            for col in ("user_id", "item_id", "behavior_type", "timestamp")
        ],
        (
            "behavior_type",
            pl.col("behavior_type").is_not_null() & ~pl.col("behavior_type").is_in(list(TAOBAO_EVENTS)),
            "an unknown value",
            f"use one of {', '.join(TAOBAO_EVENTS)} (lower case); the file has no header row, remove one if present",
        ),
        (
            "timestamp",
            pl.col("timestamp").is_not_null() & seconds.is_null(),
            "a non-integer value",
            "write Unix time in whole seconds, e.g. 1511539200",
        ),
        (
            "timestamp",
            is_int & kept & ((seconds < lo) | (seconds >= hi)),
            f"a time outside {TAOBAO_TS_MIN.date()} .. {TAOBAO_TS_MAX.date()}",
            "check the unit (Unix seconds, not ms), or drop such rows with --first-day/--last-day "
            "(the published release covers 2017-11-25 .. 2017-12-03)",
        ),
    ]
    line = pl.concat_str([pl.col(c).fill_null("") for c in TAOBAO_COLUMNS], separator=",")
    extra = pl.col(_TAOBAO_EXTRA)
    row_text = pl.when(extra.is_null()).then(line).otherwise(pl.concat_str([line, extra], separator=","))
    counts = [pl.len().alias("rows"), (is_int & ~kept).sum().alias("rows_outside_days")]
    counts += [bad.sum().alias(f"bad{i}") for i, (_, bad, _, _) in enumerate(checks)]
    try:
        found = scan.select(counts).collect(engine="streaming").row(0, named=True)
        failed = next(((i, c) for i, c in enumerate(checks) if found[f"bad{i}"]), None)
        if failed is not None:  # a second pass, only on failure: the first bad row, for the message
            i, (col, bad, what, fix) = failed
            value = pl.col(col) if col in TAOBAO_COLUMNS else extra
            first = scan.filter(bad).select(_TAOBAO_LINE, value.alias("value"), row_text.alias("row")).head(1)
            sample = first.collect(engine="streaming").row(0, named=True)
    except pl.exceptions.PolarsError as err:
        raise SourceLayoutError(
            f"{path}: not readable as Taobao's UserBehavior.csv ({err}); fix: a UTF-8, comma-separated file "
            f"without header, columns {five}"
        ) from None
    if found["rows"] == 0:
        raise SourceLayoutError(
            f"{path}: the file holds no rows; fix: pass the UserBehavior.csv of the release"
        )
    if failed is not None:
        example = f"{sample['value']!r} on line" if sample["value"] is not None else "line"
        raise SourceLayoutError(
            f"{path}: column {col!r} has {what} in {found[f'bad{i}']} row(s), e.g. {example} "
            f"{sample[_TAOBAO_LINE]}: {sample['row']!r}; fix: {fix}"
        )
    return {"rows": found["rows"], "rows_outside_days": found["rows_outside_days"]}


def import_taobao(
    src: Path,
    dst: Path,
    tz: str = "UTC",
    first_day: date | None = None,
    last_day: date | None = None,
) -> dict[str, Any]:
    """Import Taobao's UserBehavior.csv (`src`: the file, or the folder that holds it) into `dst`.

    The file has no header: user_id, item_id, category_id (may be empty), behavior_type (pv, fav, cart,
    buy), timestamp (Unix seconds). Events: pv -> view, fav -> click, cart -> cart, buy -> purchase
    (TAOBAO_EVENTS), one partition per calendar day of `tz`. With tz="UTC" `ts` is the instant; with
    another zone `ts` holds the local wall-clock time labelled UTC (`taobao_wall_clock`), so that a shop day
    is one partition. first_day/last_day (inclusive, days of `tz`) drop the rows outside them (counted in
    `rows_outside_days`). Exact duplicate rows are kept (counted in `duplicate_events`). Items: item_id,
    title and image_path (null), category (`taobao_item_category`); users: user_id only.

    The file is scanned lazily (one pass to check it, one to stage typed rows in a temporary Parquet file
    under `dst`), then each day is read back from that file and written: memory holds one day of events.
    """
    src, dst = Path(src), Path(dst)
    path = _taobao_file(src)
    tz = _time_zone(tz)
    if first_day is not None and last_day is not None and first_day > last_day:
        raise ValueError(f"first_day {first_day} is after last_day {last_day}; fix: swap them")
    check_destination(dst)
    scan = _taobao_scan(path)
    checked = _check_taobao(path, scan, tz, first_day, last_day)

    seconds = _taobao_seconds()
    staged_rows = scan.filter(_taobao_kept(seconds, tz, first_day, last_day)).select(
        "user_id",
        "item_id",
        pl.col("behavior_type").replace_strict(TAOBAO_EVENTS, return_dtype=pl.String).alias("event"),
        taobao_wall_clock(seconds, tz).alias("ts"),
        pl.col("category_id").alias("category"),
    )
    dst.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".taobao-staging-", dir=dst) as tmp:
        staged_file = Path(tmp) / "events.parquet"
        staged_rows.sink_parquet(staged_file)
        staged = pl.scan_parquet(staged_file).with_columns(pl.col("ts").dt.date().alias("dt"))
        days, by_type, items, users = pl.collect_all(
            [
                staged.group_by("dt").len().sort("dt"),
                staged.group_by("event").len(),
                taobao_item_category(staged.group_by("item_id", "category").len()).sort("item_id"),
                staged.select("user_id").unique().sort("user_id"),
            ],
            engine="streaming",
        )
        items = items.select(
            "item_id",
            pl.lit(None, dtype=pl.String).alias("title"),
            pl.lit(None, dtype=pl.String).alias("image_path"),
            "category",
        )
        io.write_input_table(dst, "items", items)
        io.write_input_table(dst, "users", users)
        rows_by_date: dict[str, int] = {}
        duplicates = 0
        for dt in days.get_column("dt"):
            day = staged.filter(pl.col("dt") == dt).select(list(EVENT_SCHEMA)).collect(engine="streaming")
            duplicates += day.height - day.n_unique()
            rows_by_date.update(write_events(dst, day))

    counts = dict(zip(by_type.get_column("event"), by_type.get_column("len"), strict=True))
    out = summary_of_counts("taobao", src, dst, users.height, items.height, counts, days.get_column("dt"))
    out |= {
        "tz": tz,
        "file": str(path),
        "rows": checked["rows"],
        "rows_outside_days": checked["rows_outside_days"],
        "duplicate_events": duplicates,
        "items_with_category": items.height - items.get_column("category").null_count(),
        "events_by_date": rows_by_date,
    }
    if checked["rows_outside_days"]:
        log.warning(
            "%s: dropped %d row(s) outside %s .. %s (%s)",
            path,
            checked["rows_outside_days"],
            first_day or "-",
            last_day or "-",
            tz,
        )
    if duplicates:
        log.warning(
            "%s: kept %d exact duplicate event(s) (same user, item, event and second)", path, duplicates
        )
    log.info("taobao import: %s", {k: v for k, v in out.items() if k != "events_by_date"})
    return out
