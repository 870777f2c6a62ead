"""Negative sampling for the ranker and item sampling probabilities for the retriever.

Ranker negatives (`sample_negatives`): each positive event (user u, day d, time t) gets `ratio`
negatives. For each (u, d) a share `real_negative_share` of the `ratio * n_pos(u, d)` negatives comes from
real negatives (items u viewed on d without a later click/cart/purchase), when that many exist; the rest
are sampled from the items available on d, uniformly or with probability proportional to count**alpha
(word2vec-style smoothed popularity, Mikolov et al. 2013). No negative is ever one of u's positives in the
window (`exclude`), and no (u, d, item) is returned twice.

The draws are vectorised: every unfilled slot draws several candidates at once (inverse-CDF search over the
concatenated per-day cumulative weights), the candidates are anti-joined with `exclude` and with the pairs
already used, the first survivor per slot is kept, and the slots still empty are redrawn in a next round
with a larger over-draw. Everything is seeded: the same inputs and seed give the same frame, row order
included.

Retriever helpers: `item_sampling_probs` gives the in-batch candidate frequency of each item for the logQ
correction of the sampled softmax (Yi et al. 2019, "Sampling-bias-corrected neural modeling for large
corpus item recommendations"); `UniformItemSampler` draws the uniform extra negatives of mixed negative
sampling (Yang et al. 2020, "Mixed negative sampling for learning two-tower neural networks").
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import polars as pl

from features.config import SamplingConfig

log = logging.getLogger(__name__)

EVENT_COLUMNS = ("user_id", "item_id", "ts", "dt")
OUTPUT_COLUMNS = ("user_id", "item_id", "ts", "dt", "source")
_MAX_ROUNDS = 8  # draw rounds before the remaining slots are given up (logged)
_FIRST_OVERDRAW = 2  # candidates per empty slot in round 1; doubled every round, capped below
_MAX_OVERDRAW = 64


def _require(df: pl.DataFrame, cols: tuple[str, ...], what: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(
            f"sample_negatives: the {what} frame lacks columns {missing} (has {df.columns}); "
            f"fix: pass a frame with columns {list(cols)}"
        )


def _day_table(available: pl.DataFrame, cfg: SamplingConfig) -> tuple[pl.DataFrame, pl.DataFrame, np.ndarray]:
    """Per-day sampling weights laid end to end.

    Returns items (dt, item_id) sorted by (dt, item_id) with positive weight, days (dt, _start, _end,
    _base, _total) giving each day's row range in `items` and its slice of the cumulative weights, and
    cum [n_items] float64, the running sum of the weights.
    """
    items = (
        available.group_by(["dt", "item_id"])
        .agg(pl.col("count").sum().cast(pl.Float64))
        .sort(["dt", "item_id"])
    )
    if cfg.strategy == "uniform":
        weight = pl.lit(1.0)
    else:
        weight = pl.col("count").clip(lower_bound=0.0).pow(cfg.alpha)
    items = items.with_columns(weight.alias("_w")).filter(pl.col("_w") > 0)
    cum = items["_w"].cum_sum().to_numpy()
    days = (
        items.with_row_index("_row")
        .group_by("dt", maintain_order=True)
        .agg(pl.col("_row").min().alias("_start"), (pl.col("_row").max() + 1).alias("_end"))
        .with_columns(pl.col("_start").cast(pl.Int64), pl.col("_end").cast(pl.Int64))
    )
    starts, ends = days["_start"].to_numpy(), days["_end"].to_numpy()
    cum0 = np.concatenate([[0.0], cum])
    days = days.with_columns(pl.Series("_base", cum0[starts]), pl.Series("_total", cum0[ends] - cum0[starts]))
    return items.select("dt", "item_id"), days, cum


def _take_real(
    pos_groups: pl.DataFrame,
    real_negatives: pl.DataFrame,
    exclude: pl.DataFrame,
    rng: np.random.Generator,
) -> pl.DataFrame:
    """Real negatives kept per (dt, user_id): a uniformly random subset of at most `_want` of them.

    pos_groups: (dt, user_id, _n_pos, _want). Returns user_id, item_id, ts, dt (one view per item and day:
    the earliest), never a pair of `exclude`.
    """
    real = (
        real_negatives.select(EVENT_COLUMNS)
        .sort(["dt", "user_id", "item_id", "ts"])
        .unique(["dt", "user_id", "item_id"], keep="first", maintain_order=True)
        .join(exclude, on=["user_id", "item_id"], how="anti", maintain_order="left")
        .join(
            pos_groups.select("dt", "user_id", "_want"),
            on=["dt", "user_id"],
            how="inner",
            maintain_order="left",
        )
    )
    real = real.with_columns(pl.Series("_key", rng.random(real.height)))
    keep = pl.col("_key").rank("ordinal").over(["dt", "user_id"]) <= pl.col("_want")
    return real.filter(keep).select(EVENT_COLUMNS)


def sample_negatives_with_stats(
    positives: pl.DataFrame,
    available: pl.DataFrame,
    real_negatives: pl.DataFrame,
    exclude: pl.DataFrame,
    cfg: SamplingConfig,
    seed: int,
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """`sample_negatives` plus statistics of the draws.

    stats: positives, negatives, real, sampled, unfilled (slots left empty: the day had too few
    drawable items), draws (candidates drawn), draws_hit_positive (of those, how many were one of the
    user's positives before exclusion), hit_rate (their ratio), rounds.
    """
    _require(positives, EVENT_COLUMNS, "positives")
    _require(available, ("dt", "item_id", "count"), "available")
    _require(real_negatives, EVENT_COLUMNS, "real_negatives")
    _require(exclude, ("user_id", "item_id"), "exclude")
    rng = np.random.default_rng(seed)
    ratio = cfg.ratio
    excl = exclude.select("user_id", "item_id").unique()

    # positives in a canonical order; _p = rank within its (dt, user_id) group
    pos = positives.select(EVENT_COLUMNS).sort(["dt", "user_id", "ts", "item_id"], maintain_order=True)
    pos = pos.with_columns(
        pl.int_range(pl.len(), dtype=pl.Int64).over(["dt", "user_id"]).alias("_p"),
        pl.len().over(["dt", "user_id"]).cast(pl.Int64).alias("_n_pos"),
    )
    groups = pos.group_by(["dt", "user_id"], maintain_order=True).agg(pl.col("_n_pos").first())
    want = (pl.col("_n_pos") * ratio * cfg.real_negative_share + 0.5).floor().cast(pl.Int64)
    groups = groups.with_columns(want.alias("_want"))

    real = _take_real(groups, real_negatives, excl, rng) if cfg.real_negative_share > 0 else None
    if real is None:
        real = pos.head(0).select(EVENT_COLUMNS)
    taken = real.group_by(["dt", "user_id"]).agg(pl.len().cast(pl.Int64).alias("_taken"))

    # slots: ratio per positive, numbered g = s * n_pos + p so real negatives fill slot 0 of every
    # positive of the group first, then slot 1, ...; the slots past the real ones are sampled
    pos = pos.join(taken, on=["dt", "user_id"], how="left", maintain_order="left").with_columns(
        pl.col("_taken").fill_null(0)
    )
    rows = np.repeat(np.arange(pos.height), ratio)
    slot = np.tile(np.arange(ratio, dtype=np.int64), pos.height)
    slots = pos.select("user_id", "ts", "dt", "_p", "_n_pos", "_taken")[rows].with_columns(
        pl.Series("_s", slot)
    )
    slots = (
        slots.filter(pl.col("_s") * pl.col("_n_pos") + pl.col("_p") >= pl.col("_taken"))
        .select("user_id", "ts", "dt")
        .with_row_index("_slot")
    )

    items, days, cum = _day_table(available, cfg)
    todo = slots.join(days, on="dt", how="inner", maintain_order="left")
    no_day = slots.height - todo.height
    if no_day:
        log.warning("sample_negatives: %d negative slots fall on days with no available items", no_day)
    item_ids = items["item_id"]
    used = real.select("user_id", "dt", "item_id")
    accepted: list[pl.DataFrame] = []
    draws = hits = rounds = 0
    overdraw = _FIRST_OVERDRAW
    while todo.height and rounds < _MAX_ROUNDS:
        rounds += 1
        n = todo.height * overdraw
        base = np.repeat(todo["_base"].to_numpy(), overdraw)
        total = np.repeat(todo["_total"].to_numpy(), overdraw)
        lo = np.repeat(todo["_start"].to_numpy(), overdraw)
        hi = np.repeat(todo["_end"].to_numpy(), overdraw) - 1
        # inverse CDF over the day's slice of the cumulative weights
        idx = np.clip(np.searchsorted(cum, base + rng.random(n) * total, side="right"), lo, hi)
        cand = todo.select("_slot", "user_id", "ts", "dt")[np.repeat(np.arange(todo.height), overdraw)]
        cand = cand.with_columns(item_ids.gather(idx).alias("item_id"))
        draws += n
        hits += cand.join(excl, on=["user_id", "item_id"], how="semi").height
        cand = (
            cand.join(excl, on=["user_id", "item_id"], how="anti", maintain_order="left")
            .join(used, on=["user_id", "dt", "item_id"], how="anti", maintain_order="left")
            .filter(pl.struct("user_id", "dt", "item_id").is_first_distinct())
        )
        cand = cand.filter(pl.col("_slot").is_first_distinct())
        accepted.append(cand)
        used = pl.concat([used, cand.select("user_id", "dt", "item_id")])
        todo = todo.join(cand.select("_slot"), on="_slot", how="anti", maintain_order="left")
        overdraw = min(overdraw * 2, _MAX_OVERDRAW)
    unfilled = todo.height + no_day
    if unfilled:
        log.warning(
            "sample_negatives: %d of %d sampled slots left empty (users with positives on nearly every "
            "available item of the day); fix: widen `available` or lower sampling.ratio",
            unfilled,
            slots.height,
        )
    sampled = (
        pl.concat(accepted).sort("_slot").select(EVENT_COLUMNS)
        if accepted
        else pos.head(0).select(EVENT_COLUMNS)
    )
    schema = pos.select(EVENT_COLUMNS).schema
    out = pl.concat(
        [
            real.cast(schema).with_columns(pl.lit("real").alias("source")),
            sampled.cast(schema).with_columns(pl.lit("sampled").alias("source")),
        ]
    ).sort(["dt", "user_id", "ts", "source", "item_id"], maintain_order=True)
    stats = {
        "positives": positives.height,
        "negatives": out.height,
        "real": real.height,
        "sampled": sampled.height,
        "unfilled": unfilled,
        "draws": draws,
        "draws_hit_positive": hits,
        "hit_rate": hits / draws if draws else 0.0,
        "rounds": rounds,
    }
    log.info("sample_negatives: %s", stats)
    return out, stats


def sample_negatives(
    positives: pl.DataFrame,
    available: pl.DataFrame,
    real_negatives: pl.DataFrame,
    exclude: pl.DataFrame,
    cfg: SamplingConfig,
    seed: int,
) -> pl.DataFrame:
    """`cfg.ratio` negatives per positive: a `cfg.real_negative_share` of real ones, the rest sampled.

    positives: [P rows] user_id, item_id, ts, dt, one row per positive event.
    available: [A rows] dt, item_id, count: items on sale that day and their event counts.
    real_negatives: [V rows] user_id, item_id, ts, dt: views without a later click/cart/purchase.
    exclude: [X rows] user_id, item_id: the user's positives in the window, never returned.
    Returns [<= P * ratio rows] user_id, item_id, ts, dt, source ("real" | "sampled"); a real negative
    keeps its view's ts, a sampled one takes its positive's ts. Per (user, day): round(n_pos * ratio *
    share) real ones when that many exist, the rest sampled (uniform, or count**alpha with
    strategy="popularity") from that day's available items; no (user, day, item) twice.
    """
    return sample_negatives_with_stats(positives, available, real_negatives, exclude, cfg, seed)[0]


def item_sampling_probs(positives: pl.DataFrame) -> pl.DataFrame:
    """How often each item is an in-batch candidate: its share of the positive rows.

    positives: [P rows] with item_id. Returns item_id, prob (Float64, sums to 1), sorted by item_id.
    With in-batch negatives every positive item of a batch is a candidate for every query, so an item's
    sampling probability is proportional to its positive count; logQ correction subtracts log(prob).

    >>> item_sampling_probs(pl.DataFrame({"item_id": [7, 7, 3, 7]})).rows()
    [(3, 0.25), (7, 0.75)]
    """
    if "item_id" not in positives.columns:
        raise ValueError(f"item_sampling_probs: positives lack column item_id (has {positives.columns})")
    return (
        positives.group_by("item_id")
        .agg(pl.len().alias("n"))
        .with_columns((pl.col("n") / pl.col("n").sum()).alias("prob"))
        .select("item_id", "prob")
        .sort("item_id")
    )


class UniformItemSampler:
    """Uniform item ids for mixed negative sampling: B' extra negatives per batch (Yang et al. 2020)."""

    def __init__(self, n_items: int, seed: int) -> None:
        if n_items < 1:
            raise ValueError(f"UniformItemSampler: n_items must be >= 1, got {n_items}")
        self.n_items = n_items
        self._rng = np.random.default_rng(seed)

    def sample(self, n: int) -> np.ndarray:
        """Returns [n] int64 item indices, uniform in [0, n_items), independent draws."""
        if n < 0:
            raise ValueError(f"UniformItemSampler.sample: n must be >= 0, got {n}")
        return self._rng.integers(0, self.n_items, size=n, dtype=np.int64)
