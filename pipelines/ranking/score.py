"""The score stage: the retriever's lists (two_tower/dt=D) scored by the ranker of D, ranked, and the funnel figures."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from torch import nn

from models.config import RankerConfig
from models.device import resolve_device
from models.ranker import quantize_int8
from models.train import (
    load_checkpoint,
    padded_batch,
    predict,
)
from pipelines import io
from pipelines.batches import (
    BatchSpec,
    ItemContent,
    load_item_content,
    load_vocab,
    parquet_rows,
    to_batch,
)
from pipelines.names import EMBEDDINGS, FRAMES, MODEL_FILE, SCORES
from pipelines.ranking.evaluate import sigmoid
from pipelines.ranking.funnel_metrics import FunnelAccumulator, popular_items, rank_by_score
from pipelines.ranking.layout import CANDIDATES, DATASET, FUNNEL_FILE, FUNNEL_K, SCORE_CHUNK
from pipelines.ranking.pairs import join_pair_features, pair_tables, raw_attributes
from pipelines.ranking.train import spec_from_json

log = logging.getLogger(__name__)


def _load_model(out: Path, dt: date) -> tuple[nn.Module, dict[str, Any], date]:
    """The ranker of D, else the newest committed before D."""
    dates = [d for d in io.committed_dates(out, DATASET) if d <= dt]
    if not dates:
        raise FileNotFoundError(
            f"{io.dataset_dir(out, DATASET)}: no committed ranker at or before {dt}; fix: run the ranker stage first"
        )
    model, meta = load_checkpoint(io.committed_path(out, DATASET, dates[-1], MODEL_FILE))
    return model, meta, dates[-1]


def _score_frame(
    model: nn.Module, df: pl.DataFrame, spec: BatchSpec, content: ItemContent | None, device: torch.device
) -> np.ndarray:
    """[P] float64 probabilities of the rows of `df` (features as in the training frames), in chunks.

    Every forward pass has the one shape [SCORE_CHUNK, ...]: the last chunk is padded (`padded_batch`). The CPU
    matrix kernels (oneDNN/MKL) are chosen by the matrix shape, so on an AVX-512 machine a pair scored in a
    forward of 4 rows differed in its last float32 bits from the same pair scored among 24: a user's scores
    depended on how many users shared its block. With one shape they do not.
    """
    chunks = (df.slice(i, SCORE_CHUNK) for i in range(0, df.height, SCORE_CHUNK))
    parts = [
        predict(model, [padded_batch(to_batch(chunk, spec, content), SCORE_CHUNK)], device)[: chunk.height]
        for chunk in chunks
    ]
    return sigmoid(np.concatenate(parts) if parts else np.zeros(0, np.float32))


def _candidate_blocks(path: Path, users: pl.Series, block_users: int) -> Iterator[pl.DataFrame]:
    """The candidates of `users` in `path`, in blocks of `block_users` users in ascending user_id order.

    users: [U] String, the users that can be scored (frames users.parquet); candidates of other users are
    never read (they would be dropped by the feature join anyway). Each block: user_id, item_id (String),
    retriever_rank, retriever_score, in file order within the block. A block is read with a range filter
    on user_id, so a file sorted by user (as the retriever stage writes it) is read through the Parquet
    statistics one row-group range per block; any other order still works, reading more.
    """
    if block_users < 1:
        raise ValueError(f"score_stage: block_users must be >= 1, got {block_users}")
    lf = pl.scan_parquet(path).select(
        pl.col("user_id").cast(pl.String),
        pl.col("item_id").cast(pl.String),
        pl.col("rank").alias("retriever_rank"),
        pl.col("score").alias("retriever_score"),
    )
    users = users.cast(pl.String).unique().sort()  # (U,)
    for lo in range(0, users.len(), block_users):
        block = users.slice(lo, block_users)
        in_range = pl.col("user_id").is_between(pl.lit(block[0]), pl.lit(block[-1]), closed="both")
        yield lf.filter(in_range & pl.col("user_id").is_in(block.implode())).collect()


def _scored_block(
    model: nn.Module,
    df: pl.DataFrame,
    spec: BatchSpec,
    content: ItemContent | None,
    device: torch.device,
    with_retriever_rank: bool,
) -> pl.DataFrame:
    """Score and rank the feature rows of whole users: user_id, item_id, [retriever_rank], score, rank."""
    probs = _score_frame(model, df, spec, content, device) if df.height else np.zeros(0)
    scored = df.select(
        "user_id", "item_id", *(["retriever_rank"] if with_retriever_rank else [])
    ).with_columns(pl.Series("score", probs, dtype=pl.Float32))
    return rank_by_score(scored)


def score_stage(
    out: Path,
    dt: date,
    cfg: RankerConfig,
    device: str,
    run: io.RunInfo,
    *,
    block_users: int | None = None,
) -> dict[str, Any]:
    """Score every (user, candidate) pair of candidates/dt=D with the ranker of D -> scores/dt=D/part-0.

    Candidates are processed per block of `block_users` users (default cfg.score_block_users; ascending
    user_id): features, scores, ranks
    and the funnel sums of one block at a time, each block appended to the scores file, so memory grows
    with the block, not with the number of pairs. The output is the same for any block size (rows sorted
    by user_id then rank). When candidates/dt=D is not committed, the distinct (user, item) pairs of
    eval_ranker (else ranker_valid) of frames/dt=D are scored instead (one block), with their own
    point-in-time features, and the manifest says so (`source`). With cfg.quantize_int8 and a CPU device
    the model runs with INT8 Linear layers. When frames has eval_retrieval (positives of D+1) and candidates
    were scored, the manifest and funnel.json carry NDCG@10 / Recall@10 of the ranker, retriever and
    popularity orders.
    """
    out = Path(out)
    block_users = block_users or cfg.score_block_users
    dev = resolve_device(device)
    model, meta, model_dt = _load_model(out, dt)
    vocab = load_vocab(out, dt)
    if vocab.to_json() != meta["vocab"]:
        raise ValueError(
            f"ranker/dt={model_dt}/{MODEL_FILE} was trained with another vocab than frames/dt={dt}; "
            f"fix: run the ranker stage for {dt} (or rebuild the frames with the same features config)"
        )
    spec = spec_from_json(meta["spec"], label=False)
    content = None
    if spec.item_content:
        if not io.is_committed(out, EMBEDDINGS, dt):
            raise ValueError(
                f"ranker/dt={model_dt} reads item text/image but embeddings/dt={dt} is not committed; "
                "fix: run the embeddings stage for this date"
            )
        content = load_item_content(out, dt)
        if (content.text_dim, content.image_dim) != (meta["text_dim"], meta["image_dim"]):
            raise ValueError(
                f"embeddings/dt={dt} has dims {(content.text_dim, content.image_dim)} but the ranker of "
                f"{model_dt} was trained on {(meta['text_dim'], meta['image_dim'])}; fix: retrain the ranker"
            )
    quantized = cfg.quantize_int8 and dev.type == "cpu"
    model = quantize_int8(model) if quantized else model.to(dev)
    inputs = [f"{DATASET}/dt={model_dt}", f"{FRAMES}/dt={dt}"]
    funnel: dict[str, Any] | None = None
    dropped = rows = users = 0
    columns = ["user_id", "item_id", "score", "rank"]
    with io.staged_partition(out, SCORES, dt, run) as stage:
        with stage.table_writer() as writer:
            if io.is_committed(out, CANDIDATES, dt):
                source = CANDIDATES
                data_dir, hash_seed = raw_attributes(out, dt, run)
                tables = pair_tables(out, dt, vocab, data_dir, hash_seed)
                accumulator = None
                if (io.partition_dir(out, FRAMES, dt) / "eval_retrieval.parquet").is_file():
                    popular, pop_info = popular_items(out, dt, FUNNEL_K)
                    accumulator = FunnelAccumulator(io.read_table(out, FRAMES, dt, "eval_retrieval"), popular)
                path = io.committed_path(out, CANDIDATES, dt, "part-0.parquet")
                dropped = parquet_rows(path)  # minus every pair that gets features below
                for block in _candidate_blocks(path, tables.users["user_id"], block_users):
                    df, _ = join_pair_features(block, tables)
                    del block
                    dropped -= df.height
                    scored = _scored_block(model, df, spec, content, dev, with_retriever_rank=True)
                    del df
                    if accumulator is not None:
                        accumulator.add(scored)
                    writer.write(scored.select(columns))
                    rows += scored.height
                    users += scored["user_id"].n_unique()
                if accumulator is not None:
                    funnel = accumulator.result()
                    funnel["popularity_window"] = pop_info
                inputs.append(f"{CANDIDATES}/dt={dt}")
            else:
                eval_path = io.partition_dir(out, FRAMES, dt) / "eval_ranker.parquet"
                name = (
                    "eval_ranker" if eval_path.is_file() and parquet_rows(eval_path) > 0 else "ranker_valid"
                )
                source = f"{FRAMES}/{name}"
                log.warning(
                    "scores dt=%s: candidates/dt=%s is not committed; scoring %s pairs instead", dt, dt, name
                )
                df = io.read_table(out, FRAMES, dt, name).unique(
                    ["user_id", "item_id"], keep="first", maintain_order=True
                )
                scored = _scored_block(model, df, spec, content, dev, with_retriever_rank=False)
                writer.write(scored.select(columns))
                rows, users = scored.height, scored["user_id"].n_unique()
            if writer.rows == 0:  # no block at all: the file still exists, with the schema
                empty = {"user_id": pl.String, "item_id": pl.String, "score": pl.Float32, "rank": pl.Int32}
                writer.write(pl.DataFrame(schema=empty))
        stage.add_inputs(*inputs)
        stage.extra.update(
            {
                "source": source,
                "model_dt": model_dt.isoformat(),
                "quantized_int8": quantized,
                "pairs_dropped_unknown_user_or_item": dropped,
                "users": users,
                "funnel": funnel,
                "block_users": block_users,
            }
        )
        if funnel is not None:
            stage.write_json(FUNNEL_FILE, funnel)
    summary: dict[str, Any] = {
        "dataset": SCORES,
        "dt": dt.isoformat(),
        "source": source,
        "rows": rows,
        "model_dt": model_dt.isoformat(),
        "quantized_int8": quantized,
        "path": str(io.partition_dir(out, SCORES, dt)),
    }
    if funnel is not None and funnel.get("users"):
        for name in ("ranker", "retriever", "popularity"):
            summary[f"{name}_ndcg@{FUNNEL_K}"] = funnel[name][f"ndcg@{FUNNEL_K}"]
            summary[f"{name}_recall@{FUNNEL_K}"] = funnel[name][f"recall@{FUNNEL_K}"]
    log.info("scores dt=%s: %s", dt, summary)
    return summary
