"""The Open Bandit Dataset sample (ZOZOTOWN): impressions -> views, clicks -> clicks."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mmh3
import polars as pl

from pipelines import io
from pipelines.datasets.common import (
    SourceLayoutError,
    check_destination,
    import_summary,
    read_csv_strings,
    require_columns,
    require_file,
    require_unique,
    write_events,
)

log = logging.getLogger(__name__)

# OBD: a click is stamped this many seconds after the impression it belongs to.
OBD_CLICK_DELAY_S = 1
# OBD: separator of the user feature values that are hashed into a user id (ASCII unit separator).
OBD_USER_KEY_SEP = "\x1f"


OBD_CONTEXT_FILE = "item_context.csv"
_OBD_LOG_COLS = ("timestamp", "item_id", "click")
_OBD_TS_FORMAT = "%Y-%m-%d %H:%M:%S%.f%:z"


def _obd_campaigns(src: Path) -> list[tuple[str, str, Path, Path]]:
    """(policy, campaign, log csv, item_context csv) of every <policy>/<campaign>/ folder, sorted."""
    found = []
    for context in sorted(src.glob(f"*/*/{OBD_CONTEXT_FILE}")):
        folder = context.parent
        log_file = require_file(folder / f"{folder.name}.csv", "obd")
        found.append((folder.parent.name, folder.name, log_file, context))
    if not found:
        raise FileNotFoundError(
            f"{src}: no <policy>/<campaign>/{OBD_CONTEXT_FILE} found; fix: pass the Open Bandit Dataset folder "
            "that holds e.g. random/men/men.csv and random/men/item_context.csv"
        )
    return found


def _numbered_columns(columns: Sequence[str], prefix: str) -> list[str]:
    """Columns named <prefix><n> (n a number), in the order of n: user_feature_0, user_feature_1, ..."""
    numbered = [c for c in columns if c.startswith(prefix) and c[len(prefix) :].isdigit()]
    return sorted(numbered, key=lambda c: int(c[len(prefix) :]))


def obd_user_ids(keys: pl.Series) -> pl.DataFrame:
    """Stable user ids for distinct user-feature keys: "obd-" + 32 hex digits of mmh3 x64 128-bit (seed 0).

    keys: [n] string, the user feature values joined by OBD_USER_KEY_SEP. Returns [distinct n] rows of
    _key, user_id (hashing runs over distinct values only; join the result back on `_key`).
    """
    distinct = keys.unique().sort()
    ids = [f"obd-{mmh3.hash128(k, seed=0, x64arch=True, signed=False):032x}" for k in distinct.to_list()]
    return pl.DataFrame({"_key": distinct, "user_id": ids}, schema={"_key": pl.String, "user_id": pl.String})


def import_obd(src: Path, dst: Path) -> dict[str, Any]:
    """Import an Open Bandit Dataset folder (<policy>/<campaign>/<campaign>.csv + item_context.csv).

    Every impression becomes a "view" at its timestamp; a clicked impression (click == 1) also becomes a
    "click" OBD_CLICK_DELAY_S (1) second later, so the click sorts after its view. Items are campaign-scoped
    ("men-14" is item 14 of the men campaign), with `campaign` and the item_feature_* columns of the first
    policy's item_context.csv (policies share items; their hashed values differ only by the hash); title and
    image_path are null. The sample has no user id: user_id is a hash of the user_feature_* values
    (`obd_user_ids`), so every impression with the same features maps to the same "user", and those features
    are the user attributes. Dropped: position, propensity_score, user-item_affinity_*, the behaviour policy.
    """
    src, dst = Path(src), Path(dst)
    campaigns = _obd_campaigns(src)
    logs, contexts = [], {}
    user_cols: list[str] = []
    for _policy, campaign, log_file, context_file in campaigns:
        frame = read_csv_strings(log_file)
        require_columns(log_file, frame.columns, _OBD_LOG_COLS)
        cols = _numbered_columns(frame.columns, "user_feature_")
        if not cols:
            raise SourceLayoutError(
                f"{log_file}: missing column(s) ['user_feature_0', ...]; fix: the impressions file needs the "
                "hashed user features (user ids are derived from them)"
            )
        if user_cols and cols != user_cols:
            raise SourceLayoutError(
                f"{log_file}: user feature columns {cols} differ from {user_cols} of the other files; fix: "
                "import folders of one Open Bandit Dataset release together"
            )
        user_cols = cols
        logs.append(
            frame.select(pl.col("timestamp"), pl.col("item_id"), pl.col("click"), *cols).with_columns(
                pl.lit(campaign).alias("campaign"), pl.lit(str(log_file)).alias("_file")
            )
        )
        if campaign not in contexts:  # first policy (sorted) of each campaign
            context = read_csv_strings(context_file)
            require_columns(context_file, context.columns, ("item_id",))
            contexts[campaign] = (context_file, context)
    check_destination(dst)

    impressions = pl.concat(logs).with_columns(
        pl.col("timestamp").str.to_datetime(_OBD_TS_FORMAT, time_unit="us", strict=False).alias("ts"),
        pl.col("click").cast(pl.Int8, strict=False).alias("_click"),
        pl.format("{}-{}", pl.col("campaign"), pl.col("item_id").str.strip_chars()).alias("item_id"),
        pl.concat_str([pl.col(c).fill_null("") for c in user_cols], separator=OBD_USER_KEY_SEP).alias("_key"),
    )
    bad = impressions.filter(
        pl.col("ts").is_null() | ~pl.col("_click").is_in([0, 1]) | pl.col("_click").is_null()
    )
    if bad.height:
        row = bad.row(0, named=True)
        raise SourceLayoutError(
            f"{row['_file']}: {bad.height} row(s) with an unreadable 'timestamp' or a 'click' not in {{0, 1}}, "
            f"e.g. timestamp={row['timestamp']!r} click={row['click']!r}; fix: timestamps like "
            "'2019-11-24 00:03:13.442536+00:00' and clicks 0/1"
        )
    impressions = impressions.with_columns(pl.col("ts").dt.convert_time_zone("UTC")).join(
        obd_user_ids(impressions.get_column("_key")), on="_key", how="left"
    )
    views = impressions.select("user_id", "item_id", pl.lit("view").alias("event"), "ts")
    clicks = impressions.filter(pl.col("_click") == 1).select(
        "user_id",
        "item_id",
        pl.lit("click").alias("event"),
        (pl.col("ts") + pl.duration(seconds=OBD_CLICK_DELAY_S)).alias("ts"),
    )
    events = pl.concat([views, clicks])
    users = impressions.select("user_id", *user_cols).unique(subset="user_id").sort("user_id")

    item_frames = []
    for campaign, (context_file, context) in contexts.items():
        feats = _numbered_columns(context.columns, "item_feature_")
        typed = context.select(
            pl.format("{}-{}", pl.lit(campaign), pl.col("item_id").str.strip_chars()).alias("item_id"),
            pl.lit(campaign).alias("campaign"),
            # numbers stay numeric (item_feature_0 is a float), hashed categories stay strings
            *[
                pl.col(c).cast(pl.Float64, strict=False).alias(c) if _all_numeric(context, c) else pl.col(c)
                for c in feats
            ],
        )
        require_unique(typed, "item_id", context_file)
        item_frames.append(typed)
    items = pl.concat(item_frames, how="diagonal_relaxed").select(
        "item_id",
        pl.lit(None, dtype=pl.String).alias("title"),
        pl.lit(None, dtype=pl.String).alias("image_path"),
        pl.exclude("item_id"),
    )
    unknown = events.select("item_id").unique().join(items.select("item_id"), on="item_id", how="anti")
    if unknown.height:
        raise SourceLayoutError(
            f"{src}: {unknown.height} impressed item(s) missing from {OBD_CONTEXT_FILE}, e.g. "
            f"{unknown.get_column('item_id').head(3).to_list()}; fix: use the item_context.csv of the same campaign"
        )
    items = items.sort("item_id")

    io.write_input_table(dst, "items", items)
    io.write_input_table(dst, "users", users)
    write_events(dst, events)
    out = import_summary("obd", src, dst, users.height, items.height, events)
    out["files"] = [str(f) for _, _, f, _ in campaigns]
    log.info("obd import: %s", {k: v for k, v in out.items() if k != "files"})
    return out


def _all_numeric(df: pl.DataFrame, col: str) -> bool:
    """True when every non-null value of a string column parses as a float."""
    values = df.get_column(col)
    return bool(
        values.null_count() < df.height
        and values.cast(pl.Float64, strict=False).null_count() == values.null_count()
    )
