"""The ranker stages on a tiny frames partition built by the real stages, plus hand-worked helpers.

The partition: pipelines.datasets.synthetic.generate (300 users, 200 items, 5 days) -> build_frames for two run
dates -> embed_items with a 1-layer 8-dim BERT saved as a local sentence-transformers folder (so no
MiniLM load) and the colour/edge image descriptor.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from datetime import date
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.config import EmbeddingsConfig, FeaturesConfig
from features.hashing import bucket_column
from models.config import RankerConfig
from models.train import load_checkpoint
from pipelines import io
from pipelines.batches import load_vocab
from pipelines.config import Config, DataConfig, config_hash, config_to_dict
from pipelines.datasets.synthetic import PRESETS, generate
from pipelines.embedding import embed_items
from pipelines.frames import build_frames
from pipelines.ranking import (
    FUNNEL_K,
    FunnelAccumulator,
    funnel_metrics,
    pair_features,
    popular_items,
    rank_by_score,
    score_stage,
    train_ranker_stage,
)

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
    # every hashed field of all three sides is a model input, plus hist/counts/numeric/text/image
    assert set(vocab.names()) | {"hist", "counts", "numeric", "text", "image"} == set(importance)
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


def _hand_candidates(world: dict, day: date) -> pl.DataFrame:
    """Four candidates for each of 6 users who have a positive on D+1: one positive plus 3 non-positive items."""
    out = world["out"]
    users = io.read_table(out, "frames", day, "users")["user_id"]
    pos = io.read_table(out, "frames", day, "eval_retrieval").filter(pl.col("user_id").is_in(users.implode()))
    picked = pos.unique("user_id", keep="first").sort("user_id").head(6)
    items = io.read_table(out, "frames", day, "items")["item_id"].head(40).to_list()
    positives = dict(  # user -> all of its D+1 positives: none of them may be an "other" candidate
        pos.filter(pl.col("user_id").is_in(picked["user_id"].implode()))
        .group_by("user_id")
        .agg("item_id")
        .iter_rows()
    )
    rows = []
    for j, (u, hit) in enumerate(picked.iter_rows()):  # 6 users: building the test input, not library code
        others = [i for i in items if i not in positives[u]][:3]
        order = [hit, *others] if j % 2 == 0 else [*others, hit]  # the hit at retriever rank 1 or 4
        rows += [(u, item, r + 1, 1.0 - 0.1 * r) for r, item in enumerate(order)]
    return pl.DataFrame(rows, schema=["user_id", "item_id", "rank", "score"], orient="row")


@pytest.mark.slow  # shares a ~20 s module fixture (generate, frames, embeddings, two trainings)
def test_score_ranks_every_candidate(world: dict, trained: dict) -> None:
    out, (_, d2), run = world["out"], world["days"], world["run"]
    cands = _hand_candidates(world, d2)
    with io.staged_partition(out, "two_tower", d2, run) as stage:
        stage.write_table(cands)
    summary = score_stage(out, d2, CFG, "cpu", run)
    assert summary["source"] == "two_tower" and summary["rows"] == cands.height
    scores = io.read_table(out, "scores", d2)
    assert scores.columns == ["user_id", "item_id", "score", "rank"]
    # one row per candidate, the same pairs
    assert (
        scores.select("user_id", "item_id")
        .sort("user_id", "item_id")
        .equals(cands.select("user_id", "item_id").sort("user_id", "item_id"))
    )
    assert scores["score"].is_between(0.0, 1.0, closed="none").all()
    per_user = scores.sort("user_id", "rank").group_by("user_id", maintain_order=True).agg("rank", "score")
    for ranks, probs in per_user.select("rank", "score").iter_rows():  # 6 users
        assert ranks == [1, 2, 3, 4]
        assert probs == sorted(probs, reverse=True)
    funnel = io.read_manifest(out, "scores", d2)["funnel"]
    assert funnel["users"] == 6
    # retriever order: the hit at position 0 for users 0, 2, 4 and at position 3 for users 1, 3, 5; a user
    # with n D+1 positives has one of them among its candidates: recall@10 = 1/n, NDCG@10 = DCG / IDCG with
    # DCG = 1 (position 0) or 1/log2(5) (position 3), IDCG = sum_{r < min(n, 10)} 1/log2(r + 2)
    n_pos = io.read_table(out, "frames", d2, "eval_retrieval").unique().group_by("user_id").len()
    users = cands["user_id"].unique(maintain_order=True).to_list()
    n = np.array([n_pos.filter(pl.col("user_id") == u)["len"].item() for u in users], dtype=float)
    dcg = np.where(np.arange(6) % 2 == 0, 1.0, 1.0 / np.log2(5.0))
    idcg = np.array([np.sum(1.0 / np.log2(np.arange(min(k, 10)) + 2.0)) for k in n])
    assert funnel["retriever"]["ndcg@10"] == pytest.approx(float(np.mean(dcg / idcg)))
    assert funnel["retriever"]["recall@10"] == pytest.approx(float(np.mean(1.0 / n)))
    assert funnel["candidate_recall"] == pytest.approx(float(np.mean(1.0 / n)))  # all candidates fit in 10
    # all 4 candidates fit in the top 10, so the ranker's order has the same recall@10
    assert funnel["ranker"]["recall@10"] == pytest.approx(funnel["retriever"]["recall@10"])
    assert funnel["popularity_window"]["days"] == 7


@pytest.mark.slow  # shares a ~20 s module fixture (generate, frames, embeddings, two trainings)
def test_score_blocks_of_one_user_equal_one_block(world: dict, trained: dict) -> None:
    """Scores, ranks and funnel are the same for any user block size and any candidate row order."""
    out, (_, d2), run = world["out"], world["days"], world["run"]
    cands = _hand_candidates(world, d2)
    # candidates in descending user order plus one pair of a user the frames do not know: the blocks are
    # read by user range, so the file order must not matter, and the unknown pair is counted as dropped
    unknown = pl.DataFrame(
        {"user_id": ["zz-nobody"], "item_id": [cands["item_id"][0]], "rank": [1], "score": [0.5]}
    )
    shuffled = pl.concat([cands.sort("user_id", "rank", descending=[True, False]), unknown])
    with io.staged_partition(out, "two_tower", d2, run) as stage:
        stage.write_table(shuffled)
    results = {}
    for block in (1, 4, 1_000_000):  # 6 users: one user per block, a partial last block, one block
        summary = score_stage(out, d2, CFG, "cpu", run, block_users=block)
        manifest = io.read_manifest(out, "scores", d2)
        results[block] = (summary, manifest, io.read_table(out, "scores", d2))
    one_summary, one_manifest, one_table = results[1_000_000]
    assert one_table.height == cands.height == 24 and one_manifest["pairs_dropped_unknown_user_or_item"] == 1
    assert one_table.equals(one_table.sort("user_id", "rank"))  # sorted by user, then rank
    assert one_manifest["users"] == 6
    for block in (1, 4):
        summary, manifest, table = results[block]
        assert table.equals(one_table), block  # same rows, same order, same float32 scores
        assert summary["rows"] == one_summary["rows"]
        for key in ("users", "pairs_dropped_unknown_user_or_item", "source"):
            assert manifest[key] == one_manifest[key], key
        got, want = manifest["funnel"], one_manifest["funnel"]
        assert got["users"] == want["users"] == 6
        assert got["candidates_per_user_max"] == want["candidates_per_user_max"] == 4
        for order in ("ranker", "retriever", "popularity"):
            for metric, value in want[order].items():
                assert got[order][metric] == pytest.approx(value, rel=1e-12, abs=1e-15), (
                    block,
                    order,
                    metric,
                )
        assert got["candidate_recall"] == pytest.approx(want["candidate_recall"], rel=1e-12)
    # the one-block funnel is funnel_metrics over the whole scored table
    scored = one_table.join(
        cands.select("user_id", "item_id", pl.col("rank").alias("retriever_rank")), on=["user_id", "item_id"]
    )
    positives = io.read_table(out, "frames", d2, "eval_retrieval")
    reference = funnel_metrics(scored, positives, popular_items(out, d2, FUNNEL_K)[0])
    for key in ("ranker", "retriever", "popularity"):
        assert one_manifest["funnel"][key] == pytest.approx(reference[key], rel=1e-12), key
    assert one_manifest["funnel"]["candidate_recall"] == pytest.approx(
        reference["candidate_recall"], rel=1e-12
    )


@pytest.mark.slow  # shares a ~20 s module fixture (generate, frames, embeddings, two trainings)
def test_score_without_candidates_scores_eval_pairs(world: dict, trained: dict) -> None:
    out, (d1, _), run = world["out"], world["days"], world["run"]
    summary = score_stage(out, d1, CFG, "cpu", run)
    assert summary["source"] == "frames/eval_ranker"
    manifest = io.read_manifest(out, "scores", d1)
    assert manifest["source"] == "frames/eval_ranker" and manifest["funnel"] is None
    scores = io.read_table(out, "scores", d1)
    distinct = io.read_table(out, "frames", d1, "eval_ranker").select("user_id", "item_id").unique()
    assert scores.height == distinct.height


@pytest.mark.slow  # shares a ~20 s module fixture (generate, frames, embeddings, two trainings)
def test_pair_features_match_the_frames_stage(world: dict) -> None:
    """Crossed buckets hashed at scoring time equal those the frames stage wrote for the same pairs."""
    out, (_, d2), data = world["out"], world["days"], world["data"]
    vocab = load_vocab(out, d2)
    valid = io.read_table(out, "frames", d2, "ranker_valid").head(50)
    pairs = pl.concat(
        [valid.select("user_id", "item_id"), pl.DataFrame({"user_id": ["nobody"], "item_id": ["x"]})]
    )
    feats, dropped = pair_features(out, d2, pairs, vocab, data, FEATURES.hash_seed)
    assert dropped == 1 and feats.height == 50
    static = [
        bucket_column(f.name) for f in vocab.fields
    ]  # user, item and cross fields are not time-dependent
    assert feats.select("user_id", "item_id", "item_idx", *static).equals(
        valid.select("user_id", "item_id", "item_idx", *static)
    )
    assert any(f.side == "cross" for f in vocab.fields)


def test_rank_by_score_hand_worked() -> None:
    df = pl.DataFrame(
        {
            "user_id": ["u1", "u1", "u1", "u2"],
            "item_id": ["x", "y", "z", "x"],
            "score": [0.2, 0.9, 0.9, 0.5],
            "retriever_rank": [1, 3, 2, 1],
        }
    )
    # u1: y and z tie at 0.9, z has the better retriever rank (2 < 3) -> z 1, y 2, x 3; u2: x 1
    got = rank_by_score(df).select("user_id", "item_id", "rank").rows()
    assert got == [("u1", "z", 1), ("u1", "y", 2), ("u1", "x", 3), ("u2", "x", 1)]


def test_funnel_metrics_hand_worked() -> None:
    scored = pl.DataFrame(
        {
            "user_id": ["u1", "u1", "u2", "u2"],
            "item_id": ["a", "b", "c", "d"],
            "rank": [1, 2, 1, 2],
            "retriever_rank": [2, 1, 1, 2],
        }
    )
    positives = pl.DataFrame({"user_id": ["u1", "u2", "u3"], "item_id": ["a", "d", "e"]})
    # u3 has no candidates -> 2 users. k=1: ranker top1 u1 a (hit), u2 c (miss) -> 0.5 for NDCG and recall;
    # retriever top1 u1 b, u2 c -> 0; popularity ["d"] -> u2 hits -> 0.5
    m1 = funnel_metrics(scored, positives, ["d", "a"], k=1)
    assert m1["users"] == 2 and m1["candidate_recall"] == 1.0
    assert m1["ranker"] == {"ndcg@1": 0.5, "recall@1": 0.5}
    assert m1["retriever"] == {"ndcg@1": 0.0, "recall@1": 0.0}
    assert m1["popularity"] == {"ndcg@1": 0.5, "recall@1": 0.5}
    # k=2: ranker u1 hit at position 0 (NDCG 1), u2 at position 1 (1/log2(3) = 0.6309) -> mean 0.81546
    m2 = funnel_metrics(scored, positives, ["d", "a"], k=2)
    assert m2["ranker"]["ndcg@2"] == pytest.approx((1.0 + 1.0 / np.log2(3.0)) / 2.0)
    assert m2["ranker"]["recall@2"] == 1.0


def test_funnel_accumulator_hand_worked() -> None:
    """The funnel of test_funnel_metrics_hand_worked, fed one user per block."""
    scored = pl.DataFrame(
        {
            "user_id": ["u1", "u1", "u2", "u2", "u4"],
            "item_id": ["a", "b", "c", "d", "a"],
            "rank": [1, 2, 1, 2, 1],
            "retriever_rank": [2, 1, 1, 2, 1],
        }
    )
    positives = pl.DataFrame({"user_id": ["u1", "u2", "u3"], "item_id": ["a", "d", "e"]})
    acc = FunnelAccumulator(positives, ["d", "a"], k=2)
    for user in ("u2", "u4", "u1"):  # u4 has no positive: counted only in candidates_per_user_max
        acc.add(scored.filter(pl.col("user_id") == user))
    got = acc.result()
    # users u1, u2 (u3 has no candidates). k=2: ranker u1 hit at 0 (NDCG 1), u2 at 1 (1/log2(3)); recall 1, 1
    # retriever: u1 [b, a] hit at 1, u2 [c, d] hit at 1 -> NDCG 1/log2(3) each; popularity [d, a]: u1 hit at
    # 1, u2 hit at 0 -> NDCG (1/log2(3) + 1) / 2; every positive is among the candidates -> candidate recall 1
    assert got["users"] == 2 and got["positives_users_total"] == 3 and got["candidates_per_user_max"] == 2
    assert got["ranker"]["ndcg@2"] == pytest.approx((1.0 + 1.0 / np.log2(3.0)) / 2.0)
    assert got["retriever"]["ndcg@2"] == pytest.approx(1.0 / np.log2(3.0))
    assert got["popularity"]["ndcg@2"] == pytest.approx((1.0 / np.log2(3.0) + 1.0) / 2.0)
    assert got["ranker"]["recall@2"] == got["retriever"]["recall@2"] == got["candidate_recall"] == 1.0
    empty = FunnelAccumulator(positives, ["d"], k=2)
    empty.add(scored.filter(pl.col("user_id") == "u4"))
    assert empty.result()["users"] == 0


@settings(max_examples=40, deadline=None)
@given(
    st.lists(  # per candidate: user, item, whether it is a D+1 positive; ranks come from the list order
        st.tuples(st.integers(0, 5), st.integers(0, 9), st.booleans()), min_size=1, max_size=40
    ),
    st.integers(1, 4),
    st.integers(1, 6),
)
def test_funnel_accumulator_equals_funnel_metrics(rows, k: int, block: int) -> None:
    df = pl.DataFrame(rows, schema=["u", "i", "pos"], orient="row").unique(["u", "i"], maintain_order=True)
    df = df.with_columns(
        pl.format("u{}", "u").alias("user_id"),
        pl.format("i{}", "i").alias("item_id"),
        (pl.int_range(pl.len()).over("u") + 1).alias("retriever_rank"),
        (pl.int_range(pl.len()).reverse().over("u") + 1).alias("rank"),
    )
    positives = pl.concat(
        [df.filter("pos").select("user_id", "item_id"), pl.DataFrame({"user_id": ["u9"], "item_id": ["i0"]})]
    )
    scored = df.select("user_id", "item_id", "rank", "retriever_rank")
    want = funnel_metrics(scored, positives, ["i3", "i1"], k=k)
    acc = FunnelAccumulator(positives, ["i3", "i1"], k=k)
    users = scored["user_id"].unique().sort()
    for lo in range(0, users.len(), block):
        acc.add(scored.filter(pl.col("user_id").is_in(users.slice(lo, block).implode())))
    got = acc.result()
    assert got.keys() == want.keys()
    for key, value in want.items():
        if isinstance(value, str):
            assert got[key] == value
        else:  # numbers and {metric: number}: sums of block means vs one mean differ by rounding only
            assert got[key] == pytest.approx(value, rel=1e-12), key


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["a", "b", "c"]), st.floats(0.0, 1.0, allow_nan=False)),
        min_size=1,
        max_size=30,
    )
)
def test_rank_by_score_is_a_permutation_per_user(rows: list[tuple[str, float]]) -> None:
    df = pl.DataFrame(
        {
            "user_id": [u for u, _ in rows],
            "item_id": [f"i{j}" for j in range(len(rows))],
            "score": [s for _, s in rows],
        }
    )
    ranked = rank_by_score(df)
    assert ranked.height == df.height
    per_user = ranked.group_by("user_id").agg(
        pl.col("rank").sort().alias("ranks"), pl.len().alias("n"), pl.col("score").sort_by("rank").alias("s")
    )
    for ranks, n, s in per_user.select("ranks", "n", "s").iter_rows():
        assert ranks == list(range(1, n + 1))  # ranks 1..n, each once
        assert s == sorted(s, reverse=True)  # rank order follows the score


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
