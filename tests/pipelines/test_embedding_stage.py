"""The embedding stage: output table and masks, manifest counts, and the incremental cache."""

from __future__ import annotations

import io as _io
import tempfile
from datetime import date
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import pipelines.embedding as stage
from features.config import EmbeddingsConfig
from features.embeddings import ColourEdgeDescriptor
from pipelines import io
from pipelines.embedding import embed_items

DT = date(2024, 3, 1)
CFG = EmbeddingsConfig(device="cpu", batch_size=2)


@pytest.fixture(scope="module")
def tiny_text_cfg(tiny_text_model: Path) -> EmbeddingsConfig:
    """The tiny local sentence-transformers model of tests/conftest.py (the "local path" branch)."""
    return EmbeddingsConfig(text_model=str(tiny_text_model), device="cpu", batch_size=2)


def png(rgb: tuple[int, int, int]) -> bytes:
    buf = _io.BytesIO()
    Image.new("RGB", (20, 24), rgb).save(buf, format="PNG")
    return buf.getvalue()


def make_data(root: Path) -> Path:
    """6 items: two share a title, one has a blank title, one a null title; images: red, blue, the same red
    file content under another name, a corrupt file, a missing file, no path."""
    data = root / "data"
    io.write_input_file(data, "img/red.png", png((220, 20, 20)))
    io.write_input_file(data, "img/blue.png", png((20, 20, 220)))
    io.write_input_file(data, "img/red_copy.png", png((220, 20, 20)))
    io.write_input_file(data, "img/bad.jpg", b"\xff\xd8 this is not a jpeg")
    items = pl.DataFrame(
        {
            "item_id": [10, 11, 12, 13, 14, 15],
            "title": [
                "red cotton dress",
                "blue denim jacket",
                "red cotton dress",
                "  ",
                None,
                "game controller",
            ],
            "image_path": [
                "img/red.png",
                "img/blue.png",
                "img/red_copy.png",
                "img/bad.jpg",
                "img/gone.png",
                None,
            ],
        }
    )
    io.write_input_table(data, "items", items)
    return data


def run_info() -> io.RunInfo:
    return io.RunInfo.new({"embeddings": CFG.model_dump()}, "cfg-hash", run_id="test")


def read_out(out: Path) -> pl.DataFrame:
    return io.read_table(out, stage.DATASET, DT, stage.TABLE)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("emb")
    data = make_data(root)
    out = root / "out"
    summary = embed_items(data, out, DT, CFG, run_info(), progress=False)
    return data, out, summary


def test_first_run_counts_and_masks(first_run) -> None:
    data, out, summary = first_run
    c = summary["counts"]
    # titles: 4 present (10, 11, 12, 15), of which 3 distinct; 13 blank and 14 null are missing
    assert (c["items"], c["text_encoded"], c["text_unique_encoded"], c["text_cached"], c["text_missing"]) == (
        6,
        4,
        3,
        0,
        2,
    )
    # images: red.png and red_copy.png have the same bytes -> 1 encoding for 2 items; blue 1; bad.jpg
    # corrupt; gone.png missing file and item 15 no path -> missing = 2 (of which 1 missing file), corrupt = 1
    assert (c["image_encoded"], c["image_unique_encoded"], c["image_cached"]) == (3, 2, 0)
    assert (c["image_missing"], c["image_missing_file"], c["image_corrupt"]) == (2, 1, 1)
    assert summary["text_dim"] == 384 and summary["image_dim"] == ColourEdgeDescriptor().dim
    assert summary["image_model"] == "descriptor:hsv-grid-edge:v1"
    assert summary["text_model"].startswith("packaged:all-MiniLM-L6-v2@")

    df = read_out(out)
    assert df.columns == ["item_id", "text_emb", "image_emb", "has_text", "has_image"]
    assert df["item_id"].to_list() == ["10", "11", "12", "13", "14", "15"]
    assert df["has_text"].to_list() == [True, True, True, False, False, True]
    assert df["has_image"].to_list() == [True, True, True, False, False, False]
    text, image = df["text_emb"].to_numpy(), df["image_emb"].to_numpy()
    assert text.dtype == np.float32 and text.shape == (6, 384) and image.shape == (6, 132)
    # present rows unit norm, missing rows exactly zero
    np.testing.assert_allclose(np.linalg.norm(text, axis=1), [1, 1, 1, 0, 0, 1], atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(image, axis=1), [1, 1, 1, 0, 0, 0], atol=1e-5)
    np.testing.assert_array_equal(text[0], text[2])  # same title, same vector
    np.testing.assert_array_equal(image[0], image[2])  # same image bytes, same vector
    # the red-dress items are closer in text to each other than to the controller
    assert text[0] @ text[1] > text[0] @ text[5]

    manifest = io.read_manifest(out, stage.DATASET, DT)
    assert manifest["counts"] == c and manifest["rows"] == {"items": 6}
    assert manifest["text_dim"] == 384 and manifest["image_model"] == summary["image_model"]


def test_cache_files_are_whole_chunks(first_run) -> None:
    _, out, summary = first_run
    for modality, model in (("text", summary["text_model"]), ("image", summary["image_model"])):
        d = io.embedding_cache_dir(out, modality, model)
        assert not list(d.glob(".*"))  # no temp file left behind
        chunks = io.embedding_cache_files(out, modality, model)
        assert len(chunks) == 1  # 3 titles / 2 images fit one chunk
        cached = pl.read_parquet(chunks[0])
        assert cached.columns == ["model_id", "content_hash", "emb"]
        assert set(cached["model_id"]) == {model}
    assert io.committed_dates(out, stage.DATASET) == [DT]  # the cache folder is not a partition


def test_rerun_unchanged_encodes_nothing_and_loads_no_model(first_run, monkeypatch, tmp_path) -> None:
    data, out, first = first_run
    before = read_out(out)

    def no_model(*_a, **_k):
        raise AssertionError("a model was loaded although everything is cached")

    monkeypatch.setattr(stage, "build_text_encoder", no_model)
    monkeypatch.setattr(stage, "build_image_encoder", no_model)
    dt2 = date(2024, 3, 2)
    summary = embed_items(data, out, dt2, CFG, run_info(), progress=False)
    c = summary["counts"]
    assert (c["text_encoded"], c["text_cached"], c["image_encoded"], c["image_cached"]) == (0, 4, 0, 3)
    assert c["image_corrupt"] == 1 and c["text_missing"] == 2
    after = io.read_table(out, stage.DATASET, dt2, stage.TABLE)
    assert after.equals(before)


def test_changed_title_and_image_are_re_encoded(tmp_path: Path, tiny_text_cfg: EmbeddingsConfig) -> None:
    cfg = tiny_text_cfg
    data = make_data(tmp_path)
    out = tmp_path / "out"
    first = embed_items(data, out, DT, cfg, run_info(), progress=False)
    assert first["text_dim"] == 8 and first["text_model"] == cfg.text_model
    old = read_out(out)
    items = io.read_items(data).with_columns(
        pl.when(pl.col("item_id") == "11")
        .then(pl.lit("green wool sweater"))
        .otherwise(pl.col("title"))
        .alias("title")
    )
    io.write_input_table(data, "items", items)
    io.write_input_file(data, "img/blue.png", png((20, 200, 20)))  # item 11's image is now green
    summary = embed_items(data, out, DT, cfg, run_info(), progress=False)
    c = summary["counts"]
    # only item 11 changed: 1 title and 1 image encoded, the other 3 titles / 2 images from the cache
    assert (c["text_encoded"], c["text_cached"], c["image_encoded"], c["image_cached"]) == (1, 3, 1, 2)
    new = read_out(out)
    changed = new["item_id"] == "11"
    for col in ("text_emb", "image_emb"):
        a, b = old[col].to_numpy(), new[col].to_numpy()
        assert not np.allclose(a[changed.to_numpy()], b[changed.to_numpy()])
        np.testing.assert_array_equal(a[~changed.to_numpy()], b[~changed.to_numpy()])
    # two chunks per modality now: the first run's and the one with the changed item
    assert len(io.embedding_cache_files(out, "text", summary["text_model"])) == 2


def test_items_without_title_or_image_columns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, tiny_text_cfg: EmbeddingsConfig
) -> None:
    data = tmp_path / "data"
    io.write_input_table(data, "items", pl.DataFrame({"item_id": ["a", "b"], "price": [1.0, 2.0]}))
    with caplog.at_level("WARNING", logger="pipelines.embedding"):
        summary = embed_items(data, tmp_path / "out", DT, tiny_text_cfg, run_info(), progress=False)
    assert "no 'title' column" in caplog.text and "no 'image_path' column" in caplog.text
    c = summary["counts"]
    assert (c["text_missing"], c["image_missing"], c["text_encoded"], c["image_encoded"]) == (2, 2, 0, 0)
    df = read_out(tmp_path / "out")
    assert not df["has_text"].any() and not df["has_image"].any()
    assert float(np.abs(df["text_emb"].to_numpy()).sum()) == 0.0


def test_images_outside_the_rules_are_never_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, tiny_text_cfg: EmbeddingsConfig
) -> None:
    """A valid image outside the data folder (absolute path, '..', a link), a named pipe, a file over the size
    cap and an image over the pixel cap: none of them gets an image embedding, and the stage does not hang."""
    import os

    data = tmp_path / "data"
    outside = tmp_path / "outside.png"
    outside.write_bytes(png((220, 20, 20)))
    io.write_input_file(data, "img/ok.png", png((20, 20, 220)))  # 20 x 24 = 480 pixels
    io.write_input_file(data, "img/big.png", png((20, 220, 20)) + b"\0" * 4000)  # over 2,000 bytes
    (data / "img" / "link.png").symlink_to(outside)
    os.mkfifo(data / "img" / "pipe.png")
    paths = [str(outside), "../outside.png", "img/link.png", "img/pipe.png", "img/big.png", "img/ok.png"]
    items = pl.DataFrame(
        {"item_id": [f"i{k}" for k in range(6)], "title": ["red dress"] * 6, "image_path": paths}
    )
    io.write_input_table(data, "items", items)
    cfg = tiny_text_cfg.model_copy(update={"max_image_bytes": 2000})
    summary = embed_items(data, tmp_path / "out", DT, cfg, run_info(), progress=False)
    assert read_out(tmp_path / "out")["has_image"].to_list() == [False] * 5 + [True]
    assert summary["counts"]["image_missing_file"] == 5

    # the pixel cap: img/ok.png has 480 pixels; the header is read, the image is not decoded
    cfg = cfg.model_copy(update={"max_image_pixels": 479})
    with caplog.at_level("WARNING", logger="pipelines.embedding"):
        summary = embed_items(data, tmp_path / "out2", DT, cfg, run_info(), progress=False)
    assert read_out(tmp_path / "out2")["has_image"].to_list() == [False] * 6
    assert summary["counts"]["image_too_many_pixels"] == 1
    (line,) = [r.getMessage() for r in caplog.records if "max_image_pixels" in r.getMessage()]
    assert line.startswith(f"{io.items_path(data)}: column image_path: 1 images are larger than ")
    assert (
        "e.g. ['img/ok.png']" in line and "; fix: downscale them or raise embeddings.max_image_pixels" in line
    )


def test_duplicate_item_ids_are_an_error(tmp_path: Path) -> None:
    data = tmp_path / "data"
    io.write_input_table(data, "items", pl.DataFrame({"item_id": [1, 1, 2], "title": ["a", "b", "c"]}))
    with pytest.raises(ValueError, match="item_id.*duplicated"):
        embed_items(data, tmp_path / "out", DT, CFG, run_info(), progress=False)
    assert not io.committed_dates(tmp_path / "out", stage.DATASET)


@settings(max_examples=20, deadline=None)
@given(
    st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=6, unique=True),
    st.integers(1, 5),
)
def test_cache_write_then_read_round_trips(keys: list[str], dim: int) -> None:
    rng = np.random.default_rng(len(keys) * 10 + dim)
    emb = rng.standard_normal((len(keys), dim)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        assert io.scan_embedding_cache(out, "text", "m") is None
        io.append_embedding_cache(out, "text", "m", pl.DataFrame({"content_hash": keys, "emb": emb}))
        io.append_embedding_cache(out, "text", "m", pl.DataFrame({"content_hash": keys[:1], "emb": emb[:1]}))
        got = io.scan_embedding_cache(out, "text", "m").collect()
        assert sorted(got["content_hash"]) == sorted(keys)  # the re-cached key appears once
        order = {k: i for i, k in enumerate(keys)}
        idx = [order[k] for k in got["content_hash"]]
        np.testing.assert_array_equal(got["emb"].to_numpy(), emb[idx])
        assert io.scan_embedding_cache(out, "text", "other-model") is None


def test_real_fashion_items(shared_data: Path, tmp_path: Path, tiny_text_cfg: EmbeddingsConfig) -> None:
    """20 real catalogue items (titles + 60x80 JPEGs) from ../shared/data, plus one id without an image."""
    src = shared_data / "fashion_product_images_small"
    styles = pl.read_csv(src / "styles_merged.csv", infer_schema_length=0)
    ids = sorted(p.stem for p in (src / "images").glob("*.jpg"))[:20]
    data = tmp_path / "data"
    for i in ids:
        io.write_input_file(data, f"images/{i}.jpg", (src / "images" / f"{i}.jpg").read_bytes())
    items = (
        styles.filter(pl.col("id").is_in(ids + ["no-such-id"]))
        .select(pl.col("id").alias("item_id"), pl.col("productDisplayName").alias("title"))
        .with_columns(image_path=pl.format("images/{}.jpg", "item_id"))
    )
    items = pl.concat(
        [items, pl.DataFrame({"item_id": ["x"], "title": ["Nike Men Blue Shoes"], "image_path": [None]})]
    )
    io.write_input_table(data, "items", items)
    summary = embed_items(data, tmp_path / "out", DT, tiny_text_cfg, run_info(), progress=False)
    c = summary["counts"]
    assert (
        c["items"] == 21 and c["image_encoded"] == 20 and c["image_missing"] == 1 and c["image_corrupt"] == 0
    )
    assert c["text_missing"] == 0
