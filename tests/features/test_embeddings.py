"""Encoders of features/embeddings.py: shapes, norms, the descriptor's visual signal, CLIP loading, MiniLM."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from features.config import EmbeddingsConfig
from features.embeddings import (
    ClipImageEncoder,
    ColourEdgeDescriptor,
    Encoder,
    build_image_encoder,
    content_hash,
    decode_image,
    encode_batched,
    image_array,
    image_model_id,
    image_pixels,
    l2_normalise,
    packaged_model_path,
    text_model_id,
)


def solid(rgb: tuple[int, int, int], size: tuple[int, int] = (60, 80)) -> Image.Image:
    return Image.new("RGB", size, rgb)


def stripes(horizontal: bool, period: int = 8, phase: int = 0) -> Image.Image:
    """64x64 black/white stripes, `period` pixels per black+white pair."""
    line = ((np.arange(64) + phase) % period < period // 2).astype(np.uint8) * 255  # (64,)
    a = np.repeat(line[:, None], 64, axis=1) if horizontal else np.repeat(line[None, :], 64, axis=0)
    return Image.fromarray(np.stack([a, a, a], axis=-1))


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------- helpers


def test_l2_normalise_hand_values() -> None:
    # [3, 4] has norm 5 -> [0.6, 0.8]; a zero row stays zero (no NaN)
    out = l2_normalise(np.array([[3.0, 4.0], [0.0, 0.0]]))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]], rtol=1e-6)


@given(arrays(np.float32, (5, 4), elements=st.floats(-1e3, 1e3, width=32)))
def test_l2_normalise_rows_unit_or_zero(x: np.ndarray) -> None:
    norms = np.linalg.norm(l2_normalise(x), axis=1)
    nonzero = np.linalg.norm(x.astype(np.float64), axis=1) > 1e-6
    np.testing.assert_allclose(norms[nonzero], 1.0, rtol=1e-5)
    assert np.all(norms[~nonzero] <= 1.0 + 1e-5)


def test_content_hash_is_sha256() -> None:
    # SHA-256("abc") is the FIPS 180-2 test vector ba7816bf...15ad; text is hashed as UTF-8
    assert content_hash("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert content_hash(b"abc") == content_hash("abc")
    assert content_hash("red dress") != content_hash("red dress ")


def test_decode_image_good_corrupt_truncated_missing() -> None:
    good = png_bytes(solid((10, 20, 30), (5, 4)))
    img = decode_image(good)
    assert img is not None and img.mode == "RGB" and img.size == (5, 4)
    assert img.getpixel((0, 0)) == (10, 20, 30)
    assert decode_image(b"definitely not an image") is None
    assert decode_image(good[: len(good) // 2]) is None  # truncated PNG
    assert decode_image(None) is None


def test_pixel_cap_is_read_from_the_header() -> None:
    good = png_bytes(solid((10, 20, 30), (5, 4)))  # 5 x 4 = 20 pixels
    assert image_pixels(good) == 20 and image_pixels(b"not an image") is None and image_pixels(None) is None
    assert decode_image(good, max_pixels=20) is not None
    assert decode_image(good, max_pixels=19) is None


def test_image_array_resizes_to_uint8_squares() -> None:
    # a 60x80 red photo and a 5x4 grey one -> [2, 8, 8, 3] uint8; solid colours survive the resize
    out = image_array([solid((255, 0, 0)), solid((7, 7, 7), (5, 4)).convert("L")], 8)
    assert out.shape == (2, 8, 8, 3) and out.dtype == np.uint8
    assert (out[0] == [255, 0, 0]).all() and (out[1] == 7).all()
    assert image_array([], 8).shape == (0, 8, 8, 3)


def test_model_ids() -> None:
    assert image_model_id(None) == "descriptor:hsv-grid-edge:v1"
    assert image_model_id("/m/clip") == "clip:/m/clip"
    assert text_model_id("some/model") == "some/model"
    assert text_model_id("packaged:all-MiniLM-L6-v2").startswith("packaged:all-MiniLM-L6-v2@")
    with pytest.raises(ValueError, match="unknown packaged model"):
        text_model_id("packaged:nope")


# ---------------------------------------------------------------- descriptor


@pytest.mark.parametrize("b", [1, 7])
def test_descriptor_shape_dtype_norm(b: int) -> None:
    enc = ColourEdgeDescriptor()
    assert isinstance(enc, Encoder)
    # 8 hue x 2 sat x 3 val + 4 grey = 52; 4x4 grid x RGB = 48; 2x2 grid x 8 orientations = 32
    assert enc.dim == 52 + 48 + 32
    imgs = [solid((30 * i, 200 - 20 * i, 90), (40 + i, 70)) for i in range(b)]
    out = enc.encode(imgs)
    assert out.shape == (b, enc.dim) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)


def test_descriptor_same_colour_closer_than_different_colour() -> None:
    # two reds share the chromatic bin (hue 0, high saturation, top value third) and nearly the same grid
    # means; blue falls in hue bin 5 (240 deg / 45 deg) and its grid means point the other way in R and B.
    red1, red2, blue, green = (
        solid((210, 30, 30)),
        solid((235, 45, 40)),
        solid((30, 30, 210)),
        solid((30, 200, 40)),
    )
    e = ColourEdgeDescriptor().encode([red1, red2, blue, green])
    sim = e @ e.T
    assert sim[0, 1] > 0.95
    assert sim[0, 1] > sim[0, 2] + 0.5 and sim[0, 1] > sim[0, 3] + 0.5


def test_descriptor_colour_histogram_hand_bins() -> None:
    enc = ColourEdgeDescriptor()
    half = np.zeros((1, 64, 64, 3), np.float32)
    half[:, :, :32] = [1.0, 0.0, 0.0]  # pure red: hue 0, sat 1 -> sat bin 1, value 1 -> val bin 2
    half[:, :, 32:] = [1.0, 1.0, 1.0]  # white: sat 0 -> grey, value 1 -> grey bin 3
    hist = enc.colour_histogram(half)[0]
    red_bin = (0 * 2 + 1) * 3 + 2  # (hue * SAT_BINS + sat) * VAL_BINS + val = 5
    white_bin = 48 + 3
    expected = np.zeros(52, np.float32)
    expected[[red_bin, white_bin]] = np.sqrt(0.5)  # each covers half the pixels; Hellinger: sqrt(share)
    np.testing.assert_allclose(hist, expected, atol=1e-6)


def test_descriptor_edges_tell_horizontal_from_vertical_stripes() -> None:
    enc = ColourEdgeDescriptor()
    h1, h2, v1 = stripes(True), stripes(True, phase=2), stripes(False)
    edges = enc.edge_histogram(enc._pixels([h1, v1])).reshape(2, 4, 8)  # (image, cell, orientation)
    # horizontal stripes change along y: gradients point at pi/2 -> orientation bin 4 (of 8 over [0, pi));
    # vertical stripes change along x: angle 0 -> bin 0. All mass sits in that bin, in every grid cell.
    assert np.all(edges[0, :, 4] > 0) and np.allclose(np.delete(edges[0], 4, axis=1), 0)
    assert np.all(edges[1, :, 0] > 0) and np.allclose(np.delete(edges[1], 0, axis=1), 0)
    # same colours, so the whole descriptor differs only through the edge block (and a little layout)
    e = enc.encode([h1, h2, v1])
    assert e[0] @ e[1] > e[0] @ e[2] + 0.2


@settings(max_examples=25, deadline=None)
@given(arrays(np.uint8, (3, 12, 10, 3)))
def test_descriptor_rows_unit_norm_and_batch_independent(pixels: np.ndarray) -> None:
    enc = ColourEdgeDescriptor()
    imgs = [Image.fromarray(p) for p in pixels]
    out = enc.encode(imgs)
    assert np.all(np.isfinite(out))
    # a colour histogram always has mass, so no row is zero
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    # reordering the batch reorders the rows and nothing else
    np.testing.assert_allclose(enc.encode(imgs[::-1]), out[::-1], atol=1e-6)


def test_encode_batched_matches_one_batch() -> None:
    enc = ColourEdgeDescriptor()
    imgs = [solid((i * 35, 255 - i * 30, (i * 70) % 256)) for i in range(7)]
    whole = enc.encode(imgs)
    np.testing.assert_allclose(encode_batched(enc, imgs, batch_size=3, progress=False), whole, atol=1e-6)
    assert encode_batched(enc, [], batch_size=3, progress=False).shape == (0, enc.dim)
    with pytest.raises(ValueError, match="batch_size"):
        encode_batched(enc, imgs, batch_size=0)


def test_build_image_encoder_without_checkpoint_logs_descriptor(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO", logger="features.embeddings"):
        enc = build_image_encoder(EmbeddingsConfig(image_model=None))
    assert isinstance(enc, ColourEdgeDescriptor)
    assert "descriptor:hsv-grid-edge:v1" in caplog.text


# ---------------------------------------------------------------- CLIP image tower


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory):
    """A randomly initialised 2-layer CLIP vision tower (hidden 32, 32x32 images, projection 16), saved."""
    from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    cfg = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
        projection_dim=16,
    )
    model = CLIPVisionModelWithProjection(cfg).eval()
    processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    d = tmp_path_factory.mktemp("tiny_clip")
    model.save_pretrained(d)
    processor.save_pretrained(d)
    return d, model, processor


@pytest.mark.parametrize("b", [1, 7])
def test_clip_round_trip_through_loading_path(tiny_clip_dir, b: int) -> None:
    d, model, processor = tiny_clip_dir
    enc = build_image_encoder(EmbeddingsConfig(image_model=str(d), device="cpu"))
    assert isinstance(enc, ClipImageEncoder) and isinstance(enc, Encoder)
    assert enc.dim == 16 and enc.model_id == f"clip:{d}"
    imgs = [solid((20 * i, 100, 255 - 30 * i), (60, 80)) for i in range(b)]
    out = enc.encode(imgs)
    assert out.shape == (b, 16) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    # the loaded weights are the saved ones: the in-memory model gives the same normalised embeddings
    with torch.inference_mode():
        ref = model(pixel_values=processor(images=imgs, return_tensors="pt")["pixel_values"]).image_embeds
    np.testing.assert_allclose(out, l2_normalise(ref.numpy()), atol=1e-5)


def test_clip_missing_checkpoint_names_the_fix(tmp_path) -> None:
    with pytest.raises(ValueError, match="embeddings.image_model"):
        ClipImageEncoder(str(tmp_path / "nowhere"))


# ---------------------------------------------------------------- packaged MiniLM


def test_packaged_minilm_is_a_local_folder() -> None:
    path = packaged_model_path("all-MiniLM-L6-v2")
    assert (path / "modules.json").is_file() and (path / "config.json").is_file()


@pytest.mark.slow
def test_packaged_minilm_meaning_and_shapes() -> None:
    from features.embeddings import build_text_encoder

    start = time.perf_counter()
    enc = build_text_encoder(EmbeddingsConfig(device="cpu"))
    assert isinstance(enc, Encoder) and enc.dim == 384
    e = enc.encode(["red cotton dress", "crimson cotton dress", "video game controller"])
    assert e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, rtol=1e-5)
    # near-synonymous product titles must be closer than unrelated ones
    assert e[0] @ e[1] > e[0] @ e[2] + 0.3
    for b in (1, 7):
        out = enc.encode([f"item number {i}" for i in range(b)])
        assert out.shape == (b, 384)
    assert time.perf_counter() - start < 120


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_clip_on_cuda_matches_cpu(tiny_clip_dir) -> None:
    d, _, _ = tiny_clip_dir
    imgs = [solid((20 * i, 100, 255 - 30 * i)) for i in range(7)]
    cpu = ClipImageEncoder(str(d), "cpu").encode(imgs)
    gpu = build_image_encoder(EmbeddingsConfig(image_model=str(d)), "cuda").encode(imgs)
    np.testing.assert_allclose(gpu, cpu, atol=1e-3)  # TF32 / kernel differences only
