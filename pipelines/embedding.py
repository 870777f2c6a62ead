"""Stage: text and image embeddings of every item, incremental through a content-addressed cache.

    items.parquet (item_id, title, image_path) -> <out>/embeddings/dt=D/items.parquet
        item_id    str
        text_emb   Array[Float32, Dt]  L2-normalised; zeros when has_text is False
        image_emb  Array[Float32, Di]  L2-normalised; zeros when has_image is False
        has_text   bool                the title is present and non-blank
        has_image  bool                the image file may be read (pipelines.io rules), is at most
                                       embeddings.max_image_pixels pixels and decodes

An embedding is a pure function of (model id, content), so the cache is keyed by the model id and the
SHA-256 of the content (the title text; the image file's bytes): a changed title or image gets a new hash and
is encoded again, an unchanged one is served from the cache, and items that share a title or an image file
share one encoding. The item id is not part of the key: it would only force identical contents to be encoded
twice. A rerun with nothing changed encodes nothing and does not even load the models.

Which image encoder runs, and when the cross-modal one is trained (only when the catalogue's (title, image)
pairs changed since the previous partition), is `pipelines.crossmodal`'s concern; when it runs, the partition
also holds `crossmodal.pt` and `crossmodal_pairs.parquet`, and image_emb is its joint-space image embedding.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from features.config import EmbeddingsConfig
from features.embeddings import (
    Encoder,
    build_image_encoder,
    build_text_encoder,
    content_hash,
    decode_image,
    encode_batched,
    image_model_id,
    image_pixels,
    text_model_id,
)
from models.config import CrossModalConfig
from models.device import resolve_device
from pipelines import crossmodal, io
from pipelines.io import RunInfo
from pipelines.names import EMBEDDINGS

log = logging.getLogger(__name__)

DATASET = EMBEDDINGS
TABLE = "items"
TITLE_COL = "title"
IMAGE_COL = "image_path"
CHUNK_ITEMS = 4096  # contents encoded between two cache appends: an interrupted run keeps what it did


@dataclass(frozen=True)
class _Encoded:
    """Embeddings of one modality for all N items."""

    emb: np.ndarray  # [N, D] float32, zeros where ok is False
    ok: np.ndarray  # [N] bool
    dim: int
    counts: dict[str, int]


def _sample(ids: pl.Series, k: int = 5) -> list[str]:
    return ids.head(k).to_list()


def encoder_device(cfg: EmbeddingsConfig) -> str:
    """The torch device name that `embeddings.device` resolves to (models.device.resolve_device)."""
    try:
        return str(resolve_device(cfg.device))
    except ValueError as err:
        raise ValueError(f"embeddings.device: {err}") from None


def _hash_distinct(values: pl.Series, fn: Callable[[Any], str | None]) -> pl.Series:
    """Hash each distinct non-null value once and map the hashes back; [N] str, null where values is null."""
    distinct = values.drop_nulls().unique()
    table = pl.DataFrame(
        {"value": distinct, "content_hash": pl.Series([fn(v) for v in distinct.to_list()], dtype=pl.String)}
    )
    joined = pl.DataFrame({"value": values}).join(table, on="value", how="left", maintain_order="left")
    return joined["content_hash"]


def _resolve(
    modality: str,
    model_id: str,
    item_hash: pl.Series,
    inputs_of: Callable[[list[str]], list[Any | None]],
    make_encoder: Callable[[], Encoder],
    out: Path,
    batch_size: int,
    progress: bool | None,
) -> tuple[np.ndarray, np.ndarray, int, dict[str, int], set[str]]:
    """Embeddings for the N items whose content hashes are `item_hash` ([N] str, null = no content).

    Cached hashes are read from the cache; the others are loaded with `inputs_of` (None = unreadable),
    encoded in chunks and appended to the cache. Returns emb [N, D] float32, ok [N] bool, D, counts, and
    the hashes whose content could not be read.
    """
    needed = item_hash.drop_nulls().unique().sort()
    cache = io.scan_embedding_cache(out, modality, model_id)
    if cache is None:
        cached = pl.DataFrame(schema={"content_hash": pl.String, "emb": pl.List(pl.Float32)})
    else:
        cached = cache.join(pl.LazyFrame({"content_hash": needed}), on="content_hash", how="semi").collect()
    miss = needed.filter(~needed.is_in(cached["content_hash"].implode())).to_list()

    encoder: Encoder | None = None
    failed: set[str] = set()
    frames: list[pl.DataFrame] = [] if cached.height == 0 else [cached]
    for start in range(0, len(miss), CHUNK_ITEMS):
        chunk = miss[start : start + CHUNK_ITEMS]
        inputs = inputs_of(chunk)
        good = [(h, x) for h, x in zip(chunk, inputs, strict=True) if x is not None]
        failed.update(h for h, x in zip(chunk, inputs, strict=True) if x is None)
        if not good:
            continue
        encoder = encoder or make_encoder()
        emb = encode_batched(
            encoder, [x for _, x in good], batch_size, progress, desc=f"{modality} embeddings"
        )
        new = pl.DataFrame({"content_hash": [h for h, _ in good]}).with_columns(pl.Series("emb", emb))
        io.append_embedding_cache(out, modality, model_id, new)
        frames.append(new)

    if cached.height:
        dim = int(cached["emb"].to_numpy().shape[1])
    else:
        encoder = encoder or make_encoder()
        dim = encoder.dim
    if encoder is not None and encoder.dim != dim:
        raise ValueError(
            f"{io.embedding_cache_dir(out, modality, model_id)}: cached {modality} embeddings have dim {dim} "
            f"but {model_id} gives {encoder.dim}; fix: delete that cache folder (the model changed under "
            "the same id)"
        )

    n = item_hash.len()
    emb_all = np.zeros((n, dim), np.float32)
    ok = np.zeros(n, bool)
    if frames:
        table = pl.concat([f.with_columns(pl.col("emb").cast(pl.Array(pl.Float32, dim))) for f in frames])
        vectors = table["emb"].to_numpy()  # (M, D)
        rows = (
            pl.DataFrame({"content_hash": item_hash})
            .join(
                table.select("content_hash").with_row_index("row"),
                on="content_hash",
                how="left",
                maintain_order="left",
            )["row"]
            .to_numpy(allow_copy=True)
        )
        ok = ~np.isnan(rows.astype(np.float64))
        emb_all[ok] = vectors[rows[ok].astype(np.int64)]

    hashes = item_hash.fill_null("")
    miss_set = set(miss) - failed
    counts = {
        "encoded": int(hashes.is_in(pl.Series(sorted(miss_set), dtype=pl.String).implode()).sum()),
        "unique_encoded": len(miss_set),
        "cached": int(hashes.is_in(cached["content_hash"].implode()).sum()),
    }
    return emb_all, ok, dim, counts, failed


def _optional_strings(items: pl.DataFrame, column: str, modality: str) -> pl.Series:
    """items[column] as strings with blank values as null; all null (and a warning) when the column is absent."""
    if column not in items.columns:
        log.warning("items.parquet has no %r column: every item gets a zero %s embedding", column, modality)
        return pl.Series(column, [None] * items.height, dtype=pl.String)
    values = items.select(pl.col(column).cast(pl.String))
    return values.select(pl.when(pl.col(column).str.strip_chars() != "").then(pl.col(column)))[column]


def _embed_text(
    items: pl.DataFrame, out: Path, cfg: EmbeddingsConfig, device: str, progress: bool | None
) -> tuple[_Encoded, str, pl.Series]:
    model_id = text_model_id(cfg.text_model)
    titles = _optional_strings(items, TITLE_COL, "text")
    item_hash = _hash_distinct(titles, content_hash)
    by_hash = pl.DataFrame({"content_hash": item_hash, "title": titles}).drop_nulls().unique("content_hash")

    def inputs_of(hashes: list[str]) -> list[str | None]:
        wanted = pl.DataFrame({"content_hash": hashes})
        return wanted.join(by_hash, on="content_hash", how="left", maintain_order="left")["title"].to_list()

    emb, ok, dim, counts, _ = _resolve(
        "text",
        model_id,
        item_hash,
        inputs_of,
        lambda: build_text_encoder(cfg, device),
        out,
        cfg.batch_size,
        progress,
    )
    missing = titles.is_null()
    counts["missing"] = int(missing.sum())
    if counts["missing"]:
        log.warning(
            "%d of %d items have no title (null or blank), e.g. item_id %s: zero text_emb, has_text False",
            counts["missing"],
            items.height,
            _sample(items["item_id"].filter(missing)),
        )
    return _Encoded(emb, ok, dim, counts), model_id, item_hash


@dataclass
class _ImageInputs:
    """The image side of the catalogue: [N] paths and content hashes (null: no path or no file), and a
    loader of decoded images by content hash (None: unreadable; hashes over max_image_pixels go to too_big)."""

    paths: pl.Series
    item_hash: pl.Series
    load: Callable[[list[str]], list[Any | None]]
    too_big: set[str]


def _image_inputs(items: pl.DataFrame, data_dir: Path, cfg: EmbeddingsConfig) -> _ImageInputs:
    paths = _optional_strings(items, IMAGE_COL, "image")

    def file_hash(rel: str) -> str | None:
        payload = io.read_input_file(data_dir, rel, max_bytes=cfg.max_image_bytes)
        return None if payload is None else content_hash(payload)

    item_hash = _hash_distinct(paths, file_hash)  # null: no path or no file
    by_hash = pl.DataFrame({"content_hash": item_hash, "path": paths}).drop_nulls().unique("content_hash")

    too_big: set[str] = set()  # content hashes of images over cfg.max_image_pixels

    def inputs_of(hashes: list[str]) -> list[Any | None]:
        wanted = pl.DataFrame({"content_hash": hashes})
        rels = wanted.join(by_hash, on="content_hash", how="left", maintain_order="left")["path"].to_list()
        images = []
        for h, rel in zip(hashes, rels, strict=True):  # one file read per distinct image: IO, not row logic
            payload = io.read_input_file(data_dir, rel, max_bytes=cfg.max_image_bytes)
            if payload is not None and content_hash(payload) != h:
                log.warning("%s changed while the stage ran; it is skipped this run", rel)
                payload = None
            pixels = image_pixels(payload)
            if pixels is not None and pixels > cfg.max_image_pixels:  # from the header: never decoded
                too_big.add(h)
                payload = None
            images.append(decode_image(payload, max_pixels=cfg.max_image_pixels))
        return images

    return _ImageInputs(paths, item_hash, inputs_of, too_big)


def _embed_images(
    src: _ImageInputs,
    model_id: str,
    make_encoder: Callable[[], Encoder],
    data_dir: Path,
    out: Path,
    cfg: EmbeddingsConfig,
    progress: bool | None,
) -> _Encoded:
    paths, item_hash, too_big = src.paths, src.item_hash, src.too_big
    emb, ok, dim, counts, failed = _resolve(
        "image", model_id, item_hash, src.load, make_encoder, out, cfg.batch_size, progress
    )
    no_file = paths.is_not_null() & item_hash.is_null()
    corrupt = item_hash.is_in(pl.Series(sorted(failed - too_big), dtype=pl.String).implode()).fill_null(False)
    oversized = item_hash.is_in(pl.Series(sorted(too_big), dtype=pl.String).implode()).fill_null(False)
    counts["missing"] = int((item_hash.is_null()).sum())
    counts["missing_file"] = int(no_file.sum())
    counts["corrupt"] = int(corrupt.sum())
    counts["too_many_pixels"] = int(oversized.sum())
    if counts["missing_file"]:
        log.warning(
            "%d items name an image that is not read (missing, outside %s, not a regular file or over "
            "embeddings.max_image_bytes; `recsys validate` says which), e.g. %s: zero image_emb",
            counts["missing_file"],
            data_dir,
            _sample(paths.filter(no_file)),
        )
    if counts["too_many_pixels"]:
        log.warning(
            "%s: column image_path: %d images are larger than embeddings.max_image_pixels=%d "
            "(width x height from the header; never decoded), e.g. %s: zero image_emb; fix: downscale them "
            "or raise embeddings.max_image_pixels",
            io.items_path(data_dir),
            counts["too_many_pixels"],
            cfg.max_image_pixels,
            _sample(paths.filter(oversized)),
        )
    if counts["corrupt"]:
        log.warning(
            "%d items have an image file that is not a readable image, e.g. %s: zero image_emb",
            counts["corrupt"],
            _sample(paths.filter(corrupt)),
        )
    return _Encoded(emb, ok, dim, counts)


def _check_items(items: pl.DataFrame, path: Path) -> None:
    if "item_id" not in items.columns:
        raise ValueError(f"{path}: no item_id column; fix: add it (see docs/data-contract.md)")
    dup = items["item_id"].is_duplicated()
    if dup.any():
        raise ValueError(
            f"{path}: column item_id has {int(dup.sum())} duplicated rows, e.g. "
            f"{_sample(items['item_id'].filter(dup).unique())}; fix: keep one row per item"
        )


def embeddings_table(
    item_ids: pl.Series,
    text_emb: np.ndarray,
    image_emb: np.ndarray,
    has_text: np.ndarray,
    has_image: np.ndarray,
) -> pl.DataFrame:
    """The output table.

    item_ids: [N] str. text_emb: [N, Dt] float32. image_emb: [N, Di] float32. has_text, has_image: [N] bool.
    """
    return pl.DataFrame({"item_id": item_ids.cast(pl.String)}).with_columns(
        pl.Series("text_emb", text_emb.astype(np.float32)),
        pl.Series("image_emb", image_emb.astype(np.float32)),
        pl.Series("has_text", has_text.astype(bool)),
        pl.Series("has_image", has_image.astype(bool)),
    )


def embed_items(
    data_dir: Path,
    out: Path,
    dt: date,
    cfg: EmbeddingsConfig,
    run: RunInfo,
    *,
    crossmodal_cfg: CrossModalConfig | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Embed every item of `<data_dir>/items.parquet` and commit `<out>/embeddings/dt=<dt>/items.parquet`.

    Titles and image files already in the cache (same model id, same content hash) are not encoded again.
    The image encoder is chosen, and the cross-modal one trained or reused, as `pipelines.crossmodal` says;
    crossmodal_cfg: its settings (None: the defaults).
    progress: tqdm bars on/off; None shows them only on a terminal.
    Returns the summary that is also stored in the partition's manifest: model ids, dims and counts.
    """
    crossmodal_cfg = crossmodal_cfg or CrossModalConfig()
    items = io.read_items(data_dir)
    _check_items(items, io.items_path(data_dir))
    device = encoder_device(cfg)
    text, text_id, text_hash = _embed_text(items, out, cfg, device, progress)
    src = _image_inputs(items, data_dir, cfg)
    pairs = crossmodal.catalogue_pairs(text_hash, src.item_hash)
    choice = crossmodal.choose_image_encoder(cfg, crossmodal_cfg, pairs.height)
    fitted: crossmodal.Fitted | None = None
    if choice == "crossmodal":
        fitted = crossmodal.fit(out, dt, pairs, text.emb, text_id, src.load, crossmodal_cfg, device)
        model = fitted.model
        image_id = fitted.info["model_id"]

        def make_image_encoder() -> Encoder:
            return crossmodal.CrossModalImageEncoder(model, device)
    else:
        image_id = image_model_id(cfg.image_model)

        def make_image_encoder() -> Encoder:
            return build_image_encoder(cfg, device)

    image = _embed_images(src, image_id, make_image_encoder, data_dir, out, cfg, progress)
    table = embeddings_table(items["item_id"], text.emb, image.emb, text.ok, image.ok)
    counts: dict[str, int] = {"items": items.height}
    counts.update({f"text_{k}": v for k, v in text.counts.items()})
    counts.update({f"image_{k}": v for k, v in image.counts.items()})
    summary: dict[str, Any] = {
        "text_model": text_id,
        "text_dim": text.dim,
        "image_encoder": choice,
        "image_model": image_id,
        "image_dim": image.dim,
        "counts": counts,
    }
    if fitted is not None:
        summary["crossmodal"] = fitted.info
    with io.staged_partition(out, DATASET, dt, run) as stage:
        stage.write_table(table, TABLE)
        stage.add_inputs(io.ITEMS_FILE)
        if fitted is not None:
            crossmodal.commit_files(stage, fitted, text_id)
        stage.extra.update(summary)
    log.info("embeddings dt=%s: %s", dt, counts)
    return {
        **summary,
        "dataset": DATASET,
        "dt": dt.isoformat(),
        "path": str(io.partition_dir(out, DATASET, dt)),
    }
