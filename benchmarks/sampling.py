"""Benchmark: features.sampling.sample_negatives on 1M positives x 4 negatives.

Synthetic window of 14 days: 200k users (activity ~ rank**-0.7) and 50k items (popularity ~ rank**-1);
1M positive events, one earlier real-negative view per positive (same user and day), and as `available`
every item with an event that day with its event count. Prints negatives/s, the share of real ones and the fraction of draws that hit one of the
user's positives before exclusion (stats["hit_rate"]).

    .venv/bin/python benchmarks/sampling.py [--positives 1000000] [--ratio 4] [--strategy popularity]
"""

from __future__ import annotations

import argparse
import time
from datetime import date, datetime

import numpy as np
import polars as pl

from features.config import SamplingConfig
from features.sampling import sample_negatives_with_stats


def power_law_ids(rng: np.random.Generator, n: int, card: int, a: float) -> np.ndarray:
    """[n] int64 ids in [0, card) with P(rank k) proportional to k**-a (a finite power law), ids shuffled."""
    p = np.arange(1, card + 1, dtype=np.float64) ** -a
    return rng.permutation(card)[rng.choice(card, size=n, p=p / p.sum())]


def make_inputs(n_pos: int, n_users: int, n_items: int, days: int, seed: int) -> dict[str, pl.DataFrame]:
    """Positives spread over `days`; one real-negative view per positive by the same user on the same day
    (an earlier view of another item), minus the pairs the user also has as positives."""
    rng = np.random.default_rng(seed)
    day = rng.integers(0, days, size=n_pos)
    secs = rng.integers(3_600, 86_400, size=n_pos)
    base = pl.DataFrame({"ts": [datetime(2024, 3, 1)] * n_pos, "dt": [date(2024, 3, 1)] * n_pos})
    positives = base.select(
        pl.Series("user_id", power_law_ids(rng, n_pos, n_users, 0.7)),
        pl.Series("item_id", power_law_ids(rng, n_pos, n_items, 1.0)),
        pl.col("ts") + pl.duration(days=pl.Series(day), seconds=pl.Series(secs)),
        (pl.col("dt") + pl.duration(days=pl.Series(day))).cast(pl.Date),
    )
    views = positives.with_columns(
        pl.Series("item_id", power_law_ids(rng, n_pos, n_items, 1.0)),
        pl.col("ts") - pl.duration(seconds=pl.Series(rng.integers(1, 3_600, size=n_pos))),
    ).join(positives, on=["user_id", "item_id"], how="anti")
    available = (
        pl.concat([positives, views])
        .group_by("dt", "item_id")
        .agg(pl.len().alias("count"))
        .sort("dt", "item_id")
    )
    exclude = positives.select("user_id", "item_id").unique()
    return {"positives": positives, "available": available, "real_negatives": views, "exclude": exclude}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--positives", type=int, default=1_000_000)
    ap.add_argument("--users", type=int, default=200_000)
    ap.add_argument("--items", type=int, default=50_000)
    ap.add_argument("--days", type=int, default=14)
    ap.add_argument("--ratio", type=int, default=4)
    ap.add_argument("--share", type=float, default=0.5)
    ap.add_argument("--strategy", choices=["uniform", "popularity"], default="popularity")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    t = time.perf_counter()
    data = make_inputs(args.positives, args.users, args.items, args.days, args.seed)
    print(
        f"generated in {time.perf_counter() - t:.1f}s: "
        + ", ".join(f"{k} {v.height:,} rows" for k, v in data.items())
    )
    cfg = SamplingConfig(ratio=args.ratio, real_negative_share=args.share, strategy=args.strategy)
    t = time.perf_counter()
    out, stats = sample_negatives_with_stats(cfg=cfg, seed=args.seed, **data)
    secs = time.perf_counter() - t
    print(
        f"config: ratio {cfg.ratio}, real share {cfg.real_negative_share}, {cfg.strategy} alpha {cfg.alpha}"
    )
    print(
        f"sample_negatives: {out.height:,} negatives in {secs:.2f}s = {out.height / secs / 1e6:.2f}M negatives/s"
    )
    print(
        f"real {stats['real']:,} ({stats['real'] / out.height:.1%}), sampled {stats['sampled']:,}, "
        f"unfilled {stats['unfilled']:,}, rounds {stats['rounds']}"
    )
    print(
        f"draws {stats['draws']:,}, hit a positive before exclusion {stats['draws_hit_positive']:,} "
        f"= {stats['hit_rate']:.4%} of draws"
    )
    # sanity: nothing excluded came back, no user-day-item twice
    assert out.join(data["exclude"], on=["user_id", "item_id"], how="semi").height == 0
    assert out.select("user_id", "dt", "item_id").is_duplicated().sum() == 0


if __name__ == "__main__":
    main()
