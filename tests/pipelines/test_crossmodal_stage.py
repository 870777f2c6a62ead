"""The cross-modal encoder inside the embedding stage: the choice of image encoder, the files committed with
the partition, incremental (re)training against the previous partition, and the device setting."""

from __future__ import annotations

import io as _io
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from PIL import Image

from features.config import EmbeddingsConfig
from models import crossmodal as cm_model
from models.config import CrossModalConfig
from pipelines import crossmodal, io
from pipelines.embedding import embed_items, encoder_device
from pipelines.names import CROSSMODAL_FILE, CROSSMODAL_PAIRS, EMBEDDINGS

D1 = date(2024, 3, 1)
TINY = CrossModalConfig(min_items=4, dim=8, width=4, image_size=16, epochs=2, warm_epochs=1, batch_size=8)
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "black": (10, 10, 10)}
WORDS = ["dress", "shirt", "shoe", "bag"]


def png(rgb: tuple[int, int, int]) -> bytes:
    buf = _io.BytesIO()
    Image.new("RGB", (20, 24), rgb).save(buf, format="PNG")
    return buf.getvalue()


def make_catalogue(root: Path) -> Path:
    """12 items: 4 colours x 3 words, titles "<colour> <word>", solid images of the colour; item 12 has an
    image but no title, item 13 a title but no image."""
    data = root / "data"
    rows = []
    for i, (colour, word) in enumerate((c, w) for c in COLOURS for w in WORDS[:3]):
        io.write_input_file(data, f"img/{i}.png", png(COLOURS[colour]))
        rows.append((str(i), f"{colour} {word}", f"img/{i}.png"))
    io.write_input_file(data, "img/12.png", png((200, 200, 30)))
    rows += [("12", None, "img/12.png"), ("13", "wool bag", None)]
    items = pl.DataFrame(rows, schema=["item_id", "title", "image_path"], orient="row")
    io.write_input_table(data, "items", items)
    return data


def run_info(cfg: EmbeddingsConfig, data: Path) -> io.RunInfo:
    return io.RunInfo.new({"embeddings": cfg.model_dump(), "data": {"dir": str(data)}}, "h", run_id="t")


@pytest.fixture(scope="module")
def cfg(tiny_text_model: Path) -> EmbeddingsConfig:
    return EmbeddingsConfig(text_model=str(tiny_text_model), device="cpu", batch_size=4)


def test_choice_of_image_encoder() -> None:
    auto = EmbeddingsConfig()
    assert crossmodal.choose_image_encoder(auto, TINY, 4) == "crossmodal"
    assert crossmodal.choose_image_encoder(auto, TINY, 3) == "descriptor"
    forced = EmbeddingsConfig(image_encoder="crossmodal")
    assert crossmodal.choose_image_encoder(forced, TINY, 2) == "crossmodal"
    with pytest.raises(ValueError, match="embeddings.image_encoder=auto"):
        crossmodal.choose_image_encoder(forced, TINY, 1)
    assert (
        crossmodal.choose_image_encoder(EmbeddingsConfig(image_encoder="descriptor"), TINY, 99)
        == "descriptor"
    )
    # a configured CLIP checkpoint wins over everything
    assert (
        crossmodal.choose_image_encoder(
            EmbeddingsConfig(image_model="x", image_encoder="crossmodal"), TINY, 99
        )
        == "clip"
    )


def test_catalogue_pairs_are_distinct_pairs_with_both_sides() -> None:
    # rows 0 and 2 share both hashes -> one pair (first row 0); row 1 lacks an image, row 3 a title
    pairs = crossmodal.catalogue_pairs(
        pl.Series(["t1", "t2", "t1", None]), pl.Series(["i1", None, "i1", "i3"], dtype=pl.String)
    )
    assert pairs.to_dicts() == [{"text_hash": "t1", "image_hash": "i1", "row": 0}]


def test_encoder_device_names_the_config_key() -> None:
    assert encoder_device(EmbeddingsConfig(device="cpu")) == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="embeddings.device"):
            encoder_device(EmbeddingsConfig(device="cuda"))


@pytest.fixture(scope="module")
def day1(tmp_path_factory: pytest.TempPathFactory, cfg: EmbeddingsConfig):
    root = tmp_path_factory.mktemp("cm")
    data, out = make_catalogue(root), root / "out"
    summary = embed_items(data, out, D1, cfg, run_info(cfg, data), crossmodal_cfg=TINY, progress=False)
    return data, out, summary


def test_first_day_trains_from_scratch_and_commits_the_encoder(day1) -> None:
    data, out, s = day1
    assert s["image_encoder"] == "crossmodal" and s["image_dim"] == TINY.dim
    info = s["crossmodal"]
    # 12 (title, image) pairs: item 12 has no title, item 13 no image
    assert (info["pairs"], info["new_pairs"], info["trained"], info["warm_start_from"]) == (
        12,
        12,
        True,
        None,
    )
    assert info["epochs"] == TINY.epochs and s["image_model"] == info["model_id"]
    model, meta = cm_model.load(io.committed_path(out, EMBEDDINGS, D1, CROSSMODAL_FILE))
    assert cm_model.model_id(model) == s["image_model"] and meta["text_model"] == s["text_model"]
    assert io.read_table(out, EMBEDDINGS, D1, CROSSMODAL_PAIRS).height == 12
    assert io.read_manifest(out, EMBEDDINGS, D1)["crossmodal"]["model_id"] == s["image_model"]
    table = io.read_table(out, EMBEDDINGS, D1, "items")
    img = table["image_emb"].to_numpy()
    # 13 items with a readable image (all but item 13): unit rows in the joint space; item 13 zeros
    np.testing.assert_allclose(np.linalg.norm(img[:13], axis=1), 1.0, rtol=1e-5)
    assert float(np.abs(img[13]).sum()) == 0.0 and table["has_image"].to_list() == [True] * 13 + [False]


def test_same_catalogue_next_day_reuses_the_encoder(day1, cfg: EmbeddingsConfig, monkeypatch) -> None:
    data, out, first = day1

    def no_training(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("the encoder was trained again")

    monkeypatch.setattr(cm_model, "train_encoder", no_training)
    d2 = D1 + timedelta(days=1)
    s = embed_items(data, out, d2, cfg, run_info(cfg, data), crossmodal_cfg=TINY, progress=False)
    info = s["crossmodal"]
    assert (info["trained"], info["new_pairs"], info["warm_start_from"]) == (False, 0, D1.isoformat())
    assert s["image_model"] == first["image_model"]
    assert s["counts"]["image_encoded"] == 0 and s["counts"]["image_cached"] == 13  # same model id: cache
    # and a rerun of the same day finds its own encoder
    again = embed_items(data, out, d2, cfg, run_info(cfg, data), crossmodal_cfg=TINY, progress=False)
    assert again["image_model"] == first["image_model"] and again["crossmodal"]["trained"] is False
    # another thread count is how the training runs, not what it learns: still reused
    d3 = D1 + timedelta(days=2)
    threads = TINY.model_copy(update={"threads": 1})
    other = embed_items(data, out, d3, cfg, run_info(cfg, data), crossmodal_cfg=threads, progress=False)
    assert other["image_model"] == first["image_model"] and other["crossmodal"]["trained"] is False


def test_changed_item_warm_starts_and_changes_the_model_id(
    tmp_path: Path, day1, cfg: EmbeddingsConfig
) -> None:
    data_src, out_src, first = day1
    import shutil

    out = tmp_path / "out"
    shutil.copytree(out_src / EMBEDDINGS / f"dt={D1}", out / EMBEDDINGS / f"dt={D1}")
    data = tmp_path / "data"
    shutil.copytree(data_src, data)
    items = io.read_items(data).with_columns(
        pl.when(pl.col("item_id") == "0").then(pl.lit("black bag")).otherwise(pl.col("title")).alias("title")
    )
    io.write_input_table(data, "items", items)
    d3 = D1 + timedelta(days=2)
    s = embed_items(data, out, d3, cfg, run_info(cfg, data), crossmodal_cfg=TINY, progress=False)
    info = s["crossmodal"]
    # one changed title -> one new pair; warm start from D1 with warm_epochs over all 12 pairs
    assert (info["trained"], info["new_pairs"], info["warm_start_from"]) == (True, 1, D1.isoformat())
    assert info["epochs"] == TINY.warm_epochs and info["train_pairs"] == 12
    assert s["image_model"] != first["image_model"]
    assert s["counts"]["image_encoded"] == 13  # new weights: every image is encoded again


def test_other_config_trains_from_scratch(tmp_path: Path, day1, cfg: EmbeddingsConfig) -> None:
    data, out_src, _ = day1
    import shutil

    out = tmp_path / "out"
    shutil.copytree(out_src / EMBEDDINGS / f"dt={D1}", out / EMBEDDINGS / f"dt={D1}")
    wider = TINY.model_copy(update={"width": 6})
    s = embed_items(data, out, D1 + timedelta(days=1), cfg, run_info(cfg, data), crossmodal_cfg=wider)
    assert s["crossmodal"]["warm_start_from"] is None and s["crossmodal"]["epochs"] == wider.epochs


def test_descriptor_below_min_items_writes_no_encoder(tmp_path: Path, day1, cfg: EmbeddingsConfig) -> None:
    data, _, _ = day1
    out = tmp_path / "out"
    strict = TINY.model_copy(update={"min_items": 13})  # 12 pairs < 13
    s = embed_items(data, out, D1, cfg, run_info(cfg, data), crossmodal_cfg=strict, progress=False)
    assert s["image_encoder"] == "descriptor" and "crossmodal" not in s and s["image_dim"] == 132
    assert not (io.partition_dir(out, EMBEDDINGS, D1) / CROSSMODAL_FILE).exists()
