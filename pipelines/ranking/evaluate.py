"""Evaluation and diagnostics of a trained ranker: AUC/GAUC/logloss/calibration per split, permutation importance, the cross matrices' spectrum, INT8 agreement."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from torch import nn

from models.metrics import (
    auc,
    calibration,
    gauc,
    logloss,
    permutation_importance,
    singular_values,
    sparse_fields,
)
from models.ranker import cross_matrices, quantize_int8
from models.train import (
    predict,
)
from pipelines.batches import (
    BatchSpec,
    stream_batches,
    to_batch,
)
from pipelines.ranking.data import RankerData
from pipelines.ranking.layout import IMPORTANCE_ROWS

log = logging.getLogger(__name__)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """[n] float logits -> [n] float64 probabilities, computed without overflow."""
    x = np.asarray(x, np.float64)
    return np.exp(-np.logaddexp(0.0, -x))


def _safe(fn: Any, *args: Any) -> float | None:
    """fn(*args) as a float, or None when the metric is undefined (one class only, no user with both)."""
    try:
        return float(fn(*args))
    except ValueError as err:
        log.info("metric %s undefined: %s", getattr(fn, "__name__", fn), err)
        return None


def split_metrics(labels: np.ndarray, logits: np.ndarray, users: np.ndarray) -> dict[str, Any]:
    """AUC, logloss, GAUC and decile calibration of one split.

    labels: [n] float32 {0, 1}; logits: [n] float32; users: [n] user ids (GAUC groups).
    """
    probs = sigmoid(logits)
    out: dict[str, Any] = {
        "rows": int(labels.size),
        "positives": int(labels.sum()),
        "auc": _safe(auc, labels, logits),
        "logloss": _safe(logloss, labels, probs) if labels.size else None,
        "gauc": _safe(gauc, labels, logits, users) if labels.size else None,
        "mean_prob": float(probs.mean()) if labels.size else None,
    }
    if labels.size >= 10:
        cal = calibration(labels, probs, 10)
        out["calibration"] = {
            "predicted": cal.predicted.tolist(),
            "observed": cal.observed.tolist(),
            "counts": cal.counts.tolist(),
            "ece": cal.ece,
        }
    return out


def evaluate_split(
    model: nn.Module, path: Path, data: RankerData, device: torch.device | str, batch_size: int = 8192
) -> dict[str, Any]:
    """split_metrics of `model` on one frames file (streamed in file order; users read beside it)."""
    spec = data.spec
    logits = predict(model, stream_batches(path, spec, batch_size, data.content), device)
    frame = pl.read_parquet(path, columns=["user_id", "label"])
    return split_metrics(frame["label"].to_numpy().astype(np.float32), logits, frame["user_id"].to_numpy())


def importance_fields(spec: BatchSpec) -> dict[str, tuple[str, int | None]]:
    """Permutation-importance groups: each hashed field, hist, counts, numeric, text, image, affinity, profile."""
    fields: dict[str, tuple[str, int | None]] = dict(sparse_fields(spec.fields))
    if spec.hist_len:
        fields["hist"] = ("hist", None)
    if spec.counts:
        fields["counts"] = ("counts", None)
    if spec.numeric:
        fields["numeric"] = ("numeric", None)
    if spec.item_content:
        fields["text"] = ("text", None)
        fields["image"] = ("image", None)
    if spec.affinity:
        fields["affinity"] = ("affinity", None)
        fields["profile"] = ("profile", None)  # what the learned affinity reads (unused without it)
    return fields


def field_importance(
    model: nn.Module,
    path: Path,
    data: RankerData,
    device: torch.device | str,
    seed: int,
    rows: int = IMPORTANCE_ROWS,
) -> dict[str, float] | None:
    """AUC drop when each input group is permuted across `rows` sampled rows of `path` (None: one class only)."""
    frame = pl.read_parquet(path, columns=data.spec.columns())
    if frame.height > rows:
        frame = frame.sample(rows, seed=seed)
    if frame.height == 0 or frame["label"].n_unique() < 2:
        return None
    batch = to_batch(frame, data.spec, data.content)
    device = torch.device(device)

    def score(b: dict[str, Any]) -> np.ndarray:
        chunks = [
            predict(model, [{k: v[i : i + 8192] for k, v in b.items()}], device)
            for i in range(0, b["label"].shape[0], 8192)
        ]
        return np.concatenate(chunks)

    return permutation_importance(score, batch, importance_fields(data.spec), seed=seed)


def cross_spectrum(model: nn.Module, top: int = 16) -> list[dict[str, Any]] | None:
    """Per cross layer: the `top` largest singular values and the effective rank (s > 1% of s_max)."""
    if getattr(model, "cross", None) is None:
        return None
    out = []
    for s in singular_values(cross_matrices(model)):
        out.append(
            {
                "top": s[:top].tolist(),
                "effective_rank_1pct": int((s > 0.01 * s[0]).sum()) if s.size and s[0] > 0 else 0,
                "n": int(s.size),
            }
        )
    return out


def _timed_predict(
    model: nn.Module, path: Path, data: RankerData, batch_size: int
) -> tuple[np.ndarray, float]:
    """CPU logits of `path` and the seconds the forward passes took (batches built beforehand)."""
    batches = list(stream_batches(path, data.spec, batch_size, data.content))
    start = time.perf_counter()
    logits = predict(model, batches, "cpu")
    return logits, time.perf_counter() - start


def int8_report(model: nn.Module, data: RankerData, batch_size: int) -> dict[str, Any]:
    """Validation AUC and CPU forward time of the float32 model vs its dynamic-INT8 copy."""
    cpu_model = model.to("cpu").eval()
    q = quantize_int8(cpu_model)
    labels = pl.read_parquet(data.valid, columns=["label"])["label"].to_numpy().astype(np.float32)
    fp, t_fp = _timed_predict(cpu_model, data.valid, data, batch_size)
    i8, t_i8 = _timed_predict(q, data.valid, data, batch_size)
    auc_fp, auc_i8 = _safe(auc, labels, fp), _safe(auc, labels, i8)
    return {
        "auc_fp32": auc_fp,
        "auc_int8": auc_i8,
        "auc_change": None if auc_fp is None or auc_i8 is None else auc_i8 - auc_fp,
        "seconds_fp32": t_fp,
        "seconds_int8": t_i8,
        "speedup": t_fp / t_i8 if t_i8 > 0 else None,
        "rows": int(labels.size),
        "max_abs_logit_change": float(np.abs(fp - i8).max()) if fp.size else 0.0,
    }
