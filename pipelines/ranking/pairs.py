"""Ranker features of (user, candidate) pairs: frames users/items of D joined with the crossed fields hashed from the raw attributes."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import polars as pl

from features.hashing import FieldSpec, Vocab, bucketize, strings_as_categorical
from pipelines import io
from pipelines.names import FRAMES
from pipelines.ranking.data import frames_config

log = logging.getLogger(__name__)


def raw_attributes(out: Path, dt: date, run: io.RunInfo) -> tuple[Path, int]:
    """Input data root and hash seed of the run that built frames/dt=D (else of this run)."""
    for source in (frames_config(out, dt), run.config):
        data_dir = source.get("data", {}).get("dir")
        if data_dir is not None:
            return Path(data_dir), int(source.get("features", {}).get("hash_seed", 0))
    raise ValueError(
        f"{io.partition_dir(out, FRAMES, dt)}/{io.CONFIG_FILE}: no data.dir recorded, so the crossed fields of "
        "(user, candidate) pairs cannot be hashed from the raw attributes; fix: run the frames stage with a "
        "RunInfo carrying the resolved config"
    )


@dataclass(frozen=True)
class PairTables:
    """What the features of (user, candidate) pairs are joined from, read once per scoring run.

    users: frames users.parquet (features as of the end of D); items: frames items.parquet without `seen`;
    raw_users / raw_items: user_id / item_id and the raw attributes the crossed fields hash (None when the
    vocab has no crossed field); crosses: those fields; hash_seed: the frames run's mmh3 seed.
    """

    users: pl.DataFrame
    items: pl.DataFrame
    raw_users: pl.DataFrame | None
    raw_items: pl.DataFrame | None
    crosses: tuple[FieldSpec, ...]
    hash_seed: int


def pair_tables(out: Path, dt: date, vocab: Vocab, data_dir: Path, hash_seed: int) -> PairTables:
    """Read the tables `join_pair_features` needs (frames users/items of D, raw attributes under data_dir).

    Their size grows with the catalogue and the user base (one row each), never with the number of pairs.
    """
    users = io.read_table(out, FRAMES, dt, "users")
    items = io.read_table(out, FRAMES, dt, "items").drop("seen", strict=False)
    crosses = tuple(vocab.side("cross"))
    if not crosses:
        return PairTables(users, items, None, None, (), hash_seed)
    user_src = {s for f in vocab.side("user") for s in f.sources}
    item_src = {s for f in vocab.side("item") for s in f.sources}
    need = {s for f in crosses for s in f.sources}
    unknown = sorted(need - user_src - item_src)
    if unknown:
        raise ValueError(
            f"vocab of frames/dt={dt}: crossed sources {unknown} are neither user nor item attributes; "
            "fix: rebuild the frames with this code"
        )
    # String attributes as Categorical: they are joined onto every candidate pair before the crosses are hashed
    raw_u = io.read_users(data_dir)
    raw_u = raw_u.select("user_id", *strings_as_categorical(raw_u.schema, sorted(need & user_src)))
    raw_i = io.read_items(data_dir)
    raw_i = raw_i.select("item_id", *strings_as_categorical(raw_i.schema, sorted(need & item_src)))
    return PairTables(users, items, raw_u, raw_i, crosses, hash_seed)


def join_pair_features(pairs: pl.DataFrame, tables: PairTables) -> tuple[pl.DataFrame, int]:
    """Ranker features of (user_id, item_id) pairs from tables read by `pair_tables`.

    pairs: [P rows] with user_id, item_id (other columns are kept, row order too). Pairs whose user or
    item is not in the frames tables are dropped. Returns (features [P' rows], number of pairs dropped).
    """
    df = pairs.join(tables.users, on="user_id", how="inner", maintain_order="left").join(
        tables.items, on="item_id", how="inner", maintain_order="left"
    )
    dropped = pairs.height - df.height
    if tables.crosses:
        raw_u, raw_i = tables.raw_users, tables.raw_items
        df = df.join(raw_u, on="user_id", how="left", maintain_order="left").join(
            raw_i, on="item_id", how="left", maintain_order="left"
        )
        df = bucketize(df, list(tables.crosses), tables.hash_seed).drop(raw_u.columns[1:] + raw_i.columns[1:])
    return df, dropped


def pair_features(
    out: Path, dt: date, pairs: pl.DataFrame, vocab: Vocab, data_dir: Path, hash_seed: int
) -> tuple[pl.DataFrame, int]:
    """Ranker features of (user_id, item_id) pairs as of the end of D.

    pairs: [P rows] with user_id, item_id (other columns are kept). User fields, hist, cnt_* and num_user_*
    come from frames users.parquet; item fields, item_idx and num_item_* from frames items.parquet; each
    crossed field is hashed (`features.hashing.bucketize`) from the raw attributes of users.parquet /
    items.parquet under `data_dir`, as the frames stage did. Pairs whose user or item is not in the frames
    tables are dropped. Returns (features [P' rows], number of pairs dropped). Many blocks of pairs:
    read `pair_tables` once and call `join_pair_features` per block.
    """
    return join_pair_features(pairs, pair_tables(out, dt, vocab, data_dir, hash_seed))
