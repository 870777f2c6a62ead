"""The retriever's inputs: frames of D as compact tensors (`RetrieverInputs`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from features.hashing import Vocab
from models.inputs import Batch
from models.retriever_train import (
    ITEM_IDX,
)
from pipelines import io
from pipelines.batches import (
    FRAMES,
    BatchSpec,
    ItemContent,
    load_item_content,
    load_vocab,
    longest_hist,
    spec_for,
    stream_batches,
    to_batch,
)
from pipelines.frames import layout as frames
from pipelines.retriever.layout import TRAIN_READ_ROWS

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- inputs


@dataclass
class RetrieverInputs:
    """What one run date's training and scoring read, as tensors where the model needs them.

    catalogue: item batch of every catalogue item, row = item_idx ([N, ...] tensors, plus item_idx [N]).
    users_batch: user batch of every row of users.parquet ([U, ...] tensors).
    train_users: user batch of every retriever_train row ([R, ...], ids as int32: `compact_batch`);
    train_items: [R] int32 item_idx.
    valid_users: user batch of each validation user's first positive of D ([V, ...]); valid_relevant: V
    arrays of the item_idx of its positives on D.
    """

    dt: date
    vocab: Vocab
    user_spec: BatchSpec
    item_spec: BatchSpec
    item_ids: np.ndarray  # [N] str, row = item_idx
    seen: np.ndarray  # [N] bool, False = cold start (no event in the window)
    user_ids: np.ndarray  # [U] str, row of users.parquet
    catalogue: Batch
    users_batch: Batch
    train_users: Batch
    train_items: torch.Tensor
    valid_users: Batch
    valid_relevant: list[np.ndarray]
    positives: pl.DataFrame  # user_id, item_idx, day of retriever_train + retriever_valid
    window: tuple[date, date]  # first and last day of the training window (train days + D)
    content: ItemContent | None
    eval_pairs: pl.DataFrame | None  # user_id, item_id of D+1, or None without the eval day
    text_dim: int = 0
    image_dim: int = 0
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def n_items(self) -> int:
        return int(self.item_ids.shape[0])


def read_compact_batch(path: Path, spec: BatchSpec, rows_per_part: int = TRAIN_READ_ROWS) -> Batch:
    """A whole frame file as one `compact_batch`, read `rows_per_part` rows at a time (file row order).

    Equal to ``compact_batch(to_batch(pl.read_parquet(path), spec))``, without holding the frame and its
    int64 tensors at once (on the large preset that was ~0.8 GB over the 131 MB result).
    """
    parts = [compact_batch(b) for b in stream_batches(path, spec, rows_per_part)]
    if not parts:
        raise ValueError(f"{path} has no rows")
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def compact_batch(batch: Batch) -> Batch:
    """The batch with every int64 tensor stored as int32 (bucket ids and item rows fit); see `widen_batch`.

    The training pairs stay in memory for the seeded per-epoch permutation (the same order as reading the
    file would not give); int32 halves the id tensors ([R, F] sparse and [R, L] hist), the bulk of them.
    """
    out: Batch = {}
    for k, v in batch.items():
        if v.dtype == torch.int64:
            if v.numel() and (
                v.min() < torch.iinfo(torch.int32).min or v.max() > torch.iinfo(torch.int32).max
            ):
                raise ValueError(f"compact_batch: {k} holds values outside int32; fix: keep this batch int64")
            v = v.to(torch.int32)
        out[k] = v
    return out


def widen_batch(batch: Batch) -> Batch:
    """int32 tensors of a `compact_batch` back to int64, the dtype the towers index with."""
    return {k: v.long() if v.dtype == torch.int32 else v for k, v in batch.items()}


def batch_nbytes(batch: Batch) -> int:
    """Bytes held by the tensors of a batch."""
    return sum(v.element_size() * v.numel() for v in batch.values())


def load_inputs(out: Path, dt: date, use_content: bool = True) -> RetrieverInputs:
    """Read frames/dt=D (and embeddings/dt=D when `use_content`) into tensors for training and scoring."""
    out = Path(out)
    vocab = load_vocab(out, dt)
    items = io.read_table(out, FRAMES, dt, frames.ITEMS).sort("item_idx")
    users = io.read_table(out, FRAMES, dt, frames.USERS)
    train_path = io.committed_path(out, FRAMES, dt, f"{frames.RETRIEVER_TRAIN}.parquet")
    train = pl.scan_parquet(train_path)  # read in parts below: it grows with the events
    train_rows = train.select(pl.len()).collect().item()
    valid = io.read_table(out, FRAMES, dt, frames.RETRIEVER_VALID)
    frames_dir = io.partition_dir(out, FRAMES, dt)
    if train_rows == 0:
        raise ValueError(
            f"{frames_dir}/{frames.RETRIEVER_TRAIN}.parquet has no rows (a one-day window has no training day); "
            "fix: set data.train_window_days >= 2"
        )
    if valid.height == 0:
        raise ValueError(
            f"{frames_dir}/{frames.RETRIEVER_VALID}.parquet has no rows: no positive on {dt}, so there is nothing to "
            "validate on; fix: run a date with positives"
        )
    manifest = frames.read_manifest(out, dt)
    window = (min(manifest.train_days, default=dt), dt)
    has_eval = manifest.eval_present

    # at least 1, so the user tower always gets a [B, L] tensor
    hist_len = max(1, *(longest_hist(f) or 0 for f in (train, users, valid)))
    user_spec = spec_for(
        vocab, train.collect_schema(), ("user",), hist_len=hist_len, item_content=False, label=False
    )
    content = load_item_content(out, dt) if use_content else None
    item_spec = spec_for(vocab, items.schema, ("item",), hist_len=0, item_content=use_content, label=False)
    if "item_id" not in item_spec.fields:
        raise ValueError(
            f"{frames_dir}/items.parquet: no bkt_item_id column; the user history shares the item_id "
            "embedding, so fix: rebuild the frames with an item_id field"
        )
    catalogue = to_batch(items, item_spec, content)
    catalogue[ITEM_IDX] = torch.arange(items.height, dtype=torch.long)
    train_users = read_compact_batch(train_path, user_spec)  # (R, ...) int32 ids, float32 counts/numeric
    pairs = train.select("user_id", "item_idx", "ts").collect()
    train_items = torch.from_numpy(pairs["item_idx"].cast(pl.Int32).to_numpy().copy())  # (R,) int32

    first_valid = valid.sort("ts", "user_id", "item_id").unique("user_id", keep="first", maintain_order=True)
    relevant = (
        valid.group_by("user_id")
        .agg(pl.col("item_idx").unique().sort())
        .join(first_valid.select("user_id").with_row_index("_q"), on="user_id")
        .sort("_q")
    )
    positives = pl.concat(
        [
            df.select("user_id", pl.col("item_idx").cast(pl.Int64), pl.col("ts").dt.date().alias("day"))
            for df in (pairs, valid)
        ]
    )
    eval_pairs = io.read_table(out, FRAMES, dt, frames.EVAL_RETRIEVAL) if has_eval else None
    return RetrieverInputs(
        dt=dt,
        vocab=vocab,
        user_spec=user_spec,
        item_spec=item_spec,
        item_ids=items["item_id"].cast(pl.String).to_numpy().astype(str),
        seen=items["seen"].to_numpy().astype(bool),
        user_ids=users["user_id"].cast(pl.String).to_numpy().astype(str),
        catalogue=catalogue,
        users_batch=to_batch(users, user_spec),
        train_users=train_users,
        train_items=train_items,
        valid_users=to_batch(first_valid, user_spec),
        valid_relevant=[np.asarray(v, dtype=np.int64) for v in relevant["item_idx"].to_list()],
        positives=positives,
        window=window,
        content=content,
        eval_pairs=eval_pairs,
        text_dim=content.text_dim if content is not None else 0,
        image_dim=content.image_dim if content is not None else 0,
        figures={
            "items": items.height,
            "cold_items": int((~items["seen"]).sum()),
            "users": users.height,
            "train_rows": train_rows,
            "train_tensor_mb": round((batch_nbytes(train_users) + train_items.nbytes) / 2**20, 1),
            "valid_rows": valid.height,
            "valid_users": first_valid.height,
            "hist_len": hist_len,
        },
    )
