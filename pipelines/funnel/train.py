"""The DCN-Mix trained on the candidate lists it reorders, and the publish guard."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import numpy as np
import polars as pl
import torch

from features.funnel import pair_features
from models.config import RankerConfig
from models.inputs import FieldLayout
from models.ranker import build_ranker
from models.train import padded_batch, predict, train_ranker
from pipelines.config import FunnelConfig
from pipelines.funnel.evaluate import not_enough
from pipelines.funnel.inputs import Inputs, midnight, positives
from pipelines.funnel.layout import FEATURES, NDCG_K, RECALL_K
from pipelines.funnel.lists import Sources, popular_for, sources_as_of, user_lists
from retrieval import sources as src
from retrieval.metrics import list_metrics

log = logging.getLogger(__name__)

ORDERS = ("ranker", "merged", "popularity")  # candidates for the published order

SCORE_CHUNK = 8_192  # rows per forward pass (one shape: scores do not depend on the block)


def arrays(df: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """([P, 1] int64 sources bitmask, [P, M] float32 features) of featurised pairs."""
    sparse = df["sources"].cast(pl.Int64).to_numpy().reshape(-1, 1).copy()
    return sparse, np.ascontiguousarray(df.select(FEATURES).to_numpy(), dtype=np.float32)


def _batches(sparse: np.ndarray, x: np.ndarray, y: np.ndarray | None, size: int, order: np.ndarray):
    for lo in range(0, len(order), size):
        at = order[lo : lo + size]
        batch = {"sparse": torch.from_numpy(sparse[at]), "numeric": torch.from_numpy(x[at])}
        if y is not None:
            batch["label"] = torch.from_numpy(y[at])
        yield batch


def logits(model: torch.nn.Module, sparse: np.ndarray, x: np.ndarray, device: torch.device) -> np.ndarray:
    """[P] float32 logits, every forward at one shape [SCORE_CHUNK, ...] (the last chunk padded)."""
    parts = []
    with torch.inference_mode():
        for lo in range(0, len(x), SCORE_CHUNK):
            b = {
                "sparse": torch.from_numpy(sparse[lo : lo + SCORE_CHUNK]),
                "numeric": torch.from_numpy(x[lo : lo + SCORE_CHUNK]),
            }
            m = b["sparse"].shape[0]
            parts.append(predict(model, [padded_batch(b, SCORE_CHUNK)], device)[:m])
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


@dataclass
class Trained:
    model: torch.nn.Module | None
    mean: np.ndarray | None
    std: np.ndarray | None
    order: str
    figures: dict[str, Any]


def training_lists(
    inp: Inputs,
    lookback: int,
    cfg: FunnelConfig,
    positive_events: list[str],
    dt: date,
    exclude: bool,
    seed: int,
    weights: dict[str, float],
    s_last: Sources,
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Featurised lists as of t 00:00 of the users with a positive on day t (t = the last train_days days up
    to D) and an event before t, labelled by those positives: (train, valid) frames of u, i, rank, sources,
    FEATURES, label, day; the positives (u, i, day) and the held-out queries' popularity lists (u, i, rank,
    day) for the guard.

    A seeded `funnel.valid_share` of the (user, day) queries is held out whole (valid); the others keep
    every positive and a seeded sample of `funnel.train_negatives` negatives. Lists are made a block of
    `funnel.block_users` users at a time, so memory follows the block and the sampled rows.
    """
    rng = np.random.default_rng(seed)
    train_parts, valid_parts, rel_parts, pop_parts = [], [], [], []
    for back in range(cfg.train_days - 1, -1, -1):
        day = dt - timedelta(days=back)
        t0 = midnight(day)
        s = s_last if back == 0 else sources_as_of(inp, t0, lookback, cfg, exclude, seed)
        pos = positives(inp, t0, t0 + timedelta(days=1), positive_events)
        rel_parts.append(pos.with_columns(pl.lit(day).alias("day")))
        users = pos.join(s.active.to_frame(), on="u", how="semi")["u"].unique().sort()
        if users.len() > cfg.max_train_users:
            users = pl.Series("u", np.sort(rng.choice(users.to_numpy(), cfg.max_train_users, replace=False)))
        held = pl.DataFrame({"u": users, "_valid": rng.random(users.len()) < cfg.valid_share})
        pop = popular_for(s, held.filter("_valid")["u"], cfg.k).select("u", "i", "rank")
        pop_parts.append(pop.with_columns(pl.lit(day).alias("day")))
        labels = pos.with_columns(pl.lit(1, pl.Float32).alias("label"))
        for lo in range(0, users.len(), cfg.block_users):
            block = users.slice(lo, cfg.block_users)
            _, merged = user_lists(s, block, cfg, inp.emb, weights)
            merged = merged.join(labels, on=["u", "i"], how="left").with_columns(
                pl.col("label").fill_null(0.0)
            )
            merged = merged.join(held, on="u").sort("u", "rank")  # joins keep no order: fix it before drawing
            merged = merged.with_columns(pl.Series("_r", rng.random(merged.height)))
            keep = pl.col("_valid") | (pl.col("label") > 0)
            keep = keep | (pl.col("_r").rank("ordinal").over("u") <= cfg.train_negatives)
            rows = pair_features(
                merged.filter(keep), s.events_of(block), s.items, t0, src.SOURCES
            ).with_columns(pl.lit(day).alias("day"))
            valid_parts.append(rows.filter(pl.col("_valid")).drop("_valid", "_r"))
            train_parts.append(rows.filter(~pl.col("_valid")).drop("_valid", "_r"))
    if not train_parts:
        return pl.DataFrame(), pl.DataFrame(), pl.DataFrame(), pl.DataFrame()
    return pl.concat(train_parts), pl.concat(valid_parts), pl.concat(rel_parts), pl.concat(pop_parts)


def train_on_lists(
    train: pl.DataFrame,
    valid: pl.DataFrame,
    relevant: pl.DataFrame,
    pop_lists: pl.DataFrame,
    cfg: FunnelConfig,
    ranker_cfg: RankerConfig,
    seed: int,
    device: torch.device,
) -> Trained:
    """Train the DCN-Mix on the training queries' lists; compare ranker, merged and popularity orders on the
    held-out queries; pick the order to publish (`Trained.order`).

    train / valid: `training_lists`; relevant: u, i, day positives of the days (all of them, also those the
    lists missed: recall counts them); pop_lists: u, i, rank, day of the popularity order.
    """
    figures: dict[str, Any] = {"train_rows": train.height, "valid_rows": valid.height}
    if train.height == 0 or valid.height == 0:
        return Trained(None, None, None, "popularity", {**figures, "reason": not_enough(0)})
    valid_keys = valid.select("u", "day").unique().sort("day", "u")
    valid_rel = relevant.join(valid_keys, on=["u", "day"], how="semi")
    n_valid_pos, n_train_pos = valid_rel.height, int(train["label"].sum())
    figures.update(
        train_users=train.select("u", "day").n_unique(), valid_users=valid_keys.height,
        valid_positives=n_valid_pos, train_positives_in_lists=n_train_pos,
        valid_positives_in_lists=int(valid["label"].sum()),
    )  # fmt: skip
    if n_valid_pos < cfg.min_positives or n_train_pos < cfg.min_positives:
        return Trained(
            None, None, None, "popularity", {**figures, "reason": not_enough(min(n_valid_pos, n_train_pos))}
        )
    ts, tx = arrays(train)
    ty = train["label"].to_numpy().astype(np.float32)
    mean, std = tx.mean(axis=0), tx.std(axis=0) + 1e-6
    tx = (tx - mean) / std
    vs, vx = arrays(valid)
    vx = ((vx - mean) / std).astype(np.float32)
    vy = valid["label"].to_numpy().astype(np.float32)
    rcfg = ranker_cfg.model_copy(
        update={
            "batch_size": cfg.batch_size,
            "epochs": cfg.epochs,
            "mlp": list(cfg.mlp),
            "ddp": False,
            "warm_start": False,
        }
    )
    model = build_ranker(
        rcfg, FieldLayout(("sources",), (1 << len(src.SOURCES),)), None, 0, len(FEATURES), 0, 0, seed=seed
    )
    epoch = iter(range(10_000))

    def train_batches():  # noqa: ANN202
        order = np.random.default_rng(seed + 1 + next(epoch)).permutation(len(ty))
        return _batches(ts, tx, ty, cfg.batch_size, order)

    def valid_batches():  # noqa: ANN202
        return _batches(vs, vx, vy, 8192, np.arange(len(vy)))

    t0 = time.perf_counter()
    log.info("funnel ranker: %d training rows, %d validation rows", len(ty), len(vy))
    result = train_ranker(
        model, train_batches, valid_batches, rcfg, seed, device, progress=False, prefetch_batches=0
    )
    figures.update(
        train_s=round(time.perf_counter() - t0, 2),
        valid_auc=max(result.history),
        epochs_run=len(result.history),
        samples_per_s=result.samples_per_s,
    )
    users = valid_keys.select("u", "day")
    scored = valid.select("u", "i", "rank", "day").with_columns(
        pl.Series("logit", logits(model, vs, vx, device))
    )
    orders = {
        "ranker": scored.sort(
            ["day", "u", "logit", "rank", "i"], descending=[False, False, True, False, False]
        ).with_columns((pl.int_range(pl.len(), dtype=pl.Int32).over("u", "day") + 1).alias("rank")),
        "merged": valid.select("u", "i", "rank", "day"),
        "popularity": pop_lists.join(valid_keys, on=["u", "day"], how="semi"),
    }
    # a (user, day) is one query: key the metric on both
    qkey = pl.col("u").cast(pl.UInt64) * 100_000 + (
        pl.col("day") - pl.lit(date(2000, 1, 1))
    ).dt.total_days().cast(pl.UInt64)
    qu = users.select(qkey.alias("u"))
    qrel = valid_rel.select(qkey.alias("u"), "i")
    validation = {
        name: list_metrics(df.select(qkey.alias("u"), "i", "rank"), qrel, qu, [NDCG_K, RECALL_K])
        for name, df in orders.items()
    }
    figures["validation"] = validation
    best = max(ORDERS, key=lambda o: (validation[o][f"ndcg@{NDCG_K}"], -ORDERS.index(o)))
    if validation[best][f"ndcg@{NDCG_K}"] < validation["popularity"][f"ndcg@{NDCG_K}"]:
        best = "popularity"
    return Trained(model, mean, std, best, figures)
