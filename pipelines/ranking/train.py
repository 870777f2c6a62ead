"""The ranker training stage: frames/dt=D -> `ranker/dt=D/` (model.pt, metrics.json)."""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.config import RankerConfig
from models.device import resolve_device
from models.inputs import Batch
from models.train import (
    TrainResult,
    save_checkpoint,
    train_ranker,
    warm_start,
)
from pipelines import io
from pipelines.batches import (
    BatchSpec,
    parquet_rows,
    stream_batches,
)
from pipelines.frames import layout as frames
from pipelines.names import EMBEDDINGS, FRAMES, METRICS_FILE, MODEL_FILE
from pipelines.ranking.data import RankerData, build_model, prepare_data
from pipelines.ranking.evaluate import cross_spectrum, evaluate_split, field_importance, int8_report
from pipelines.ranking.layout import DATASET

log = logging.getLogger(__name__)


def fit(
    cfg: RankerConfig,
    data: RankerData,
    seed: int,
    device: torch.device | str,
    warm_from: Path | None = None,
    progress: bool = False,
) -> tuple[nn.Module, TrainResult, dict[str, Any]]:
    """Build, optionally warm-start, and train a ranker on `data.train`, early-stopping on `data.valid`.

    Each epoch streams the train file shuffled with seed `seed + epoch` (a bounded buffer, see
    pipelines.batches); validation streams in file order. Returns (model with the best weights, the
    training result, {"warm_start": ...}).
    """
    rows = parquet_rows(data.train)
    if rows == 0:
        raise ValueError(
            f"{data.train}: no training rows (train_window_days = 1 leaves no train day); "
            "fix: set data.train_window_days >= 2 and rebuild the frames"
        )
    model = build_model(cfg, data, seed)
    info: dict[str, Any] = {"warm_start": None}
    if warm_from is not None:
        copied = warm_start(model, warm_from)
        total = len(model.state_dict())
        info["warm_start"] = {"from": str(warm_from), "tensors_copied": len(copied), "tensors": total}
    epoch = itertools.count()  # train_ranker calls train_batches() once per epoch

    def train_batches() -> Iterator[Batch]:
        return stream_batches(
            data.train, data.spec, cfg.batch_size, data.content, shuffle_seed=seed + next(epoch)
        )

    def valid_batches() -> Iterator[Batch]:
        return stream_batches(data.valid, data.spec, cfg.batch_size, data.content)

    result = train_ranker(
        model, train_batches, valid_batches, cfg, seed, device, progress=progress,
        prefetch_batches=cfg.prefetch_batches,
    )  # fmt: skip
    return model, result, info


def _previous_model(out: Path, dt: date) -> tuple[date, Path] | None:
    """The newest committed ranker partition strictly before D, for warm start."""
    prev = io.previous_committed(out, DATASET, dt)
    return None if prev is None else (prev, io.committed_path(out, DATASET, prev, MODEL_FILE))


def _spec_json(spec: BatchSpec) -> dict[str, Any]:
    return {
        "fields": list(spec.fields),
        "counts": list(spec.counts),
        "numeric": list(spec.numeric),
        "hist_len": spec.hist_len,
        "item_content": spec.item_content,
        "affinity": spec.affinity,
    }


def spec_from_json(d: dict[str, Any], label: bool) -> BatchSpec:
    return BatchSpec(
        tuple(d["fields"]),
        tuple(d["counts"]),
        tuple(d["numeric"]),
        int(d["hist_len"]),
        bool(d["item_content"]),
        label,
        bool(d.get("affinity", False)),
    )


@dataclass
class TrainedRanker:
    """What `train_and_evaluate` computed for day D, ready for `commit_ranker`."""

    model: nn.Module
    metrics: dict[str, Any]
    data: RankerData
    prev: tuple[date, Path] | None  # the ranker partition it warm-started from


def train_and_evaluate(out: Path, dt: date, cfg: RankerConfig, seed: int, device: str) -> TrainedRanker:
    """Train the ranker of D on frames/dt=D and evaluate it; reads `out`, writes nothing.

    Warm start (cfg.warm_start) copies every same-shaped tensor of the newest committed ranker before D.
    Metrics: valid (ranker_valid of D) and eval (eval_ranker of D+1, when present): AUC, logloss, GAUC,
    decile calibration and ECE; per-input permutation importance on eval (else valid); the singular values
    of each cross layer (DCN models); with cfg.quantize_int8, AUC change and CPU speed-up of INT8 scoring.
    Under DDP every rank calls this (the training loop is data-parallel) and rank 0 alone commits.
    """
    out = Path(out)
    dev = resolve_device(device)
    data = prepare_data(
        out, dt, use_text=cfg.use_text, use_image=cfg.use_image, content_affinity=cfg.content_affinity
    )
    prev = _previous_model(out, dt) if cfg.warm_start else None
    start = time.perf_counter()
    model, result, info = fit(cfg, data, seed, dev, warm_from=prev[1] if prev else None)
    train_s = time.perf_counter() - start
    if prev is not None:
        info["warm_start"]["dt"] = prev[0].isoformat()
    metrics: dict[str, Any] = {
        "model": cfg.model,
        "structure": cfg.structure,
        "dt": dt.isoformat(),
        "seed": seed,
        "device": str(dev),
        "train_rows": parquet_rows(data.train),
        "epochs_run": len(result.history),
        "best_epoch": result.best_epoch,
        "valid_auc_history": result.history,
        "train_loss_history": result.train_loss,
        "samples_per_s": result.samples_per_s,
        "train_seconds": train_s,
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "inputs": {
            **_spec_json(data.spec),
            "text_dim": data.text_dim,
            "image_dim": data.image_dim,
            "n_affinity": data.n_affinity,
        },
        **info,
    }
    metrics["valid"] = evaluate_split(model, data.valid, data, dev)
    if data.eval is not None and parquet_rows(data.eval) > 0:
        metrics["eval"] = evaluate_split(model, data.eval, data, dev)
    importance_on = data.eval if "eval" in metrics else data.valid
    metrics["importance"] = {
        "split": "eval" if "eval" in metrics else "valid",
        "auc_drop": field_importance(model, importance_on, data, dev, seed),
    }
    metrics["cross_singular_values"] = cross_spectrum(model)
    if cfg.quantize_int8:
        metrics["int8"] = int8_report(model, data, cfg.batch_size)
    return TrainedRanker(model, metrics, data, prev)


def commit_ranker(out: Path, dt: date, trained: TrainedRanker, run: io.RunInfo) -> dict[str, Any]:
    """Commit `ranker/dt=D/` (model.pt with its build arguments and feature statistics, metrics.json);
    returns the scalar summary (also in the partition manifest)."""
    out = Path(out)
    data, metrics = trained.data, trained.metrics
    numeric_stats_path = io.committed_path(out, FRAMES, dt, frames.NUMERIC_STATS_FILE)
    meta = {
        "dt": dt.isoformat(),
        "seed": metrics["seed"],
        "run_id": run.run_id,
        "vocab": data.vocab.to_json(),
        "spec": _spec_json(data.spec),
        "feature_stats": json.loads(numeric_stats_path.read_text()) if numeric_stats_path.is_file() else {},
        "valid_auc": metrics["valid"]["auc"],
    }
    with io.staged_partition(out, DATASET, dt, run) as stage:
        save_checkpoint(stage.path(MODEL_FILE), trained.model.to("cpu"), meta)
        stage.write_json(METRICS_FILE, metrics)
        stage.add_inputs(
            f"{FRAMES}/dt={dt}", *([f"{EMBEDDINGS}/dt={dt}"] if data.content is not None else [])
        )
        if trained.prev is not None:
            stage.add_inputs(f"{DATASET}/dt={trained.prev[0]}")
        summary = _summary(metrics)
        stage.extra.update(summary)
    log.info("ranker dt=%s: %s", dt, summary)
    return {
        **summary,
        "dataset": DATASET,
        "dt": dt.isoformat(),
        "path": str(io.partition_dir(out, DATASET, dt)),
    }


def train_ranker_stage(
    out: Path, dt: date, cfg: RankerConfig, seed: int, device: str, run: io.RunInfo
) -> dict[str, Any]:
    """The ranker stage: `train_and_evaluate` (read, compute), then `commit_ranker` (`ranker/dt=D/`)."""
    return commit_ranker(out, dt, train_and_evaluate(out, dt, cfg, seed, device), run)


def _summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """The scalar headline numbers of the metrics (what the manifest and the flow log carry)."""
    s: dict[str, Any] = {
        "model": metrics["model"],
        "epochs_run": metrics["epochs_run"],
        "samples_per_s": metrics["samples_per_s"],
        "parameters": metrics["parameters"],
        "warm_start_from": (metrics.get("warm_start") or {}).get("dt"),
    }
    for split in ("valid", "eval"):
        if split in metrics:
            for k in ("auc", "logloss", "gauc"):
                s[f"{split}_{k}"] = metrics[split][k]
    if "int8" in metrics:
        s["int8_auc_change"] = metrics["int8"]["auc_change"]
        s["int8_speedup"] = metrics["int8"]["speedup"]
    return s
