"""Offline metrics of ranking models: AUC, log loss, GAUC, calibration, permutation importance, cross-matrix SVD.

numpy arrays in, floats (or small numpy arrays) out. All are vectorised; none loops over rows in Python.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

log = logging.getLogger(__name__)


def _as_1d(name: str, x: Any, dtype: type = np.float64) -> np.ndarray:
    a = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=dtype)
    if a.ndim != 1:
        raise ValueError(f"{name}: expected a 1-d array, got shape {a.shape}")
    return a


def _check_pair(labels: np.ndarray, scores: np.ndarray, who: str) -> None:
    if labels.shape != scores.shape:
        raise ValueError(f"{who}: labels {labels.shape} and scores {scores.shape} differ in length")
    if labels.size == 0:
        raise ValueError(f"{who}: empty input")


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC. labels: [B] {0, 1}; scores: [B] float, any monotone score (logit or probability).

    >>> auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    0.75
    """
    y, s = _as_1d("auc labels", labels), _as_1d("auc scores", scores)
    _check_pair(y, s, "auc")
    if np.unique(y).size < 2:
        raise ValueError(
            "auc: labels hold a single class; fix: evaluate on data with positives and negatives"
        )
    return float(roc_auc_score(y, s))


def logloss(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy. labels: [B] {0, 1}; probs: [B] float in [0, 1] (clipped to [eps, 1-eps])."""
    y, p = _as_1d("logloss labels", labels), _as_1d("logloss probs", probs)
    _check_pair(y, p, "logloss")
    p = np.clip(p, eps, 1.0 - eps)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))


def _group_auc(
    groups: np.ndarray, labels: np.ndarray, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-group AUC by the rank-sum (Mann-Whitney) formula with tie-averaged ranks.

    groups: [B] int group codes in [0, G); labels: [B] {0, 1}; scores: [B] float.
    Returns (auc [G] float64 (nan where a group has one class), rows [G] int64, valid [G] bool).
    """
    order = np.lexsort((scores, groups))  # by group, then score
    g, s, y = groups[order], scores[order], labels[order]
    n = g.size
    G = int(g.max()) + 1
    rows = np.bincount(g, minlength=G)  # (G,)
    starts = np.concatenate([[0], np.cumsum(rows)[:-1]])  # (G,)
    pos_in_group = np.arange(n) - starts[g] + 1.0  # 1-based rank inside the group, ties not yet averaged
    # ties: runs of equal (group, score) get the mean of their ranks
    new_run = np.ones(n, dtype=bool)
    new_run[1:] = (g[1:] != g[:-1]) | (s[1:] != s[:-1])
    run_id = np.cumsum(new_run) - 1  # (n,)
    run_mean = np.bincount(run_id, weights=pos_in_group) / np.bincount(run_id)
    rank = run_mean[run_id]  # (n,)
    n_pos = np.bincount(g, weights=y, minlength=G)  # (G,)
    n_neg = rows - n_pos
    rank_sum_pos = np.bincount(g, weights=rank * y, minlength=G)  # (G,)
    valid = (n_pos > 0) & (n_neg > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_group = (rank_sum_pos - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    return np.where(valid, per_group, np.nan), rows, valid


def gauc(labels: np.ndarray, scores: np.ndarray, users: np.ndarray) -> float:
    """Group AUC: per-user AUC averaged with each user's impression count as weight.

    labels: [B] {0, 1}; scores: [B] float; users: [B] any hashable ids. Users whose impressions are all
    positive or all negative have no AUC and are skipped (their weight too).

    >>> gauc(np.array([0, 1, 0, 1, 1]), np.array([.1, .9, .8, .2, .5]), np.array([1, 1, 2, 2, 3]))
    0.5
    """
    y, s = _as_1d("gauc labels", labels), _as_1d("gauc scores", scores)
    _check_pair(y, s, "gauc")
    u = np.asarray(users)
    if u.shape != y.shape:
        raise ValueError(f"gauc: users {u.shape} and labels {y.shape} differ in length")
    _, codes = np.unique(u, return_inverse=True)
    per_user, rows, valid = _group_auc(codes.reshape(-1), y, s)
    if not valid.any():
        raise ValueError(
            "gauc: no user has both a positive and a negative impression; fix: evaluate on more data"
        )
    log.debug("gauc: %d of %d users have both classes", int(valid.sum()), valid.size)
    w = rows[valid].astype(np.float64)
    return float(np.sum(per_user[valid] * w) / w.sum())


@dataclass(frozen=True)
class Calibration:
    """Reliability table by bins of predicted probability (equal-count bins: deciles by default).

    predicted: [nb] float64 mean predicted probability per bin
    observed:  [nb] float64 observed positive rate per bin
    counts:    [nb] int64 rows per bin
    ece:       sum_b counts_b / B * |predicted_b - observed_b|
    """

    predicted: np.ndarray
    observed: np.ndarray
    counts: np.ndarray
    ece: float


def calibration(labels: np.ndarray, probs: np.ndarray, n_bins: int = 10) -> Calibration:
    """Predicted vs observed rate by quantile bin of the prediction, and the expected calibration error.

    labels: [B] {0, 1}; probs: [B] float in [0, 1]. Rows are sorted by prob and cut into `n_bins` bins of
    (near) equal size: row of sorted position j goes to bin floor(j * n_bins / B).
    """
    y, p = _as_1d("calibration labels", labels), _as_1d("calibration probs", probs)
    _check_pair(y, p, "calibration")
    if n_bins < 1 or n_bins > y.size:
        raise ValueError(f"calibration: n_bins={n_bins} must be in [1, {y.size}] (the number of rows)")
    order = np.argsort(p, kind="stable")
    bins = np.empty(y.size, dtype=np.int64)
    bins[order] = np.arange(y.size) * n_bins // y.size  # (B,)
    counts = np.bincount(bins, minlength=n_bins)
    predicted = np.bincount(bins, weights=p, minlength=n_bins) / counts
    observed = np.bincount(bins, weights=y, minlength=n_bins) / counts
    ece = float(np.sum(counts / y.size * np.abs(predicted - observed)))
    return Calibration(predicted=predicted, observed=observed, counts=counts, ece=ece)


def permutation_importance(
    score_fn: Callable[[Mapping[str, Any]], Any],
    batch: Mapping[str, Any],
    fields: Mapping[str, tuple[str, int | None]],
    seed: int = 0,
    label_key: str = "label",
) -> dict[str, float]:
    """Per field: AUC(original) - AUC(with that field's column permuted across rows).

    score_fn: maps a batch to [B] scores (numpy or torch). batch: dict of [B, ...] arrays or tensors holding
    `label_key`. fields: name -> (batch key, column), column None permutes the whole entry (e.g. "text"
    together with its rows); e.g. {"item_id": ("sparse", 1), "hist": ("hist", None)}. The same seeded
    permutation of the rows is used for every field. The input batch is not modified.
    """
    labels = _as_1d("permutation_importance labels", batch[label_key])
    base = auc(labels, _as_1d("score_fn output", score_fn(batch)))
    n = labels.size
    perm = np.random.default_rng(seed).permutation(n)
    out: dict[str, float] = {}
    for name, (key, col) in fields.items():
        if key not in batch:
            raise ValueError(f"permutation_importance: field {name!r} reads batch[{key!r}], which is absent")
        x = batch[key]
        if isinstance(x, torch.Tensor):
            shuffled, idx = x.clone(), torch.as_tensor(perm, device=x.device)
        else:
            shuffled, idx = np.array(x, copy=True), perm
        if col is None:
            shuffled = shuffled[idx]
        else:
            shuffled[:, col] = x[idx, col]
        permuted = dict(batch)
        permuted[key] = shuffled
        out[name] = base - auc(labels, _as_1d("score_fn output", score_fn(permuted)))
    return out


def sparse_fields(names: Sequence[str]) -> dict[str, tuple[str, int]]:
    """The `fields` argument of permutation_importance for the hashed columns of `sparse`, in order.

    >>> sparse_fields(("user_id", "item_id"))
    {'user_id': ('sparse', 0), 'item_id': ('sparse', 1)}
    """
    return {name: ("sparse", f) for f, name in enumerate(names)}


def singular_values(cross_matrices: Sequence[Any]) -> list[np.ndarray]:
    """Singular values of each cross layer's matrix, largest first.

    cross_matrices: L matrices [N, N] (torch or numpy), e.g. models.ranker.cross_matrices(model).
    Returns L arrays [N] float64. A fast decay means the layer is effectively low rank.
    """
    out = []
    for m in cross_matrices:
        a = np.asarray(m.detach().cpu().double() if isinstance(m, torch.Tensor) else m, dtype=np.float64)
        if a.ndim != 2:
            raise ValueError(f"singular_values: expected [N, N] matrices, got shape {a.shape}")
        out.append(np.linalg.svd(a, compute_uv=False))
    return out
