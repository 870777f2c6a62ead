"""FAISS item index behind four functions: build_index, search, save, load.

Every index uses the inner-product metric, the score the retriever is trained with (dot product of the
L2-normalised tower outputs, models/towers.py), so there is no L2/IP mismatch between training and serving.

Kinds:

* ``flat``: exact `IndexFlatIP`; the default below ``cfg.exact_below`` items.
* ``ivf``: `IndexIVFFlat` with ``METRIC_INNER_PRODUCT``, ``nlist ~ 4 sqrt(N)`` k-means cells; ``nprobe`` is
  the smallest value whose recall@k against exact search on a sample of queries reaches
  ``cfg.target_recall`` (or ``cfg.nprobe`` when set).
* ``hnsw``: `IndexHNSWFlat` with ``METRIC_INNER_PRODUCT`` and ``cfg.hnsw_m`` links per node; ``efSearch`` is
  tuned the same way.

Recall is monotone in nprobe (a larger nprobe scans a superset of cells and the scores are exact), so the
search doubles nprobe until the target is reached, then bisects down to the smallest value that reaches it;
efSearch is tuned the same way (monotone in practice, not in theory).

GPU: with ``cfg.use_gpu == "auto"`` and ``faiss.get_num_gpus() > 0`` flat and IVF indexes are copied to the
GPUs (HNSW has no GPU version in FAISS and stays on the CPU). A CPU-only faiss build reports 0 GPUs; a copy
whose ``ntotal`` differs from the CPU index (faiss-gpu on a machine without a usable GPU can hand back an
empty index) is discarded with a warning and the CPU index is kept.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from retrieval.config import IndexConfig

log = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
IDS_FILE = "ids.npy"
META_FILE = "index.json"
TUNE_QUERIES = 1000  # queries sampled from the items to tune nprobe / efSearch
# at most this many of the given tune_queries are used (a seeded sample): recall@100 over 4,096 queries has a
# standard error under 0.003, and tuning on every user of a large run took 492 s and ~1.5 GB (200k users)
MAX_TUNE_QUERIES = 4096
TUNE_K = 100  # recall@k measured at this k (clipped to N)
EF_CONSTRUCTION = 64  # HNSW build-time beam width
MAX_EF_SEARCH = 4096
NORM_TOL = 1e-3


@dataclass
class RetrievalIndex:
    """A FAISS index over item positions 0..N-1 and the mapping from position to item id.

    Attributes:
        index: the faiss index (CPU, or GPU when `on_gpu`).
        ids: [N] int64 or str item id of each position (row order of the embeddings it was built from).
        kind: "flat", "ivf" or "hnsw".
        dim: D, the embedding dimension.
        figures: build and tuning figures: n, nlist, nprobe, ef_search, recall (reached at tune_k against
            exact search, 1.0 for flat), tune_k, tune_queries, build_s, tune_s, target_recall.
        on_gpu: whether `index` lives on the GPU.
    """

    index: Any
    ids: np.ndarray
    kind: str
    dim: int
    figures: dict[str, Any] = field(default_factory=dict)
    on_gpu: bool = False

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @cached_property
    def _id_lookup(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids sorted, their positions) for vectorised id -> position lookups with searchsorted."""
        order = np.argsort(self.ids, kind="stable")
        return self.ids[order], order

    def positions_of(self, ids: np.ndarray) -> np.ndarray:
        """ids: [M] item ids -> [M] int64 positions in the index, -1 for ids not in the index."""
        sorted_ids, order = self._id_lookup
        ids = np.asarray(ids)
        if len(ids) == 0:
            return np.zeros(0, dtype=np.int64)
        if (ids.dtype.kind == "U") != (sorted_ids.dtype.kind == "U"):
            raise ValueError(
                f"ids of dtype {ids.dtype} cannot be looked up in an index keyed by {sorted_ids.dtype}"
            )
        at = np.searchsorted(sorted_ids, ids)  # (M,)
        at_c = np.minimum(at, len(sorted_ids) - 1)
        found = (at < len(sorted_ids)) & (sorted_ids[at_c] == ids)
        return np.where(found, order[at_c], -1).astype(np.int64)

    @property
    def missing_id(self) -> int | str:
        """The id returned where fewer than k results exist: -1 for int ids, "" for string ids."""
        return "" if self.ids.dtype.kind == "U" else -1


# ---------------------------------------------------------------- inputs


def _check_embeddings(x: np.ndarray, what: str, dim: int | None = None) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or (dim is not None and x.shape[1] != dim):
        want = f"[*, {dim}]" if dim is not None else "[N, D]"
        raise ValueError(f"{what} must be a {want} float32 array, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{what} holds NaN or inf; check the tower outputs")
    return x


def _normalise_ids(ids: np.ndarray | Iterable[Any], n: int) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.dtype.kind in "iu":
        ids = ids.astype(np.int64)
    elif ids.dtype.kind == "O" and all(isinstance(v, str) for v in ids.tolist()):
        ids = ids.astype(str)
    elif ids.dtype.kind != "U":
        raise ValueError(f"build_index: ids must be integers or strings, got dtype {ids.dtype}")
    if ids.shape != (n,):
        raise ValueError(f"build_index: ids must be [N] = [{n}] (one per embedding row), got {ids.shape}")
    if len(np.unique(ids)) != n:
        raise ValueError("build_index: ids are not unique; deduplicate the item table before indexing")
    return ids


def choose_kind(n: int, cfg: IndexConfig) -> str:
    """The index kind for N items: cfg.kind, or for "auto" exact below cfg.exact_below and IVF above.

    IVF is the default for large catalogues: it builds in a fraction of HNSW's time (benchmarks/index.py),
    fits the nightly rebuild, and runs on the GPU; HNSW is there when asked for.
    """
    if cfg.kind != "auto":
        return cfg.kind
    return "flat" if n < cfg.exact_below else "ivf"


def default_nlist(n: int) -> int:
    """~4 sqrt(N) cells, and at most N / 39 so that k-means has 39 training points per cell (FAISS's floor).

    >>> default_nlist(1_000_000)
    4000
    >>> default_nlist(1_000)
    25
    """
    return max(1, min(round(4 * math.sqrt(n)), n // 39))


# ---------------------------------------------------------------- tuning


def _recall(approx: np.ndarray, exact: np.ndarray) -> float:
    """approx, exact: [Q, K] int64 positions -> mean over queries of |approx ∩ exact| / K (-1 never counts)."""
    q, k = exact.shape
    rows = np.repeat(np.arange(q, dtype=np.int64), k)
    n_max = int(max(approx.max(initial=0), exact.max(initial=0))) + 1
    key_e = rows * n_max + exact.ravel()
    key_a = rows * n_max + approx.ravel()
    valid = approx.ravel() >= 0
    hit = np.isin(key_a[valid], key_e[exact.ravel() >= 0])
    return float(hit.sum()) / (q * k)


def _set_param(index: Any, kind: str, value: int) -> None:
    if kind == "ivf":
        faiss.extract_index_ivf(index).nprobe = value
    elif kind == "hnsw":
        index.hnsw.efSearch = value


def _smallest_reaching(
    index: Any, kind: str, queries: np.ndarray, exact: np.ndarray, target: float, hi_cap: int, start: int = 1
) -> tuple[int, float]:
    """Smallest parameter in [start, hi_cap] whose recall reaches `target`: doubling, then bisection.

    Leaves the index set to the returned parameter. Returns (parameter, recall at that parameter), or
    (hi_cap, its recall) with a warning when the target is never reached.
    """
    k = exact.shape[1]
    memo: dict[int, float] = {}

    def recall_at(p: int) -> float:
        if p not in memo:
            _set_param(index, kind, p)
            _, approx = index.search(queries, k)
            memo[p] = _recall(approx, exact)
        return memo[p]

    lo, hi = start - 1, start  # recall(lo) < target (start - 1 is a sentinel); hi is the candidate
    while recall_at(hi) < target and hi < hi_cap:
        lo, hi = hi, min(2 * hi, hi_cap)
    if memo[hi] < target:
        log.warning(
            "index tuning: %s reached recall %.4f < target %.4f at the cap %d", kind, memo[hi], target, hi
        )
    else:
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if recall_at(mid) >= target:
                hi = mid
            else:
                lo = mid
    _set_param(index, kind, hi)  # the chosen value, not the last one tried
    return hi, memo[hi]


# ---------------------------------------------------------------- build / search


def _to_gpu(index: Any, kind: str, cfg: IndexConfig) -> tuple[Any, bool]:
    """Copy a flat/IVF index to all GPUs when cfg allows and a GPU is present; keep the CPU one otherwise."""
    if cfg.use_gpu == "never" or kind == "hnsw":
        return index, False
    n_gpus = faiss.get_num_gpus()
    if n_gpus <= 0 or not hasattr(faiss, "index_cpu_to_all_gpus"):
        return index, False
    gpu = faiss.index_cpu_to_all_gpus(index)
    if gpu.ntotal != index.ntotal:
        log.warning(
            "index: the GPU copy holds %d vectors, the CPU index %d; keeping the CPU index",
            gpu.ntotal,
            index.ntotal,
        )
        return index, False
    log.info("index: %s index moved to %d GPU(s)", kind, n_gpus)
    return gpu, True


def _apply_search_params(index: Any, kind: str, figures: Mapping[str, Any], on_gpu: bool) -> None:
    if kind == "ivf":
        if on_gpu:
            faiss.GpuParameterSpace().set_index_parameter(index, "nprobe", int(figures["nprobe"]))
        else:
            faiss.extract_index_ivf(index).nprobe = int(figures["nprobe"])
    elif kind == "hnsw":
        index.hnsw.efSearch = int(figures["ef_search"])


def build_index(
    item_emb: np.ndarray,
    ids: np.ndarray,
    cfg: IndexConfig,
    seed: int = 0,
    *,
    tune_queries: np.ndarray | None = None,
    tune_k: int = TUNE_K,
) -> RetrievalIndex:
    """Build an inner-product index over item embeddings and tune its search parameter.

    Args:
        item_emb: [N, D] float32, L2-normalised item tower outputs.
        ids: [N] int64 or str, the item id of each row.
        cfg: index config (kind, exact_below, nlist, nprobe, hnsw_m, target_recall, use_gpu).
        seed: seeds the k-means training sample and the tuning-query sample.
        tune_queries: [Q, D] float32 queries to tune on (e.g. the user embeddings); a seeded sample of
            MAX_TUNE_QUERIES rows is used when Q is larger. None samples up to 1000 of the items themselves.
        tune_k: recall@k is measured at this k (clipped to N).

    Returns:
        The index with its id mapping and figures (the recall reached is ``figures["recall"]``).
    """
    x = _check_embeddings(item_emb, "build_index: item_emb")
    n, d = x.shape
    if n == 0:
        raise ValueError("build_index: item_emb is empty; there are no items to index")
    norms = np.linalg.norm(x, axis=1)
    if np.abs(norms - 1.0).max() > NORM_TOL:
        raise ValueError(
            "build_index: item_emb rows must be L2-normalised (the index scores by inner product, as in "
            f"training); norms range {norms.min():.4f}..{norms.max():.4f}"
        )
    ids = _normalise_ids(ids, n)
    kind = choose_kind(n, cfg)
    rng = np.random.default_rng(seed)
    figures: dict[str, Any] = {"n": n, "dim": d, "kind": kind, "target_recall": cfg.target_recall}

    t0 = time.perf_counter()
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
        index.add(x)
    elif kind == "ivf":
        nlist = cfg.nlist or default_nlist(n)
        if nlist > n:
            raise ValueError(f"build_index: index.nlist ({nlist}) exceeds the {n} items; lower index.nlist")
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        n_train = min(n, 64 * nlist)  # k-means needs ~39..256 points per cell; 64 keeps training fast
        train = x[np.sort(rng.choice(n, n_train, replace=False))] if n_train < n else x
        index.train(train)
        index.add(x)
        figures["nlist"] = nlist
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = EF_CONSTRUCTION
        index.add(x)
        figures["hnsw_m"] = cfg.hnsw_m
        figures["ef_construction"] = EF_CONSTRUCTION
    else:  # pydantic's Literal already forbids this
        raise ValueError(f"build_index: unknown index.kind {kind!r}")
    figures["build_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    k = min(tune_k, n)
    figures["tune_k"] = k
    if kind == "flat":
        figures["recall"] = 1.0
    else:
        if tune_queries is None:
            q = x[np.sort(rng.choice(n, min(n, TUNE_QUERIES), replace=False))]
        else:
            q = _check_embeddings(tune_queries, "build_index: tune_queries", d)
            if len(q) > MAX_TUNE_QUERIES:
                q = q[np.sort(rng.choice(len(q), MAX_TUNE_QUERIES, replace=False))]
        exact_index = faiss.IndexFlatIP(d)
        exact_index.add(x)
        _, exact = exact_index.search(q, k)  # (Q, K)
        del exact_index
        figures["tune_queries"] = len(q)
        if kind == "ivf":
            if cfg.nprobe is not None:
                if cfg.nprobe > figures["nlist"]:
                    raise ValueError(f"build_index: index.nprobe ({cfg.nprobe}) > nlist ({figures['nlist']})")
                _set_param(index, kind, cfg.nprobe)
                figures["nprobe"] = cfg.nprobe
                figures["recall"] = _recall(index.search(q, k)[1], exact)
            else:
                figures["nprobe"], figures["recall"] = _smallest_reaching(
                    index, kind, q, exact, cfg.target_recall, figures["nlist"]
                )
        else:
            # FAISS's HNSW search keeps max(efSearch, k) candidates, so values below k are all the same
            ef, rec = _smallest_reaching(
                index, kind, q, exact, cfg.target_recall, max(MAX_EF_SEARCH, k), start=k
            )
            figures["ef_search"], figures["recall"] = ef, rec
    figures["tune_s"] = time.perf_counter() - t0

    index, on_gpu = _to_gpu(index, kind, cfg)
    if on_gpu:
        _apply_search_params(index, kind, figures, on_gpu)
    figures["on_gpu"] = on_gpu
    log.info("index: built %s over %d items in %.1fs: %s", kind, n, figures["build_s"], figures)
    return RetrievalIndex(index=index, ids=ids, kind=kind, dim=d, figures=figures, on_gpu=on_gpu)


def _exclusion_keys(
    index: RetrievalIndex, exclude: Mapping[int, Iterable[Any]] | Any, n_queries: int
) -> tuple[np.ndarray, np.ndarray]:
    """-> (keys [E] int64 = row * N + position of every excluded (query, item), per-row counts [Q])."""
    n = max(index.ntotal, 1)
    if hasattr(exclude, "tocsr"):  # a sparse [Q, N] mask over index positions (e.g. scipy.sparse)
        m = exclude.tocsr()
        if m.shape != (n_queries, index.ntotal):
            raise ValueError(
                f"search: the exclude mask must be [Q, N] = [{n_queries}, {index.ntotal}], got {m.shape}"
            )
        m.eliminate_zeros()
        rows = np.repeat(np.arange(n_queries, dtype=np.int64), np.diff(m.indptr))
        pos = m.indices.astype(np.int64)
    elif isinstance(exclude, Mapping):
        keys = np.fromiter(exclude.keys(), dtype=np.int64, count=len(exclude))
        if len(keys) and (keys.min() < 0 or keys.max() >= n_queries):
            raise ValueError(f"search: exclude has query rows outside [0, {n_queries})")
        lengths = np.fromiter((len(v) for v in exclude.values()), dtype=np.int64, count=len(exclude))
        flat = list(itertools.chain.from_iterable(exclude.values()))
        rows = np.repeat(keys, lengths)
        pos = index.positions_of(np.asarray(flat))
        known = pos >= 0  # ids not in the index cannot be returned anyway
        rows, pos = rows[known], pos[known]
    else:
        raise ValueError(
            "search: exclude must be a dict {query row: ids} or a sparse [Q, N] mask with .tocsr()"
        )
    key = np.unique(rows * n + pos)
    counts = np.bincount(key // n, minlength=n_queries)
    return key, counts


def search(
    index: RetrievalIndex,
    query_emb: np.ndarray,
    k: int,
    exclude: Mapping[int, Iterable[Any]] | Any | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k items by inner product for each query, optionally leaving out excluded items per query.

    `search_positions` with the positions mapped to item ids.

    Args:
        index: a built or loaded `RetrievalIndex`.
        query_emb: [Q, D] float32, L2-normalised user tower outputs.
        k: results per query.
        exclude: None; a dict {query row: iterable of item ids} (e.g. items already purchased); or a sparse
            [Q, N] matrix (anything with ``.tocsr()``) whose non-zeros mark index positions to leave out.
            The search fetches k + (largest number of exclusions of a row) and drops the excluded ones.

    Returns:
        scores: [Q, k] float32, best first; -inf where fewer than k results exist.
        ids: [Q, k] int64 or str item ids; `index.missing_id` (-1 or "") where fewer than k exist.
    """
    scores, pos = search_positions(index, query_emb, k, exclude)
    valid = pos >= 0
    out_ids = np.where(valid, index.ids[np.where(valid, pos, 0)], index.missing_id)
    return scores, out_ids.astype(index.ids.dtype)


def search_positions(
    index: RetrievalIndex,
    query_emb: np.ndarray,
    k: int,
    exclude: Mapping[int, Iterable[Any]] | Any | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """`search`, returning index positions (rows of the embeddings the index was built from) for ids.

    Returns:
        scores: [Q, k] float32, best first; -inf where fewer than k results exist.
        positions: [Q, k] int64, -1 where fewer than k results exist.
    """
    if k < 1:
        raise ValueError(f"search: k must be >= 1, got {k}")
    q = _check_embeddings(query_emb, "search: query_emb", index.dim)
    n_q = q.shape[0]
    if exclude is None:
        scores, pos = index.index.search(q, k)  # (Q, K)
        valid = pos >= 0
    else:
        keys, counts = _exclusion_keys(index, exclude, n_q)
        k_fetch = k + int(counts.max(initial=0))
        scores, pos = index.index.search(q, k_fetch)  # (Q, K')
        rows = np.arange(n_q, dtype=np.int64)[:, None]
        n = max(index.ntotal, 1)
        valid = (pos >= 0) & ~np.isin(rows * n + pos, keys)  # (Q, K')
        keep = np.argsort(~valid, axis=1, kind="stable")[:, :k]  # kept results first, order preserved
        scores = np.take_along_axis(scores, keep, axis=1)
        pos = np.take_along_axis(pos, keep, axis=1)
        valid = np.take_along_axis(valid, keep, axis=1)
    scores = np.where(valid, scores, -np.inf).astype(np.float32)
    return scores, np.where(valid, pos, -1).astype(np.int64)


# ---------------------------------------------------------------- save / load


def save(index: RetrievalIndex, directory: str | Path) -> None:
    """Write the index (always as a CPU index), its id mapping and figures to `directory`.

    Files: index.faiss (faiss.write_index), ids.npy (int64 or unicode, no pickle), index.json.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    cpu = faiss.index_gpu_to_cpu(index.index) if index.on_gpu else index.index
    faiss.write_index(cpu, str(out / INDEX_FILE))
    np.save(out / IDS_FILE, index.ids, allow_pickle=False)
    meta = {"kind": index.kind, "dim": index.dim, "ntotal": index.ntotal, "figures": index.figures}
    (out / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))


def load(directory: str | Path, cfg: IndexConfig | None = None) -> RetrievalIndex:
    """Read an index written by `save`; moves it to the GPU when ``cfg.use_gpu == "auto"`` and one exists.

    Args:
        directory: the folder `save` wrote.
        cfg: only `use_gpu` is read; None keeps the index on the CPU.
    """
    src = Path(directory)
    for name in (INDEX_FILE, IDS_FILE, META_FILE):
        if not (src / name).is_file():
            raise FileNotFoundError(
                f"load: {src / name} is missing; was the index written with retrieval.index.save?"
            )
    meta = json.loads((src / META_FILE).read_text())
    cpu = faiss.read_index(str(src / INDEX_FILE))
    ids = np.load(src / IDS_FILE, allow_pickle=False)
    if cpu.ntotal != len(ids) or cpu.ntotal != meta["ntotal"]:
        raise ValueError(
            f"load: {src} is inconsistent: {cpu.ntotal} vectors in {INDEX_FILE}, {len(ids)} ids in {IDS_FILE}; "
            "rebuild the index"
        )
    if cpu.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise ValueError(f"load: {src / INDEX_FILE} does not use the inner-product metric; rebuild the index")
    kind, figures = meta["kind"], meta["figures"]
    _apply_search_params(cpu, kind, figures, on_gpu=False)
    index, on_gpu = _to_gpu(cpu, kind, cfg or IndexConfig(use_gpu="never"))
    if on_gpu:
        _apply_search_params(index, kind, figures, on_gpu=True)
    figures = dict(figures, on_gpu=on_gpu)
    return RetrievalIndex(
        index=index, ids=ids, kind=kind, dim=int(meta["dim"]), figures=figures, on_gpu=on_gpu
    )
