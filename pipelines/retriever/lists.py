"""The index over every catalogue item and the two-tower lists of every user (`two_tower/dt=D`)."""

from __future__ import annotations

import logging

import numpy as np
import polars as pl
import scipy.sparse as sp
import torch

from models.device import resolve_device
from models.retriever_train import (
    encode,
)
from models.towers import TwoTower
from pipelines import io
from pipelines.retriever.data import RetrieverInputs
from pipelines.retriever.layout import CANDIDATE_BLOCK_USERS, ENCODE_CHUNK
from retrieval import index as faiss_index
from retrieval.config import IndexConfig

log = logging.getLogger(__name__)


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
