"""The funnel stage end to end on a small generated data set (no Prefect): coverage, sources, the guard."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pipelines import io
from pipelines.config import FunnelConfig, load_config
from pipelines.datasets.synthetic import PRESETS, generate
from pipelines.funnel import CANDIDATES, DATASET, SCORES, funnel_stage, not_enough
from retrieval.metrics import list_metrics
from retrieval.sources import SOURCES

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, date]:
    from dataclasses import replace

    root = tmp_path_factory.mktemp("funnel-data")
    generate(root, replace(PRESETS["small"], users=400, items=300, days=12))
    days = io.event_dates(root)
    return root, days[-4]


def _run(data: Path, out: Path, dt: date, **funnel) -> dict:
    cfg = load_config()
    f = FunnelConfig(**{"epochs": 2, **funnel})
    run = io.RunInfo.new({}, "test", run_id="t")
    return funnel_stage(data, out, dt, f, cfg.ranker, ["click", "cart", "purchase"], 30, True, 0, "cpu", run)


def test_every_user_with_history_gets_candidates_with_sources(data, tmp_path: Path) -> None:
    root, dt = data
    summary = _run(root, tmp_path, dt)
    lookback = io.scan_events(root, dt - timedelta(days=29), dt).select("user_id").unique().collect()
    cands = io.read_table(tmp_path, CANDIDATES, dt)
    scores = io.read_table(tmp_path, SCORES, dt)
    personal = cands.filter(pl.col("source") != "popular")["user_id"].unique()
    assert set(personal) <= set(lookback["user_id"])
    everyone = set(io.read_users(root)["user_id"].cast(pl.String))
    # every user with history has a list, and so has every other user of users.parquet (popularity)
    assert set(cands["user_id"].unique()) == everyone == set(scores["user_id"].unique())
    assert set(lookback["user_id"]) <= everyone
    assert cands["source"].null_count() == 0 and set(cands["source"].unique()) <= set(SOURCES)
    # no purchased item of the lookback is proposed
    bought = io.scan_events(root, dt - timedelta(days=29), dt).filter(pl.col("event") == "purchase")
    assert cands.join(bought.select("user_id", "item_id").collect(), on=["user_id", "item_id"]).height == 0
    ev = summary["metrics"]["eval"]
    assert ev["present"] and ev["coverage"] == 1.0
    # the stage keeps only the hits of each list: its figures equal the metrics of the published table
    horizon = io.scan_events(root, dt + timedelta(days=1), dt + timedelta(days=3))
    rel = horizon.filter(pl.col("event").is_in(["click", "cart", "purchase"])).select("user_id", "item_id")
    rel = rel.unique().collect().rename({"user_id": "u", "item_id": "i"})
    users = rel.select("u").unique().join(lookback.rename({"user_id": "u"}), on="u", how="semi")
    assert users.height == ev["users"]
    published = scores.select(pl.col("user_id").alias("u"), pl.col("item_id").alias("i"), "rank")
    assert list_metrics(published, rel, users, [10, 50]) == {
        k: v for k, v in ev["published"].items() if k in ("recall@50", "ndcg@10", "recall@10", "ndcg@50")
    }
    manifest = io.read_manifest(tmp_path, SCORES, dt)
    assert manifest["order"] in ("ranker", "merged", "popularity")
    assert io.is_committed(tmp_path, DATASET, dt)


def test_too_little_data_publishes_popularity_flagged(data, tmp_path: Path) -> None:
    root, dt = data
    summary = _run(root, tmp_path, dt, min_positives=10**6)
    assert summary["order"] == "popularity"
    manifest = io.read_manifest(tmp_path, SCORES, dt)
    assert manifest["order"] == "popularity" and manifest["reason"].startswith("not enough positives (")
    scores = io.read_table(tmp_path, SCORES, dt)
    assert set(scores["source"].unique()) == {"popular"}


def test_too_few_evaluation_users_say_so_instead_of_zero(data, tmp_path: Path) -> None:
    root, dt = data
    summary = _run(root, tmp_path, dt, min_eval_users=10**6, ranker=False)
    ev = summary["metrics"]["eval"]
    assert ev["popularity"] == not_enough(ev["users"]) and ev["published"] == not_enough(ev["users"])


def test_two_tower_hits_rank_as_if_the_exclusions_were_removed_first(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from pipelines.funnel.evaluate import two_tower_hits
    from pipelines.funnel.lists import rerank
    from pipelines.names import TWO_TOWER

    dt = date(2024, 3, 1)
    rng = np.random.default_rng(0)
    users = pl.DataFrame(
        {"user_id": [f"u{n}" for n in range(30)], "u": pl.arange(0, 30, eager=True).cast(pl.UInt32)}
    )
    items = pl.DataFrame(
        {"item_id": [f"i{n}" for n in range(40)], "i": pl.arange(0, 40, eager=True).cast(pl.Int32)}
    )
    lists = pl.DataFrame(
        {"u": np.repeat(np.arange(30), 20).astype(np.uint32),
         "i": np.concatenate([rng.permutation(40)[:20] for _ in range(30)]).astype(np.int32),
         "rank": np.tile(np.arange(1, 21), 30).astype(np.int32)}
    )  # fmt: skip
    with io.staged_partition(tmp_path, TWO_TOWER, dt, io.RunInfo.new({}, "test", run_id="t")) as stage:
        stage.write_table(lists.join(users, on="u").join(items, on="i").select("user_id", "item_id", "rank"))
    exclude = lists.sample(120, seed=1).select("u", "i")
    relevant = pl.concat([lists.sample(150, seed=2), lists.sample(100, seed=3)]).select("u", "i").unique()
    inp = SimpleNamespace(users=users, items=items)
    got = two_tower_hits(tmp_path, dt, inp, exclude, relevant)
    naive = rerank(lists.join(exclude, on=["u", "i"], how="anti"), "rank", False)
    want = naive.join(relevant, on=["u", "i"], how="semi")
    assert got.height > 50
    assert got.sort("u", "i").equals(want.sort("u", "i"))
