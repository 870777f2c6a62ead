"""`generate`: writes a spec's users, items, images and daily event partitions through `pipelines.io`."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from pipelines import io
from pipelines.datasets.synthetic.images import write_images
from pipelines.datasets.synthetic.simulation import simulate_day
from pipelines.datasets.synthetic.spec import SyntheticSpec
from pipelines.datasets.synthetic.vocab import EVENTS
from pipelines.datasets.synthetic.world import World, build_world, words

log = logging.getLogger(__name__)


def _events_frame(ev: dict[str, np.ndarray], world: World, day_start_us: int) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "user_id": world.users["user_id"].gather(ev["user"]),
            "item_id": world.items["item_id"].gather(ev["item"]),
            "event": words(EVENTS, ev["event"]),
            "ts": pl.Series(ev["ts_us"] + day_start_us, dtype=pl.Int64).cast(pl.Datetime("us", "UTC")),
        }
    )


def generate(data_dir: Path, spec: SyntheticSpec) -> dict[str, Any]:
    """Write users, items, images and daily event partitions of `spec` under `data_dir`.

    Memory holds the user/item tables and one day of events at a time. Returns a JSON-able summary:
    rows per table, events per day and per event type, items without title/image, items launched after
    day 0, images written, wall seconds.
    """
    t0 = time.perf_counter()
    data_dir = Path(data_dir)
    stale = [d for d in io.event_dates(data_dir) if not spec.start <= d <= spec.end]
    if stale:
        raise ValueError(
            f"{io.events_root(data_dir)} already holds partitions outside {spec.start}..{spec.end} "
            f"(e.g. dt={stale[0]}); fix: generate into an empty folder or delete the old data set"
        )
    world = build_world(spec)
    io.write_input_table(data_dir, "users", world.users)
    io.write_input_table(data_dir, "items", world.items)
    images = write_images(data_dir, world, spec)
    log.info("wrote %d users, %d items, %d images to %s", spec.users, spec.items, images, data_dir)
    per_day: dict[str, int] = {}
    per_type = np.zeros(len(EVENTS), dtype=np.int64)
    for day in range(spec.days):
        dt = spec.start + timedelta(days=day)
        ev = simulate_day(world, spec, day)
        day_start_us = int(datetime(dt.year, dt.month, dt.day, tzinfo=UTC).timestamp()) * 1_000_000
        io.write_input_events(data_dir, dt, _events_frame(ev, world, day_start_us))
        per_day[dt.isoformat()] = int(ev["event"].size)
        per_type += np.bincount(ev["event"], minlength=len(EVENTS))
        log.info("events dt=%s: %d", dt, ev["event"].size)
    return {
        "data_dir": str(data_dir),
        "users": spec.users,
        "items": spec.items,
        "events": int(per_type.sum()),
        "events_per_day": per_day,
        "events_per_type": {name: int(c) for name, c in zip(EVENTS, per_type, strict=True)},
        "items_no_title": int(world.items["title"].null_count()),
        "items_no_image": int(world.items["image_path"].null_count()),
        "items_launched_after_day0": int((world.item_launch_day > 0).sum()),
        "images_written": images,
        "wall_s": round(time.perf_counter() - t0, 3),
    }
