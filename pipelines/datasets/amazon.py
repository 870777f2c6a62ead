"""Amazon 2018 "Video Games" histories (the LLMRank / UniSRec leave-one-out files) -> the input contract."""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

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

# Amazon: every event of day d is stamped at d 12:00 UTC (one event per user and day, so no ties per user).
AMAZON_EVENT_HOUR = 12


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
    item_file = require_file(src / AMAZON_ITEM_FILE, "amazon")
    inter_file = require_file(src / AMAZON_INTER_FILE, "amazon")
    raw_items = read_csv_strings(item_file, separator="\t", quote_char=None)
    require_columns(item_file, raw_items.columns, _AMAZON_ITEM_COLS)
    raw_inter = read_csv_strings(inter_file, separator="\t", quote_char=None)
    require_columns(inter_file, raw_inter.columns, _AMAZON_INTER_COLS)
    check_destination(dst)

    inter = raw_inter.select(
        pl.col("user_id:token").str.strip_chars().alias("user_id"),
        pl.col("item_id_list:token_seq").fill_null("").str.strip_chars().alias("history"),
        pl.col("item_id:token").str.strip_chars().alias("target"),
    )
    require_unique(inter, "user_id", inter_file)
    if inter.get_column("target").null_count() or inter.get_column("user_id").null_count():
        raise SourceLayoutError(
            f"{inter_file}: null user_id or held-out item_id; fix: every row needs both (user, history, item)"
        )
    events = amazon_events(inter, start)

    items = raw_items.select(
        pl.col("item_id:token").str.strip_chars().alias("item_id"),
        pl.col("title:token_seq").str.strip_chars().alias("title"),
    )
    require_unique(items, "item_id", item_file)
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
    out = import_summary("amazon", src, dst, users.height, items.height, events)
    out["eval_date"] = out["last_date"]
    last = events.get_column("ts").dt.date().max()
    out["valid_date"] = date.fromordinal(last.toordinal() - 1).isoformat() if events.height else None
    out["items_without_title"] = unknown.height
    log.info("amazon import: %s", out)
    return out
