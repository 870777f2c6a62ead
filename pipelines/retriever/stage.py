"""The retriever stage: read the frames of D, train, index, write the lists, evaluate, commit."""

from __future__ import annotations

import logging
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from models.config import RetrieverConfig
from models.retriever_train import (
    save_retriever,
)
from pipelines import io
from pipelines.batches import (
    FRAMES,
)
from pipelines.io import RunInfo
from pipelines.names import ITEM_EMB_FILE, METRICS_FILE, MODEL_FILE
from pipelines.retriever.data import load_inputs
from pipelines.retriever.evaluate import eval_user_rows, evaluate, purchase_mask
from pipelines.retriever.layout import CANDIDATES, DATASET, EVAL_KS, VALID_K
from pipelines.retriever.lists import embed_and_index, write_candidates
from pipelines.retriever.train import fit
from retrieval import index as faiss_index
from retrieval.config import IndexConfig

log = logging.getLogger(__name__)


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
    prev = io.previous_committed(out, DATASET, dt)
    path = None if prev is None else io.committed_path(out, DATASET, prev, MODEL_FILE)
    return path if path is not None and path.is_file() else None


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
    block_users: int | None = None,
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
        block_users: users per search block (default: cfg.candidate_block_users).
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
                writer,
                index,
                user_emb,
                inputs.user_ids,
                exclude,
                cfg.top_k,
                k_search,
                eval_rows,
                block_users or cfg.candidate_block_users,
            )
        cand_stage.add_inputs(f"{DATASET}/dt={dt.isoformat()}")
        cand_stage.extra.update(
            {"model_id": run.run_id, "top_k": cfg.top_k, "exclude_purchased": cfg.exclude_purchased}
        )
        n_candidates = writer.rows
        evaluation = evaluate(
            inputs, eval_ranked, exclude, seed, ranked_rows=ranked_rows, block_users=cfg.eval_block_users
        )
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
