"""Numeric features: moments fitted block by block, merged exactly, and standardisation."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import polars as pl

log = logging.getLogger(__name__)


Moments = dict[str, tuple[int, float, float]]  # column -> (count, mean, M2 = sum of squared deviations)


def numeric_moments(rows: pl.DataFrame, columns: Sequence[str]) -> Moments:
    """(count, mean, M2) of each numeric column over `rows` (nulls ignored), in float64.

    Moments of disjoint row sets combine exactly with `merge_moments`, so the statistics of a table
    written block by block are fitted without holding the table.
    """
    if not columns:
        return {}
    x = [pl.col(c).cast(pl.Float64) for c in columns]
    row = rows.select(
        [e.count().alias(f"{c}|n") for c, e in zip(columns, x, strict=True)]
        + [e.mean().alias(f"{c}|mean") for c, e in zip(columns, x, strict=True)]
        + [((e - e.mean()) ** 2).sum().alias(f"{c}|m2") for c, e in zip(columns, x, strict=True)]
    ).row(0, named=True)
    out: Moments = {}
    for c in columns:
        n = int(row[f"{c}|n"])
        out[c] = (n, float(row[f"{c}|mean"] or 0.0), float(row[f"{c}|m2"] or 0.0) if n else 0.0)
    return out


def merge_moments(a: Moments, b: Moments) -> Moments:
    """Moments of the union of two disjoint row sets (Chan, Golub and LeVeque 1979, pairwise update):

        n = na + nb,  delta = mean_b - mean_a,  mean = mean_a + delta * nb / n,
        M2 = M2_a + M2_b + delta^2 * na * nb / n

    >>> merge_moments({"x": (2, 1.0, 2.0)}, {"x": (1, 4.0, 0.0)})  # {0, 2} and {4}: mean 2, M2 8
    {'x': (3, 2.0, 8.0)}
    """
    out: Moments = {}
    for c in {**a, **b}:
        na, ma, m2a = a.get(c, (0, 0.0, 0.0))
        nb, mb, m2b = b.get(c, (0, 0.0, 0.0))
        n = na + nb
        if n == 0:
            out[c] = (0, 0.0, 0.0)
            continue
        delta = mb - ma
        out[c] = (n, ma + delta * nb / n, m2a + m2b + delta * delta * na * nb / n)
    return out


def stats_from_moments(moments: Moments, columns: Sequence[str]) -> dict[str, dict[str, float]]:
    """Mean and population std (sqrt(M2 / n)) of each column; std 1.0 when no value or zero spread,
    so standardising such a column only centres it."""
    stats: dict[str, dict[str, float]] = {}
    for c in columns:
        n, mean, m2 = moments.get(c, (0, 0.0, 0.0))
        std = (m2 / n) ** 0.5 if n else 0.0
        stats[c] = {
            "mean": float(mean) if n else 0.0,
            "std": float(std) if std > 0.0 else 1.0,
            "count": int(n),
        }
    return stats


def standardise(df: pl.DataFrame, stats: dict[str, dict[str, float]]) -> pl.DataFrame:
    """Replace each column in `stats` present in `df` by (x - mean) / std as Float32, 0 for null."""
    return df.with_columns(
        ((pl.col(c).cast(pl.Float64) - s["mean"]) / s["std"]).fill_null(0.0).cast(pl.Float32).alias(c)
        for c, s in stats.items()
        if c in df.columns
    )
