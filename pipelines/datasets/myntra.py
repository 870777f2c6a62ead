"""The Myntra fashion catalogue (Kaggle "Fashion Product Images (Small)"): items and images, no interactions."""

from __future__ import annotations

import logging
import os
from datetime import date
from pathlib import Path
from typing import Any

import polars as pl

from pipelines import io
from pipelines.datasets.common import (
    EVENT_SCHEMA,
    SourceLayoutError,
    check_destination,
    import_summary,
    read_csv_strings,
    require_columns,
    require_file,
    require_unique,
)

log = logging.getLogger(__name__)

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
    styles_file = require_file(src / MYNTRA_STYLES_FILE, "myntra")
    raw = read_csv_strings(styles_file)
    require_columns(styles_file, raw.columns, list(MYNTRA_COLUMNS))
    check_destination(dst)

    items = raw.select([pl.col(s).str.strip_chars().alias(d) for s, d in MYNTRA_COLUMNS.items()])
    if items.get_column("item_id").null_count():
        raise SourceLayoutError(f"{styles_file}: column 'id' has empty values; fix: every style needs an id")
    require_unique(items, "item_id", styles_file)
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
    out = import_summary("myntra", src, dst, 0, items.height, pl.DataFrame(schema=EVENT_SCHEMA))
    out["images"] = with_image.height
    log.info("myntra import: %s", out)
    return out
