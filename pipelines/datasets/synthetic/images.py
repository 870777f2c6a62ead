"""Product images of the synthetic items: rendering (a category shape filled with the item's colour, with
the item's pattern drawn over it) and writing one PNG per item with an image_path."""

from __future__ import annotations

import io as _bytes_io
from pathlib import Path

import numpy as np
from PIL import Image

from pipelines import io
from pipelines.datasets.synthetic.spec import S_IMAGES, SyntheticSpec, stream_rng
from pipelines.datasets.synthetic.vocab import (
    COLOUR_RGB,
    L1_SHAPES,
    PATTERN_DARKEN_ABOVE,
    PATTERN_PERIOD,
    PATTERN_TONE,
    PATTERNS,
)
from pipelines.datasets.synthetic.world import World

_IMAGE_CHUNK = 256  # images rendered per block


def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """dx, dy: [n, S, S] float32 pixel offsets from the centre in units of the item's radius (y down).

    Returns [n, S, S] bool, True inside the shape.
    """
    ax, ay = np.abs(dx), np.abs(dy)
    if shape == "circle":
        return dx * dx + dy * dy <= 1.0
    if shape == "square":
        return np.maximum(ax, ay) <= 0.8
    if shape == "triangle":  # apex up, base at dy = 0.8
        return (dy <= 0.8) & (dy >= -0.9) & (ax <= (dy + 0.9) * 0.55)
    if shape == "diamond":
        return ax + ay <= 1.0
    if shape == "ring":
        r2 = dx * dx + dy * dy
        return (r2 <= 1.0) & (r2 >= 0.3)
    if shape == "plus":
        return ((ax <= 0.3) & (ay <= 0.95)) | ((ay <= 0.3) & (ax <= 0.95))
    if shape == "hbar":
        return (ax <= 1.0) & (ay <= 0.35)
    if shape == "vbar":
        return (ax <= 0.35) & (ay <= 1.0)
    raise ValueError(f"unknown shape {shape!r}; fix: use one of {L1_SHAPES}")


def pattern_mask(pattern: np.ndarray, phase: np.ndarray, size: int) -> np.ndarray:
    """Where each image's pattern is drawn, on a square lattice of period PATTERN_PERIOD * size pixels.

    pattern: [n] int, index into PATTERNS; phase: [n, 2] float in [0, 1), the lattice offset (x, y) in
    periods. Returns [n, size, size] bool: stripes, diagonal bands over 1/3 of the area; dots, discs of
    radius 0.28 period (25%); checks, horizontal and vertical lines 0.2 period wide (36%); plain, none.

    >>> m = pattern_mask(np.array([0, 1, 2, 3]), np.zeros((4, 2)), 64)
    >>> [round(float(x), 2) for x in m.mean(axis=(1, 2))]
    [0.0, 0.33, 0.24, 0.34]
    """
    n = len(pattern)
    coords = (np.arange(size, dtype=np.float64) + 0.5) / (PATTERN_PERIOD * size)  # (S,) in periods
    x = (coords[None, None, :] + phase[:, 0, None, None]) % 1.0  # (n, 1, S) position inside the cell
    y = (coords[None, :, None] + phase[:, 1, None, None]) % 1.0  # (n, S, 1)
    out = np.zeros((n, size, size), dtype=bool)
    for k, name in enumerate(PATTERNS):
        sel = np.flatnonzero(pattern == k)
        if name == "plain" or not sel.size:
            continue
        xs, ys = x[sel], y[sel]  # (m, 1, S), (m, S, 1)
        if name == "stripes":
            out[sel] = (xs + ys) % 1.0 < 1.0 / 3.0
        elif name == "dots":
            out[sel] = (xs - 0.5) ** 2 + (ys - 0.5) ** 2 < 0.28**2
        elif name == "checks":
            out[sel] = (xs < 0.2) | (ys < 0.2)
        else:
            raise ValueError(
                f"unknown pattern {name!r}; fix: draw it in pattern_mask or drop it from PATTERNS"
            )
    return out


def render_images(
    colour: np.ndarray,
    category_l1: np.ndarray,
    rng: np.random.Generator,
    size: int = 64,
    pattern: np.ndarray | None = None,
) -> np.ndarray:
    """Render product images: a shape of the item's category filled with the item's colour.

    colour: [n] int, index into COLOURS; category_l1: [n] int, index into CATEGORIES_L1 (shape L1_SHAPES);
    pattern: [n] int, index into PATTERNS, or None (all plain).
    Returns [n, size, size, 3] uint8 RGB. Variation per image: centre offset (std size/20 px), radius
    (0.22..0.34 of size), colour jitter (std 10 per channel), background (light behind dark colours, dark
    behind light ones, per-image level and a linear lighting gradient) and pixel noise (std 3). A pattern
    (`pattern_mask`, random lattice offset) is drawn inside the shape in a tone of the fill colour:
    PATTERN_TONE of the way to black for fills of luminance > PATTERN_DARKEN_ABOVE, to white for darker ones. Images
    without a pattern take the same random draws as before patterns existed (the offsets are drawn last).
    """
    n = len(colour)
    rgb = np.asarray(COLOUR_RGB, dtype=np.float32)[colour]  # (n, 3)
    rgb = rgb + rng.normal(0.0, 10.0, (n, 3)).astype(np.float32)
    luminance = np.asarray(COLOUR_RGB, dtype=np.float32)[colour] @ np.array([0.299, 0.587, 0.114], np.float32)
    bg_level = np.where(luminance > 160.0, 50.0, 225.0) + rng.normal(0.0, 8.0, n)  # (n,)
    centre = size / 2 + rng.normal(0.0, size / 20, (n, 2)).clip(-size / 8, size / 8)  # (n, 2) x, y
    radius = size * rng.uniform(0.22, 0.34, n)  # (n,)
    grad = rng.normal(0.0, 12.0, (n, 2))  # lighting gradient (x, y), grey levels across the image
    coords = (np.arange(size, dtype=np.float32) + 0.5)[None, :]  # (1, S)
    xs = (coords - centre[:, :1]) / radius[:, None]  # (n, S)
    ys = (coords - centre[:, 1:]) / radius[:, None]  # (n, S)
    dx = np.broadcast_to(xs[:, None, :], (n, size, size)).astype(np.float32)  # (n, S, S)
    dy = np.broadcast_to(ys[:, :, None], (n, size, size)).astype(np.float32)  # (n, S, S)
    mask = np.zeros((n, size, size), dtype=bool)
    for k, shape in enumerate(L1_SHAPES):
        sel = np.flatnonzero(category_l1 == k)
        if sel.size:
            mask[sel] = _shape_mask(shape, dx[sel], dy[sel])
    ramp = np.linspace(-0.5, 0.5, size, dtype=np.float32)
    light = grad[:, 0, None, None] * ramp[None, None, :] + grad[:, 1, None, None] * ramp[None, :, None]
    background = (bg_level[:, None, None] + light)[..., None]  # (n, S, S, 1)
    img = np.where(mask[..., None], rgb[:, None, None, :], background)  # (n, S, S, 3)
    noise = rng.normal(0.0, 3.0, img.shape).astype(np.float32)  # (n, S, S, 3)
    if pattern is not None and np.any(pattern > 0):
        drawn = mask & pattern_mask(pattern, rng.random((n, 2)), size)  # (n, S, S)
        dark = (luminance > PATTERN_DARKEN_ABOVE)[:, None]  # (n, 1)
        tone = np.where(dark, rgb * (1.0 - PATTERN_TONE), rgb + (255.0 - rgb) * PATTERN_TONE)  # (n, 3)
        img = np.where(drawn[..., None], tone[:, None, None, :], img)  # (n, S, S, 3)
    img = img + noise
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _png(img: np.ndarray) -> bytes:
    """img: [S, S, 3] uint8 -> PNG bytes."""
    buf = _bytes_io.BytesIO()
    Image.fromarray(img, mode="RGB").save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def write_images(data_dir: Path, world: World, spec: SyntheticSpec) -> int:
    items = world.items
    has_image = items["image_path"].is_not_null().to_numpy()
    paths = items["image_path"].to_list()
    written = 0
    for c, lo in enumerate(range(0, spec.items, _IMAGE_CHUNK)):
        hi = min(lo + _IMAGE_CHUNK, spec.items)
        # rendered for every item of the chunk (so an item's picture does not depend on its neighbours'
        # null flags), written only for items with an image_path
        imgs = render_images(
            world.item_colour[lo:hi],
            world.item_l1[lo:hi],
            stream_rng(spec.seed, S_IMAGES, c),
            spec.image_size,
            world.item_pattern[lo:hi],
        )
        for k in np.flatnonzero(has_image[lo:hi]):
            io.write_input_file(data_dir, paths[lo + k], _png(imgs[k]))
            written += 1
    return written
