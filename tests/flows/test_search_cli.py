"""`recsys search` on a tiny generated data set: the table it prints and its one-line errors."""

from __future__ import annotations

from dataclasses import replace
from datetime import date
from pathlib import Path

import pytest
from typer.testing import CliRunner

from features.config import EmbeddingsConfig
from flows.cli import EXIT_INVALID, EXIT_USAGE, app
from models.config import CrossModalConfig
from pipelines import io
from pipelines.datasets.synthetic import PRESETS, generate
from pipelines.embedding import embed_items

runner = CliRunner()
TINY = CrossModalConfig(min_items=10, dim=8, width=4, image_size=16, epochs=1, batch_size=16)


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory, tiny_text_model: Path) -> tuple[Path, Path, date]:
    root = tmp_path_factory.mktemp("search_cli")
    data, out = root / "data", root / "out"
    generate(data, replace(PRESETS["small"], users=20, items=40, days=2))
    cfg = EmbeddingsConfig(text_model=str(tiny_text_model), device="cpu")
    run = io.RunInfo.new({"embeddings": cfg.model_dump(), "data": {"dir": str(data)}}, "h", run_id="t")
    dt = io.event_dates(data)[0]
    summary = embed_items(data, out, dt, cfg, run, crossmodal_cfg=TINY, progress=False)
    assert summary["image_encoder"] == "crossmodal"  # ~36 of 40 items have both sides >= min_items 10
    return data, out, dt


def test_search_prints_a_table_of_k_items(searched) -> None:
    data, out, dt = searched
    items = io.read_items(data).drop_nulls("title")
    title = items["title"][0]
    res = runner.invoke(app, ["search", "--out", str(out), "--text", title, "--k", "3"])
    assert res.exit_code == 0, res.output
    lines = res.stdout.strip().splitlines()  # stderr: the text model's loading bar
    assert lines[0] == f"# embeddings/dt={dt}, joint search, top 3"
    assert lines[1].split() == ["item_id", "score", "title", "image_path"]
    rows = lines[2:]
    assert len(rows) == 3
    known = set(items["item_id"].cast(str).to_list()) | set(
        io.read_items(data)["item_id"].cast(str).to_list()
    )
    assert all(r.split()[0] in known for r in rows)
    scores = [float(r.split()[1]) for r in rows]
    assert scores == sorted(scores, reverse=True) and all(-1.0 <= s <= 1.0 + 1e-6 for s in scores)


def test_search_errors_are_one_line(tmp_path: Path, searched) -> None:
    res = runner.invoke(app, ["search", "--out", str(tmp_path), "--text", "red"])
    assert res.exit_code == EXIT_INVALID
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "fix:" in lines[0]
    _, out, _ = searched
    res = runner.invoke(app, ["search", "--out", str(out)])
    assert res.exit_code == EXIT_USAGE and "fix: pass --text and/or --image" in res.output
