"""The retriever stage on a tiny partition built by the real stages, and its ranking helpers by hand."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from datetime import date
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models.retriever_train import encode, load_retriever
from pipelines import io
from pipelines.batches import to_batch
from pipelines.config import Config, load_config
from pipelines.datasets.synthetic import PRESETS, generate
from pipelines.embedding import embed_items
from pipelines.frames import build_frames
from pipelines.retriever import (
    CANDIDATES,
    DATASET,
    candidates_frame,
    compact_batch,
    drop_excluded,
    fit,
    load_inputs,
    popularity_positions,
    ranking_metrics,
    read_compact_batch,
    relevant_positions,
    train_retriever_stage,
    widen_batch,
    write_candidates,
)
from retrieval import index as faiss_index
from retrieval.config import IndexConfig

TOP_K = 20


def _config(data: Path, out: Path) -> Config:
    return load_config(
        overrides=[
            f"--data.dir={data}",
            f"--data.out={out}",
            "--data.train_window_days=3",
            "--embeddings.device=cpu",
            "--retriever.epochs=1",
            "--retriever.dim=16",
            "--retriever.field_dim=8",
            "--retriever.hidden=[32]",
            "--retriever.batch_size=128",
            f"--retriever.top_k={TOP_K}",
        ]
    )


def _frames_and_embeddings(cfg: Config, dt: date, run: io.RunInfo) -> None:
    d = cfg.data
    build_frames(d.dir, d.out, dt, d, cfg.columns, cfg.features, cfg.sampling, 0, run)
    embed_items(d.dir, d.out, dt, cfg.embeddings, run, progress=False)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("retriever")
    data, out = root / "data", root / "out"
    generate(data, replace(PRESETS["small"], users=300, items=200, days=5))
    cfg = _config(data, out)
    run = io.RunInfo.new({"data": {"dir": str(data)}}, "cfg0", run_id="run1")
    dates = io.event_dates(data)
    dt = dates[-2]  # D+1 exists: the eval files are written
    _frames_and_embeddings(cfg, dt, run)
    summary = train_retriever_stage(out, dt, cfg.retriever, cfg.index, 0, "cpu", run)
    return {"data": data, "out": out, "cfg": cfg, "run": run, "dt": dt, "dates": dates, "summary": summary}


def _purchases(data: Path, first: date, last: date) -> pl.DataFrame:
    return (
        io.scan_events(data, first, last)
        .filter(pl.col("event") == "purchase")
        .select("user_id", "item_id")
        .unique()
        .collect()
    )


@pytest.mark.slow  # shares the ~20 s module fixture (generate, frames, embeddings, stage)
def test_candidates_k_per_user_ranked_and_purchases_excluded(built: dict) -> None:
    out, dt = built["out"], built["dt"]
    cands = io.read_table(out, CANDIDATES, dt)
    users = io.read_table(out, "frames", dt, "users")
    assert cands.columns == ["user_id", "item_id", "rank", "score"]
    # every user of users.parquet gets exactly TOP_K candidates (200 items, a handful purchased each)
    per_user = cands.group_by("user_id").agg(pl.len().alias("n"), pl.col("rank").sort().alias("ranks"))
    assert per_user.height == users.height
    assert set(per_user["user_id"]) == set(users["user_id"])
    assert (per_user["n"] == TOP_K).all()
    assert all(r == list(range(1, TOP_K + 1)) for r in per_user["ranks"].to_list())
    # scores do not increase with rank within a user
    assert (
        cands.sort("user_id", "rank")
        .select((pl.col("score").diff().over("user_id") <= 1e-6).fill_null(True).all())
        .item()
    )
    assert cands.select(pl.struct("user_id", "item_id").is_unique().all()).item()
    # the window is D-2 .. D (train_window_days=3); none of its purchases is a candidate
    first = dt.replace(day=dt.day - 2)
    bought = _purchases(built["data"], first, dt).join(users.select("user_id"), on="user_id")
    assert bought.height > 0  # the check below can fail
    assert cands.join(bought, on=["user_id", "item_id"], how="semi").height == 0
    manifest = io.read_manifest(out, CANDIDATES, dt)
    assert manifest["model_id"] == "run1" and manifest["rows"]["part-0"] == cands.height


@pytest.mark.slow  # shares the ~20 s module fixture (generate, frames, embeddings, stage)
def test_model_files_metrics_and_manifest(built: dict) -> None:
    out, dt, cfg = built["out"], built["dt"], built["cfg"]
    part = io.partition_dir(out, DATASET, dt)
    for name in ("model.pt", "index.faiss", "ids.npy", "index.json", "item_emb.npy", "metrics.json"):
        assert (part / name).is_file(), name
    metrics = json.loads((part / "metrics.json").read_text())
    ev = metrics["eval"]
    assert ev["present"] and ev["day"] == built["dates"][-1].isoformat()
    for method in ("model", "popularity_7d"):
        for k in (10, 50, 100):
            for name in ("recall", "ndcg", "hit_rate", "coverage"):
                assert 0.0 <= ev[method][f"{name}@{k}"] <= 1.0, (method, name, k)
            assert ev[method][f"recall@{k}"] <= ev[method][f"recall@{max(k, 50)}"] + 1e-12
    assert "status" in ev["als"] or "recall@50" in ev["als"]
    assert ev["users_evaluated"] + ev["users_without_features"] == ev["eval_users"]
    assert metrics == built["summary"]["metrics"]
    manifest = io.read_manifest(out, DATASET, dt)
    assert manifest["model_id"] == "run1" and manifest["index"]["kind"] == "flat"
    assert manifest["train"]["epochs_run"] == 1 and manifest["rows"]["items"] == 200
    # the stored item vectors are the checkpoint's item tower over the catalogue, unit norm, in item_idx order
    item_emb = np.load(part / "item_emb.npy")
    assert item_emb.shape == (200, cfg.retriever.dim)
    np.testing.assert_allclose(np.linalg.norm(item_emb, axis=1), 1.0, atol=1e-5)
    model, meta = load_retriever(part / "model.pt")
    assert meta["model_id"] == "run1" and meta["config"]["dim"] == cfg.retriever.dim
    inputs = load_inputs(out, dt)
    again = encode(model.item_embedding, inputs.catalogue, 64, "cpu").numpy()
    np.testing.assert_allclose(again, item_emb, atol=1e-5)
    assert list(np.load(part / "ids.npy")) == list(inputs.item_ids)


@pytest.mark.slow  # shares the ~20 s module fixture (generate, frames, embeddings, stage)
def test_next_day_warm_starts_without_eval(built: dict) -> None:
    cfg, run, out = built["cfg"], built["run"], built["out"]
    nxt = built["dates"][-1]  # no D+1: no eval files
    _frames_and_embeddings(cfg, nxt, run)
    summary = train_retriever_stage(out, nxt, cfg.retriever, cfg.index, 0, "cpu", run)
    warm = summary["metrics"]["train"]["warm_start"]
    assert f"dt={built['dt'].isoformat()}" in warm["from"] and warm["tensors"] > 0
    assert summary["metrics"]["eval"] == {"present": False}
    assert io.is_committed(out, CANDIDATES, nxt)


@pytest.mark.slow  # shares the ~20 s module fixture (generate, frames, embeddings, stage)
def test_fit_is_deterministic(built: dict) -> None:
    inputs = load_inputs(built["out"], built["dt"])
    cfg = built["cfg"].retriever.model_copy(update={"mixed_negatives": 16})
    m1, r1, _ = fit(inputs, cfg, seed=5)
    m2, r2, _ = fit(inputs, cfg, seed=5)
    assert r1.train_loss == r2.train_loss
    for k, v in m1.state_dict().items():
        assert torch.equal(v, m2.state_dict()[k]), k


@pytest.mark.slow  # shares the ~20 s module fixture (generate, frames, embeddings, stage)
def test_blocks_of_seven_users_give_the_same_outputs(built: dict, tmp_path: Path) -> None:
    """The stage with 7-user search blocks writes the candidates and metrics of the one-block run."""
    out, dt, cfg, run = built["out"], built["dt"], built["cfg"], built["run"]
    copy = tmp_path / "out"
    for name in ("frames", "embeddings"):
        shutil.copytree(io.partition_dir(out, name, dt), io.partition_dir(copy, name, dt))
    summary = train_retriever_stage(copy, dt, cfg.retriever, cfg.index, 0, "cpu", run, block_users=7)
    want = io.read_table(out, CANDIDATES, dt)
    got = io.read_table(copy, CANDIDATES, dt)
    n_users = io.read_table(out, "frames", dt, "users").height  # users with events in the window
    assert got.height == n_users * TOP_K and got.equals(want)  # same rows, same order (user_id, then rank)
    assert got.equals(got.sort("user_id", "rank"))
    got_eval, want_eval = summary["metrics"]["eval"], built["summary"]["metrics"]["eval"]
    for ev in (got_eval, want_eval):
        ev.get("als", {}).pop("fit_s", None)  # a timing
    assert got_eval == want_eval
    assert got_eval["users_evaluated"] > 0 and "recall@10" in got_eval["model"]  # the model was compared


def test_write_candidates_by_hand(tmp_path: Path) -> None:
    # items i0..i3 at (1, 0), (0.8, 0.6), (0, 1), (-1, 0); users in users.parquet order u3, u1, u2 at
    # (1, 0), (0.6, 0.8), (-1, 0). Inner products: u3 [1, .8, 0, -1], u1 [.6, .96, .8, -.6], u2 [-1, -.8, 0, 1].
    # u3 (row 0) bought i0. Top 2 by user_id: u1 i1 .96, i2 .8; u2 i3 1, i2 0; u3 i1 .8, i2 0.
    items = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.0]], dtype=np.float32)
    index = faiss_index.build_index(items, np.array(["i0", "i1", "i2", "i3"]), IndexConfig(kind="flat"))
    users = np.array([[1.0, 0.0], [0.6, 0.8], [-1.0, 0.0]], dtype=np.float32)
    user_ids = np.array(["u3", "u1", "u2"])
    exclude = sp.csr_matrix(([1.0], ([0], [0])), shape=(3, 4))
    want_rows = [
        ("u1", "i1", 1),
        ("u1", "i2", 2),
        ("u2", "i3", 1),
        ("u2", "i2", 2),
        ("u3", "i1", 1),
        ("u3", "i2", 2),
    ]
    want_scores = [0.96, 0.8, 1.0, 0.0, 0.8, 0.0]
    for block in (1, 2, 3):
        writer = io.TableWriter(tmp_path / f"c{block}.parquet")
        rows, ids = write_candidates(writer, index, users, user_ids, exclude, 2, 3, np.array([2, 0]), block)
        writer.close()
        df = pl.read_parquet(writer.path)
        assert df.columns == ["user_id", "item_id", "rank", "score"] and writer.rows == 6
        assert df.select("user_id", "item_id", "rank").rows() == want_rows, block
        np.testing.assert_allclose(df["score"].to_numpy(), want_scores, atol=1e-6)
        # the kept users' whole search (k_search = 3) as positions, rows ascending: u3 [i1, i2, i3],
        # u2 [i3, i2, i1]
        np.testing.assert_array_equal(rows, [0, 2])
        np.testing.assert_array_equal(ids, [[1, 2, 3], [3, 2, 1]])


@pytest.mark.slow  # shares the ~20 s module fixture
def test_reading_train_pairs_in_parts_equals_reading_them_whole(built: dict) -> None:
    inputs = load_inputs(built["out"], built["dt"])
    path = io.committed_path(built["out"], "frames", built["dt"], "retriever_train.parquet")
    whole = compact_batch(to_batch(pl.read_parquet(path), inputs.user_spec))
    parts = read_compact_batch(path, inputs.user_spec, rows_per_part=7)  # many parts, the last one short
    assert whole.keys() == parts.keys() == inputs.train_users.keys()
    for k in whole:
        assert torch.equal(whole[k], parts[k]) and torch.equal(whole[k], inputs.train_users[k]), k
    np.testing.assert_array_equal(inputs.train_items.numpy(), pl.read_parquet(path)["item_idx"].to_numpy())


def test_compact_batch_round_trip() -> None:
    batch = {"sparse": torch.tensor([[0, 7], [3, 2**31 - 1]]), "counts": torch.tensor([[0.5], [1.5]])}
    small = compact_batch(batch)
    assert small["sparse"].dtype == torch.int32 and small["counts"].dtype == torch.float32
    back = widen_batch(small)
    assert back["sparse"].dtype == torch.int64 and torch.equal(back["sparse"], batch["sparse"])
    assert torch.equal(back["counts"], batch["counts"])
    with pytest.raises(ValueError, match="int32"):
        compact_batch({"sparse": torch.tensor([2**31])})


@pytest.mark.slow  # shares the ~20 s module fixture (generate, frames, embeddings, stage)
def test_exclusion_needs_to_know_the_data_folder(built: dict) -> None:
    run = io.RunInfo.new({"note": "no data section"}, "cfg0", run_id="run2")
    with pytest.raises(ValueError, match="data_dir"):
        train_retriever_stage(
            built["out"], built["dt"], built["cfg"].retriever, built["cfg"].index, 0, "cpu", run
        )


def test_drop_excluded_by_hand() -> None:
    # row 0 excludes items 1 and 2: [3, 1, 2, 0] -> [3, 0]; row 1 excludes nothing: [2, 0]
    excl = sp.csr_matrix(([1.0, 1.0], ([0, 0], [1, 2])), shape=(2, 4))
    ranked = np.array([[3, 1, 2, 0], [2, 0, 1, 3]])
    np.testing.assert_array_equal(drop_excluded(ranked, excl, 2), [[3, 0], [2, 0]])
    # too few left: padded with -1
    np.testing.assert_array_equal(drop_excluded(ranked[:, :3], excl, 2), [[3, -1], [2, 0]])


def test_popularity_positions_by_hand() -> None:
    # counts [5, 9, 5, 1]: order 1, 0, 2, 3 (ties to the smaller position); user 0 bought item 1
    excl = sp.csr_matrix(([1.0], ([0], [1])), shape=(2, 4))
    got = popularity_positions(np.array([5, 9, 5, 1]), 2, 2, excl)
    np.testing.assert_array_equal(got, [[0, 2], [1, 0]])


def test_relevant_positions_and_metrics_by_hand() -> None:
    inputs = SimpleNamespace(item_ids=np.array(["i0", "i1", "i2", "i3"]))
    # "new" is not in the catalogue: relevant (it counts in recall's denominator), never ranked
    relevant = relevant_positions(inputs, [["i2", "new"], ["i0"], ["new", "zz", "i3"]])
    assert relevant[0] == {2, -2} and relevant[1] == {0} and relevant[2] == {-2, -3, 3}
    ranked = np.array([[2, 0], [1, -1], [3, 1]])
    got = ranking_metrics(ranked, relevant, 4, ks=(1, 2))
    assert got["recall@1"] == pytest.approx((1 / 2 + 0 + 1 / 3) / 3)
    assert got["hit_rate@2"] == pytest.approx(2 / 3)
    assert got["coverage@1"] == pytest.approx(3 / 4) and got["coverage@2"] == pytest.approx(1.0)


def test_candidates_frame_drops_missing() -> None:
    ids = np.array([["a", "b", ""], ["c", "", ""]])
    scores = np.array([[0.9, 0.5, -np.inf], [0.7, -np.inf, -np.inf]], dtype=np.float32)
    df = candidates_frame(np.array(["u1", "u2"]), ids, scores, top_k=3)
    assert df.rows() == [
        ("u1", "a", 1, pytest.approx(0.9)),
        ("u1", "b", 2, 0.5),
        ("u2", "c", 1, pytest.approx(0.7)),
    ]


@settings(max_examples=30, deadline=None)
@given(
    st.integers(1, 5).flatmap(
        lambda u: st.tuples(
            st.just(u),
            st.lists(st.permutations(list(range(8))), min_size=u, max_size=u),
            st.lists(st.tuples(st.integers(0, u - 1), st.integers(0, 7)), max_size=10),
            st.integers(1, 6),
        )
    )
)
def test_drop_excluded_never_returns_an_excluded_item(args) -> None:
    u, rows, pairs, k = args
    ranked = np.array(rows)
    excl = sp.csr_matrix((np.ones(len(pairs)), ([p[0] for p in pairs], [p[1] for p in pairs])), shape=(u, 8))
    excl.data[:] = 1.0
    got = drop_excluded(ranked, excl, k)
    assert got.shape == (u, k)
    bad = set(pairs)
    for r in range(u):
        kept = [int(x) for x in got[r] if x >= 0]
        assert not {(r, x) for x in kept} & bad
        want = [int(x) for x in ranked[r] if (r, int(x)) not in bad][:k]
        assert kept == want  # the survivors, in their original order


def test_evaluation_blocks_equal_one_block() -> None:
    """ranking_metrics and popularity_positions per block of users give the one-block results."""
    from retrieval.metrics import catalogue_coverage, metrics_at_k

    rng = np.random.default_rng(5)
    q, n, k = 23, 40, 10
    ranked = np.stack([rng.permutation(n)[:k] for _ in range(q)]).astype(np.int64)  # (Q, K)
    ranked[3, 6:] = -1  # a short list
    relevant = [set(rng.choice(n, size=rng.integers(0, 4), replace=False).tolist()) for _ in range(q)]
    relevant[0] = {-2}  # relevant but outside the catalogue: never ranked
    ks = (1, 5, 10)
    want = {
        f"{name}@{kk}": round(v, 6)
        for name, values in metrics_at_k(ranked, relevant, ks).items()
        for kk, v in values.items()
    }
    want |= {f"coverage@{kk}": round(catalogue_coverage(ranked, n, kk, missing=-1), 6) for kk in ks}
    exclude = sp.random(q, n, density=0.1, format="csr", random_state=1)
    counts = rng.integers(0, 50, n)
    pop_one = popularity_positions(counts, q, k, exclude)
    got = ranking_metrics(ranked, relevant, n, ks, block_users=4)  # 23 users: five full blocks and one of 3
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-6), key
    assert np.array_equal(popularity_positions(counts, q, k, exclude, block_users=4), pop_one)
    assert not np.isin(pop_one[0], exclude[0].indices).any()  # exclusions still dropped per block


@pytest.mark.slow  # shares the ~20 s module fixture (generate, frames, embeddings, stage)
def test_the_stage_passes_fusion_and_loss_options_through(built: dict, tmp_path: Path) -> None:
    out, dt, cfg, run = built["out"], built["dt"], built["cfg"], built["run"]
    copy = tmp_path / "out"
    for name in ("frames", "embeddings"):
        shutil.copytree(io.partition_dir(out, name, dt), io.partition_dir(copy, name, dt))
    options = load_config(
        overrides=[
            "--retriever.fusion=late", "--retriever.symmetric=true", "--retriever.learn_temperature=true",
            "--retriever.epochs=1", "--retriever.dim=16", "--retriever.field_dim=8", "--retriever.hidden=[32]",
            "--retriever.batch_size=128", f"--retriever.top_k={TOP_K}",
        ]
    ).retriever  # fmt: skip
    train_retriever_stage(copy, dt, options, cfg.index, 0, "cpu", run, data_dir=built["data"])
    model, meta = load_retriever(io.committed_path(copy, DATASET, dt, "model.pt"))
    assert (meta["config"]["fusion"], meta["config"]["symmetric"]) == ("late", True)
    assert type(model.item_tower.fusion).__name__ == "LateFusion"
    metrics = json.loads(io.committed_path(copy, DATASET, dt, "metrics.json").read_text())
    learnt = float(model.temperature().detach())
    assert metrics["train"]["learnt_temperature"] == pytest.approx(learnt, abs=1e-6)
