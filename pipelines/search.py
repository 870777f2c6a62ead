"""Cross-modal search: a text and/or image query -> the nearest catalogue items of the latest committed
embeddings partition, by inner product over L2-normalised vectors in a FAISS index (`recsys search`).

With the cross-modal encoder (the partition's `image_encoder` is "crossmodal"), everything lives in its joint
space of dim D:

    item        = normalise(mean of the sides it has: image_emb, proj(text_emb))     [N, D]
    text query  = proj(MiniLM(text))                                                   [D]
    image query = CNN(image)                                                           [D]
    both        = normalise(text query + image query)

so a text query finds items by their photo and their title together, and an item without a photo is still
found by its title (and one without a title by its photo). Without it (descriptor or CLIP image embeddings,
which share no space with the titles), a text query is matched against the title embeddings only and an
image query against the image embeddings only (`SearchResult.note` says so); both together is an error.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import polars as pl
import torch

from features.config import EmbeddingsConfig
from features.embeddings import (
    build_image_encoder,
    build_text_encoder,
    decode_image,
    image_array,
    l2_normalise,
)
from models import crossmodal
from pipelines import io
from pipelines.names import CROSSMODAL_FILE, EMBEDDINGS
from retrieval.config import IndexConfig
from retrieval.index import build_index, search

log = logging.getLogger(__name__)


class SearchError(ValueError):
    """A search that cannot run (no committed embeddings, no encoder, unreadable query image)."""


@dataclass(frozen=True)
class SearchResult:
    """The hits, best first, and how they were found."""

    table: pl.DataFrame  # item_id, score, title, image_path
    dt: date  # the embeddings partition searched
    mode: str  # "joint" (cross-modal encoder), "title" or "image" (no encoder)
    note: str | None  # a fallback the user should know about


def latest_embeddings(out: Path) -> date:
    """The newest committed embeddings partition under `out`."""
    dates = io.committed_dates(out, EMBEDDINGS)
    if not dates:
        raise SearchError(
            f"{io.dataset_dir(out, EMBEDDINGS)}: no committed embeddings partition; fix: run "
            f"`recsys nightly --out {out} ...` (or `recsys demo`) first, or point --out at its output folder"
        )
    return dates[-1]


def _run_config(out: Path, dt: date) -> dict:
    return json.loads(io.committed_path(out, EMBEDDINGS, dt, io.CONFIG_FILE).read_text())


def _titles(data_dir: Path, ids: pl.Series) -> pl.DataFrame:
    """item_id, title, image_path of `ids` from the catalogue (nulls when the file or column is absent)."""
    frame = pl.DataFrame({"item_id": ids})
    if not io.items_path(data_dir).is_file():
        log.warning("%s is absent: titles and image paths are not shown", io.items_path(data_dir))
        return frame.with_columns(title=pl.lit(None, pl.String), image_path=pl.lit(None, pl.String))
    items = io.read_items(data_dir).with_columns(pl.col("item_id").cast(pl.String))
    for col in ("title", "image_path"):
        if col not in items.columns:
            items = items.with_columns(pl.lit(None, pl.String).alias(col))
    cols = items.select("item_id", pl.col("title").cast(pl.String), pl.col("image_path").cast(pl.String))
    return frame.join(cols, on="item_id", how="left", maintain_order="left")


def _query_image(path: Path, emb_cfg: EmbeddingsConfig):  # noqa: ANN202
    if not path.is_file():
        raise SearchError(f"--image {path}: no such file; fix: pass the path of a JPEG or PNG")
    img = decode_image(path.read_bytes(), max_pixels=emb_cfg.max_image_pixels)
    if img is None:
        raise SearchError(
            f"--image {path}: not a readable image (or over embeddings.max_image_pixels); fix: pass a JPEG or PNG"
        )
    return img


def search_items(
    out: Path,
    *,
    text: str | None = None,
    image: Path | None = None,
    k: int = 10,
    dt: date | None = None,
    data_dir: Path | None = None,
    device: str = "cpu",
) -> SearchResult:
    """The k items nearest to the query in the embeddings partition `dt` (None: the latest) under `out`.

    text / image: the query (at least one). data_dir: where items.parquet is read for titles and image paths
    (None: the data folder recorded in the partition's config). Returns a SearchResult.
    """
    if not text and image is None:
        raise SearchError("search: no query; fix: pass --text and/or --image")
    if k < 1:
        raise SearchError(f"search: k={k}; fix: pass --k 1 or more")
    dt = dt or latest_embeddings(out)
    manifest = io.read_manifest(out, EMBEDDINGS, dt)
    run_cfg = _run_config(out, dt)
    emb_cfg = EmbeddingsConfig(**run_cfg.get("embeddings", {}))
    data_dir = Path(data_dir or run_cfg.get("data", {}).get("dir", "."))
    table = io.read_table(out, EMBEDDINGS, dt, "items")
    text_emb = np.array(table["text_emb"].to_numpy(), np.float32).reshape(table.height, -1)
    image_emb = np.array(table["image_emb"].to_numpy(), np.float32).reshape(table.height, -1)
    has_text, has_image = table["has_text"].to_numpy(), table["has_image"].to_numpy()
    query_text = None
    if text:
        query_text = build_text_encoder(emb_cfg, device).encode([text])  # (1, Dt)
    query_img = _query_image(Path(image), emb_cfg) if image is not None else None

    note = None
    if manifest.get("image_encoder") == "crossmodal":
        path = io.committed_path(out, EMBEDDINGS, dt, CROSSMODAL_FILE)
        if not path.is_file():
            raise SearchError(
                f"{path}: the cross-modal encoder is missing from a partition that used it; fix: rerun the "
                f"embeddings stage for {dt} (`recsys nightly --date {dt} --force`)"
            )
        model, _ = crossmodal.load(path)
        proj = crossmodal.embed_texts(model, torch.from_numpy(text_emb)).numpy()  # (N, D)
        both = has_text[:, None] * proj + has_image[:, None] * image_emb  # (N, D); sides absent are zeros
        items, keep = l2_normalise(both), has_text | has_image
        parts = []
        if query_text is not None:
            parts.append(crossmodal.embed_texts(model, torch.from_numpy(query_text)).numpy())
        if query_img is not None:
            pixels = torch.from_numpy(image_array([query_img], model.cfg.image_size))
            parts.append(crossmodal.embed_images(model, pixels).numpy())
        query, mode = l2_normalise(np.sum(parts, axis=0)), "joint"
    elif query_text is not None and query_img is not None:
        raise SearchError(
            f"embeddings/dt={dt} has {manifest.get('image_encoder', 'descriptor')} image embeddings, which share "
            "no space with the titles: --text and --image together need the cross-modal encoder; fix: pass one "
            "of them, or set embeddings.image_encoder=crossmodal and rerun"
        )
    elif query_text is not None:
        items, keep, query, mode = text_emb, has_text, query_text, "title"
        note = (
            f"embeddings/dt={dt} has no cross-modal encoder ({manifest.get('image_encoder', 'descriptor')} "
            "image embeddings): the text query searched the title embeddings only"
        )
    else:
        items, keep, mode = image_emb, has_image, "image"
        encoder = build_image_encoder(emb_cfg, device)
        if encoder.model_id != manifest.get("image_model") or encoder.dim != image_emb.shape[1]:
            raise SearchError(
                f"embeddings/dt={dt} holds {manifest.get('image_model')} image embeddings but its config builds "
                f"{encoder.model_id}; fix: rerun the embeddings stage for {dt}"
            )
        query = encoder.encode([query_img])  # (1, Di)
        note = f"embeddings/dt={dt} has no cross-modal encoder: the image query searched the image embeddings"

    ids = table["item_id"].filter(pl.Series(keep))
    if ids.len() == 0:
        raise SearchError(
            f"embeddings/dt={dt}: no item has the embedding a {mode} search needs; fix: add titles or images"
        )
    index = build_index(
        np.ascontiguousarray(items[keep]),
        ids.to_numpy().astype(str),
        IndexConfig(kind="flat", use_gpu="never"),
    )
    scores, hit_ids = search(index, np.ascontiguousarray(query, np.float32), min(k, ids.len()))
    hits = pl.DataFrame({"item_id": hit_ids[0].tolist(), "score": scores[0].astype(np.float32)})
    meta = _titles(data_dir, hits["item_id"])
    result = hits.join(meta, on="item_id", how="left", maintain_order="left")
    return SearchResult(result.select("item_id", "score", "title", "image_path"), dt, mode, note)
