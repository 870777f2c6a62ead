"""Importers of real public data sets into the input contract of `pipelines.io`.

Each importer reads one source folder (layout as published upstream) and writes a data set that the rest of
the project reads like any other::

    <dst>/events/dt=YYYY-MM-DD/part-0.parquet  user_id, item_id: string; event: view|click|cart|purchase;
                                               ts: timestamp[us, UTC] (its UTC date is the partition date)
    <dst>/users.parquet                        user_id (unique) + user attribute columns
    <dst>/items.parquet                        item_id (unique), title, image_path + item attribute columns

Everything is written through `pipelines.io` (`write_input_table`, `write_input_events`,
`write_input_file`). The mapping of each data set, and what it loses, is in docs/real-data.md:

- `import_amazon`: Amazon 2018 "Video Games" histories (LLMRank / UniSRec leave-one-out files). History
  order becomes time, right-aligned so that the held-out item of every user is on the last date.
- `import_myntra`: the Myntra fashion catalogue (Kaggle "Fashion Product Images (Small)"): items and images
  only, no interactions.
- `import_obd`: the Open Bandit Dataset sample (ZOZOTOWN): impressions -> views, clicks -> clicks.
- `import_taobao`: Taobao's UserBehavior.csv (also the Tmall multi-behaviour copy): pv/fav/cart/buy ->
  view/click/cart/purchase, one partition per day of the shop's time zone; streamed, never whole in memory.

Every importer returns a small JSON-able summary dict for the CLI (`recsys import KIND --src --data`).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import mmh3
import polars as pl

from pipelines import io

log = logging.getLogger(__name__)

EVENT_SCHEMA: dict[str, pl.DataType] = {
    "user_id": pl.String(),
    "item_id": pl.String(),
    "event": pl.String(),
    "ts": pl.Datetime("us", "UTC"),
}

# Amazon: every event of day d is stamped at d 12:00 UTC (one event per user and day, so no ties per user).
AMAZON_EVENT_HOUR = 12
# OBD: a click is stamped this many seconds after the impression it belongs to.
OBD_CLICK_DELAY_S = 1
# OBD: separator of the user feature values that are hashed into a user id (ASCII unit separator).
OBD_USER_KEY_SEP = "\x1f"

# Amazon titles often end in " - <platform>"; these suffixes (lower case, [bracketed] tags removed) are
# mapped to a platform name. Anything else leaves `platform` null: no guessing from the rest of the title.
AMAZON_PLATFORM_SUFFIXES: tuple[tuple[str, str], ...] = (
    ("pc", "PC"),
    ("pc/mac", "PC/Mac"),
    ("mac", "Mac"),
    ("xbox", "Xbox"),
    ("xbox 360", "Xbox 360"),
    ("xbox one", "Xbox One"),
    ("xbox one digital code", "Xbox One"),
    ("playstation", "PlayStation"),
    ("playstation 2", "PlayStation 2"),
    ("playstation 3", "PlayStation 3"),
    ("ps3", "PlayStation 3"),
    ("playstation 4", "PlayStation 4"),
    ("ps4", "PlayStation 4"),
    ("playstation vita", "PlayStation Vita"),
    ("ps vita", "PlayStation Vita"),
    ("sony psp", "PSP"),
    ("psp", "PSP"),
    ("nintendo ds", "Nintendo DS"),
    ("nintendo 3ds", "Nintendo 3DS"),
    ("3ds", "Nintendo 3DS"),
    ("nintendo wii", "Wii"),
    ("wii", "Wii"),
    ("nintendo wii u", "Wii U"),
    ("wii u", "Wii U"),
    ("nintendo switch", "Nintendo Switch"),
    ("gamecube", "GameCube"),
    ("nintendo gamecube", "GameCube"),
    ("nintendo 64", "Nintendo 64"),
    ("nintendo nes", "NES"),
    ("nintendo super nes", "Super NES"),
    ("game boy", "Game Boy"),
    ("game boy color", "Game Boy Color"),
    ("game boy advance", "Game Boy Advance"),
    ("sega genesis", "Sega Genesis"),
    ("sega dreamcast", "Sega Dreamcast"),
    ("sega saturn", "Sega Saturn"),
)

# Myntra source column -> items.parquet column (title and image_path are added separately).
MYNTRA_COLUMNS: dict[str, str] = {
    "id": "item_id",
    "productDisplayName": "title",
    "gender": "gender",
    "masterCategory": "master_category",
    "subCategory": "sub_category",
    "articleType": "article_type",
    "baseColour": "base_colour",
    "season": "season",
    "year": "year",
    "usage": "usage",
}


class SourceLayoutError(ValueError):
    """A source folder that does not look as the importer expects; the message names file, column and fix."""


# ---------------------------------------------------------------- shared helpers


def _require_file(path: Path, kind: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: missing {kind} source file; fix: pass --src pointing at the unpacked {kind} folder "
            f"(see docs/real-data.md for the expected layout)"
        )
    return path


def _require_columns(path: Path, present: Sequence[str], required: Sequence[str]) -> None:
    missing = [c for c in required if c not in present]
    if missing:
        raise SourceLayoutError(
            f"{path}: missing column(s) {missing} (found {list(present)}); fix: use the file as published "
            f"upstream, or rename its columns to {list(required)}"
        )


def _read_csv_strings(path: Path, separator: str = ",", quote_char: str | None = '"') -> pl.DataFrame:
    """Read a CSV with every column as a string (types are set by each importer, explicitly)."""
    return pl.read_csv(path, separator=separator, quote_char=quote_char, infer_schema=False)


def _check_destination(dst: Path) -> None:
    """Refuse to mix an import with an existing data set (stale partitions would survive)."""
    existing = [p for p in (io.users_path(dst), io.items_path(dst), io.events_root(dst)) if p.exists()]
    if existing:
        raise FileExistsError(
            f"{dst}: already holds an input data set ({', '.join(p.name for p in existing)}); "
            "fix: import into a new or empty --data folder (or delete the old one first)"
        )


def _require_unique(df: pl.DataFrame, col: str, path: Path) -> None:
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


def _summary(kind: str, src: Path, dst: Path, users: int, items: int, events: pl.DataFrame) -> dict[str, Any]:
    counts = events.get_column("event").value_counts().sort("event")
    by_type = dict(zip(counts.get_column("event"), counts.get_column("count"), strict=True))
    return _summary_of_counts(kind, src, dst, users, items, by_type, events.get_column("ts").dt.date())


def _summary_of_counts(
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


# ---------------------------------------------------------------- Amazon (LLMRank "Games")

AMAZON_ITEM_FILE = "Games.item"
AMAZON_INTER_FILE = "Games-6k.test.inter"
_AMAZON_ITEM_COLS = ("item_id:token", "title:token_seq")
_AMAZON_INTER_COLS = ("user_id:token", "item_id_list:token_seq", "item_id:token")


def amazon_platform(title: pl.Expr) -> pl.Expr:
    """Platform named by a title's trailing " - <platform>" (tags like "[Digital Code]" ignored), else null.

    >>> df = pl.DataFrame({"t": ["Halo 3 - Xbox 360", "Portal 2 - PS3 [Digital Code]", "Rocky"]})
    >>> df.select(amazon_platform(pl.col("t"))).to_series().to_list()
    ['Xbox 360', 'PlayStation 3', None]
    """
    suffix = (
        title.str.extract(r" - ([^-]+)$")
        .str.replace_all(r"\[[^\]]*\]", "")
        .str.strip_chars()
        .str.to_lowercase()
    )
    keys = [k for k, _ in AMAZON_PLATFORM_SUFFIXES]
    names = [v for _, v in AMAZON_PLATFORM_SUFFIXES]
    return suffix.replace_strict(keys, names, default=None, return_dtype=pl.String)


def amazon_events(inter: pl.DataFrame, start: date) -> pl.DataFrame:
    """Leave-one-out histories -> purchase events, history order as time, right-aligned on the last date.

    inter: [U] rows with user_id (string), history (string, space-separated item ids, oldest first, may be
        empty) and target (string, the held-out next item).
    Returns [sum of (len(history) + 1)] rows of user_id, item_id, event="purchase", ts. With L the longest
    sequence (history + target), the last date is start + (L - 1) days; the k-th item from the end of a
    user's sequence (k = 0 is the target) is on day last - k at 12:00 UTC. So every target is on the last
    date, every user's second-to-last item (the `valid.inter` target) on the day before, and events span
    L <= 50 days.

    >>> inter = pl.DataFrame({"user_id": ["a", "b"], "history": ["1 2", ""], "target": ["3", "4"]})
    >>> ev = amazon_events(inter, date(2024, 1, 1))
    >>> ev.select("user_id", "item_id", pl.col("ts").dt.date()).rows()[-2:]
    [('a', '3', datetime.date(2024, 1, 3)), ('b', '4', datetime.date(2024, 1, 3))]
    """
    seq = inter.select(
        pl.col("user_id"),
        pl.concat_list(
            pl.col("history").str.split(" ").list.eval(pl.element().filter(pl.element() != "")),
            pl.col("target"),
        ).alias("item_id"),
    ).with_columns(pl.col("item_id").list.len().alias("n"))
    longest = int(seq.get_column("n").max() or 0)
    origin = datetime(start.year, start.month, start.day, AMAZON_EVENT_HOUR, tzinfo=UTC)
    exploded = seq.with_columns(pl.int_ranges(0, pl.col("n")).alias("pos")).explode("item_id", "pos")
    # position pos of n items is k = n - 1 - pos from the end -> day (longest - 1) - k = longest - n + pos
    day = pl.lit(longest, dtype=pl.Int64) - pl.col("n").cast(pl.Int64) + pl.col("pos")
    return exploded.select(
        "user_id",
        "item_id",
        pl.lit("purchase").alias("event"),
        (pl.lit(origin, dtype=pl.Datetime("us", "UTC")) + pl.duration(days=day)).alias("ts"),
    ).sort("ts", "user_id")


def import_amazon(src: Path, dst: Path, start: date = date(2024, 1, 1)) -> dict[str, Any]:
    """Import LLMRank's Amazon "Games" files (Games.item, Games-6k.test.inter) from `src` into `dst`.

    Each history item and the held-out item become a "purchase" event (see `amazon_events` for dates);
    items get item_id, title, image_path (null: no images) and `platform` (from the title suffix, see
    `amazon_platform`); users get user_id only. Items that occur in a history but not in Games.item are added
    with a null title (logged). Returns the summary dict, with `eval_date` (date of every held-out item) and
    `valid_date` (date of every second-to-last item).
    """
    src, dst = Path(src), Path(dst)
    item_file = _require_file(src / AMAZON_ITEM_FILE, "amazon")
    inter_file = _require_file(src / AMAZON_INTER_FILE, "amazon")
    raw_items = _read_csv_strings(item_file, separator="\t", quote_char=None)
    _require_columns(item_file, raw_items.columns, _AMAZON_ITEM_COLS)
    raw_inter = _read_csv_strings(inter_file, separator="\t", quote_char=None)
    _require_columns(inter_file, raw_inter.columns, _AMAZON_INTER_COLS)
    _check_destination(dst)

    inter = raw_inter.select(
        pl.col("user_id:token").str.strip_chars().alias("user_id"),
        pl.col("item_id_list:token_seq").fill_null("").str.strip_chars().alias("history"),
        pl.col("item_id:token").str.strip_chars().alias("target"),
    )
    _require_unique(inter, "user_id", inter_file)
    if inter.get_column("target").null_count() or inter.get_column("user_id").null_count():
        raise SourceLayoutError(
            f"{inter_file}: null user_id or held-out item_id; fix: every row needs both (user, history, item)"
        )
    events = amazon_events(inter, start)

    items = raw_items.select(
        pl.col("item_id:token").str.strip_chars().alias("item_id"),
        pl.col("title:token_seq").str.strip_chars().alias("title"),
    )
    _require_unique(items, "item_id", item_file)
    unknown = (
        events.select("item_id")
        .unique()
        .join(items.select("item_id"), on="item_id", how="anti")
        .sort("item_id")
    )
    if unknown.height:
        log.warning(
            "%s: %d item ids of %s are not in the catalogue; added with a null title",
            item_file,
            unknown.height,
            inter_file.name,
        )
        items = pl.concat([items, unknown.with_columns(pl.lit(None, dtype=pl.String).alias("title"))])
    items = items.select(
        "item_id",
        "title",
        pl.lit(None, dtype=pl.String).alias("image_path"),
        amazon_platform(pl.col("title")).alias("platform"),
    ).sort("item_id")
    users = inter.select("user_id").sort("user_id")

    io.write_input_table(dst, "items", items)
    io.write_input_table(dst, "users", users)
    write_events(dst, events)
    out = _summary("amazon", src, dst, users.height, items.height, events)
    out["eval_date"] = out["last_date"]
    last = events.get_column("ts").dt.date().max()
    out["valid_date"] = date.fromordinal(last.toordinal() - 1).isoformat() if events.height else None
    out["items_without_title"] = unknown.height
    log.info("amazon import: %s", out)
    return out


# ---------------------------------------------------------------- Myntra fashion catalogue

MYNTRA_STYLES_FILE = "styles_merged.csv"
MYNTRA_IMAGE_DIR = "images"


def _image_ids(folder: Path) -> pl.DataFrame:
    """Ids of the `<id>.jpg` files in `folder` (none when the folder is absent)."""
    names: list[str] = []
    if folder.is_dir():
        with os.scandir(folder) as entries:
            names = [e.name for e in entries if e.is_file() and e.name.endswith(".jpg")]
    return pl.DataFrame({"item_id": [n[: -len(".jpg")] for n in names]}, schema={"item_id": pl.String})


def import_myntra(src: Path, dst: Path, start: date = date(2024, 1, 1), seed: int = 0) -> dict[str, Any]:
    """Import the Myntra catalogue (styles_merged.csv + images/<id>.jpg) from `src` into `dst`, items only.

    items.parquet: item_id, title (productDisplayName), image_path ("images/<id>.jpg" where that image exists
    in `src`, else null), gender, master_category, sub_category, article_type, base_colour, season, usage
    (strings) and year (Int32). The images that belong to a catalogue item are copied to `<dst>/images/`.
    users.parquet has zero rows (a user_id column only) and no event partition is written: this data set
    has no interactions and none are invented. `start` and `seed` are accepted so that the CLI can call
    every importer alike; with no events to place or sample they are not used.
    """
    del start, seed  # a catalogue-only import has no dates and no randomness
    src, dst = Path(src), Path(dst)
    styles_file = _require_file(src / MYNTRA_STYLES_FILE, "myntra")
    raw = _read_csv_strings(styles_file)
    _require_columns(styles_file, raw.columns, list(MYNTRA_COLUMNS))
    _check_destination(dst)

    items = raw.select([pl.col(s).str.strip_chars().alias(d) for s, d in MYNTRA_COLUMNS.items()])
    if items.get_column("item_id").null_count():
        raise SourceLayoutError(f"{styles_file}: column 'id' has empty values; fix: every style needs an id")
    _require_unique(items, "item_id", styles_file)
    year = items.get_column("year").cast(pl.Int32, strict=False)
    bad_year = items.get_column("year").is_not_null() & year.is_null()
    if bad_year.any():
        raise SourceLayoutError(
            f"{styles_file}: column 'year' has non-integer values, e.g. "
            f"{items.filter(bad_year).get_column('year').head(3).to_list()}; fix: use 4-digit years or leave empty"
        )
    image_dir = src / MYNTRA_IMAGE_DIR
    with_image = items.select("item_id").join(_image_ids(image_dir), on="item_id", how="semi").sort("item_id")
    items = (
        items.with_columns(year.alias("year"))
        .join(with_image.with_columns(pl.lit(True).alias("_img")), on="item_id", how="left")
        .with_columns(
            pl.when(pl.col("_img"))
            .then(pl.format("{}/{}.jpg", pl.lit(MYNTRA_IMAGE_DIR), pl.col("item_id")))
            .otherwise(None)
            .alias("image_path")
        )
        .select(
            "item_id",
            "title",
            "image_path",
            *[d for d in MYNTRA_COLUMNS.values() if d not in ("item_id", "title")],
        )
        .sort("item_id")
    )
    # a file copy per image (there is no bulk form of write_input_file); the rows come from the join above
    for rel in items.get_column("image_path").drop_nulls():
        io.write_input_file(dst, rel, (src / rel).read_bytes())
    users = pl.DataFrame(schema={"user_id": pl.String})
    io.write_input_table(dst, "items", items)
    io.write_input_table(dst, "users", users)
    if not image_dir.is_dir():
        log.warning("%s: no images folder; every image_path is null", image_dir)
    out = _summary("myntra", src, dst, 0, items.height, pl.DataFrame(schema=EVENT_SCHEMA))
    out["images"] = with_image.height
    log.info("myntra import: %s", out)
    return out


# ---------------------------------------------------------------- Open Bandit Dataset (ZOZOTOWN)

OBD_CONTEXT_FILE = "item_context.csv"
_OBD_LOG_COLS = ("timestamp", "item_id", "click")
_OBD_TS_FORMAT = "%Y-%m-%d %H:%M:%S%.f%:z"


def _obd_campaigns(src: Path) -> list[tuple[str, str, Path, Path]]:
    """(policy, campaign, log csv, item_context csv) of every <policy>/<campaign>/ folder, sorted."""
    found = []
    for context in sorted(src.glob(f"*/*/{OBD_CONTEXT_FILE}")):
        folder = context.parent
        log_file = _require_file(folder / f"{folder.name}.csv", "obd")
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
        frame = _read_csv_strings(log_file)
        _require_columns(log_file, frame.columns, _OBD_LOG_COLS)
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
            context = _read_csv_strings(context_file)
            _require_columns(context_file, context.columns, ("item_id",))
            contexts[campaign] = (context_file, context)
    _check_destination(dst)

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
        _require_unique(typed, "item_id", context_file)
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
    out = _summary("obd", src, dst, users.height, items.height, events)
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


# ---------------------------------------------------------------- Taobao / Tmall user behaviour

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
    return _require_file(src if src.is_file() else src / TAOBAO_FILE, "taobao")


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
    _check_destination(dst)
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
    out = _summary_of_counts("taobao", src, dst, users.height, items.height, counts, days.get_column("dt"))
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


IMPORTERS: dict[str, Callable[..., dict[str, Any]]] = {
    "amazon": import_amazon,
    "myntra": import_myntra,
    "obd": import_obd,
    "taobao": import_taobao,
}
