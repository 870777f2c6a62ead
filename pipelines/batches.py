"""Training frames (Parquet) -> model batches (`models.inputs.Batch`), streamed.

The frames stage writes one partition per run date (docs/frames.md); the models read dicts of tensors
(models/inputs.py). This module is the one place that maps columns to tensor keys:

    bkt_<field>  -> sparse  [B, F] int64   (the fields of a BatchSpec, in its order)
    hist         -> hist    [B, L] int64   (padded with 0, the null bucket; truncated to L)
    cnt_<w>d     -> counts  [B, C] float32 (log1p of the counts)
    num_*        -> numeric [B, M] float32 (already standardised by the frames stage)
    item_idx     -> text / has_text / image / has_image, gathered from ItemContent
    hist + item_idx -> affinity [B, A], profile [B, Dt + Di] float32 (when the spec asks): `content_affinity`
    label        -> label   [B] float32

Files are read with pyarrow's `iter_batches`, so memory is bounded by the batch size (plus the shuffle
buffer), never by the size of the frame.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from features.hashing import Vocab, bucket_column
from models.inputs import Batch, FieldLayout
from pipelines import io
from pipelines.frames import layout as frames
from pipelines.names import EMBEDDINGS, FRAMES

SHUFFLE_BUFFER_BATCHES = 16  # rows shuffled together: this many batches (bounded memory)


def _inv_norm(matrix: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(matrix, axis=1)
    return np.where(norm > 0, 1.0 / np.maximum(norm, 1e-12), 0.0).astype(np.float32)


@dataclass(frozen=True)
class ItemContent:
    """Text and image embeddings of the catalogue, row i = the item with item_idx i in frames items.parquet."""

    text: np.ndarray  # [N, Dt] float32, zeros where missing
    has_text: np.ndarray  # [N] float32
    image: np.ndarray  # [N, Di] float32, zeros where missing
    has_image: np.ndarray  # [N] float32
    # [H] int64: bucket of the item_id field (what `hist` holds) -> item_idx of a catalogue item hashed to it
    # (the first, on a collision), -1 for none; None when the vocab has no item_id field
    item_of_bucket: np.ndarray | None = None

    @property
    def text_dim(self) -> int:
        return int(self.text.shape[1])

    @property
    def image_dim(self) -> int:
        return int(self.image.shape[1])

    def __len__(self) -> int:
        return int(self.text.shape[0])

    @functools.cached_property
    def text_inv_norm(self) -> np.ndarray:
        """[N] float32: 1 / |text row| (0 for a zero row), computed once for `content_affinity`."""
        return _inv_norm(self.text)

    @functools.cached_property
    def image_inv_norm(self) -> np.ndarray:
        """[N] float32: 1 / |image row| (0 for a zero row)."""
        return _inv_norm(self.image)

    @property
    def affinity_dim(self) -> int:
        """A: the affinity columns `content_affinity` gives (AFFINITY_PER_MODALITY per modality of non-zero
        width; 0 without a map)."""
        if self.item_of_bucket is None:
            return 0
        return AFFINITY_PER_MODALITY * (int(self.text_dim > 0) + int(self.image_dim > 0))

    def only(self, *, text: bool = True, image: bool = True) -> ItemContent:
        """This content with a modality dropped: its matrix gets width 0 and its mask 0 (the model built for
        it has no input for that modality)."""
        n = len(self)
        return ItemContent(
            text=self.text if text else np.zeros((n, 0), np.float32),
            has_text=self.has_text if text else np.zeros(n, np.float32),
            image=self.image if image else np.zeros((n, 0), np.float32),
            has_image=self.has_image if image else np.zeros(n, np.float32),
            item_of_bucket=self.item_of_bucket,
        )


AFFINITY_PER_MODALITY = 3  # columns of `content_affinity` per modality: cos of the sum, mean cos, max cos


@dataclass(frozen=True)
class HistoryContent:
    """What the content of a user's other history items says about an item (`content_affinity`)."""

    affinity: np.ndarray  # [B, A] float32, A = AFFINITY_PER_MODALITY per modality of non-zero width
    profile: np.ndarray  # [B, Dt + Di] float32: per modality, the mean unit vector of those history items


def content_affinity(hist: np.ndarray, items: np.ndarray, content: ItemContent) -> HistoryContent:
    """How close an item's content is to what the user chose before.

    For each modality m (text, then image; those of non-zero width), over the user's other history items
    h_l that have m (h_l != i):
      * affinity: cos(sum_l e_m(h_l), e_m(i)) (the mean direction of the history), the mean of
        cos(e_m(h_l), e_m(i)) (how much of the history is like the item) and their max (the closest single
        item); 0 when the item lacks m or no other history item has it;
      * profile: the mean of the unit vectors e_m(h_l) / |e_m(h_l)| ([B, Dm], zeros when none), for the
        ranker's learned affinity (`models.ranker.LearnedAffinity`), which weighs the dimensions that matter
        instead of all alike.
    The item itself is left out of the history so that the numbers say how close its content is to the
    user's other choices, not that the user chose it before (the ids already say that). hist [B, L] int64
    holds item_id buckets (0 = padding), mapped to catalogue items by `content.item_of_bucket`; items [B]
    int64 are item_idx. A preference only the content shows (a pattern drawn in the photos, a word of the
    titles) then reaches the ranker as numbers it can weigh, for items no one has chosen yet too.

    >>> c = ItemContent(np.eye(2, dtype=np.float32), np.ones(2, np.float32), np.zeros((2, 0), np.float32),
    ...                 np.zeros(2, np.float32), item_of_bucket=np.array([-1, 0, 1]))
    >>> content_affinity(np.array([[1, 2, 0], [1, 0, 0], [0, 0, 0]]), np.array([0, 1, 1]), c).affinity.tolist()
    [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    >>> c2 = ItemContent(np.array([[1.0, 0.0], [0.6, 0.8]], np.float32), np.ones(2, np.float32),
    ...                  np.zeros((2, 0), np.float32), np.zeros(2, np.float32), item_of_bucket=np.array([-1, 0, 1]))
    >>> h = content_affinity(np.array([[1, 2]]), np.array([1]), c2)
    >>> [round(x, 6) for x in h.affinity[0].tolist()], h.profile.tolist()
    ([0.6, 0.6, 0.6], [[1.0, 0.0]])
    """
    if content.item_of_bucket is None:
        raise ValueError(
            "content_affinity needs ItemContent.item_of_bucket; fix: load it with load_item_content"
        )
    bucket = np.clip(hist, 0, len(content.item_of_bucket) - 1)
    rows = np.where(hist > 0, content.item_of_bucket[bucket], -1)  # (B, L)
    known = (rows >= 0) & (rows != items[:, None])  # the item itself is left out: content, not a repeat
    safe = np.where(known, rows, 0)
    cols, profiles = [], []
    for matrix, has, inv_norm in (
        (content.text, content.has_text, content.text_inv_norm),
        (content.image, content.has_image, content.image_inv_norm),
    ):
        if matrix.shape[1] == 0:
            continue
        weight = (known & (has[safe] > 0)).astype(np.float32)  # (B, L)
        n = weight.sum(1)  # (B,)
        rows_m, scale = matrix[safe], inv_norm[safe]  # (B, L, Dm) as stored, (B, L) their 1 / norms
        own = matrix[items] * (inv_norm[items] * (has[items] > 0))[:, None]  # (B, Dm)
        profile = np.matmul((weight * scale)[:, None, :], rows_m)[:, 0] / np.maximum(n, 1)[:, None]  # (B, Dm)
        dot = (profile * own).sum(1)
        norm = np.linalg.norm(profile, axis=1) * np.linalg.norm(own, axis=1)
        cols.append(np.where(norm > 0, dot / np.maximum(norm, 1e-12), 0.0))
        sims = np.matmul(rows_m, own[:, :, None])[:, :, 0] * scale  # (B, L) cosines
        cols.append(dot)  # the mean of the cosines: the profile is the mean of unit vectors
        cols.append(np.where(n > 0, np.where(weight > 0, sims, -1.0).max(1), 0.0) * (has[items] > 0))
        profiles.append(profile.astype(np.float32))
    b = len(items)
    return HistoryContent(
        affinity=np.stack(cols, axis=1).astype(np.float32) if cols else np.zeros((b, 0), np.float32),
        profile=np.concatenate(profiles, axis=1) if profiles else np.zeros((b, 0), np.float32),
    )


def load_vocab(out: Path, dt: date) -> Vocab:
    """The vocab of frames/dt=D (field names, bucket counts, sides)."""
    return Vocab.from_json(json.loads(io.committed_path(out, FRAMES, dt, frames.VOCAB_FILE).read_text()))


def _matrix(col: pl.Series) -> np.ndarray:
    """[N] Array(Float32, D) column -> [N, D] float32."""
    return np.ascontiguousarray(col.to_numpy(), dtype=np.float32).reshape(col.len(), -1)


def load_item_content(out: Path, dt: date) -> ItemContent:
    """Embeddings of dt=D aligned with frames/dt=D items.parquet (item_idx order).

    Items of the frames catalogue that the embeddings partition lacks get zero vectors and masks 0. The map
    from the item_id field's buckets to item_idx (`ItemContent.item_of_bucket`, for `content_affinity`) comes
    from the same table's bucket column.
    """
    id_field = load_vocab(out, dt).item_id_field()
    bucket_col = [bucket_column(id_field.name)] if id_field is not None else []
    items = (
        io.read_table(out, FRAMES, dt, frames.ITEMS)
        .select("item_id", "item_idx", *bucket_col)
        .sort("item_idx")
    )
    if not (items["item_idx"].to_numpy() == np.arange(items.height)).all():
        raise ValueError(
            f"{io.partition_dir(out, FRAMES, dt)}/{frames.ITEMS}.parquet: item_idx is not 0..N-1; "
            "fix: rebuild the frames partition"
        )
    emb = io.read_table(out, EMBEDDINGS, dt, "items").with_row_index("emb_row")
    rows = items.join(emb.select("item_id", "emb_row"), on="item_id", how="left", maintain_order="left")
    src = rows["emb_row"].to_numpy()  # (N,) float with NaN where the item has no embedding row
    found = ~np.isnan(src) if src.dtype.kind == "f" else np.ones(items.height, bool)
    idx = src[found].astype(np.int64)

    def gather(matrix: np.ndarray) -> np.ndarray:
        full = np.zeros((items.height, matrix.shape[1]), np.float32)
        full[found] = matrix[idx]
        return full

    def mask(col: str) -> np.ndarray:
        full = np.zeros(items.height, np.float32)
        full[found] = emb[col].cast(pl.Float32).to_numpy()[idx]
        return full

    item_of_bucket = None
    if id_field is not None:
        item_of_bucket = np.full(id_field.buckets, -1, np.int64)
        buckets = items[bucket_col[0]].to_numpy().astype(np.int64)
        item_of_bucket[buckets[::-1]] = np.arange(items.height)[::-1]  # the first item of a bucket wins
        item_of_bucket[0] = -1  # the null bucket is hist's padding
    return ItemContent(
        text=gather(_matrix(emb["text_emb"])),
        has_text=mask("has_text"),
        image=gather(_matrix(emb["image_emb"])),
        has_image=mask("has_image"),
        item_of_bucket=item_of_bucket,
    )


@dataclass(frozen=True)
class BatchSpec:
    """Which frame columns go into a batch, and in which order."""

    fields: tuple[str, ...]  # vocab field names: bkt_<name> columns -> sparse, in this order
    counts: tuple[str, ...]  # cnt_* columns -> counts (log1p)
    numeric: tuple[str, ...]  # num_* columns -> numeric
    hist_len: int  # 0: no hist; else hist [B, L]
    item_content: bool  # gather text/image by item_idx
    label: bool  # label -> label [B] float32
    # affinity [B, A] and profile [B, Dt + Di] from hist and item_idx (needs hist_len and item_content)
    affinity: bool = False

    def layout(self, vocab: Vocab) -> FieldLayout:
        sizes = vocab.vocab_sizes()
        return FieldLayout(self.fields, tuple(sizes[f] for f in self.fields))

    def columns(self) -> list[str]:
        cols = [bucket_column(f) for f in self.fields] + list(self.counts) + list(self.numeric)
        if self.hist_len:
            cols.append("hist")
        if self.item_content:
            cols.append("item_idx")
        if self.label:
            cols.append("label")
        return cols


def spec_for(
    vocab: Vocab,
    schema: Mapping[str, pl.DataType],
    sides: tuple[str, ...],
    *,
    hist_len: int,
    item_content: bool,
    label: bool,
) -> BatchSpec:
    """The spec of the vocab fields of `sides` ("user", "item", "cross") present in a frame's schema.

    counts: every cnt_* column (a user-side feature: kept when "user" is among the sides); numeric:
    num_user_* for "user", num_item_* for "item".
    """
    bad = set(sides) - {"user", "item", "cross"}
    if bad:
        raise ValueError(f"spec_for: unknown sides {sorted(bad)}; use user, item, cross")
    fields = tuple(f.name for f in vocab.fields if f.side in sides and bucket_column(f.name) in schema)
    counts = tuple(c for c in schema if c.startswith("cnt_")) if "user" in sides else ()
    prefixes = tuple(f"num_{s}_" for s in sides if s in ("user", "item"))
    numeric = tuple(c for c in schema if c.startswith(prefixes)) if prefixes else ()
    has_hist = "user" in sides and "hist" in schema
    return BatchSpec(fields, counts, numeric, hist_len if has_hist else 0, item_content, label)


def _pad_hist(col: pa.Array | pa.ChunkedArray, length: int) -> np.ndarray:
    """[B] list<int32> -> [B, L] int64, the first L entries of each list, padded with 0."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    n = len(col)
    offsets = col.offsets.to_numpy().astype(np.int64)
    values = col.values.to_numpy(zero_copy_only=False).astype(np.int64)
    starts = offsets[:-1]
    lens = np.diff(offsets)
    out = np.zeros((n, length), dtype=np.int64)
    rows = np.repeat(np.arange(n), lens)
    pos = np.arange(values.size) - np.repeat(starts, lens)  # position within its list
    keep = pos < length
    out[rows[keep], pos[keep]] = values[(np.repeat(starts, lens) + pos)[keep]]
    return out


def _arrow_to_batch(table: pa.Table | pa.RecordBatch, spec: BatchSpec, content: ItemContent | None) -> Batch:
    def np_col(name: str, dtype: type) -> np.ndarray:
        return table.column(name).to_numpy(zero_copy_only=False).astype(dtype, copy=False)

    batch: Batch = {}
    if spec.fields:
        sparse = np.stack([np_col(bucket_column(f), np.int64) for f in spec.fields], axis=1)
        batch["sparse"] = torch.from_numpy(sparse)  # (B, F)
    if spec.counts:
        counts = np.stack([np_col(c, np.float32) for c in spec.counts], axis=1)
        batch["counts"] = torch.from_numpy(np.log1p(counts))  # (B, C)
    if spec.numeric:
        batch["numeric"] = torch.from_numpy(np.stack([np_col(c, np.float32) for c in spec.numeric], axis=1))
    if spec.hist_len:
        batch["hist"] = torch.from_numpy(_pad_hist(table.column("hist"), spec.hist_len))  # (B, L)
    if spec.item_content:
        if content is None:
            raise ValueError("BatchSpec asks for item content but no ItemContent was given")
        idx = np_col("item_idx", np.int64)
        batch["text"] = torch.from_numpy(content.text[idx])  # (B, Dt)
        batch["has_text"] = torch.from_numpy(content.has_text[idx])
        batch["image"] = torch.from_numpy(content.image[idx])  # (B, Di)
        batch["has_image"] = torch.from_numpy(content.has_image[idx])
        if spec.affinity:
            near = content_affinity(batch["hist"].numpy(), idx, content)
            batch["affinity"] = torch.from_numpy(near.affinity)  # (B, A)
            batch["profile"] = torch.from_numpy(near.profile)  # (B, Dt + Di)
    if spec.label:
        batch["label"] = torch.from_numpy(np_col("label", np.float32))
    if not batch:
        raise ValueError("BatchSpec selects no column")
    return batch


def to_batch(df: pl.DataFrame, spec: BatchSpec, content: ItemContent | None = None) -> Batch:
    """One in-memory frame -> one batch."""
    missing = [c for c in spec.columns() if c not in df.columns]
    if missing:
        raise ValueError(f"frame lacks columns {missing} that the batch spec needs; fix: rebuild the frames")
    return _arrow_to_batch(df.select(spec.columns()).to_arrow(), spec, content)


def longest_hist(frame: Path | pl.DataFrame | pl.LazyFrame) -> int | None:
    """The longest `hist` list of a frame (a file, or a frame in memory); None when it has no rows."""
    lf = pl.scan_parquet(frame) if isinstance(frame, Path) else frame.lazy()
    longest = lf.select(pl.col("hist").list.len().max()).collect().item()
    return None if longest is None else int(longest)


def parquet_rows(path: Path) -> int:
    return pq.ParquetFile(path).metadata.num_rows


def stream_batches(
    path: Path,
    spec: BatchSpec,
    batch_size: int,
    content: ItemContent | None = None,
    shuffle_seed: int | None = None,
) -> Iterator[Batch]:
    """Stream a frame file as batches of `batch_size` rows (the last may be smaller).

    With `shuffle_seed`, rows are shuffled within a buffer of SHUFFLE_BUFFER_BATCHES batches (and the
    row-group order is shuffled), deterministically for a given seed; without it, file order is kept.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    pf = pq.ParquetFile(path)
    missing = [c for c in spec.columns() if c not in pf.schema_arrow.names]
    if missing:
        raise ValueError(
            f"{path}: lacks columns {missing} that the batch spec needs; fix: rebuild the frames"
        )
    cols = spec.columns()
    if shuffle_seed is None:
        for rb in pf.iter_batches(batch_size=batch_size, columns=cols):
            if rb.num_rows:
                yield _arrow_to_batch(rb, spec, content)
        return
    rng = np.random.default_rng(shuffle_seed)
    groups = rng.permutation(pf.num_row_groups).tolist()
    buffer_rows = batch_size * SHUFFLE_BUFFER_BATCHES
    pending: list[pa.RecordBatch] = []
    size = 0

    def drain(final: bool) -> Iterator[Batch]:
        nonlocal pending, size
        table = pa.Table.from_batches(pending).combine_chunks()
        table = table.take(pa.array(rng.permutation(table.num_rows)))
        full = table.num_rows if final else (table.num_rows // batch_size) * batch_size
        for start in range(0, full, batch_size):
            yield _arrow_to_batch(table.slice(start, batch_size), spec, content)
        rest = table.slice(full)
        pending, size = (rest.to_batches() if rest.num_rows else []), rest.num_rows

    for rb in pf.iter_batches(batch_size=batch_size, columns=cols, row_groups=groups):
        pending.append(rb)
        size += rb.num_rows
        if size >= buffer_rows:
            yield from drain(final=False)
    if size:
        yield from drain(final=True)
