"""The retriever stage: train the two towers, index every item, publish candidates, evaluate.

    frames/dt=D (items, users, retriever_train, retriever_valid, vocab, eval_retrieval when present)
    embeddings/dt=D/items.parquet (text and image embeddings, when the config uses them)
        -> retriever/dt=D/   model.pt, index.faiss + ids.npy + index.json, item_emb.npy, metrics.json
        -> candidates/dt=D/  part-0.parquet: user_id, item_id, rank (1..K), score

Training rows are the positives of retriever_train (item features gathered from the catalogue through
item_idx); validation is full-catalogue Recall@50 on retriever_valid, with each validation user's features
taken from its first positive of D (so the validation positives are never in the features that predict
them). Every catalogue item is embedded, cold-start items included (their vectors come from their hashed
attributes and content; their item_id row is untrained), and every user of frames users.parquet (features
as of the end of D) gets cfg.top_k candidates from the inner-product index. Search, purchase exclusion
and candidate rows run per block of users in user_id order (`write_candidates`), appended to the file, so
candidates/dt=D is sorted by user_id then rank and the memory of this step follows the block size.

Purchase exclusion (cfg.exclude_purchased): frames carry positives without their event type, so the
(user, item) purchase pairs of the training window (the frames manifest's train days and valid day) are
read from the input events through `io.scan_events`. The input folder is `data_dir`, or the `data.dir` of
the resolved config the run carries (`run.config`).

Evaluation (when frames has eval_retrieval, the positives of D+1): Recall, NDCG and HitRate at 10/50/100 and
catalogue coverage, over the eval users that have a row in users.parquet, for the model and, in the same
run and with the same exclusions, for two baselines: popularity over the last 7 days (positives of
retriever_train/valid with D-6 <= day <= D) and implicit ALS (package `implicit`, when installed; the
metrics say "not installed" otherwise).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp
import torch

from features.hashing import Vocab
from features.sampling import UniformItemSampler, item_sampling_probs
from models.config import RetrieverConfig
from models.device import resolve_device
from models.inputs import Batch
from models.retriever_train import (
    ITEM_IDX,
    RetrieverTrainResult,
    encode,
    gather_rows,
    save_retriever,
    train_retriever,
    warm_start_retriever,
)
from models.towers import TwoTower
from pipelines import io
from pipelines.batches import (
    FRAMES,
    BatchSpec,
    ItemContent,
    load_item_content,
    load_vocab,
    spec_for,
    stream_batches,
    to_batch,
)
from pipelines.io import RunInfo
from retrieval import index as faiss_index
from retrieval.baselines import ALS_FACTORS, ALS_ITERATIONS, als_available, als_recommend, fit_als
from retrieval.config import IndexConfig
from retrieval.metrics import metrics_at_k, recall_at_k

log = logging.getLogger(__name__)

DATASET = "retriever"
CANDIDATES = "two_tower"  # the user-tower lists; the published candidates/ come from pipelines.funnel
MODEL_FILE = "model.pt"
ITEM_EMB_FILE = "item_emb.npy"
METRICS_FILE = "metrics.json"
EVAL_KS = (10, 50, 100)
VALID_K = 50  # early stopping watches full-catalogue Recall@50 on retriever_valid
POPULARITY_DAYS = 7
# Users per block of the evaluation's metrics and popularity ranking: their [Q, 100] temporaries (sorts of
# every (user, item) key) held ~0.5 GB for the 71.5k eval users of the large preset when done at once.
EVAL_BLOCK_USERS = 8_192
TRAIN_READ_ROWS = 131_072  # rows per part when reading retriever_train into tensors
ENCODE_CHUNK = 4096  # rows per forward pass when embedding users / items
# validation scores every user against the whole catalogue in chunks of about this many MB ([rows, N] float32);
# 4,096 users x 50k items was 0.8 GB
VALID_SCORE_MB = 64
CANDIDATE_BLOCK_USERS = (
    16_384  # users per search block: a multiple of the 4096 queries FAISS scores per BLAS call
)


# ---------------------------------------------------------------- inputs


@dataclass
class RetrieverInputs:
    """What one run date's training and scoring read, as tensors where the model needs them.

    catalogue: item batch of every catalogue item, row = item_idx ([N, ...] tensors, plus item_idx [N]).
    users_batch: user batch of every row of users.parquet ([U, ...] tensors).
    train_users: user batch of every retriever_train row ([R, ...], ids as int32: `compact_batch`);
    train_items: [R] int32 item_idx.
    valid_users: user batch of each validation user's first positive of D ([V, ...]); valid_relevant: V
    arrays of the item_idx of its positives on D.
    """

    dt: date
    vocab: Vocab
    user_spec: BatchSpec
    item_spec: BatchSpec
    item_ids: np.ndarray  # [N] str, row = item_idx
    seen: np.ndarray  # [N] bool, False = cold start (no event in the window)
    user_ids: np.ndarray  # [U] str, row of users.parquet
    catalogue: Batch
    users_batch: Batch
    train_users: Batch
    train_items: torch.Tensor
    valid_users: Batch
    valid_relevant: list[np.ndarray]
    positives: pl.DataFrame  # user_id, item_idx, day of retriever_train + retriever_valid
    window: tuple[date, date]  # first and last day of the training window (train days + D)
    content: ItemContent | None
    eval_pairs: pl.DataFrame | None  # user_id, item_id of D+1, or None without the eval day
    text_dim: int = 0
    image_dim: int = 0
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def n_items(self) -> int:
        return int(self.item_ids.shape[0])


def _hist_len(df: pl.DataFrame | pl.LazyFrame) -> int:
    """Longest history list of a frame (at least 1, so the user tower always gets a [B, L] tensor)."""
    longest = df.lazy().select(pl.col("hist").list.len().max()).collect().item()
    return max(int(longest or 0), 1)


def read_compact_batch(path: Path, spec: BatchSpec) -> Batch:
    """A whole frame file as one `compact_batch`, read TRAIN_READ_ROWS rows at a time (file row order).

    Equal to ``compact_batch(to_batch(pl.read_parquet(path), spec))``, without holding the frame and its
    int64 tensors at once (on the large preset that was ~0.8 GB over the 131 MB result).
    """
    parts = [compact_batch(b) for b in stream_batches(path, spec, TRAIN_READ_ROWS)]
    if not parts:
        raise ValueError(f"{path} has no rows")
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def compact_batch(batch: Batch) -> Batch:
    """The batch with every int64 tensor stored as int32 (bucket ids and item rows fit); see `widen_batch`.

    The training pairs stay in memory for the seeded per-epoch permutation (the same order as reading the
    file would not give); int32 halves the id tensors ([R, F] sparse and [R, L] hist), the bulk of them.
    """
    out: Batch = {}
    for k, v in batch.items():
        if v.dtype == torch.int64:
            if v.numel() and (
                v.min() < torch.iinfo(torch.int32).min or v.max() > torch.iinfo(torch.int32).max
            ):
                raise ValueError(f"compact_batch: {k} holds values outside int32; fix: keep this batch int64")
            v = v.to(torch.int32)
        out[k] = v
    return out


def widen_batch(batch: Batch) -> Batch:
    """int32 tensors of a `compact_batch` back to int64, the dtype the towers index with."""
    return {k: v.long() if v.dtype == torch.int32 else v for k, v in batch.items()}


def batch_nbytes(batch: Batch) -> int:
    """Bytes held by the tensors of a batch."""
    return sum(v.element_size() * v.numel() for v in batch.values())


def load_inputs(out: Path, dt: date, use_content: bool = True) -> RetrieverInputs:
    """Read frames/dt=D (and embeddings/dt=D when `use_content`) into tensors for training and scoring."""
    out = Path(out)
    vocab = load_vocab(out, dt)
    items = io.read_table(out, FRAMES, dt, "items").sort("item_idx")
    users = io.read_table(out, FRAMES, dt, "users")
    train_path = io.committed_path(out, FRAMES, dt, "retriever_train.parquet")
    train = pl.scan_parquet(train_path)  # read in parts below: it grows with the events
    train_rows = train.select(pl.len()).collect().item()
    valid = io.read_table(out, FRAMES, dt, "retriever_valid")
    frames_dir = io.partition_dir(out, FRAMES, dt)
    if train_rows == 0:
        raise ValueError(
            f"{frames_dir}/retriever_train.parquet has no rows (a one-day window has no training day); "
            "fix: set data.train_window_days >= 2"
        )
    if valid.height == 0:
        raise ValueError(
            f"{frames_dir}/retriever_valid.parquet has no rows: no positive on {dt}, so there is nothing to "
            "validate on; fix: run a date with positives"
        )
    manifest = io.read_manifest(out, FRAMES, dt)
    days = [date.fromisoformat(d) for d in manifest.get("window", {}).get("train_days", [])]
    window = (min(days) if days else dt, dt)
    has_eval = bool(manifest.get("eval", {}).get("present"))

    hist_len = max(_hist_len(train), _hist_len(users), _hist_len(valid))
    user_spec = spec_for(
        vocab, train.collect_schema(), ("user",), hist_len=hist_len, item_content=False, label=False
    )
    content = load_item_content(out, dt) if use_content else None
    item_spec = spec_for(vocab, items.schema, ("item",), hist_len=0, item_content=use_content, label=False)
    if "item_id" not in item_spec.fields:
        raise ValueError(
            f"{frames_dir}/items.parquet: no bkt_item_id column; the user history shares the item_id "
            "embedding, so fix: rebuild the frames with an item_id field"
        )
    catalogue = to_batch(items, item_spec, content)
    catalogue[ITEM_IDX] = torch.arange(items.height, dtype=torch.long)
    train_users = read_compact_batch(train_path, user_spec)  # (R, ...) int32 ids, float32 counts/numeric
    pairs = train.select("user_id", "item_idx", "ts").collect()
    train_items = torch.from_numpy(pairs["item_idx"].cast(pl.Int32).to_numpy().copy())  # (R,) int32

    first_valid = valid.sort("ts", "user_id", "item_id").unique("user_id", keep="first", maintain_order=True)
    relevant = (
        valid.group_by("user_id")
        .agg(pl.col("item_idx").unique().sort())
        .join(first_valid.select("user_id").with_row_index("_q"), on="user_id")
        .sort("_q")
    )
    positives = pl.concat(
        [
            df.select("user_id", pl.col("item_idx").cast(pl.Int64), pl.col("ts").dt.date().alias("day"))
            for df in (pairs, valid)
        ]
    )
    eval_pairs = io.read_table(out, FRAMES, dt, "eval_retrieval") if has_eval else None
    return RetrieverInputs(
        dt=dt,
        vocab=vocab,
        user_spec=user_spec,
        item_spec=item_spec,
        item_ids=items["item_id"].cast(pl.String).to_numpy().astype(str),
        seen=items["seen"].to_numpy().astype(bool),
        user_ids=users["user_id"].cast(pl.String).to_numpy().astype(str),
        catalogue=catalogue,
        users_batch=to_batch(users, user_spec),
        train_users=train_users,
        train_items=train_items,
        valid_users=to_batch(first_valid, user_spec),
        valid_relevant=[np.asarray(v, dtype=np.int64) for v in relevant["item_idx"].to_list()],
        positives=positives,
        window=window,
        content=content,
        eval_pairs=eval_pairs,
        text_dim=content.text_dim if content is not None else 0,
        image_dim=content.image_dim if content is not None else 0,
        figures={
            "items": items.height,
            "cold_items": int((~items["seen"]).sum()),
            "users": users.height,
            "train_rows": train_rows,
            "train_tensor_mb": round((batch_nbytes(train_users) + train_items.nbytes) / 2**20, 1),
            "valid_rows": valid.height,
            "valid_users": first_valid.height,
            "hist_len": hist_len,
        },
    )


# ---------------------------------------------------------------- training


def effective_config(cfg: RetrieverConfig, inputs: RetrieverInputs) -> RetrieverConfig:
    """cfg with use_text / use_image switched off when the embeddings partition has no such modality."""
    update = {}
    if cfg.use_text and inputs.text_dim == 0:
        update["use_text"] = False
    if cfg.use_image and inputs.image_dim == 0:
        update["use_image"] = False
    if update:
        log.warning("retriever: embeddings have no %s; switched off", sorted(update))
    return cfg.model_copy(update=update)


def build_model(cfg: RetrieverConfig, inputs: RetrieverInputs, seed: int) -> TwoTower:
    """A fresh `TwoTower` for the inputs' layouts and widths, initialised from `seed`."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return TwoTower(
            cfg,
            inputs.user_spec.layout(inputs.vocab),
            inputs.item_spec.layout(inputs.vocab),
            n_counts=len(inputs.user_spec.counts),
            n_user_numeric=len(inputs.user_spec.numeric),
            n_item_numeric=len(inputs.item_spec.numeric),
            text_dim=inputs.text_dim if cfg.use_text else 0,
            image_dim=inputs.image_dim if cfg.use_image else 0,
        )


def item_log_share(inputs: RetrieverInputs) -> torch.Tensor:
    """[N] float32 log of each item's share of the training positives (features.sampling.item_sampling_probs).

    Items without a training positive never occur in a batch; they get the log of half the smallest
    share so the vector stays finite.
    """
    probs = item_sampling_probs(pl.DataFrame({"item_id": inputs.train_items.numpy()}))
    share = np.zeros(inputs.n_items, dtype=np.float64)
    share[probs["item_id"].to_numpy()] = probs["prob"].to_numpy()
    floor = share[share > 0].min() / 2.0
    return torch.from_numpy(np.log(np.maximum(share, floor)).astype(np.float32))


def _valid_recall(inputs: RetrieverInputs, device: torch.device, k: int = VALID_K):
    """model -> full-catalogue Recall@k of the validation users (their positives of D)."""
    k = min(k, inputs.n_items)

    def score(model: TwoTower) -> float:
        items = encode(model.item_embedding, inputs.catalogue, ENCODE_CHUNK, device)  # (N, D)
        users = encode(model.user_embedding, inputs.valid_users, ENCODE_CHUNK, device)  # (V, D)
        rows = max(1, (VALID_SCORE_MB << 20) // (4 * items.shape[0]))
        top = torch.cat(
            [torch.topk(u @ items.T, k, dim=1).indices for u in users.split(rows)]
        ).numpy()  # (V, k)
        return recall_at_k(top, inputs.valid_relevant, [k])[k]

    return score


def fit(
    inputs: RetrieverInputs,
    cfg: RetrieverConfig,
    seed: int,
    device: str | torch.device = "cpu",
    warm_from: Path | None = None,
    progress: bool = False,
) -> tuple[TwoTower, RetrieverTrainResult, dict[str, Any]]:
    """Build, optionally warm-start, and train the towers on the inputs. Returns (model, result, figures).

    The row order of every epoch is a seeded permutation (seed, epoch), so the same seed gives the same run.
    """
    device = resolve_device(device)
    cfg = effective_config(cfg, inputs)
    model = build_model(cfg, inputs, seed)
    figures: dict[str, Any] = {"warm_start": None}
    if warm_from is not None:
        copied = warm_start_retriever(model, warm_from)
        figures["warm_start"] = {"from": str(warm_from), "tensors": len(copied)}
    rows = inputs.train_items.shape[0]
    epoch = {"n": 0}

    def batches():
        perm = torch.from_numpy(np.random.default_rng([seed, epoch["n"]]).permutation(rows))
        epoch["n"] += 1
        for lo in range(0, rows, cfg.batch_size):
            take = perm[lo : lo + cfg.batch_size]
            yield (
                widen_batch(gather_rows(inputs.train_users, take)),
                gather_rows(inputs.catalogue, inputs.train_items[take].long()),
            )

    sampler = UniformItemSampler(inputs.n_items, seed) if cfg.mixed_negatives else None
    result = train_retriever(
        model,
        batches,
        _valid_recall(inputs, device),
        cfg,
        seed,
        device,
        item_log_share(inputs) if cfg.logq_correction else None,
        sampler=sampler,
        catalogue=inputs.catalogue if cfg.mixed_negatives else None,
        progress=progress,
    )
    figures.update(result.figures())
    figures["config"] = {"use_text": cfg.use_text, "use_image": cfg.use_image}
    return model, result, figures


# ---------------------------------------------------------------- ranking, exclusion, baselines


def purchase_mask(inputs: RetrieverInputs, data_dir: Path, users: np.ndarray | None = None) -> sp.csr_matrix:
    """[U, N] 0/1 CSR of the (user row, item_idx) pairs with a purchase in the training window.

    Reads events of the window's days through `io.scan_events`; `users` ([U] str) defaults to the rows
    of users.parquet.
    """
    users = inputs.user_ids if users is None else users
    first, last = inputs.window
    pairs = (
        io.scan_events(Path(data_dir), first, last)
        .filter(pl.col("event") == "purchase")
        .select("user_id", "item_id")
        .unique()
        .collect()
    )
    rows = pl.DataFrame({"user_id": users}).with_row_index("_u")
    cols = pl.DataFrame({"item_id": inputs.item_ids}).with_row_index("_i")
    hit = pairs.join(rows, on="user_id").join(cols, on="item_id")
    u = hit["_u"].to_numpy().astype(np.int64)
    i = hit["_i"].to_numpy().astype(np.int64)
    return sp.csr_matrix((np.ones(len(u), np.float32), (u, i)), shape=(len(users), inputs.n_items))


def drop_excluded(ranked: np.ndarray, exclude: sp.csr_matrix | None, k: int) -> np.ndarray:
    """The first k positions of each row that the row does not exclude.

    Args:
        ranked: [U, K'] int64 item positions, best first (-1 = none).
        exclude: [U, N] sparse mask of excluded positions per row, or None.
        k: how many to keep (K' must be >= k + the largest number of exclusions of a row to fill k).

    Returns:
        [U, k] int64 positions, -1 where fewer than k remain.

    >>> drop_excluded(np.array([[3, 1, 2]]), sp.csr_matrix(([1.0], ([0], [1])), shape=(1, 4)), 2)
    array([[3, 2]])
    """
    ranked = np.asarray(ranked, dtype=np.int64)
    bad = ranked < 0
    if exclude is not None and exclude.nnz:
        n = exclude.shape[1]
        coo = exclude.tocoo()
        keys = coo.row.astype(np.int64) * n + coo.col.astype(np.int64)
        rows = np.arange(ranked.shape[0], dtype=np.int64)[:, None]
        bad |= np.isin(rows * n + np.maximum(ranked, 0), keys)
    keep = np.argsort(bad, axis=1, kind="stable")[:, :k]  # (U, k): kept positions first, order preserved
    out = np.take_along_axis(ranked, keep, axis=1)
    out[np.take_along_axis(bad, keep, axis=1)] = -1
    if out.shape[1] < k:
        out = np.pad(out, ((0, 0), (0, k - out.shape[1])), constant_values=-1)
    return out


def popularity_counts(inputs: RetrieverInputs, days: int = POPULARITY_DAYS) -> np.ndarray:
    """[N] int64 positives per item_idx in retriever_train/valid over the last `days` days up to D."""
    since = inputs.dt - timedelta(days=days - 1)
    recent = inputs.positives.filter(pl.col("day") >= since)
    return np.bincount(recent["item_idx"].to_numpy(), minlength=inputs.n_items).astype(np.int64)


def popularity_positions(
    counts: np.ndarray, n_users: int, k: int, exclude: sp.csr_matrix | None
) -> np.ndarray:
    """[U, k] item positions by decreasing count (ties: smaller position), minus each row's exclusions."""
    extra = int(np.diff(exclude.indptr).max(initial=0)) if exclude is not None else 0
    order = np.argsort(-counts, kind="stable")[: k + extra]  # (k',)
    out = np.empty((n_users, k), np.int64)
    for lo in range(0, n_users, EVAL_BLOCK_USERS):  # rows are independent: blocks bound the temporaries
        hi = min(lo + EVAL_BLOCK_USERS, n_users)
        block = np.broadcast_to(order, (hi - lo, order.shape[0]))  # (B, k')
        out[lo:hi] = drop_excluded(block, exclude[lo:hi] if exclude is not None else None, k)
    return out


def als_positions(
    inputs: RetrieverInputs,
    user_rows: np.ndarray,
    k: int,
    exclude: sp.csr_matrix | None,
    seed: int,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Implicit ALS (Hu, Koren, Volinsky 2008) fitted on the window's positives; top-k per user.

    Args:
        inputs: the run's inputs (positives of retriever_train + retriever_valid, users, items).
        user_rows: [Q] int64 rows of users.parquet to rank for.
        k: results per user.
        exclude: [U, N] mask over all users (rows of users.parquet) or None.
        seed: ALS initialisation seed.

    Returns:
        ([Q, k] int64 item positions, -1 where fewer exist; figures).
    """
    t0 = time.perf_counter()
    rows = pl.DataFrame({"user_id": inputs.user_ids}).with_row_index("_u")
    # one entry per positive; the CSR conversion sums repeated (user, item) pairs into their count. (A polars
    # group_by of the pairs first gave the same matrix and held ~0.35 GB more on the large preset.)
    pos = inputs.positives.select("user_id", "item_idx").join(rows, on="user_id", how="inner")
    conf = sp.csr_matrix(
        (
            np.ones(pos.height, np.float32),
            (pos["_u"].to_numpy().astype(np.int64), pos["item_idx"].to_numpy()),
        ),
        shape=(len(inputs.user_ids), inputs.n_items),
    )
    conf.sum_duplicates()
    ids = als_recommend(fit_als(conf, seed), user_rows, k, exclude, inputs.n_items)[0]
    return ids, {
        "factors": ALS_FACTORS,
        "iterations": ALS_ITERATIONS,
        "fit_s": round(time.perf_counter() - t0, 2),
    }


def ranking_metrics(
    ranked: np.ndarray, relevant: list[set[int]], n_items: int, ks: tuple[int, ...] = EVAL_KS
) -> dict[str, float]:
    """recall@K, ndcg@K, hit_rate@K and coverage@K (share of the catalogue in some user's top K).

    ranked: [Q, K_max] int64 item positions (item_idx, -1 = none); relevant: Q sets of item positions
    (`relevant_positions`: items outside the catalogue have codes <= -2, so they count as relevant but are
    never ranked). Integer ids keep this cheap: on 60k users x 100 string ids the sorts inside the metrics
    took ~60 s and ~1.4 GB.
    """
    ks = tuple(k for k in ks if k <= ranked.shape[1])
    # per block of EVAL_BLOCK_USERS users: each metric is a mean over the users with a relevant item, so the
    # blocks' means weighted by their number of such users give the mean over all users; coverage is the
    # union of the blocks' top-K items
    sums: dict[str, float] = {}
    evaluated = 0
    covered = {k: np.zeros(n_items, bool) for k in ks}  # (N,) per K
    for lo in range(0, ranked.shape[0], EVAL_BLOCK_USERS):
        block, rel = ranked[lo : lo + EVAL_BLOCK_USERS], relevant[lo : lo + EVAL_BLOCK_USERS]
        n_block = sum(1 for r in rel if len(r))
        if n_block:
            for name, values in metrics_at_k(block, rel, ks).items():
                for k, v in values.items():
                    sums[f"{name}@{k}"] = sums.get(f"{name}@{k}", 0.0) + v * n_block
        evaluated += n_block
        for k in ks:
            top = block[:, :k]
            covered[k][top[top >= 0]] = True
    if not evaluated:
        metrics_at_k(ranked, relevant, ks)  # no user has a relevant item: raises the metrics' own error
    out = {key: round(total / evaluated, 6) for key, total in sums.items()}
    for k in ks:
        out[f"coverage@{k}"] = round(float(covered[k].sum()) / n_items, 6)
    return out


def relevant_positions(inputs: RetrieverInputs, item_ids: list[list[str]]) -> list[set[int]]:
    """Q lists of relevant item ids -> Q sets of item positions (item_idx).

    An id outside the catalogue (an item first seen on the evaluation day) cannot be ranked but still
    counts in recall's denominator: each such id gets its own code <= -2 (-1 is ranked padding).
    """
    flat = pl.DataFrame(
        {
            "_q": np.repeat(np.arange(len(item_ids), dtype=np.int64), [len(v) for v in item_ids]),
            "item_id": pl.Series([i for v in item_ids for i in v], dtype=pl.String),
        }
    )
    catalogue = (
        pl.DataFrame({"item_id": inputs.item_ids})
        .with_row_index("_i")
        .with_columns(pl.col("_i").cast(pl.Int64))
    )
    unknown = flat.join(catalogue, on="item_id", how="anti").select("item_id").unique().sort("item_id")
    unknown = unknown.with_columns((-2 - pl.int_range(pl.len(), dtype=pl.Int64)).alias("_i"))
    codes = pl.concat([catalogue.select("item_id", "_i"), unknown.select("item_id", "_i")])
    coded = flat.join(codes, on="item_id", how="left", maintain_order="left")
    out: list[set[int]] = [set() for _ in item_ids]
    for q, i in zip(coded["_q"].to_list(), coded["_i"].to_list(), strict=True):
        out[q].add(i)
    return out


def eval_user_rows(inputs: RetrieverInputs) -> np.ndarray:
    """[E] int64 ascending rows of users.parquet of the users with a positive on D+1 (none without eval)."""
    if inputs.eval_pairs is None:
        return np.zeros(0, dtype=np.int64)
    rows = pl.DataFrame({"user_id": inputs.user_ids}).with_row_index("_u")
    hit = rows.join(inputs.eval_pairs.select("user_id").unique(), on="user_id", how="semi")
    return np.sort(hit["_u"].to_numpy().astype(np.int64))


def evaluate(
    inputs: RetrieverInputs,
    model_ranked: np.ndarray,
    exclude: sp.csr_matrix | None,
    seed: int,
    baselines: bool = True,
    *,
    ranked_rows: np.ndarray | None = None,
) -> dict[str, Any]:
    """Metrics of the model's ranking of every user and of the baselines, on the positives of D+1.

    Args:
        inputs: the run's inputs; inputs.eval_pairs must be present.
        model_ranked: [U, K_max] int64 item positions (item_idx, -1 = none) per row of users.parquet, best
            first (K_max >= 100); or, with `ranked_rows`, [R, K_max] for the users.parquet rows
            `ranked_rows` only.
        exclude: [U, N] purchases excluded from every method's ranking, or None.
        seed: ALS seed.
        baselines: compute popularity (and ALS when installed) too.
        ranked_rows: [R] int64 ascending users.parquet row of each row of `model_ranked`; must hold every
            row of `eval_user_rows(inputs)` (None: model_ranked has a row per user).
    """
    if inputs.eval_pairs is None:
        return {"present": False}
    k_max = max(EVAL_KS)
    rows = pl.DataFrame({"user_id": inputs.user_ids}).with_row_index("_u")
    grouped = (
        inputs.eval_pairs.group_by("user_id")
        .agg(pl.col("item_id").cast(pl.String))
        .join(rows, on="user_id", how="left")
        .sort("user_id")
    )
    known = grouped.filter(pl.col("_u").is_not_null())
    user_rows = known["_u"].to_numpy().astype(np.int64)
    relevant = relevant_positions(inputs, known["item_id"].to_list())
    out: dict[str, Any] = {
        "present": True,
        "day": (inputs.dt + timedelta(days=1)).isoformat(),
        "eval_users": grouped.height,
        "users_evaluated": len(user_rows),
        "users_without_features": grouped.height - len(user_rows),
        "ks": list(EVAL_KS),
    }
    if not len(user_rows):
        out["model"] = {"status": "no eval user has a row in users.parquet"}
        return out
    if ranked_rows is None:
        ranked = model_ranked[user_rows]
    else:
        at = np.searchsorted(ranked_rows, user_rows)  # (Q,)
        if (at >= len(ranked_rows)).any() or (
            ranked_rows[np.minimum(at, len(ranked_rows) - 1)] != user_rows
        ).any():
            raise ValueError(
                "evaluate: ranked_rows lacks users.parquet rows of eval users; fix: rank every row of "
                "eval_user_rows(inputs)"
            )
        ranked = model_ranked[at]
    out["model"] = ranking_metrics(ranked, relevant, inputs.n_items)
    if not baselines:
        return out
    sub_excl = exclude[user_rows] if exclude is not None else None
    pop = popularity_positions(popularity_counts(inputs), len(user_rows), k_max, sub_excl)
    out["popularity_7d"] = ranking_metrics(pop, relevant, inputs.n_items)
    if als_available():
        als, figures = als_positions(inputs, user_rows, k_max, exclude, seed)
        out["als"] = {**ranking_metrics(als, relevant, inputs.n_items), **figures}
    else:
        out["als"] = {"status": "not installed (pip install implicit to add the ALS baseline)"}
    return out


def embed_and_index(
    model: TwoTower, inputs: RetrieverInputs, index_cfg: IndexConfig, seed: int, device: str | torch.device
) -> tuple[np.ndarray, np.ndarray, faiss_index.RetrievalIndex]:
    """Embed every catalogue item and user and build the inner-product index over the items.

    Returns (item_emb [N, D] float32, user_emb [U, D] float32, index keyed by item_id).
    """
    device = resolve_device(device)
    model = model.to(device).eval()
    item_emb = encode(model.item_embedding, inputs.catalogue, ENCODE_CHUNK, device).numpy()  # (N, D)
    user_emb = encode(model.user_embedding, inputs.users_batch, ENCODE_CHUNK, device).numpy()  # (U, D)
    tune = user_emb if user_emb.shape[0] else None
    index = faiss_index.build_index(item_emb, inputs.item_ids, index_cfg, seed, tune_queries=tune)
    return item_emb, user_emb, index


def candidates_frame(user_ids: np.ndarray, ids: np.ndarray, scores: np.ndarray, top_k: int) -> pl.DataFrame:
    """user_id, item_id, rank (1..K), score from [U, K'] search results; missing ("") results are dropped."""
    u, k = ids.shape
    k = min(k, top_k)
    df = pl.DataFrame(
        {
            "user_id": np.repeat(user_ids, k),
            "item_id": ids[:, :k].ravel(),
            "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), u),
            "score": scores[:, :k].ravel().astype(np.float32),
        }
    )
    return df.filter(pl.col("item_id") != "")


def write_candidates(
    writer: io.TableWriter,
    index: faiss_index.RetrievalIndex,
    user_emb: np.ndarray,
    user_ids: np.ndarray,
    exclude: sp.csr_matrix | None,
    top_k: int,
    k_search: int,
    keep_rows: np.ndarray,
    block_users: int = CANDIDATE_BLOCK_USERS,
) -> tuple[np.ndarray, np.ndarray]:
    """Search, filter and append the candidates of every user, one block of users at a time.

    Users are taken in ascending user_id order, so the file is sorted by user_id then rank whatever the
    row order of users.parquet (the scoring stage reads it by user ranges). An exact (flat) FAISS search
    scores queries 4096 at a time with BLAS, and a score can differ in its last bit with the batch it was
    computed in; with `block_users` a multiple of 4096 the batches are those of one search over all users,
    so the output is the same as with a single block.

    Args:
        writer: where each block's `candidates_frame` goes.
        index: the item index (ids = item ids).
        user_emb: [U, D] float32 user vectors, row = row of users.parquet.
        user_ids: [U] str, distinct.
        exclude: [U, N] sparse mask of items left out per user (purchases), or None.
        top_k: candidates written per user.
        k_search: results searched per user (>= top_k; the evaluation reads the first 100).
        keep_rows: [E] int64 user rows whose whole search result is returned (the eval users).
        block_users: users per block.

    Returns:
        ([E'] int64 ascending rows of `keep_rows` found in [0, U), [E', k_search] int64 index positions
        (item_idx) of those users' results, best first, -1 = none).
    """
    if block_users < 1:
        raise ValueError(f"write_candidates: block_users must be >= 1, got {block_users}")
    n_users = user_emb.shape[0]
    k_fetch = min(k_search, index.ntotal)
    order = np.argsort(user_ids, kind="stable")  # (U,) users.parquet rows by user_id
    kept_rows, kept_pos = [np.zeros(0, np.int64)], [np.zeros((0, k_search), np.int64)]
    for lo in range(0, n_users, block_users):
        rows = order[lo : lo + block_users]  # (b,)
        sub = exclude[rows] if exclude is not None else None  # (b, N)
        scores, pos = faiss_index.search_positions(index, user_emb[rows], k_fetch, exclude=sub)  # (b, k')
        if pos.shape[1] < k_search:
            pad = k_search - pos.shape[1]
            pos = np.pad(pos, ((0, 0), (0, pad)), constant_values=-1)
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        ids = np.where(pos[:, :top_k] >= 0, index.ids[np.maximum(pos[:, :top_k], 0)], "")  # (b, top_k)
        writer.write(candidates_frame(user_ids[rows], ids, scores, top_k))
        mine = np.isin(rows, keep_rows)  # (b,)
        kept_rows.append(rows[mine].astype(np.int64))
        kept_pos.append(pos[mine])
    if writer.rows == 0:  # no user: the file still exists, with the schema
        schema = {"user_id": pl.String, "item_id": pl.String, "rank": pl.Int32, "score": pl.Float32}
        writer.write(pl.DataFrame(schema=schema))
    found = np.concatenate(kept_rows)  # (E',)
    by_row = np.argsort(found, kind="stable")
    return found[by_row], np.concatenate(kept_pos)[by_row]


def _data_dir(run: RunInfo, data_dir: Path | None) -> Path:
    if data_dir is not None:
        return Path(data_dir)
    configured = (run.config or {}).get("data", {}).get("dir")
    if configured is None:
        raise ValueError(
            "retriever stage: retriever.exclude_purchased is true but neither data_dir nor the run's "
            "config (data.dir) says where the input events are; fix: pass data_dir or set "
            "retriever.exclude_purchased=false"
        )
    return Path(configured)


def _previous_checkpoint(out: Path, dt: date) -> Path | None:
    earlier = [d for d in io.committed_dates(out, DATASET) if d < dt]
    if not earlier:
        return None
    path = io.committed_path(out, DATASET, earlier[-1], MODEL_FILE)
    return path if path.is_file() else None


# ---------------------------------------------------------------- the stage


def train_retriever_stage(
    out: Path,
    dt: date,
    cfg: RetrieverConfig,
    index_cfg: IndexConfig,
    seed: int,
    device: str,
    run: RunInfo,
    *,
    data_dir: Path | None = None,
    progress: bool = False,
    block_users: int = CANDIDATE_BLOCK_USERS,
) -> dict[str, Any]:
    """Train the retriever of day D, commit retriever/dt=D and candidates/dt=D; returns a summary.

    Candidates are searched, filtered and written per block of `block_users` users (`write_candidates`),
    users in user_id order, so their memory grows with the block; the model, the index and the [U, D] user vectors (the index is
    tuned on them) stay in memory. The output is the same for any block size.

    Args:
        out: output root (frames/dt=D and embeddings/dt=D must be committed).
        dt: run date D.
        cfg: retriever config; index_cfg: FAISS index config.
        seed: seeds model init, data order, mixed negatives, index tuning and ALS.
        device: "auto", "cpu" or "cuda".
        run: run info written into both manifests (its run_id is the model id).
        data_dir: input folder, for the purchase pairs (default: run.config["data"]["dir"]).
        progress: tqdm bars.
        block_users: users per search block.
    """
    out = Path(out)
    t0 = time.perf_counter()
    events_dir = _data_dir(run, data_dir) if cfg.exclude_purchased else None
    inputs = load_inputs(out, dt, use_content=cfg.use_text or cfg.use_image)
    warm = _previous_checkpoint(out, dt) if cfg.warm_start else None
    model, result, train_figures = fit(inputs, cfg, seed, device, warm_from=warm, progress=progress)
    item_emb, user_emb, index = embed_and_index(model, inputs, index_cfg, seed, device)

    exclude = purchase_mask(inputs, events_dir) if events_dir is not None else None
    k_search = max(cfg.top_k, max(EVAL_KS))
    eval_rows = eval_user_rows(inputs)
    with io.staged_partition(out, CANDIDATES, dt, run) as cand_stage:
        with cand_stage.table_writer() as writer:
            ranked_rows, eval_ranked = write_candidates(
                writer, index, user_emb, inputs.user_ids, exclude, cfg.top_k, k_search, eval_rows, block_users
            )
        cand_stage.add_inputs(f"{DATASET}/dt={dt.isoformat()}")
        cand_stage.extra.update(
            {"model_id": run.run_id, "top_k": cfg.top_k, "exclude_purchased": cfg.exclude_purchased}
        )
        n_candidates = writer.rows
        evaluation = evaluate(inputs, eval_ranked, exclude, seed, ranked_rows=ranked_rows)
        index_figures = {"kind": index.kind, **{k: v for k, v in index.figures.items() if k != "kind"}}
        metrics = {
            "dt": dt.isoformat(),
            "model_id": run.run_id,
            "valid": {f"recall@{VALID_K}": result.best_score, "history": result.history},
            "eval": evaluation,
            "train": train_figures,
            "inputs": inputs.figures,
            "index": index_figures,
            "exclude_purchased": cfg.exclude_purchased,
            "excluded_pairs": int(exclude.nnz) if exclude is not None else 0,
        }
        # retriever/dt=D is committed first, candidates/dt=D (staged above) when this block exits
        with io.staged_partition(out, DATASET, dt, run) as stage:
            stage.add_inputs(f"{FRAMES}/dt={dt.isoformat()}")
            if inputs.content is not None:
                stage.add_inputs(f"embeddings/dt={dt.isoformat()}")
            save_retriever(
                stage.path(MODEL_FILE),
                model.cpu(),
                {"model_id": run.run_id, "dt": dt.isoformat(), "hist_len": inputs.user_spec.hist_len},
            )
            faiss_index.save(index, stage.dir)
            np.save(stage.path(ITEM_EMB_FILE), item_emb, allow_pickle=False)
            stage.write_json(METRICS_FILE, metrics)
            stage.rows.update({"items": inputs.n_items, "users": len(inputs.user_ids)})
            stage.extra.update(
                {
                    "model_id": run.run_id,
                    "index": index_figures,
                    "train": train_figures,
                    "valid_recall@50": result.best_score,
                }
            )
    seconds = time.perf_counter() - t0
    log.info(
        "retriever %s: valid recall@50 %.4f, %d candidates, %.1fs",
        dt,
        result.best_score,
        n_candidates,
        seconds,
    )
    summary: dict[str, Any] = {
        "dataset": DATASET,
        "dt": dt.isoformat(),
        "model_id": run.run_id,
        "candidates": n_candidates,
        "users": len(inputs.user_ids),
        "items": inputs.n_items,
        "index_kind": index.kind,
        "valid_recall@50": result.best_score,
        "epochs_run": len(result.history),
        "seconds": round(seconds, 2),
        "metrics": metrics,
    }
    if evaluation.get("present") and isinstance(evaluation.get("model"), dict):
        for k in (50, 100):
            summary[f"eval_recall@{k}"] = evaluation["model"].get(f"recall@{k}")
    return summary
