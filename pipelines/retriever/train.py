"""Training the two towers on the frames of D (`fit`), with early stopping on full-catalogue Recall@50."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from features.sampling import UniformItemSampler, item_sampling_probs
from models.config import RetrieverConfig
from models.device import resolve_device
from models.retriever_train import (
    RetrieverTrainResult,
    encode,
    gather_rows,
    train_retriever,
    warm_start_retriever,
)
from models.towers import TwoTower
from pipelines.retriever.data import RetrieverInputs, widen_batch
from pipelines.retriever.layout import ENCODE_CHUNK, VALID_K, VALID_SCORE_MB
from retrieval.metrics import recall_at_k

log = logging.getLogger(__name__)


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
