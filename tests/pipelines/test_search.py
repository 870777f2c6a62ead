"""Cross-modal search over the committed embeddings: joint space, the fallbacks without an encoder, errors."""

from __future__ import annotations

import io as _io
from datetime import date
from pathlib import Path

import polars as pl
import pytest
from PIL import Image

from features.config import EmbeddingsConfig
from models.config import CrossModalConfig
from pipelines import io
from pipelines.embedding import embed_items
from pipelines.names import CROSSMODAL_FILE, EMBEDDINGS
from pipelines.search import SearchError, search_items

DT = date(2024, 3, 1)
TINY = CrossModalConfig(min_items=4, dim=8, width=4, image_size=16, epochs=2, batch_size=8)


def png(rgb: tuple[int, int, int]) -> bytes:
    buf = _io.BytesIO()
    Image.new("RGB", (20, 24), rgb).save(buf, format="PNG")
    return buf.getvalue()


def catalogue(root: Path) -> Path:
    """6 items with a title and an image, "img_only" (a yellow photo, no title), "text_only" (no image)."""
    data = root / "data"
    colours = [(220, 30, 30), (30, 200, 30), (30, 30, 220), (10, 10, 10), (240, 240, 240), (120, 60, 20)]
    titles = ["red dress", "green shirt", "blue shoe", "black bag", "wool shirt", "cotton dress"]
    rows = []
    for i, (rgb, title) in enumerate(zip(colours, titles, strict=True)):
        io.write_input_file(data, f"img/{i}.png", png(rgb))
        rows.append((f"i{i}", title, f"img/{i}.png"))
    io.write_input_file(data, "img/yellow.png", png((230, 220, 20)))
    rows += [("img_only", None, "img/yellow.png"), ("text_only", "blue wool bag", None)]
    io.write_input_table(
        data, "items", pl.DataFrame(rows, schema=["item_id", "title", "image_path"], orient="row")
    )
    return data


def build(root: Path, cfg: EmbeddingsConfig) -> tuple[Path, Path]:
    data, out = catalogue(root), root / "out"
    run = io.RunInfo.new({"embeddings": cfg.model_dump(), "data": {"dir": str(data)}}, "h", run_id="t")
    embed_items(data, out, DT, cfg, run, crossmodal_cfg=TINY, progress=False)
    return data, out


@pytest.fixture(scope="module")
def joint(tmp_path_factory: pytest.TempPathFactory, tiny_text_model: Path) -> tuple[Path, Path]:
    cfg = EmbeddingsConfig(text_model=str(tiny_text_model), device="cpu", image_encoder="crossmodal")
    return build(tmp_path_factory.mktemp("joint"), cfg)


@pytest.fixture(scope="module")
def descriptor(tmp_path_factory: pytest.TempPathFactory, tiny_text_model: Path) -> tuple[Path, Path]:
    cfg = EmbeddingsConfig(text_model=str(tiny_text_model), device="cpu", image_encoder="descriptor")
    return build(tmp_path_factory.mktemp("desc"), cfg)


def test_joint_image_query_finds_the_photo_only_item(joint) -> None:
    data, out = joint
    res = search_items(out, image=data / "img/yellow.png", k=3)
    assert res.mode == "joint" and res.note is None and res.dt == DT
    # img_only has no title, so its item vector is exactly CNN(its photo): cosine 1 with the same file
    top = res.table.row(0, named=True)
    assert top["item_id"] == "img_only" and top["score"] == pytest.approx(1.0, abs=1e-5)
    assert top["image_path"] == "img/yellow.png" and top["title"] is None
    assert res.table.columns == ["item_id", "score", "title", "image_path"] and res.table.height == 3
    assert res.table["score"].is_sorted(descending=True)


def test_joint_text_query_finds_the_title_only_item(joint) -> None:
    _, out = joint
    # text_only has no photo: its item vector is exactly proj(text model(its title))
    res = search_items(out, text="blue wool bag", k=20)
    assert res.table.row(0, named=True)["item_id"] == "text_only"
    assert res.table["score"][0] == pytest.approx(1.0, abs=1e-5)
    assert res.table.height == 8  # k larger than the catalogue: every item once
    assert sorted(res.table["item_id"].to_list()) == sorted(
        [f"i{i}" for i in range(6)] + ["img_only", "text_only"]
    )


def test_joint_text_and_image_together(joint) -> None:
    data, out = joint
    res = search_items(out, text="blue wool bag", image=data / "img/yellow.png", k=2)
    assert res.mode == "joint" and res.table.height == 2


def test_missing_encoder_file_is_an_error(joint, tmp_path: Path) -> None:
    import shutil

    _, out = joint
    copy = tmp_path / "out"
    shutil.copytree(out / EMBEDDINGS / f"dt={DT}", copy / EMBEDDINGS / f"dt={DT}")
    (copy / EMBEDDINGS / f"dt={DT}" / CROSSMODAL_FILE).unlink()
    with pytest.raises(SearchError, match="cross-modal encoder is missing.*fix:"):
        search_items(copy, text="red dress")


def test_descriptor_fallback_searches_titles_and_says_so(descriptor) -> None:
    data, out = descriptor
    res = search_items(out, text="black bag", k=3)
    assert res.mode == "title" and "title embeddings" in res.note
    assert res.table.row(0, named=True)["item_id"] == "i3"
    assert res.table["score"][0] == pytest.approx(1.0, abs=1e-5)  # the same title, the same vector
    img = search_items(out, image=data / "img/2.png", k=1)
    assert img.mode == "image" and img.table["item_id"].to_list() == ["i2"]
    with pytest.raises(SearchError, match="need the cross-modal encoder"):
        search_items(out, text="black bag", image=data / "img/2.png")


def test_errors_name_the_fix(tmp_path: Path, joint) -> None:
    with pytest.raises(SearchError, match="no committed embeddings partition.*fix:"):
        search_items(tmp_path / "nothing", text="red")
    _, out = joint
    with pytest.raises(SearchError, match="no query"):
        search_items(out)
    with pytest.raises(SearchError, match="no such file"):
        search_items(out, image=tmp_path / "missing.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(SearchError, match="not a readable image"):
        search_items(out, image=tmp_path / "bad.png")
