"""The cross-modal image encoder inside the embedding stage: which image encoder runs, incremental training,
and the files committed with the embeddings partition.

Which image encoder (`choose_image_encoder`), first match wins:

1. `embeddings.image_model` set: that CLIP checkpoint's image tower.
2. `embeddings.image_encoder: descriptor`: the colour/edge descriptor.
3. `embeddings.image_encoder: crossmodal`, or `auto` with at least `crossmodal.min_items` items that have both
   a title and a readable image file: the encoder of models/crossmodal.py, trained on this catalogue.
4. otherwise (`auto`, too few pairs): the descriptor.

Training is incremental. The training set is the distinct (title hash, image hash) pairs of the catalogue;
the partition keeps them (`crossmodal_pairs.parquet`) beside the weights (`crossmodal.pt`). Against the
previous committed embeddings partition:

* same text model, same `crossmodal` config and no pair that it lacks: its encoder is reused as is (no
  training; the image embeddings keep their model id, so they come from the cache);
* same text model and config, some new or changed pairs: warm start from its weights, `warm_epochs` epochs
  over all current pairs (the old ones too, so nothing is forgotten);
* no previous encoder, or another text model or config: `epochs` from scratch.

Items that were only removed do not cause a retraining. The image embeddings' model id is
`crossmodal:<digest of the weights>`, so new weights never meet cached vectors of old ones.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from PIL import Image

from features.config import EmbeddingsConfig
from features.embeddings import image_array
from models import crossmodal
from models.config import CrossModalConfig
from models.device import cpu_threads
from pipelines import io
from pipelines.names import CROSSMODAL_FILE, CROSSMODAL_PAIRS, EMBEDDINGS

log = logging.getLogger(__name__)

PAIR_COLS = ("text_hash", "image_hash")


def choose_image_encoder(cfg: EmbeddingsConfig, ccfg: CrossModalConfig, n_pairs: int) -> str:
    """ "clip", "descriptor" or "crossmodal" for a catalogue with `n_pairs` items having a title and an image.

    >>> choose_image_encoder(EmbeddingsConfig(), CrossModalConfig(min_items=500), 499)
    'descriptor'
    >>> choose_image_encoder(EmbeddingsConfig(), CrossModalConfig(min_items=500), 500)
    'crossmodal'
    """
    if cfg.image_model is not None:
        return "clip"
    if cfg.image_encoder == "descriptor":
        return "descriptor"
    if cfg.image_encoder == "crossmodal":
        if n_pairs < 2:
            raise ValueError(
                f"embeddings.image_encoder=crossmodal but only {n_pairs} items have both a title and a readable "
                "image; fix: add titles/images or set embeddings.image_encoder=auto"
            )
        return "crossmodal"
    if n_pairs >= ccfg.min_items:
        return "crossmodal"
    log.info(
        "embeddings.image_encoder=auto: %d items with a title and an image < crossmodal.min_items=%d; "
        "image embeddings are the colour/edge descriptor",
        n_pairs,
        ccfg.min_items,
    )
    return "descriptor"


class CrossModalImageEncoder:
    """The trained image tower behind the Encoder protocol: `encode(list[PIL.Image]) -> [B, D]` float32."""

    def __init__(self, model: crossmodal.CrossModalEncoder, device: str = "cpu") -> None:
        self.model = model
        self.model_id = crossmodal.model_id(model)
        self.dim = model.dim
        self._device = device

    def encode(self, batch: Sequence[Image.Image]) -> np.ndarray:
        """batch: B RGB images of any size. Returns [B, D] float32, L2-normalised."""
        pixels = torch.from_numpy(image_array(batch, self.model.cfg.image_size))  # (B, S, S, 3)
        return crossmodal.embed_images(self.model, pixels, device=self._device).numpy()


@dataclass
class Fitted:
    """The encoder of this run and how it came about (the manifest's `crossmodal` entry)."""

    model: crossmodal.CrossModalEncoder
    pairs: pl.DataFrame  # text_hash, image_hash: the training set of this catalogue
    info: dict[str, Any]


def catalogue_pairs(text_hash: pl.Series, image_hash: pl.Series) -> pl.DataFrame:
    """[N] content hashes of titles and images (null = missing) -> the distinct pairs with both, sorted,
    with `row`: the first item row of each pair."""
    df = pl.DataFrame({"text_hash": text_hash, "image_hash": image_hash}).with_row_index("row")
    return (
        df.drop_nulls(list(PAIR_COLS))
        .group_by(PAIR_COLS)
        .agg(pl.col("row").min())
        .sort(PAIR_COLS)
        .with_columns(pl.col("row").cast(pl.Int64))
    )


def _committed_encoder(
    out: Path, d: date | None
) -> tuple[crossmodal.CrossModalEncoder, dict, pl.DataFrame] | None:
    """The encoder, meta and training pairs committed in embeddings/dt=d, when that partition has them."""
    if (
        d is None
        or not io.is_committed(out, EMBEDDINGS, d)
        or "crossmodal" not in io.read_manifest(out, EMBEDDINGS, d)
    ):
        return None
    model, meta = crossmodal.load(io.committed_path(out, EMBEDDINGS, d, CROSSMODAL_FILE))
    return model, meta, io.read_table(out, EMBEDDINGS, d, CROSSMODAL_PAIRS)


RUN_ONLY = {"threads"}  # crossmodal settings of how the training runs, not of what it learns


def _same_setup(meta: dict[str, Any], text_model: str, ccfg: CrossModalConfig) -> bool:
    """The committed encoder was trained for this text model and these settings (`RUN_ONLY` aside)."""
    saved = {k: v for k, v in (meta.get("config") or {}).items() if k not in RUN_ONLY}
    return meta.get("text_model") == text_model and saved == ccfg.model_dump(exclude=RUN_ONLY)


def fit(
    out: Path,
    dt: date,
    pairs: pl.DataFrame,
    text_emb: np.ndarray,
    text_model: str,
    load_images: Callable[[list[str]], list[Image.Image | None]],
    ccfg: CrossModalConfig,
    device: str = "cpu",
) -> Fitted:
    """The encoder for this catalogue: reused, warm-started or trained from scratch (module docstring).

    pairs: from `catalogue_pairs`. text_emb: [N, Dt] float32 title embeddings of every item row.
    text_model: the text model id (the projection is only valid for it). load_images: image hashes -> decoded
    images (None = unreadable). Returns the encoder (eval mode, CPU) with its manifest entry.
    """
    info: dict[str, Any] = {"pairs": pairs.height, "warm_start_from": None, "trained": False}
    own = _committed_encoder(out, dt)  # a rerun of dt: its own encoder, if it saw exactly these pairs
    if own is not None and _same_setup(own[1], text_model, ccfg) and own[2].equals(pairs.select(PAIR_COLS)):
        log.info("crossmodal: embeddings/dt=%s already holds the encoder of these pairs: reused", dt)
        info.update(own[1].get("info", {}), model_id=crossmodal.model_id(own[0]), trained=False)
        return Fitted(own[0], pairs, info)
    base: crossmodal.CrossModalEncoder | None = None
    new = pairs
    prev_dt = io.previous_committed(out, EMBEDDINGS, dt)
    previous = _committed_encoder(out, prev_dt)
    if previous is not None:
        prev_model, meta, prev_pairs = previous
        if _same_setup(meta, text_model, ccfg):
            base = prev_model
            new = pairs.join(prev_pairs, on=list(PAIR_COLS), how="anti")
            info["warm_start_from"] = str(prev_dt)
        else:
            log.info(
                "crossmodal: text model or crossmodal config changed since %s: training from scratch", prev_dt
            )
    info["new_pairs"] = new.height
    if base is not None and new.height == 0:
        log.info(
            "crossmodal: no new or changed (title, image) pair since %s: encoder reused",
            info["warm_start_from"],
        )
        info["model_id"] = crossmodal.model_id(base)
        return Fitted(base, pairs, info)

    train = pairs
    if train.height > ccfg.max_train_items:
        train = train.sample(ccfg.max_train_items, seed=ccfg.seed).sort(PAIR_COLS)
    images = load_images(train["image_hash"].to_list())
    ok = np.array([img is not None for img in images], bool)
    pixels = image_array([img for img in images if img is not None], ccfg.image_size)  # (P, S, S, 3)
    texts = text_emb[train["row"].to_numpy()[ok]]  # (P, Dt)
    if len(pixels) < 2:
        raise ValueError(
            f"crossmodal: only {len(pixels)} images of the catalogue decode; fix: check the image files "
            "(`recsys validate`) or set embeddings.image_encoder=descriptor"
        )
    model = crossmodal.build_encoder(texts.shape[1], ccfg)
    warm = base is not None and crossmodal.warm_start_from(model, base)
    epochs = ccfg.warm_epochs if warm else ccfg.epochs
    with cpu_threads(ccfg.threads) as threads:  # the frames stage runs beside it
        result = crossmodal.train_encoder(
            model, torch.from_numpy(pixels), torch.from_numpy(np.ascontiguousarray(texts)), epochs=epochs,
            device=device, warm_start=warm,
        )  # fmt: skip
    model.cpu()
    if not warm:
        info["warm_start_from"] = None
    info.update(
        trained=True,
        train_pairs=int(len(pixels)),
        epochs=epochs,
        threads=threads,
        seconds=round(result.seconds, 2),
        final_loss=round(result.losses[-1], 4) if result.losses else None,
        temperature=round(result.temperature, 4),
        model_id=crossmodal.model_id(model),
    )
    log.info("crossmodal: trained %s", info)
    return Fitted(model, pairs, info)


def commit_files(stage: io.StagedPartition, fitted: Fitted, text_model: str) -> None:
    """Write the encoder and its training pairs into the staged embeddings partition."""
    meta = {"text_model": text_model, "info": fitted.info}
    crossmodal.save(fitted.model, stage.path(CROSSMODAL_FILE), meta)
    stage.write_table(fitted.pairs.select(PAIR_COLS), CROSSMODAL_PAIRS)
