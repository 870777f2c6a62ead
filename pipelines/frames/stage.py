"""The frames stage: read the inputs, run the two passes over the user blocks, commit frames/dt=D."""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import polars as pl

from features.config import ColumnsConfig, FeaturesConfig, SamplingConfig
from features.hashing import (
    FieldSpec,
    Vocab,
    bucketize,
    build_vocab,
    collision_report,
)
from pipelines import io
from pipelines.config import DataConfig
from pipelines.frames.blocks import choose_blocks
from pipelines.frames.examples import (
    TS,
    Split,
    Totals,
    active_users,
    block_examples,
    cross_sources,
    decorate,
    history_inputs,
    negative_stats,
    sort_examples,
)
from pipelines.frames.layout import (
    EVAL_RANKER,
    EVAL_RETRIEVAL,
    ITEMS,
    NUMERIC_STATS_FILE,
    RANKER_TRAIN,
    RANKER_VALID,
    RETRIEVER_TRAIN,
    RETRIEVER_VALID,
    USERS,
    VOCAB_FILE,
    FramesManifest,
    Window,
)
from pipelines.frames.numeric import merge_moments, numeric_moments, standardise, stats_from_moments
from pipelines.frames.scratch import SCRATCH, Scan, event_schema, partition_events, read_scratch, scratch_file
from pipelines.frames.tables import (
    Layout,
    item_table,
    resolve_columns,
    side_fields,
    unique_ids,
    user_table,
)
from pipelines.io import RunInfo
from pipelines.names import FRAMES

log = logging.getLogger(__name__)

SPLIT_TABLES = {"train": (RETRIEVER_TRAIN, RANKER_TRAIN), "valid": (RETRIEVER_VALID, RANKER_VALID)}


DATASET = FRAMES


class _Writers:
    """One `stage.table_writer` per example file, opened together and closed together."""

    def __init__(self, stage: io.StagedPartition, names: Sequence[str]) -> None:
        self._stack = contextlib.ExitStack()
        self.w = {n: self._stack.enter_context(stage.table_writer(n)) for n in names}
        self._empty: dict[str, pl.DataFrame] = {}

    def write(self, name: str, df: pl.DataFrame) -> None:
        if df.height:
            self.w[name].write(df)
        else:
            self._empty.setdefault(name, df)

    def close(self, complete: bool = True) -> None:
        """Close every file; when `complete`, a file that got no rows is written with its schema only.
        (After an error the partition is discarded whole, so nothing more is written.)"""
        if complete:
            for name, df in self._empty.items():
                if self.w[name].rows == 0:
                    self.w[name].write(df)
        self._stack.close()


def _example_schema() -> dict[str, pl.DataType]:
    """Columns of the scratch examples files (undecorated examples; _part = split name)."""
    return {
        "user_id": pl.String, "item_id": pl.String, "ts": TS, "label": pl.Int8, "source": pl.String,
        "_part": pl.String,
    }  # fmt: skip


def _examples_pass(
    scratch: Path,
    n_blocks: int,
    splits: Sequence[Split],
    scan: Scan,
    catalogue: pl.DataFrame,
    user_tab: pl.DataFrame,
    item_tab: pl.DataFrame,
    layout: Layout,
    sampling: SamplingConfig,
) -> Totals:
    """Pass 1 over the blocks: examples and negatives of each block to its scratch `examples` file; the
    numeric moments of the training rows, negative counts and cross pairs summed over blocks."""
    totals = Totals()
    num_u = user_tab.select("user_id", *layout.user_num)
    num_i = item_tab.select("item_id", *layout.item_num)
    for b in range(n_blocks):
        events = read_scratch(scratch, "events", b, event_schema())
        examples = block_examples(events, b, splits, scan, catalogue, sampling, totals)
        examples.write_parquet(scratch_file(scratch, "examples", b))
        train = (
            examples.filter(pl.col("_part") == "train")
            .join(num_u, on="user_id", how="left")
            .join(num_i, on="item_id", how="left")
        )
        block_moments = numeric_moments(train, [*layout.user_num, *layout.item_num])
        totals.moments = merge_moments(totals.moments, block_moments)
        if layout.cross_fields:
            totals.cross_pairs.append(cross_sources(examples, user_tab, item_tab, layout.cross_fields))
    return totals


def _features_pass(
    stage: io.StagedPartition,
    scratch: Path,
    n_blocks: int,
    splits: Sequence[Split],
    user_tab: pl.DataFrame,
    item_tab: pl.DataFrame,
    layout: Layout,
    stats: dict[str, dict[str, float]],
    features: FeaturesConfig,
    sampling: SamplingConfig,
    item_id_field: FieldSpec,
    window_days: Sequence[date],
    as_of: datetime,
) -> pl.DataFrame:
    """Pass 2 over the blocks: point-in-time features of the block's examples and active users (one
    history pass), standardisation with the final `stats`, one append per block to every example file.

    Returns the users.parquet rows (one per active user, sorted by user_id): O(users), not O(events).
    """
    names = [RETRIEVER_TRAIN, RANKER_TRAIN, RETRIEVER_VALID, RANKER_VALID]
    if any(s.name == "eval" for s in splits):
        names += [EVAL_RETRIEVAL, EVAL_RANKER]
    writers = _Writers(stage, names)
    users_parts: list[pl.DataFrame] = []
    try:
        for b in range(n_blocks):
            events = read_scratch(scratch, "events", b, event_schema())
            examples = read_scratch(scratch, "examples", b, _example_schema())
            hist_events, count_events = history_inputs(events, sampling, item_id_field, features.hash_seed)
            block_users = pl.concat([examples.select("user_id"), events.select("user_id")]).unique()
            decorated = decorate(
                pl.concat([examples, active_users(events, window_days, as_of)], how="vertical"),
                user_tab=user_tab.join(block_users, on="user_id", how="semi"),
                item_tab=item_tab,
                fields=layout.fields,
                hist_events=hist_events,
                count_events=count_events,
                features=features,
            )
            del events, examples, hist_events, count_events
            by_part = {
                name: df.drop("_part")
                for (name,), df in decorated.partition_by("_part", as_dict=True).items()
            }
            empty = decorated.clear().drop("_part")
            del decorated
            for split in splits:
                rows = standardise(sort_examples(by_part.get(split.name, empty)), stats).select(layout.ranker)
                if split.name == "eval":
                    pairs = rows.filter(pl.col("label") == 1).select("user_id", "item_id").unique()
                    writers.write(EVAL_RETRIEVAL, pairs.sort("user_id", "item_id"))
                    writers.write(EVAL_RANKER, rows)
                else:
                    retriever, ranker = SPLIT_TABLES[split.name]
                    writers.write(retriever, rows.filter(pl.col("label") == 1).select(layout.retriever))
                    writers.write(ranker, rows)
            users_parts.append(standardise(by_part.get("users", empty), stats).select(layout.users))
    except BaseException:
        writers.close(complete=False)
        raise
    writers.close()
    return pl.concat(users_parts, how="vertical").sort("user_id")


# ---------------------------------------------------------------- the stage


def _numeric_stats_json(stats: dict[str, dict[str, float]]) -> dict[str, dict[str, Any]]:
    """numeric_stats.json: each num_<side>_<source> column's side, source column, mean, std and count."""
    return {
        c: {"side": c.split("_")[1], "source": c.split("_", 2)[2], **stats[c], "fitted_on": RANKER_TRAIN}
        for c in stats
    }


def _collisions(
    vocab: Vocab, user_tab: pl.DataFrame, item_tab: pl.DataFrame, cross_pairs: pl.DataFrame | None, seed: int
) -> dict[str, Any]:
    """The hash-collision report of every field: users and items over their tables, crosses over the
    distinct source-value pairs of the examples."""
    user_fields, item_fields = side_fields(vocab, "user"), side_fields(vocab, "item")
    out = {
        **collision_report(bucketize(user_tab, user_fields, seed), user_fields),
        **collision_report(bucketize(item_tab, item_fields, seed), item_fields),
    }
    cross_fields = side_fields(vocab, "cross")
    if cross_pairs is not None and cross_fields:
        out.update(collision_report(bucketize(cross_pairs, cross_fields, seed), cross_fields))
    return out


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
    *,
    n_blocks: int | None = None,
) -> dict[str, Any]:
    """Build and commit `<out>/frames/dt=<dt>/`; returns its manifest.

    Reads events of [dt - W + 1 - L, dt + 1] through `pipelines.io` (W = data.train_window_days,
    L = data.history_lookback_days), users.parquet and items.parquet. The files and their columns are
    described in docs/frames.md.

    Memory does not grow with the number of events: one pass over the event partitions (a day at a time)
    splits the events by user block (murmur3 of user_id mod `n_blocks`; default `choose_blocks` of the
    events read, ~data.events_per_block events a block) into scratch files inside the staged partition and
    aggregates the global pieces (items available per day, seen items); then each block is processed
    alone, twice: (1) examples and negatives, adding to the numeric moments of the training rows, (2) once
    the statistics are known, point-in-time features, standardisation, and one append to every output file.
    Negative sampling of train / valid / eval uses `block_seed(seed + k, block)` for k = 0, 1, 2.
    """
    data_dir, out = Path(data_dir), Path(out)
    win = Window.of(data, dt)
    hist_from, eval_day = win.history_from, win.eval_day

    available_days = io.event_files(data_dir)
    if dt not in available_days:
        raise ValueError(
            f"{io.event_partition_dir(data_dir, dt)}: no events for the run date {dt}; "
            "fix: pass a date with an event partition or add the partition"
        )
    if n_blocks is not None and n_blocks < 1:
        raise ValueError(f"build_frames: n_blocks={n_blocks}; fix: pass n_blocks >= 1 or None (automatic)")
    read_days = sorted(d for d in available_days if hist_from <= d <= eval_day)
    has_eval = eval_day in available_days
    splits = [Split("train", win.train_days, seed)]
    splits.append(Split("valid", (dt,), seed + 1))
    if has_eval:
        splits.append(Split("eval", (eval_day,), seed + 2))

    users = io.read_users(data_dir)
    items = io.read_items(data_dir)
    unique_ids(users, "user_id", str(io.users_path(data_dir)))
    unique_ids(items, "item_id", str(io.items_path(data_dir)))
    cols = resolve_columns(users, items, columns)
    vocab = build_vocab(list(cols.user_categorical), list(cols.item_categorical), features)
    item_fields = side_fields(vocab, "item")
    cross_fields = side_fields(vocab, "cross")
    item_id_field = vocab.item_id_field()
    if item_id_field is None:
        raise ValueError(
            "vocab has no single item field hashed from item_id alone; fix: features.hashing.build_vocab must "
            "give exactly one (it feeds `hist`)"
        )
    user_tab = user_table(users, cols)
    item_tab = item_table(items, cols)
    layout = Layout.of(cols, vocab, features)
    window_days = list(win.days)
    split_days = {d for s in splits for d in s.days}
    as_of = datetime.combine(eval_day, datetime.min.time(), tzinfo=UTC)  # end of D: ts < D+1 00:00
    if n_blocks is None:
        n_events = io.scan_events(data_dir, hist_from, eval_day).select(pl.len()).collect().item()
        n_blocks = choose_blocks(n_events, data.events_per_block)

    with io.staged_partition(out, DATASET, dt, run) as stage:
        scratch = stage.path(SCRATCH)
        scratch.mkdir()
        scan = partition_events(
            data_dir, read_days, n_blocks, scratch, items, sorted(split_days), window_days
        )
        log.info("frames %s: %d events in %d user blocks", dt, scan.events, n_blocks)
        totals = _examples_pass(scratch, n_blocks, splits, scan, items, user_tab, item_tab, layout, sampling)
        stats = stats_from_moments(totals.moments, [*layout.user_num, *layout.item_num])
        n_train = totals.negatives.get("train", {})
        if n_train.get("positives", 0) + n_train.get("negatives", 0) == 0:
            log.warning(
                "frames %s: no training rows (window of %d day); numeric features only centred at 0",
                dt,
                data.train_window_days,
            )
        users_out = _features_pass(
            stage, scratch, n_blocks, splits, user_tab, item_tab, layout, stats, features, sampling,
            item_id_field, window_days, as_of,
        )  # fmt: skip
        shutil.rmtree(scratch)

        stage.write_table(users_out, USERS)
        items_out = standardise(
            bucketize(item_tab, item_fields, features.hash_seed)
            .with_columns(pl.col("item_id").is_in(scan.seen["item_id"].implode()).alias("seen"))
            .select("item_id", "item_idx", "seen", *layout.item_bkt, *layout.item_num),
            stats,
        )
        stage.write_table(items_out, ITEMS)
        numeric_stats = _numeric_stats_json(stats)
        cross_pairs = pl.concat(totals.cross_pairs, how="vertical").unique() if cross_fields else None
        collisions = _collisions(vocab, user_tab, item_tab, cross_pairs, features.hash_seed)
        stage.add_inputs(*(f"events/dt={d.isoformat()}" for d in read_days), io.USERS_FILE, io.ITEMS_FILE)
        stage.write_json(VOCAB_FILE, vocab.to_json())
        stage.write_json(NUMERIC_STATS_FILE, numeric_stats)
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
                "negatives": {
                    s.name: negative_stats(totals.negatives.get(s.name, {}), bool(s.days)) for s in splits
                },
                "positives_dropped_unknown_item": {s.name: totals.dropped.get(s.name, 0) for s in splits},
                "frames": FramesManifest(
                    data_dir=str(data_dir),
                    hash_seed=features.hash_seed,
                    history_len=features.history_len,
                    history_windows_days=list(features.history_windows_days),
                    columns=cols,
                    history_from=hist_from,
                    train_days=list(win.train_days),
                    valid_day=dt,
                    eval_day=eval_day,
                    eval_present=has_eval,
                    users_as_of=as_of,
                ).model_dump(mode="json"),
                "seed": seed,
                "blocks": n_blocks,
                "events_read": scan.events,
            }
        )
    manifest = io.read_manifest(out, DATASET, dt)
    log.info("frames %s: %s", dt, manifest["rows"])
    return manifest
