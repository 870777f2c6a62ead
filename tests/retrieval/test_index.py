"""FAISS index: exact hand cases, tuned IVF/HNSW recall, exclusions, save/load and the GPU guard."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from retrieval.config import IndexConfig
from retrieval.index import (
    MAX_TUNE_QUERIES,
    _recall,
    _set_param,
    build_index,
    choose_kind,
    default_nlist,
    load,
    save,
    search,
)

ITEMS = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [-1.0, 0.0]], dtype=np.float32)
QUERY = np.array([[0.8, 0.6]], dtype=np.float32)
# scores of QUERY: [0.8, 0.6, 0.48 + 0.48 = 0.96, -0.8] -> ranking by position 2, 0, 1, 3
FLAT = IndexConfig(kind="flat", use_gpu="never")


def _clustered(n: int, d: int, n_clusters: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, d))
    x = centres[rng.integers(0, n_clusters, n)] + 0.5 * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_flat_hand_case_int_ids() -> None:
    idx = build_index(ITEMS, np.array([10, 11, 12, 13]), FLAT)
    scores, ids = search(idx, QUERY, 3)
    np.testing.assert_array_equal(ids, [[12, 10, 11]])
    np.testing.assert_allclose(scores, [[0.96, 0.8, 0.6]], rtol=1e-6)
    assert ids.dtype == np.int64 and scores.dtype == np.float32
    assert idx.kind == "flat" and idx.figures["recall"] == 1.0


def test_k_larger_than_catalogue_fills_missing() -> None:
    idx = build_index(ITEMS, np.array(["a", "b", "c", "d"]), FLAT)
    scores, ids = search(idx, QUERY, 6)
    np.testing.assert_array_equal(ids, [["c", "a", "b", "d", "", ""]])
    assert np.isneginf(scores[0, 4:]).all()
    np.testing.assert_allclose(scores[0, :4], [0.96, 0.8, 0.6, -0.8], rtol=1e-6)


def test_exclude_dict_and_sparse_mask() -> None:
    idx = build_index(ITEMS, np.array(["a", "b", "c", "d"]), FLAT)
    queries = np.repeat(QUERY, 2, axis=0)
    # row 0 excludes c (its best) and an unknown id; row 1 excludes nothing -> row 0 becomes a, b
    _, ids = search(idx, queries, 2, exclude={0: {"c", "zz"}})
    np.testing.assert_array_equal(ids, [["a", "b"], ["c", "a"]])
    # the same as a [Q, N] mask over positions: row 1 excludes a (position 0) and b (position 1)
    mask = sp.csr_matrix((np.ones(2), ([1, 1], [0, 1])), shape=(2, 4))
    scores, ids = search(idx, queries, 3, exclude=mask)
    np.testing.assert_array_equal(ids, [["c", "a", "b"], ["c", "d", ""]])
    assert np.isneginf(scores[1, 2])


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(1, 12), data=st.data())
def test_exclusions_match_brute_force(seed: int, k: int, data: st.DataObject) -> None:
    rng = np.random.default_rng(seed)
    n, q = 12, 3
    x = rng.standard_normal((n, 4)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    queries = rng.standard_normal((q, 4)).astype(np.float32)
    ids = np.arange(100, 100 + n)
    exclude = {r: set(data.draw(st.lists(st.integers(100, 111), max_size=6))) for r in range(q)}
    idx = build_index(x, ids, FLAT)
    _, got = search(idx, queries, k, exclude=exclude)
    scores = queries @ x.T  # (Q, N) brute force
    for r in range(q):
        allowed = [i for i in np.argsort(-scores[r]) if ids[i] not in exclude[r]][:k]
        expected = np.full(k, -1)
        expected[: len(allowed)] = ids[allowed]
        np.testing.assert_array_equal(got[r], expected)


def test_save_load_round_trip(tmp_path: Path) -> None:
    for ids in (np.array([10, 11, 12, 13]), np.array(["a", "bb", "ccc", "d"])):
        idx = build_index(ITEMS, ids, FLAT)
        save(idx, tmp_path / ids.dtype.kind)
        back = load(tmp_path / ids.dtype.kind)
        assert back.kind == "flat" and back.ids.dtype == ids.dtype
        np.testing.assert_array_equal(search(back, QUERY, 4)[1], search(idx, QUERY, 4)[1])


def test_ivf_reaches_target_with_the_smallest_nprobe(tmp_path: Path) -> None:
    x = _clustered(3000, 16, 30, seed=1)
    cfg = IndexConfig(kind="ivf", target_recall=0.9, use_gpu="never")
    idx = build_index(x, np.arange(3000), cfg, tune_k=20)
    f = idx.figures
    assert f["nlist"] == default_nlist(3000) == 76  # min(4 * sqrt(3000) = 219, 3000 // 39 = 76)
    assert f["recall"] >= 0.9 and 1 <= f["nprobe"] <= f["nlist"]
    assert idx.index.metric_type == faiss.METRIC_INNER_PRODUCT
    # smallest: one fewer probe falls below the target on the same tuning sample
    if f["nprobe"] > 1:
        q = x[np.sort(np.random.default_rng(0).choice(3000, 1000, replace=False))]
        exact = (q @ x.T).argsort(axis=1)[:, ::-1][:, :20]
        _set_param(idx.index, "ivf", f["nprobe"] - 1)
        assert _recall(idx.index.search(q, 20)[1], exact) < 0.9
        _set_param(idx.index, "ivf", f["nprobe"])
    save(idx, tmp_path)
    back = load(tmp_path)
    assert faiss.extract_index_ivf(back.index).nprobe == f["nprobe"]
    np.testing.assert_array_equal(search(back, x[:5], 10)[1], search(idx, x[:5], 10)[1])


def test_many_tune_queries_are_sampled_down_the_same_way_each_time() -> None:
    x = _clustered(2000, 8, 20, seed=3)
    users = _clustered(MAX_TUNE_QUERIES + 500, 8, 20, seed=4)
    cfg = IndexConfig(kind="ivf", target_recall=0.9, use_gpu="never")
    a = build_index(x, np.arange(2000), cfg, seed=5, tune_queries=users, tune_k=10)
    b = build_index(x, np.arange(2000), cfg, seed=5, tune_queries=users, tune_k=10)
    assert a.figures["tune_queries"] == MAX_TUNE_QUERIES
    assert a.figures["nprobe"] == b.figures["nprobe"] and a.figures["recall"] == b.figures["recall"]
    few = build_index(x, np.arange(2000), cfg, seed=5, tune_queries=users[:300], tune_k=10)
    assert few.figures["tune_queries"] == 300  # fewer than the cap: all of them


def test_hnsw_reaches_target() -> None:
    x = _clustered(2000, 16, 20, seed=2)
    cfg = IndexConfig(kind="hnsw", hnsw_m=8, target_recall=0.95, use_gpu="never")
    idx = build_index(x, np.arange(2000), cfg, tune_k=10)
    assert idx.figures["recall"] >= 0.95 and idx.figures["ef_search"] >= 1
    assert idx.index.hnsw.efSearch == idx.figures["ef_search"]
    _, ids = search(idx, x[:3], 1)
    np.testing.assert_array_equal(ids[:, 0], [0, 1, 2])  # each item is its own nearest neighbour


def test_recall_helper_hand_case() -> None:
    # row 0 shares {1, 2} of 3 -> 2/3; row 1 shares {5} -> 1/3 (-1 never counts); mean 1/2
    exact = np.array([[1, 2, 3], [4, 5, 6]])
    approx = np.array([[2, 1, 9], [5, -1, -1]])
    assert _recall(approx, exact) == pytest.approx(0.5)


def test_choose_kind_and_input_checks() -> None:
    assert choose_kind(10, IndexConfig(exact_below=100)) == "flat"
    assert choose_kind(100, IndexConfig(exact_below=100)) == "ivf"
    assert choose_kind(10, IndexConfig(kind="hnsw")) == "hnsw"
    with pytest.raises(ValueError, match="L2-normalised"):
        build_index(ITEMS * 2, np.arange(4), FLAT)
    with pytest.raises(ValueError, match="unique"):
        build_index(ITEMS, np.array([1, 1, 2, 3]), FLAT)
    idx = build_index(ITEMS, np.arange(4), FLAT)
    with pytest.raises(ValueError, match=r"\[\*, 2\]"):
        search(idx, np.ones((1, 3), dtype=np.float32), 1)


def test_gpu_copy_with_wrong_ntotal_falls_back_to_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    # faiss-gpu on a machine without a usable GPU can return an EMPTY index: the guard must keep the CPU one
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    monkeypatch.setattr(
        faiss, "index_cpu_to_all_gpus", lambda index: faiss.IndexFlatIP(index.d), raising=False
    )
    idx = build_index(ITEMS, np.arange(4), IndexConfig(kind="flat", use_gpu="auto"))
    assert not idx.on_gpu and idx.ntotal == 4
    np.testing.assert_array_equal(search(idx, QUERY, 1)[1], [[2]])


@pytest.mark.gpu
@pytest.mark.skipif(faiss.get_num_gpus() == 0, reason="needs a CUDA faiss build and a GPU")
def test_gpu_ivf_matches_cpu() -> None:
    x = _clustered(5000, 16, 30, seed=3)
    cpu = build_index(x, np.arange(5000), IndexConfig(kind="ivf", use_gpu="never"), tune_k=10)
    gpu = build_index(x, np.arange(5000), IndexConfig(kind="ivf", use_gpu="auto"), tune_k=10)
    assert gpu.on_gpu and gpu.ntotal == 5000
    agree = (search(cpu, x[:50], 10)[1] == search(gpu, x[:50], 10)[1]).mean()
    assert agree > 0.9
