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
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp
import torch

from features.config import EVENT_TYPES
from features.funnel import FEATURES, item_table, pair_features
from models.config import RankerConfig
from models.device import resolve_device
from models.inputs import FieldLayout
from models.ranker import build_ranker
from models.train import padded_batch, predict, save_checkpoint, train_ranker
from pipelines import io
from pipelines.config import FunnelConfig
from retrieval import sources as src
from retrieval.baselines import als_available, als_recommend, fit_als
from retrieval.metrics import list_metrics

log = logging.getLogger(__name__)

DATASET = "funnel"
CANDIDATES = "candidates"
SCORES = "scores"
TWO_TOWER = "two_tower"  # the retriever's user-tower lists (pipelines.retriever)
RETRIEVER = "retriever"
FRAMES = "frames"
MODEL_FILE = "model.pt"
METRICS_FILE = "metrics.json"
ORDERS = ("ranker", "merged", "popularity")  # candidates for the published order
NDCG_K, RECALL_K = 10, 50
SCORE_CHUNK = 8_192  # rows per forward pass (one shape: scores do not depend on the block)
CATEGORY_AUTO = ("category_l2", "category", "category_l1")


def not_enough(n: int) -> str:
    """What a metric says instead of a number when it has too few positives to mean anything."""
    return f"not enough positives ({n})"


# ---------------------------------------------------------------- inputs


@dataclass
class Inputs:
    """Events with integer codes, the catalogue and its two-tower vectors."""

    users: pl.DataFrame  # user_id, u (UInt32): every user with an event read
    items: pl.DataFrame  # item_id, i (Int32): the catalogue, row = item position
    emb: np.ndarray | None  # [N, D] float32 two-tower item vectors, row = i; None: no retriever of D
    events: pl.DataFrame  # u, i, ev, w, ts, cat; sorted by u, ts (Sources slice it per user block)
    category: str | None  # the item column behind `cat`
    catalogue: pl.DataFrame  # i, cat: every item of `items`


def _category_column(items: pl.DataFrame, setting: str | None) -> str | None:
    if setting is None:
        return None
    if setting != "auto":
        if setting not in items.columns:
            raise ValueError(
                f"items.parquet has no column {setting!r} (funnel.category_column); fix: name one of "
                f"{items.columns} or set funnel.category_column=null"
            )
        return setting
    return next((c for c in CATEGORY_AUTO if c in items.columns), None)


def load_inputs(data_dir: Path, out: Path, dt: date, first: date, last: date, cfg: FunnelConfig) -> Inputs:
    """Events of [first, last] coded to integers, the catalogue (frames order when the retriever of D ran,
    so that row i is item_emb.npy row i) and the category of each item."""
    raw_items = io.read_items(data_dir)
    category = _category_column(raw_items, cfg.category_column)
    emb = None
    if io.is_committed(out, RETRIEVER, dt) and io.is_committed(out, FRAMES, dt):
        items = io.read_table(out, FRAMES, dt, "items").select("item_id", pl.col("item_idx").alias("i"))
        emb = np.load(io.committed_path(out, RETRIEVER, dt, "item_emb.npy"))
    else:
        items = raw_items.select("item_id").sort("item_id").with_row_index("i")
    items = items.select(pl.col("item_id").cast(pl.String), pl.col("i").cast(pl.Int32)).sort("i")
    cats = raw_items.select(
        pl.col("item_id").cast(pl.String),
        (pl.col(category).cast(pl.String) if category else pl.lit(None, pl.String))
        .cast(pl.Categorical)
        .alias("cat"),
    )
    lf = io.scan_events(data_dir, first, last)
    users = lf.select("user_id").unique().sort("user_id").collect().with_row_index("u").select("user_id", "u")
    weights = {e: float(w) for e, w in cfg.event_weights.items()}
    events = (
        lf.join(users.lazy(), on="user_id")
        .join(items.lazy(), on="item_id")
        .join(cats.lazy(), on="item_id", how="left")
        .select(
            pl.col("u").cast(pl.UInt32),
            pl.col("i"),
            pl.col("event").cast(pl.String).cast(pl.Enum(EVENT_TYPES)).alias("ev"),
            pl.col("event")
            .cast(pl.String)
            .replace_strict(weights, default=1.0, return_dtype=pl.Float32)
            .alias("w"),
            "ts",
            "cat",
        )
        .sort("u", "ts", "i", "ev")
        .collect(engine="streaming")
    )
    catalogue = items.join(cats, on="item_id", how="left").select("i", "cat").sort("i")
    return Inputs(users, items, emb, events, category, catalogue)


def _midnight(d: date) -> datetime:
    return datetime.combine(d, datetime.min.time(), tzinfo=UTC)


# ---------------------------------------------------------------- lists as of T


@dataclass
class Sources:
    """The lists' inputs as of T: the event window, the global pieces (co-visitation pairs, the popularity
    lists, the ALS model, the purchases) and the users with history. The window is a view of Inputs.events
    (never copied): `window()` for global aggregates, `events_of(users)` for a block of users."""

    as_of: datetime
    since: datetime  # as_of - lookback: the window is since <= ts < as_of
    all_events: pl.DataFrame  # Inputs.events, sorted by u
    active: pl.Series  # [U] UInt32 sorted: the users with an event in the window
    covis: pl.DataFrame
    pop: pl.DataFrame
    categories: pl.DataFrame  # retrieval.sources.category_table
    als: Any  # implicit ALS fitted on the window, or None (not installed, or funnel.als_k = 0)
    exclude_csr: sp.csr_matrix  # [users, items] the purchases, as the ALS source filters them
    exclude: pl.DataFrame  # u, i purchased before as_of (empty without exclusion)
    items: pl.DataFrame  # features.funnel.item_table

    def window(self) -> pl.LazyFrame:
        """The events of the window, lazily (aggregate it; collecting it whole copies every column)."""
        return self.all_events.lazy().filter(_between(self.since, self.as_of))

    def events_of(self, users: pl.Series) -> pl.DataFrame:
        """The window's events of `users` ([U] UInt32): the rows between the smallest and the largest user
        (a slice: events are sorted by u), then filtered; a block of consecutive users costs its own rows."""
        if users.len() == 0:
            return self.all_events.clear()
        u = self.all_events["u"]
        lo = int(u.search_sorted(users.min(), side="left"))
        hi = int(u.search_sorted(users.max(), side="right"))
        rows = self.all_events.slice(lo, hi - lo)
        return rows.filter(pl.col("u").is_in(users.implode()) & _between(self.since, self.as_of))


def _between(since: datetime, until: datetime) -> pl.Expr:
    return pl.col("ts").is_between(since, until, closed="left")


def sources_as_of(
    inp: Inputs, as_of: datetime, lookback_days: int, cfg: FunnelConfig, exclude: bool, seed: int = 0
) -> Sources:
    since = as_of - timedelta(days=lookback_days)
    win = inp.events.lazy().filter(_between(since, as_of))
    active = win.select("u").unique().collect()["u"].sort()
    covis_ev = win.filter(pl.col("ts") >= as_of - timedelta(days=cfg.covis_days)).select("u", "i", "w", "ts")
    covis_ev = covis_ev.collect()
    covis = src.covisitation(
        covis_ev,
        window_s=cfg.covis_window_hours * 3600.0,
        span=cfg.covis_span,
        neighbours=cfg.covis_neighbours,
        partitions=max(1, -(-covis_ev.height // cfg.covis_block_events)),
    )
    del covis_ev
    pop = src.popular(win, as_of - timedelta(days=cfg.popular_days), cfg.popular_k)
    if exclude:
        bought = win.filter(pl.col("ev") == "purchase").select("u", "i").unique().collect()
    else:
        bought = pl.DataFrame(schema={"u": pl.UInt32, "i": pl.Int32})
    cats = src.category_table(win, as_of - timedelta(days=cfg.popular_days), cfg.category_k)
    shape = (inp.users.height, inp.items.height)
    excl = _csr(bought["u"], bought["i"], np.ones(bought.height, np.float32), shape)
    als = None
    if cfg.als_k and als_available() and active.len():
        als = fit_als(_confidence(win, shape), seed)
    items = item_table(win, as_of, inp.catalogue)
    return Sources(as_of, since, inp.events, active, covis, pop, cats, als, excl, bought, items)


def _confidence(events: pl.DataFrame | pl.LazyFrame, shape: tuple[int, int]) -> sp.csr_matrix:
    """[users, items] CSR of the summed event weights (the ALS input)."""
    conf = events.lazy().group_by("u", "i").agg(pl.col("w").sum()).collect()
    return _csr(conf["u"], conf["i"], conf["w"].to_numpy(), shape)


def _csr(rows: pl.Series, cols: pl.Series, values: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    r, c = rows.to_numpy().astype(np.int64), cols.to_numpy().astype(np.int64)
    m = sp.csr_matrix((values.astype(np.float32), (r, c)), shape=shape)
    m.sum_duplicates()
    return m


def user_lists(
    s: Sources,
    users: pl.Series,
    cfg: FunnelConfig,
    emb: np.ndarray | None,
    weights: dict[str, float] | None = None,
) -> tuple[dict, pl.DataFrame]:
    """(raw lists per source, merged list) as of s.as_of for `users` ([U] UInt32)."""
    ev = s.events_of(users)
    seed = src.seeds(ev, users, cfg.seeds)
    lists: dict[str, pl.DataFrame] = {}
    if cfg.recent_k:
        lists["recent"] = src.recent(ev, users, cfg.recent_k, s.as_of)
    if cfg.covis_k:
        lists["covis"] = src.covis_candidates(seed, s.covis, cfg.covis_k)
    if cfg.ann_k and emb is not None:
        lists["ann"] = src.ann_candidates(seed, emb, cfg.ann_k)
    if s.als is not None:
        lists["als"] = src.als_candidates(s.als, users, s.exclude_csr, cfg.als_k, s.exclude_csr.shape[1])
    if cfg.category_k and s.categories.height:
        lists["category"] = src.category_popular(ev, users, s.categories, cfg.category_k)
    return lists, src.merge(lists, s.pop, users, s.exclude, cfg.k, weights)


def fusion_weights(
    s: Sources, positives: pl.DataFrame, cfg: FunnelConfig, emb: np.ndarray | None, seed: int
) -> tuple[dict[str, float], int]:
    """Source weights of the merge (`retrieval.sources.fusion_weights`) measured on the lists as of s.as_of
    of a seeded sample of `funnel.fusion_users` users with a positive in `positives` (u, i) and history.
    Returns (weights, users measured on); every weight is 1 without such users."""
    users = positives.join(s.active.to_frame(), on="u", how="semi")["u"].unique().sort()
    if users.len() > cfg.fusion_users:
        rng = np.random.default_rng([seed, 7])
        users = pl.Series("u", np.sort(rng.choice(users.to_numpy(), cfg.fusion_users, replace=False)))
    if users.len() == 0:
        return {name: 1.0 for name in src.SOURCES}, 0
    lists, _ = user_lists(s, users, cfg, emb)
    lists = {n: df.join(s.exclude, on=["u", "i"], how="anti") for n, df in lists.items()}
    lists["popular"] = _popular_for(s, users, cfg.popular_k)
    lists = {n: _rerank(df.with_columns(pl.col("rank").alias("_r")), "_r", False) for n, df in lists.items()}
    found = src.fusion_weights(
        lists, positives.join(pl.DataFrame({"u": users}), on="u", how="semi"), RECALL_K
    )
    return {name: found.get(name, 1.0) for name in src.SOURCES}, users.len()


def _popular_for(s: Sources, users: pl.Series, k: int) -> pl.DataFrame:
    """u, i, score, rank: the popularity list minus each user's exclusions, re-ranked."""
    df = pl.DataFrame({"u": users.cast(pl.UInt32)}).join(s.pop.select("i", "score"), how="cross")
    df = df.join(s.exclude, on=["u", "i"], how="anti").sort(
        "u", pl.col("score"), "i", descending=[False, True, False]
    )
    df = df.with_columns((pl.int_range(pl.len(), dtype=pl.Int32).over("u") + 1).alias("rank"))
    return df.filter(pl.col("rank") <= k)


def _rerank(df: pl.DataFrame, by: str, descending: bool) -> pl.DataFrame:
    """u, i, rank by `by` within each user (ties: merged rank, then item)."""
    out = df.sort(["u", by, "rank", "i"], descending=[False, descending, False, False])
    return out.select("u", "i", (pl.int_range(pl.len(), dtype=pl.Int32).over("u") + 1).alias("rank"))


def _positives(inp: Inputs, start: datetime, end: datetime, positive_events: list[str]) -> pl.DataFrame:
    return (
        inp.events.filter(
            pl.col("ts").is_between(start, end, closed="left") & pl.col("ev").is_in(positive_events)
        )
        .select("u", "i")
        .unique()
    )


# ---------------------------------------------------------------- the ranker on candidate lists


def _arrays(df: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
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


def _training_lists(
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
        t0 = _midnight(day)
        s = s_last if back == 0 else sources_as_of(inp, t0, lookback, cfg, exclude, seed)
        pos = _positives(inp, t0, t0 + timedelta(days=1), positive_events)
        rel_parts.append(pos.with_columns(pl.lit(day).alias("day")))
        users = pos.join(s.active.to_frame(), on="u", how="semi")["u"].unique().sort()
        if users.len() > cfg.max_train_users:
            users = pl.Series("u", np.sort(rng.choice(users.to_numpy(), cfg.max_train_users, replace=False)))
        held = pl.DataFrame({"u": users, "_valid": rng.random(users.len()) < cfg.valid_share})
        pop = _popular_for(s, held.filter("_valid")["u"], cfg.k).select("u", "i", "rank")
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
            rows = pair_features(merged.filter(keep), s.events_of(block), s.items, t0).with_columns(
                pl.lit(day).alias("day")
            )
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

    train / valid: `_training_lists`; relevant: u, i, day positives of the days (all of them, also those the
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
    ts, tx = _arrays(train)
    ty = train["label"].to_numpy().astype(np.float32)
    mean, std = tx.mean(axis=0), tx.std(axis=0) + 1e-6
    tx = (tx - mean) / std
    vs, vx = _arrays(valid)
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


# ---------------------------------------------------------------- the stage


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
    first = dt - timedelta(days=lookback_days - 1)
    inp = load_inputs(data_dir, out, dt, first - timedelta(days=cfg.train_days), max([dt, *horizon]), cfg)
    end_d = _midnight(dt + timedelta(days=1))
    phases: dict[str, float] = {"inputs": round(time.perf_counter() - t_start, 2)}
    tick = time.perf_counter()

    def phase(name: str) -> None:
        nonlocal tick
        now = time.perf_counter()
        phases[name] = round(now - tick, 2)
        tick = now

    # ranker on the lists of the training days, and the guard
    # fusion weights of the sources, measured on day D's positives with the lists as of D 00:00
    t_d = _midnight(dt)
    s_d = sources_as_of(inp, t_d, lookback_days, cfg, exclude_purchased, seed)
    pos_d = _positives(inp, t_d, t_d + timedelta(days=1), positive_events)
    weights, fusion_users = fusion_weights(s_d, pos_d, cfg, inp.emb, seed)
    log.info("funnel %s: fusion weights %s (%d users of %s)", dt, weights, fusion_users, dt)
    phase("fusion")
    trained = Trained(None, None, None, "merged", {"reason": "funnel.ranker=false"})
    if cfg.ranker:
        train_rows, valid_rows, relevant, pop_lists = _training_lists(
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
        _positives(inp, end_d, _midnight(horizon[-1] + timedelta(days=1)), positive_events)
        if horizon
        else None
    )
    eval_users = (
        eval_rel.join(active.to_frame(), on="u", how="semi")["u"].unique().sort() if horizon else None
    )
    eval_pairs = eval_rel.join(eval_users.to_frame(), on="u", how="semi") if horizon else None
    collected: dict[str, list[pl.DataFrame]] = {}
    covered = 0

    def keep(name: str, df: pl.DataFrame) -> None:
        """Keep what the metrics read: the rows of the top RECALL_K that an evaluated user came back for."""
        if eval_pairs is not None:
            collected.setdefault(name, []).append(
                df.filter(pl.col("rank") <= RECALL_K)
                .join(eval_pairs, on=["u", "i"], how="semi")
                .select("u", "i", "rank")
            )

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
                pop = _popular_for(s, users, cfg.k)
                merged = merged.with_columns(src.primary_source(pl.col("sources")).alias("source"))
                if trained.order == "ranker":
                    feats = pair_features(merged, s.events_of(users), s.items, end_d)
                    sparse, x = _arrays(feats)
                    lg = logits(
                        trained.model, sparse, ((x - trained.mean) / trained.std).astype(np.float32), dev
                    )
                    pub = merged.with_columns(
                        pl.Series("score", 1.0 / (1.0 + np.exp(-lg.astype(np.float64))), dtype=pl.Float32)
                    )
                    ranked_pub = _rerank(pub, "score", True)
                    pub = pub.drop("rank").join(ranked_pub, on=["u", "i"])
                elif trained.order == "merged":
                    pub = merged.with_columns(pl.col("rrf").alias("score"))
                else:
                    pub = pop.with_columns(pl.lit("popular").alias("source"))
                keep("published", pub)
                if eval_users is not None:
                    covered += pub.select("u").unique().join(eval_users.to_frame(), on="u", how="semi").height
                keep("merged", merged)
                keep("popularity", pop)
                for name, df in raw.items():
                    ranked = df.join(s.exclude, on=["u", "i"], how="anti")
                    keep(name, _rerank(ranked.with_columns(pl.col("rank").alias("_r")), "_r", False))
                if trained.order == "ranker":
                    keep("ranker", pub)
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
                block = cold.slice(lo, cfg.block_users).sort("user_id").join(pop_rows, how="cross")
                block = block.with_columns(pl.lit("popular").alias("source"))
                cw.write(
                    block.with_columns(
                        pl.lit(1 << src.SOURCES.index("popular"), pl.UInt8).alias("sources"),
                        *[pl.lit(None, pl.Float32).alias(f"score_{x}") for x in src.SOURCES],
                        *[pl.lit(None, pl.Int32).alias(f"rank_{x}") for x in src.SOURCES],
                    )
                    .with_columns(
                        pl.col("score").alias("score_popular"), pl.col("rank").alias("rank_popular")
                    )
                    .select(cand_cols)
                )
                sw.write(block.select("user_id", "item_id", "score", "rank", "source"))
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
            evaluation = evaluate(inp, s, eval_rel, eval_users, collected, covered, out, dt, cfg, seed)
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


def evaluate(
    inp: Inputs,
    s: Sources,
    relevant: pl.DataFrame,
    users: pl.Series,
    collected: dict[str, list[pl.DataFrame]],
    covered: int,
    out: Path,
    dt: date,
    cfg: FunnelConfig,
    seed: int,
) -> dict[str, Any]:
    """Recall@50 and NDCG@10 of every list on the horizon's positives, over every returning user with
    history (`users`); popularity, ALS and the two-tower lists on the same users and exclusions.

    collected: list name -> the hits of its top RECALL_K (u, i, rank rows that are in `relevant`), which is
    all `list_metrics` reads; covered: the users of `users` with a published list."""
    n = users.len()
    out_: dict[str, Any] = {
        "present": True,
        "users": n,
        "positives": relevant.join(pl.DataFrame({"u": users}), on="u", how="semi").height,
    }
    lists = {name: pl.concat(parts) for name, parts in collected.items()}
    if io.is_committed(out, TWO_TOWER, dt):
        lists["two_tower"] = _two_tower_hits(out, dt, inp, s.exclude, relevant.join(users.to_frame(), on="u"))
    if "als" in lists:
        pass  # the ALS source alone: fitted on the same events, same users and exclusions
    elif als_available() and n:
        lists["als"] = _als_lists(inp, s, users, seed)
    else:
        out_["als"] = {"status": "not installed (pip install implicit to add the ALS baseline)"}
    ulist = pl.DataFrame({"u": users})
    out_["coverage"] = round(covered / n, 6) if n else None
    for name, df in lists.items():
        if n < cfg.min_eval_users:
            out_[name] = not_enough(n)
        else:
            out_[name] = list_metrics(df, relevant, ulist, [NDCG_K, RECALL_K])
    pop = out_.get("popularity")
    if isinstance(pop, dict):
        for m in list(out_.values()):
            if isinstance(m, dict) and f"recall@{RECALL_K}" in m and pop[f"recall@{RECALL_K}"] > 0:
                m["recall_vs_popularity"] = round(m[f"recall@{RECALL_K}"] / pop[f"recall@{RECALL_K}"], 3)
                if pop[f"ndcg@{NDCG_K}"] > 0:
                    m["ndcg_vs_popularity"] = round(m[f"ndcg@{NDCG_K}"] / pop[f"ndcg@{NDCG_K}"], 3)
    return out_


def _two_tower_hits(
    out: Path, dt: date, inp: Inputs, exclude: pl.DataFrame, relevant: pl.DataFrame
) -> pl.DataFrame:
    """u, i, rank: the hits of the retriever's committed lists (two_tower/dt=D) on `relevant` (u, i), ranked
    as if the excluded pairs had been removed first; the lists are streamed, never held whole."""
    tt = (
        io.scan_table(out, TWO_TOWER, dt)
        .join(inp.users.lazy(), on="user_id")
        .join(inp.items.lazy(), on="item_id")
        .select(pl.col("u").cast(pl.UInt32), pl.col("i").cast(pl.Int32), pl.col("rank").cast(pl.Int32))
        .join(relevant.select("u").unique().lazy(), on="u", how="semi")
    )
    hits = tt.join(relevant.lazy(), on=["u", "i"], how="semi").join(exclude.lazy(), on=["u", "i"], how="anti")
    gone = tt.join(exclude.lazy(), on=["u", "i"], how="semi").select("u", pl.col("rank").alias("_gone"))
    hits, gone = pl.collect_all([hits, gone], engine="streaming")
    shift = (
        hits.join(gone, on="u")
        .filter(pl.col("_gone") < pl.col("rank"))
        .group_by("u", "i")
        .agg(pl.len().cast(pl.Int32).alias("_shift"))
    )
    return hits.join(shift, on=["u", "i"], how="left").select(
        "u", "i", (pl.col("rank") - pl.col("_shift").fill_null(0)).alias("rank")
    )


def _als_lists(inp: Inputs, s: Sources, users: pl.Series, seed: int) -> pl.DataFrame:
    """The ALS baseline when the ALS source is off (funnel.als_k = 0): fitted on the same events."""
    n_i = inp.items.height
    conf = _confidence(s.window(), s.exclude_csr.shape)
    excl = s.exclude_csr
    rows = users.to_numpy().astype(np.int64)
    top = als_recommend(fit_als(conf, seed), rows, RECALL_K, excl, n_i)[0]  # (Q, 50)
    df = pl.DataFrame({"u": np.repeat(rows, top.shape[1]).astype(np.uint32), "i": top.ravel().astype(np.int32),
                       "rank": np.tile(np.arange(1, top.shape[1] + 1, dtype=np.int32), len(rows))})  # fmt: skip
    return df.filter(pl.col("i") >= 0)
