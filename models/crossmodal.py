"""Cross-modal item encoder: a small CNN image tower aligned with frozen title embeddings (CLIP-style).

The shop has no pretrained image weights, so the image tower is trained from scratch on its own catalogue:
each item with both a photo and a title is a positive pair, the other items of the batch are negatives.
Titles are encoded once by a frozen sentence model (MiniLM); only a linear projection of those vectors is
learnt on the text side, so the joint space keeps MiniLM's semantics and a text query needs nothing more
than MiniLM plus the projection.

    z_img  = normalise(W_i . pool(CNN(x)))       x: [B, 3, S, S]      -> [B, D]
    z_text = normalise(W_t . t)                  t: [B, Dt] (frozen)  -> [B, D]
    loss   = symmetric_info_nce(z_img, z_text, tau, mask = has_image & has_text & ~dropped)
           + w * symmetric_info_nce(z_img, z_img', tau_i, mask = has_image)      (image_loss_weight w)

with tau a `LearnableTemperature` (CLIP, Radford et al. 2021: init 0.07, clamped to >= 0.01). Items missing
one side are masked out of the loss; modality dropout hides one side of a further `modality_dropout` share of
the pairs in each step (they leave the loss exactly like items without that side), so the training run
exercises the same path a sparse catalogue takes and sees more varied sets of negatives.

z_img' is a second augmented view of the same photos: the image-image term (SimCLR, Chen et al. 2020, beside
the language term as in SLIP, Mu et al. 2021) keeps in the image vector what sets a photo apart from the
others even when no title says it (a pattern, a cut), which the title term alone teaches the tower to drop.

Everything is torch only: pixels come in as a uint8 tensor [N, S, S, 3] (the caller decodes the files).
Training is deterministic for a seed (its own generator for init, shuffling and augmentation).
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models import checkpoint
from models.config import CrossModalConfig
from models.losses import LearnableTemperature, symmetric_info_nce

log = logging.getLogger(__name__)

KIND = "crossmodal"


def pixels_to_input(pixels: torch.Tensor) -> torch.Tensor:
    """pixels: [B, S, S, 3] uint8 RGB. Returns [B, 3, S, S] float32 in [-1, 1].

    >>> pixels_to_input(torch.full((1, 2, 2, 3), 255, dtype=torch.uint8)).shape
    torch.Size([1, 3, 2, 2])
    """
    if pixels.dtype != torch.uint8 or pixels.ndim != 4 or pixels.shape[-1] != 3:
        raise ValueError(
            f"pixels must be [B, S, S, 3] uint8 RGB, got {tuple(pixels.shape)} {pixels.dtype}; "
            "fix: decode images with features.embeddings.image_array"
        )
    return pixels.permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (B, 3, S, S)


class ImageTower(nn.Module):
    """Small CNN from pixels to the joint space: [B, 3, S, S] -> [B, D] float32, L2-normalised.

    A stride-2 stem of `width` channels, then three 3x3 conv blocks (conv, batch norm, ReLU) doubling the
    channels, the first two followed by 2x2 max pooling; global average pooling and a linear map to D.
    The spatial size shrinks by 8, so S must be a multiple of 8. Width 16, D 64, G 1: 106k weights.
    """

    def __init__(self, dim: int, width: int = 16, grid: int = 1) -> None:
        super().__init__()
        w = width
        self.grid = grid

        def block(cin: int, cout: int, pool: bool) -> list[nn.Module]:
            layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout)]
            layers.append(nn.ReLU(inplace=True))
            return [*layers, nn.MaxPool2d(2)] if pool else layers

        self.features = nn.Sequential(
            nn.Conv2d(3, w, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(w),
            nn.ReLU(inplace=True),
            *block(w, 2 * w, pool=True),
            *block(2 * w, 4 * w, pool=True),
            *block(4 * w, 8 * w, pool=False),
        )
        self.head = nn.Linear(8 * w * grid * grid, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, 3, S, S] float32 in [-1, 1]. Returns [B, D] float32, L2-normalised."""
        h = self.features(x)  # (B, 8w, S/8, S/8)
        h = F.adaptive_avg_pool2d(h, self.grid).flatten(1)  # (B, 8w * G * G)
        return F.normalize(self.head(h), dim=-1)  # (B, D)


class TextProjection(nn.Module):
    """Learnt linear map of frozen sentence embeddings into the joint space: [B, Dt] -> [B, D], L2-normalised."""

    def __init__(self, text_dim: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(text_dim, dim)

    def forward(self, text_emb: torch.Tensor) -> torch.Tensor:
        """text_emb: [B, Dt] float32 (MiniLM, L2-normalised). Returns [B, D] float32, L2-normalised."""
        return F.normalize(self.proj(text_emb), dim=-1)  # (B, D)


class CrossModalEncoder(nn.Module):
    """The image tower, the text projection and the learnt temperature of one joint space of dim D."""

    def __init__(self, text_dim: int, cfg: CrossModalConfig) -> None:
        super().__init__()
        if cfg.image_size % 8:
            raise ValueError(
                f"crossmodal.image_size={cfg.image_size} is not a multiple of 8; fix: use e.g. 64"
            )
        self.text_dim = int(text_dim)
        self.cfg = cfg
        self.image = ImageTower(cfg.dim, cfg.width, cfg.grid)
        self.text = TextProjection(text_dim, cfg.dim)
        self.temperature = LearnableTemperature(cfg.temperature_init, min_tau=cfg.min_temperature)

    @property
    def dim(self) -> int:
        return self.cfg.dim

    def arch(self) -> dict[str, int]:
        """What fixes the shapes of the weights; a warm start needs the same."""
        c = self.cfg
        return {"text_dim": self.text_dim, "dim": c.dim, "width": c.width, "grid": c.grid}

    def forward(self, x: torch.Tensor, text_emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: [B, 3, S, S] float32. text_emb: [B, Dt] float32. Returns z_img, z_text, each [B, D] float32."""
        return self.image(x), self.text(text_emb)


def build_encoder(text_dim: int, cfg: CrossModalConfig) -> CrossModalEncoder:
    """A freshly initialised encoder; the weights depend only on `cfg.seed` (global RNG left untouched).

    >>> enc = build_encoder(8, CrossModalConfig(dim=4, width=2))
    >>> enc.image(torch.zeros(7, 3, 64, 64)).shape, enc.text(torch.ones(1, 8)).shape
    (torch.Size([7, 4]), torch.Size([1, 4]))
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return CrossModalEncoder(text_dim, cfg)


def weights_digest(model: nn.Module) -> str:
    """SHA-256 (16 hex) of every parameter and buffer, in name order: changes whenever the outputs could."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def model_id(model: CrossModalEncoder) -> str:
    """Cache key of the image embeddings this encoder gives: `crossmodal:<weights digest>`."""
    return f"{KIND}:{weights_digest(model)}"


# ---------------------------------------------------------------- augmentation and masks


def augment(
    x: torch.Tensor, gen: torch.Generator, *, scale: float = 0.15, shift: float = 0.1
) -> torch.Tensor:
    """Random flip, zoom, shift and brightness of a batch, vectorised: [B, 3, S, S] -> [B, 3, S, S].

    Each image gets an affine map (zoom in [1 - scale, 1 + scale], shift up to `shift` of the width, a
    horizontal flip with probability 1/2) sampled with border padding, then a brightness offset in
    [-0.1, 0.1]. Hue is left alone: titles name colours.
    """
    b = x.shape[0]
    zoom = 1.0 + (torch.rand(b, generator=gen) * 2 - 1) * scale  # (B,)
    flip = torch.where(torch.rand(b, generator=gen) < 0.5, -1.0, 1.0)  # (B,)
    tx, ty = ((torch.rand(2, b, generator=gen) * 2 - 1) * shift * 2).unbind(0)  # (B,) each, grid units
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = zoom * flip
    theta[:, 1, 1] = zoom
    theta[:, 0, 2] = tx
    theta[:, 1, 2] = ty
    theta = theta.to(x.device)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)  # (B, S, S, 2)
    out = F.grid_sample(x, grid, padding_mode="border", align_corners=False)  # (B, 3, S, S)
    bright = ((torch.rand(b, generator=gen) * 2 - 1) * 0.2).to(x.device)  # (B,)
    return (out + bright[:, None, None, None]).clamp(-1.0, 1.0)


def pair_mask(
    has_image: torch.Tensor, has_text: torch.Tensor, dropout: float, gen: torch.Generator | None
) -> torch.Tensor:
    """Rows that take part in the contrastive loss: both sides present and not dropped.

    has_image, has_text: [B] bool. dropout: share of the pairs whose image or title (one of the two, at
    random) is hidden this step. Returns [B] bool.

    >>> pair_mask(torch.tensor([True, True, False]), torch.tensor([True, False, True]), 0.0, None).tolist()
    [True, False, False]
    """
    keep = has_image & has_text  # (B,)
    if dropout > 0.0:
        if gen is None:
            raise ValueError("pair_mask: modality dropout needs a generator; fix: pass gen")
        dropped = torch.rand(keep.shape[0], generator=gen) < dropout  # (B,)
        keep = keep & ~dropped.to(keep.device)
    return keep


# ---------------------------------------------------------------- training


@dataclass
class TrainResult:
    """What one training run did."""

    epochs: int
    steps: int
    seconds: float
    losses: list[float] = field(default_factory=list)  # mean training loss per epoch
    temperature: float = 0.0  # tau at the end
    warm_start: bool = False


def train_encoder(
    model: CrossModalEncoder,
    pixels: torch.Tensor,
    text_emb: torch.Tensor,
    *,
    has_image: torch.Tensor | None = None,
    has_text: torch.Tensor | None = None,
    epochs: int | None = None,
    device: torch.device | str = "cpu",
    warm_start: bool = False,
) -> TrainResult:
    """Fit `model` in place on N items with AdamW and a cosine learning-rate decay.

    Args:
        model: the encoder (fresh from `build_encoder`, or loaded for a warm start).
        pixels: [N, S, S, 3] uint8 RGB, S = model.cfg.image_size (rows without an image: anything).
        text_emb: [N, Dt] float32 frozen title embeddings (rows without a title: anything).
        has_image, has_text: [N] bool, the sides present; None means all. Rows missing a side are masked
            out of the loss.
        epochs: passes over the items; None takes `model.cfg.epochs`.
        device: where the model trains (cpu by default); the data stay on the CPU and move per batch.
        warm_start: only recorded in the result.

    Returns:
        TrainResult; the model is left in eval mode.
    """
    cfg = model.cfg
    n = pixels.shape[0]
    if text_emb.shape != (n, model.text_dim):
        raise ValueError(
            f"text_emb must be [N, Dt] = [{n}, {model.text_dim}], got {tuple(text_emb.shape)}; fix: pass one "
            "title embedding per image row, from the text model the encoder was built for"
        )
    if pixels.shape[1:] != (cfg.image_size, cfg.image_size, 3):
        raise ValueError(
            f"pixels must be [N, {cfg.image_size}, {cfg.image_size}, 3], got {tuple(pixels.shape)}; fix: "
            "decode at crossmodal.image_size"
        )
    has_image = torch.ones(n, dtype=torch.bool) if has_image is None else has_image.bool()
    has_text = torch.ones(n, dtype=torch.bool) if has_text is None else has_text.bool()
    epochs = cfg.epochs if epochs is None else epochs
    dev = torch.device(device)
    gen = torch.Generator().manual_seed(cfg.seed)
    model.to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, math.ceil(n / cfg.batch_size))
    total = max(1, epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1.0 + math.cos(math.pi * min(s, total) / total))
    )
    result = TrainResult(epochs=epochs, steps=0, seconds=0.0, warm_start=warm_start)
    start = time.perf_counter()
    for epoch in range(epochs):
        order = torch.randperm(n, generator=gen)  # (N,)
        total_loss, batches = 0.0, 0
        for lo in range(0, n, cfg.batch_size):
            idx = order[lo : lo + cfg.batch_size]  # (B,)
            if idx.numel() < 2:
                continue  # one row has no negative
            mask = pair_mask(has_image[idx], has_text[idx], cfg.modality_dropout, gen).to(dev)  # (B,)
            pairs_on = int(mask.sum()) >= 2
            photos_on = cfg.image_loss_weight > 0 and int(has_image[idx].sum()) >= 2
            if not (pairs_on or photos_on):
                continue  # nothing to contrast: no step (weight decay and batch-norm statistics stay put)
            x = pixels_to_input(pixels[idx])  # (B, 3, S, S)
            if cfg.augment:
                x = augment(x, gen)
            z_img, z_text = model(x.to(dev), text_emb[idx].to(dev))  # (B, D) each
            loss = z_img.new_zeros(())
            if pairs_on:
                loss = loss + symmetric_info_nce(z_img, z_text, model.temperature(), mask=mask)
            if photos_on:  # photos without a title take part here too
                loss = loss + cfg.image_loss_weight * _image_term(
                    model, pixels[idx], has_image[idx], z_img, gen
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total_loss += float(loss.detach())
            batches += 1
            result.steps += 1
        result.losses.append(total_loss / max(batches, 1))
        log.debug("crossmodal epoch %d/%d loss %.4f", epoch + 1, epochs, result.losses[-1])
    model.eval()
    result.seconds = time.perf_counter() - start
    result.temperature = float(model.temperature().detach())
    return result


def _image_term(
    model: CrossModalEncoder,
    pixels: torch.Tensor,
    has_image: torch.Tensor,
    z_img: torch.Tensor,
    gen: torch.Generator,
) -> torch.Tensor:
    """The image-image term (SimCLR's view against view, as in SLIP): z_img [B, D] of the step's view and
    a second, independently augmented view of the same photos are a positive pair, the other photos of the
    batch negatives, at the fixed temperature `cfg.image_temperature`. Rows without a photo are masked;
    rows without a title take part. Returns a scalar."""
    cfg = model.cfg
    dev = z_img.device
    mask = has_image.to(dev)  # (B,), at least two rows set (the caller checks)
    other = model.image(augment(pixels_to_input(pixels), gen).to(dev))  # (B, D)
    return symmetric_info_nce(z_img, other, torch.tensor(cfg.image_temperature, device=dev), mask=mask)


@torch.inference_mode()
def embed_images(
    model: CrossModalEncoder,
    pixels: torch.Tensor,
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """pixels: [N, S, S, 3] uint8 RGB. Returns [N, D] float32 on the CPU, L2-normalised."""
    model.to(device).eval()
    out = [
        model.image(pixels_to_input(pixels[lo : lo + batch_size]).to(device)).cpu()
        for lo in range(0, len(pixels), batch_size)
    ]
    return torch.cat(out) if out else torch.zeros(0, model.dim)


@torch.inference_mode()
def embed_texts(
    model: CrossModalEncoder, text_emb: torch.Tensor, *, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """text_emb: [N, Dt] float32 frozen title embeddings. Returns [N, D] float32 on the CPU, L2-normalised."""
    model.to(device).eval()
    return model.text(text_emb.to(device)).cpu()


# ---------------------------------------------------------------- checkpoints


def save(model: CrossModalEncoder, path: Path | str, meta: dict[str, Any] | None = None) -> Path:
    """Write the weights with the architecture and config needed to rebuild them (`load`)."""
    return checkpoint.write(
        path, KIND, model, {"arch": model.arch(), "config": model.cfg.model_dump(), **(meta or {})}
    )


def load(path: Path | str) -> tuple[CrossModalEncoder, dict[str, Any]]:
    """The encoder saved at `path` (CPU, eval mode) and its meta."""
    payload = checkpoint.read(path, KIND)
    meta = payload["meta"]
    model = CrossModalEncoder(meta["arch"]["text_dim"], CrossModalConfig(**meta["config"]))
    model.load_state_dict(payload["state_dict"])
    return model.eval(), meta


def warm_start_from(model: CrossModalEncoder, previous: CrossModalEncoder) -> bool:
    """Copy `previous`'s weights into `model` when both have the same architecture; False when they differ."""
    if previous.arch() != model.arch():
        return False
    model.load_state_dict(previous.state_dict())
    return True
