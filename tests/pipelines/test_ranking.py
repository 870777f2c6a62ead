"""The pointwise ranker stage on a tiny frames partition built by the real stages.

The partition: pipelines.datasets.synthetic.generate (300 users, 200 items, 5 days) -> build_frames for two run
dates -> embed_items with a 1-layer 8-dim BERT saved as a local sentence-transformers folder (so no
MiniLM load) and the colour/edge image descriptor.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from features.config import EmbeddingsConfig, FeaturesConfig
from models.config import RankerConfig
from models.train import load_checkpoint
from pipelines import io
from pipelines.batches import AFFINITY_PER_MODALITY, load_vocab
from pipelines.config import Config, DataConfig, config_hash, config_to_dict
from pipelines.datasets.synthetic import PRESETS, generate
from pipelines.embedding import embed_items
from pipelines.frames import build_frames
from pipelines.ranking import train_ranker_stage

FEATURES = FeaturesConfig(
    default_buckets=40, id_buckets={"user_id": 400, "item_id": 300}, cross_buckets=40, history_len=5
)
CFG = RankerConfig(epochs=1, batch_size=256, mlp=[32], rank=8, field_dim=8, amp=False)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_text_model: Path) -> dict:
    """Data, frames and embeddings of two consecutive run dates (each with a D+1 eval day)."""
    root = tmp_path_factory.mktemp("ranking")
    data, out = root / "data", root / "out"
    generate(data, replace(PRESETS["small"], users=300, items=200, days=5))
    cfg = Config(data=DataConfig(dir=data, out=out, train_window_days=3), features=FEATURES)
    run = io.RunInfo.new(config_to_dict(cfg), config_hash(cfg), run_id="frames")
    emb_cfg = EmbeddingsConfig(text_model=str(tiny_text_model), device="cpu", batch_size=64)
    dates = io.event_dates(data)
    days = [dates[-3], dates[-2]]  # both have a next day: eval_ranker / eval_retrieval exist
    for d in days:
        build_frames(data, out, d, cfg.data, cfg.columns, FEATURES, cfg.sampling, 0, run)
        embed_items(data, out, d, emb_cfg, run, progress=False)
    return {"data": data, "out": out, "days": days, "run": run}


@pytest.fixture(scope="module")
def trained(world: dict) -> dict:
    """The ranker stage run for both dates (the second warm-starts from the first)."""
    out, (d1, d2), run = world["out"], world["days"], world["run"]
    first = train_ranker_stage(out, d1, CFG, 0, "cpu", run)
    second = train_ranker_stage(out, d2, CFG.model_copy(update={"quantize_int8": True}), 0, "cpu", run)
    return {"first": first, "second": second}


@pytest.mark.slow  # shares a ~20 s module fixture (generate, frames, embeddings, two trainings)
def test_train_commits_checkpoint_and_metrics(world: dict, trained: dict) -> None:
    out, d1 = world["out"], world["days"][0]
    manifest = io.read_manifest(out, "ranker", d1)
    assert manifest["valid_auc"] == trained["first"]["valid_auc"]
    metrics = json.loads(io.committed_path(out, "ranker", d1, "metrics.json").read_text())
    assert metrics["epochs_run"] == 1
    for split in ("valid", "eval"):  # D+1 exists for d1, so eval_ranker was scored
        m = metrics[split]
        assert 0.0 <= m["auc"] <= 1.0 and m["logloss"] > 0.0 and 0.0 <= m["gauc"] <= 1.0
        cal = m["calibration"]
        assert sum(cal["counts"]) == m["rows"] and len(cal["predicted"]) == 10
        assert 0.0 <= cal["ece"] <= 1.0
    vocab = load_vocab(out, d1)
    importance = metrics["importance"]["auc_drop"]
    # every hashed field of all three sides is a model input, plus hist/counts/numeric/text/image and the
    # content affinity of the history to the item (three columns per modality) and the history's profile,
    # which the learned affinity reads
    groups = {"hist", "counts", "numeric", "text", "image", "affinity", "profile"}
    assert set(vocab.names()) | groups == set(importance)
    assert metrics["inputs"]["affinity"] and metrics["inputs"]["n_affinity"] == 2 * AFFINITY_PER_MODALITY
    assert len(metrics["cross_singular_values"]) == CFG.cross_layers
    spectrum = metrics["cross_singular_values"][0]["top"]
    assert spectrum == sorted(spectrum, reverse=True)
    model, meta = load_checkpoint(io.committed_path(out, "ranker", d1, "model.pt"))
    assert meta["vocab"] == vocab.to_json()
    assert meta["spec"]["hist_len"] == FEATURES.history_len and meta["spec"]["item_content"]
    assert meta["text_dim"] == 8  # the tiny BERT's width
    assert set(meta["feature_stats"]) == set(meta["spec"]["numeric"])
    assert metrics["parameters"] == sum(p.numel() for p in model.parameters())


@pytest.mark.slow  # shares a ~20 s module fixture (generate, frames, embeddings, two trainings)
def test_warm_start_picks_the_previous_day(world: dict, trained: dict) -> None:
    out, (d1, d2) = world["out"], world["days"]
    assert trained["first"]["warm_start_from"] is None  # nothing earlier than d1
    assert trained["second"]["warm_start_from"] == d1.isoformat()
    metrics = json.loads(io.committed_path(out, "ranker", d2, "metrics.json").read_text())
    ws = metrics["warm_start"]
    # same vocab sizes and dims on both days, so every tensor has a same-shaped predecessor
    assert ws["tensors_copied"] == ws["tensors"] > 0
    assert f"ranker/dt={d1}" in io.read_manifest(out, "ranker", d2)["input_partitions"]
    assert metrics["int8"]["rows"] == metrics["valid"]["rows"]
    assert abs(metrics["int8"]["auc_change"]) < 0.05  # INT8 Linear layers barely move the ranking


@pytest.mark.slow  # shares the ~20 s module fixture; one more one-epoch training
def test_the_stage_builds_the_configured_fusion(world: dict, tmp_path: Path) -> None:
    out, d1, run = world["out"], world["days"][0], world["run"]
    copy = tmp_path / "out"
    for name in ("frames", "embeddings"):
        shutil.copytree(io.partition_dir(out, name, d1), io.partition_dir(copy, name, d1))
    summary = train_ranker_stage(
        copy, d1, CFG.model_copy(update={"fusion": "cross_attention"}), 0, "cpu", run
    )
    assert 0.0 <= summary["valid_auc"] <= 1.0
    model, meta = load_checkpoint(io.committed_path(copy, "ranker", d1, "model.pt"))
    assert meta["config"]["fusion"] == "cross_attention"
    assert (
        type(model.inputs.fusion).__name__ == "CrossAttentionFusion" and model.inputs.fusion.n_modalities == 2
    )
    metrics = json.loads(io.committed_path(copy, "ranker", d1, "metrics.json").read_text())
    assert {"text", "image"} <= set(metrics["importance"]["auc_drop"])
