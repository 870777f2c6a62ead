"""The funnel stage: multi-source candidates for every user with history, a DCN-Mix ranker trained on the
lists it reorders, a publish guard, and an evaluation that counts every returning user.

    events of [D - L + 1, D] (L = data.train_window_days + data.history_lookback_days), items.parquet,
    retriever/dt=D item_emb.npy (two-tower item vectors; without it the ANN source is off),
    two_tower/dt=D (the retriever's own lists, evaluated as "two_tower")
        -> candidates/dt=D/part-0.parquet  user_id, item_id, rank, score (fusion), source, sources,
                                           score_<s>, rank_<s> for each source s
        -> scores/dt=D/part-0.parquet      user_id, item_id, score, rank, source: the published order
        -> funnel/dt=D/                    model.pt (when trained), metrics.json

Lists as of an instant T come from `retrieval.sources` (recent items, co-visitation, ANN, popularity)
over events with ts < T, merged by reciprocal rank fusion. The ranker learns from the lists as of t 00:00
of the last `funnel.train_days` days t <= D, labelled by the user's positive events on day t, with
features from `features.funnel` (point in time: events before t). A share of those users is held out:
on them the ranker order, the merged order and popularity are compared, and the best one is what
scores/dt=D publishes (`order` in the manifest). Fewer validation positives than `funnel.min_positives`:
popularity is published, flagged. The published lists are made as of D+1 00:00 for every user with an
event in the lookback, plus the popularity list for users of users.parquet without one, a block of users
at a time (memory follows the block).

The evaluation reads the positive events of D+1 .. D+H (H = funnel.horizon_days, the days present) and
counts every user with such a positive and an event in the lookback (no candidate = zero): popularity,
implicit ALS, each source alone, the two-tower lists, the merged order, the ranker order and the published
order, with the same purchase exclusions.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from features.funnel import pair_features
from models.config import RankerConfig
from models.device import resolve_device
from models.train import save_checkpoint
from pipelines import io
from pipelines.config import FunnelConfig
from pipelines.funnel.evaluate import evaluate
from pipelines.funnel.inputs import load_inputs, midnight, positives, read_window
from pipelines.funnel.layout import DATASET, FEATURES, RECALL_K
from pipelines.funnel.lists import Sources, fusion_weights, popular_for, rerank, sources_as_of, user_lists
from pipelines.funnel.train import Trained, arrays, logits, train_on_lists, training_lists
from pipelines.names import CANDIDATES, METRICS_FILE, MODEL_FILE, SCORES
from retrieval import sources as src

log = logging.getLogger(__name__)


def _published(
    trained: Trained,
    merged: pl.DataFrame,
    pop: pl.DataFrame,
    s: Sources,
    users: pl.Series,
    as_of: datetime,
    dev: torch.device,
) -> pl.DataFrame:
    """One block's published rows (u, i, rank, score, source, ...) in the order the guard chose: the
    ranker's scores of the merged lists, the merged order, or popularity."""
    if trained.order == "merged":
        return merged.with_columns(pl.col("rrf").alias("score"))
    if trained.order != "ranker":
        return pop.with_columns(pl.lit("popular").alias("source"))
    feats = pair_features(merged, s.events_of(users), s.items, as_of, src.SOURCES)
    sparse, x = arrays(feats)
    lg = logits(trained.model, sparse, ((x - trained.mean) / trained.std).astype(np.float32), dev)
    pub = merged.with_columns(
        pl.Series("score", 1.0 / (1.0 + np.exp(-lg.astype(np.float64))), dtype=pl.Float32)
    )
    return pub.drop("rank").join(rerank(pub, "score", True), on=["u", "i"])


@dataclass
class _Hits:
    """What the evaluation reads of each list, kept block by block: the rows of its top RECALL_K that an
    evaluated user came back for, and how many evaluated users got a published list (nothing without a
    horizon)."""

    eval_pairs: pl.DataFrame | None  # u, i: the positives of the horizon of the evaluated users
    eval_users: pl.Series | None
    lists: dict[str, list[pl.DataFrame]] = field(default_factory=dict)
    covered: int = 0

    def keep(self, name: str, df: pl.DataFrame) -> None:
        if self.eval_pairs is not None:
            self.lists.setdefault(name, []).append(
                df.filter(pl.col("rank") <= RECALL_K)
                .join(self.eval_pairs, on=["u", "i"], how="semi")
                .select("u", "i", "rank")
            )

    def cover(self, published: pl.DataFrame) -> None:
        if self.eval_users is not None:
            self.covered += (
                published.select("u").unique().join(self.eval_users.to_frame(), on="u", how="semi").height
            )


def _cold_rows(
    cold: pl.DataFrame, pop_rows: pl.DataFrame, cand_cols: list[str]
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(candidates rows, scores rows) of users without an event in the lookback: the popularity list."""
    block = cold.sort("user_id").join(pop_rows, how="cross").with_columns(pl.lit("popular").alias("source"))
    cands = (
        block.with_columns(
            pl.lit(1 << src.SOURCES.index("popular"), pl.UInt8).alias("sources"),
            *[pl.lit(None, pl.Float32).alias(f"score_{x}") for x in src.SOURCES],
            *[pl.lit(None, pl.Int32).alias(f"rank_{x}") for x in src.SOURCES],
        )
        .with_columns(pl.col("score").alias("score_popular"), pl.col("rank").alias("rank_popular"))
        .select(cand_cols)
    )
    return cands, block.select("user_id", "item_id", "score", "rank", "source")


def funnel_stage(
    data_dir: Path,
    out: Path,
    dt: date,
    cfg: FunnelConfig,
    ranker_cfg: RankerConfig,
    positive_events: list[str],
    lookback_days: int,
    exclude_purchased: bool,
    seed: int,
    device: str,
    run: io.RunInfo,
) -> dict[str, Any]:
    """Commit funnel/dt=D, candidates/dt=D and scores/dt=D (module docstring); returns a summary."""
    data_dir, out = Path(data_dir), Path(out)
    t_start = time.perf_counter()
    dev = resolve_device(device)
    torch.manual_seed(seed)
    horizon = [dt + timedelta(days=h) for h in range(1, cfg.horizon_days + 1)]
    present = set(io.event_dates(data_dir))
    horizon = [d for d in horizon if d in present]
    inp = load_inputs(data_dir, out, dt, read_window(dt, lookback_days, cfg)[0], max([dt, *horizon]), cfg)
    end_d = midnight(dt + timedelta(days=1))
    phases: dict[str, float] = {"inputs": round(time.perf_counter() - t_start, 2)}
    tick = time.perf_counter()

    def phase(name: str) -> None:
        nonlocal tick
        now = time.perf_counter()
        phases[name] = round(now - tick, 2)
        tick = now

    # ranker on the lists of the training days, and the guard
    # fusion weights of the sources, measured on day D's positives with the lists as of D 00:00
    t_d = midnight(dt)
    s_d = sources_as_of(inp, t_d, lookback_days, cfg, exclude_purchased, seed)
    pos_d = positives(inp, t_d, t_d + timedelta(days=1), positive_events)
    weights, fusion_users = fusion_weights(s_d, pos_d, cfg, inp.emb, seed)
    log.info("funnel %s: fusion weights %s (%d users of %s)", dt, weights, fusion_users, dt)
    phase("fusion")
    trained = Trained(None, None, None, "merged", {"reason": "funnel.ranker=false"})
    if cfg.ranker:
        train_rows, valid_rows, relevant, pop_lists = training_lists(
            inp, lookback_days, cfg, positive_events, dt, exclude_purchased, seed, weights, s_d
        )
        phase("training_lists")
        trained = train_on_lists(train_rows, valid_rows, relevant, pop_lists, cfg, ranker_cfg, seed, dev)
        phase("training")
        del train_rows, valid_rows
    del s_d
    log.info("funnel %s: publishing the %s order (%s)", dt, trained.order, trained.figures.get("validation"))

    # published lists as of D+1 00:00
    s = sources_as_of(inp, end_d, lookback_days, cfg, exclude_purchased, seed)
    active = s.active
    eval_rel = (
        positives(inp, end_d, midnight(horizon[-1] + timedelta(days=1)), positive_events) if horizon else None
    )
    eval_users = (
        eval_rel.join(active.to_frame(), on="u", how="semi")["u"].unique().sort() if horizon else None
    )
    hits = _Hits(eval_rel.join(eval_users.to_frame(), on="u", how="semi") if horizon else None, eval_users)

    id_of = inp.users.select("u", "user_id")
    item_of = inp.items
    cand_cols = ["user_id", "item_id", "rank", "score", "source", "sources",
                 *[f"score_{x}" for x in src.SOURCES], *[f"rank_{x}" for x in src.SOURCES]]  # fmt: skip
    n_cand = n_scores = 0
    with (
        io.staged_partition(out, CANDIDATES, dt, run) as cand_stage,
        io.staged_partition(out, SCORES, dt, run) as score_stage,
    ):
        with cand_stage.table_writer() as cw, score_stage.table_writer() as sw:
            for lo in range(0, active.len(), cfg.block_users):
                users = active.slice(lo, cfg.block_users)
                raw, merged = user_lists(s, users, cfg, inp.emb, weights)
                pop = popular_for(s, users, cfg.k)
                merged = merged.with_columns(src.primary_source(pl.col("sources")).alias("source"))
                pub = _published(trained, merged, pop, s, users, end_d, dev)
                hits.keep("published", pub)
                hits.cover(pub)
                hits.keep("merged", merged)
                hits.keep("popularity", pop)
                for name, df in raw.items():
                    ranked = df.join(s.exclude, on=["u", "i"], how="anti")
                    hits.keep(name, rerank(ranked.with_columns(pl.col("rank").alias("_r")), "_r", False))
                if trained.order == "ranker":
                    hits.keep("ranker", pub)
                cw.write(
                    merged.join(id_of, on="u").join(item_of, on="i")
                    .with_columns(pl.col("rrf").alias("score"))
                    .sort("user_id", "rank").select(cand_cols)
                )  # fmt: skip
                sw.write(
                    pub.join(id_of, on="u").join(item_of, on="i")
                    .sort("user_id", "rank").select("user_id", "item_id", pl.col("score").cast(pl.Float32), "rank", "source")
                )  # fmt: skip
            # users of users.parquet without an event in the lookback: the popularity list
            known = id_of.join(pl.DataFrame({"u": active}), on="u", how="semi").select("user_id")
            cold = (
                io.read_users(data_dir)
                .select(pl.col("user_id").cast(pl.String))
                .join(known, on="user_id", how="anti")
            )
            pop_rows = s.pop.join(item_of, on="i").sort("rank")
            for lo in range(0, cold.height, cfg.block_users):
                cands, scores = _cold_rows(cold.slice(lo, cfg.block_users), pop_rows, cand_cols)
                cw.write(cands)
                sw.write(scores)
            n_cand, n_scores = cw.rows, sw.rows
        phase("publish_lists")
        cand_stage.extra.update(
            {
                "sources": list(src.SOURCES),
                "k": cfg.k,
                "users": active.len(),
                "cold_users": cold.height,
                "fusion_weights": weights,
                "as_of": end_d.isoformat(),
            }
        )
        score_stage.extra.update(
            {
                "order": trained.order,
                "validation": trained.figures.get("validation"),
                "reason": trained.figures.get("reason"),
            }
        )

        evaluation: dict[str, Any] = {"present": False, "horizon_days": cfg.horizon_days}
        if horizon:
            evaluation = evaluate(inp, s, eval_rel, eval_users, hits.lists, hits.covered, out, dt, cfg, seed)
            evaluation["horizon"] = [d.isoformat() for d in horizon]
        phase("evaluation")
        metrics = {
            "dt": dt.isoformat(),
            "order": trained.order,
            "fusion": {"weights": weights, "users": fusion_users},
            "training": trained.figures,
            "users": {"with_history": active.len(), "catalogue": inp.items.height},
            "seconds": phases,
            "eval": evaluation,
        }
        with io.staged_partition(out, DATASET, dt, run) as stage:
            if trained.model is not None:
                save_checkpoint(
                    stage.path(MODEL_FILE),
                    trained.model.cpu(),
                    {"mean": trained.mean.tolist(), "std": trained.std.tolist(), "features": list(FEATURES)},
                )
            stage.write_json(METRICS_FILE, metrics)
            stage.extra.update({"order": trained.order})
        score_stage.extra.update({"eval": evaluation})
    seconds = time.perf_counter() - t_start
    summary = {"dataset": DATASET, "dt": dt.isoformat(), "order": trained.order, "candidates": n_cand,
               "scores": n_scores, "users": active.len(), "seconds": round(seconds, 2), "metrics": metrics}  # fmt: skip
    log.info("funnel %s: %s", dt, {k: v for k, v in summary.items() if k != "metrics"})
    return summary
