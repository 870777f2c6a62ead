"""Baselines every funnel evaluation reports beside the pipeline's own lists: implicit ALS.

Popularity lives with the candidate sources (`retrieval.sources.popular`); ALS needs the `implicit` package
(the `eval` extra), so callers check `als_available()` first and report "not installed" otherwise.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

ALS_FACTORS = 64
ALS_ITERATIONS = 15
ALS_REGULARIZATION = 0.05


def als_available() -> bool:
    """Whether the `implicit` package (ALS baseline) is installed."""
    return importlib.util.find_spec("implicit") is not None


def fit_als(confidence: sp.csr_matrix, seed: int) -> Any:
    """Implicit ALS (Hu, Koren, Volinsky 2008) fitted on `confidence` ([U, N] float32 CSR of summed event
    weights per (user, item)); returns the `implicit` model."""
    from implicit.als import AlternatingLeastSquares

    # implicit runs its own threads; a multi-threaded BLAS underneath oversubscribes the cores (it warns)
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(
            factors=ALS_FACTORS,
            regularization=ALS_REGULARIZATION,
            iterations=ALS_ITERATIONS,
            random_state=seed,
        )
        model.fit(confidence, show_progress=False)
    return model


def als_recommend(
    model: Any, rows: np.ndarray, k: int, exclude: sp.csr_matrix | None, n_items: int
) -> tuple[np.ndarray, np.ndarray]:
    """The top k items of each of `rows` ([Q] int64 user rows) by a fitted ALS model, minus `exclude`
    ([U, N] CSR, or None). Returns ([Q, k] int64 item positions, -1 where fewer exist; [Q, k] float32 scores)."""
    filt = exclude[rows] if exclude is not None else sp.csr_matrix((len(rows), n_items), dtype=np.float32)
    with threadpool_limits(1, "blas"):
        ids, scores = model.recommend(
            rows, filt, N=min(k, n_items), filter_already_liked_items=True, recalculate_user=False
        )
    ids = np.asarray(ids, dtype=np.int64).reshape(len(rows), -1)
    scores = np.asarray(scores, dtype=np.float32).reshape(len(rows), -1)
    if ids.shape[1] < k:
        ids = np.pad(ids, ((0, 0), (0, k - ids.shape[1])), constant_values=-1)
        scores = np.pad(scores, ((0, 0), (0, k - scores.shape[1])), constant_values=-np.inf)
    return ids, scores
