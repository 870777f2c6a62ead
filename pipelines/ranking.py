"""The ranker stages: train DCN-Mix (or a baseline) nightly, score the retriever's candidates, evaluate.

Two stages, one call each (docs/ranking.md):

* `train_ranker_stage`: frames/dt=D ranker_train (training) and ranker_valid (early stopping), streamed
  through `pipelines.batches` with every side (user, item, cross fields, history, counts, numeric, item
  text/image) -> `models.train.train_ranker` -> `ranker/dt=D/` with `model.pt` (weights, build arguments,
  batch spec, vocab, numeric statistics) and `metrics.json` (valid and, when frames has D+1, eval metrics).
* `score_stage`: candidates/dt=D (user_id, item_id, rank, score) -> ranker features of every (user,
  candidate) pair, built from frames users.parquet (features as of the end of D), items.parquet and the
  crossed fields hashed from the raw attributes -> `scores/dt=D/part-0.parquet` (user_id, item_id, score,
  rank), plus the full-funnel NDCG@10 / Recall@10 of ranker, retriever and popularity orders. Candidates
  are read, featurised, scored, ranked and appended per block of users (`SCORE_BLOCK_USERS`), and the
  funnel is summed per block (`FunnelAccumulator`), so memory follows the block, not the pair count.

The helpers (`prepare_data`, `fit`, `evaluate_split`, `pair_features`, `rank_by_score`, `funnel_metrics`)
are public so the benchmarks train and evaluate through exactly the same code.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from torch import nn

from features.hashing import FieldSpec, Vocab, bucketize, strings_as_categorical
from models.config import RankerConfig
from models.device import resolve_device
from models.inputs import Batch
from models.metrics import (
    auc,
    calibration,
    gauc,
    logloss,
    permutation_importance,
    singular_values,
    sparse_fields,
)
from models.ranker import build_ranker, cross_matrices, quantize_int8
from models.train import (
    TrainResult,
    load_checkpoint,
    padded_batch,
    predict,
    save_checkpoint,
    train_ranker,
    warm_start,
)
from pipelines import io
from pipelines.batches import (
    BatchSpec,
    ItemContent,
    load_item_content,
    load_vocab,
    parquet_rows,
    spec_for,
    stream_batches,
    to_batch,
)
from retrieval.metrics import ndcg_at_k, recall_at_k

log = logging.getLogger(__name__)

DATASET = "ranker"
SCORES = "scores"
FRAMES = "frames"
EMBEDDINGS = "embeddings"
CANDIDATES = "two_tower"  # the retriever's lists (pipelines.retriever.CANDIDATES)
MODEL_FILE = "model.pt"
METRICS_FILE = "metrics.json"
FUNNEL_FILE = "funnel.json"
SIDES = ("user", "item", "cross")
FUNNEL_K = 10
POPULARITY_DAYS = 7
IMPORTANCE_ROWS = 20_000  # rows of the permutation-importance sample
SCORE_CHUNK = 8_192  # pairs per forward pass when scoring (same scores as 65,536; a tenth of the activations)
# users whose candidates are featurised, scored and ranked together; large preset, score stage alone:
# 10,000 users per block peaked at 2.06 GB, 4,096 at 1.29 GB in the same time (scores bit-identical)
SCORE_BLOCK_USERS = 4_096
_DEFAULT_HIST_LEN = 10


# ---------------------------------------------------------------- data


@dataclass(frozen=True)
class RankerData:
    """Everything a ranker needs from one frames partition: files, vocab, batch spec and item content.

    `content` is None when the embeddings partition of D is absent (or item content was turned off); the
    model is then built without the text/image inputs.
    """

    train: Path
    valid: Path
    eval: Path | None
    vocab: Vocab
    spec: BatchSpec
    content: ItemContent | None
    hist_field: str | None

    @property
    def text_dim(self) -> int:
        return self.content.text_dim if self.content is not None else 0

    @property
    def image_dim(self) -> int:
        return self.content.image_dim if self.content is not None else 0


def _frames_config(out: Path, dt: date) -> dict[str, Any]:
    """The resolved config stored beside frames/dt=D (empty when the run recorded none)."""
    path = io.committed_path(out, FRAMES, dt, io.CONFIG_FILE)
    return json.loads(path.read_text()) if path.is_file() else {}


def _hist_len(out: Path, dt: date, users_or_examples: Path) -> int:
    """features.history_len of the frames run, else the longest `hist` list of the file (at least 1)."""
    n = _frames_config(out, dt).get("features", {}).get("history_len")
    if n is not None:
        return int(n)
    longest = pl.scan_parquet(users_or_examples).select(pl.col("hist").list.len().max()).collect().item()
    return max(int(longest or 0), 1) if longest is not None else _DEFAULT_HIST_LEN


def item_id_field(vocab: Vocab) -> str | None:
    """The item field hashed from item_id alone (its buckets fill `hist`), or None when there is none."""
    hits = [f.name for f in vocab.fields if f.side == "item" and tuple(f.sources) == ("item_id",)]
    return hits[0] if len(hits) == 1 else None


def prepare_data(
    out: Path, dt: date, *, item_content: bool = True, sides: tuple[str, ...] = SIDES
) -> RankerData:
    """Paths, vocab and the batch spec of the ranker files of frames/dt=D.

    item_content: use the text/image embeddings of embeddings/dt=D when that partition is committed.
    sides: vocab sides whose hashed fields enter the model (all three for the nightly ranker).
    """
    out = Path(out)
    train = io.committed_path(out, FRAMES, dt, "ranker_train.parquet")
    valid = io.committed_path(out, FRAMES, dt, "ranker_valid.parquet")
    eval_path = io.partition_dir(out, FRAMES, dt) / "eval_ranker.parquet"
    vocab = load_vocab(out, dt)
    content = None
    if item_content and io.is_committed(out, EMBEDDINGS, dt):
        content = load_item_content(out, dt)
    elif item_content:
        log.warning("ranker dt=%s: embeddings/dt=%s is not committed; training without text/image", dt, dt)
    schema = pl.read_parquet_schema(train)
    spec = spec_for(
        vocab,
        schema,
        sides,
        hist_len=_hist_len(out, dt, train),
        item_content=content is not None,
        label=True,
    )
    hist_field = item_id_field(vocab) if spec.hist_len else None
    if spec.hist_len and hist_field not in spec.fields:
        hist_field = None  # no item_id field among the chosen sides: the history has no table to read
        spec = BatchSpec(spec.fields, spec.counts, spec.numeric, 0, spec.item_content, spec.label)
    return RankerData(
        train=train,
        valid=valid,
        eval=eval_path if eval_path.is_file() else None,
        vocab=vocab,
        spec=spec,
        content=content,
        hist_field=hist_field,
    )


def build_model(cfg: RankerConfig, data: RankerData, seed: int) -> nn.Module:
    """`models.ranker.build_ranker` with the widths of `data`'s batch spec."""
    return build_ranker(
        cfg,
        data.spec.layout(data.vocab),
        data.hist_field,
        len(data.spec.counts),
        len(data.spec.numeric),
        data.text_dim,
        data.image_dim,
        seed=seed,
    )


# ---------------------------------------------------------------- training and evaluation


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

    result = train_ranker(model, train_batches, valid_batches, cfg, seed, device, progress=progress)
    return model, result, info


def _sigmoid(x: np.ndarray) -> np.ndarray:
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
    probs = _sigmoid(logits)
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
    """Permutation-importance groups: each hashed field, hist, counts, numeric, text, image."""
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


def _previous_model(out: Path, dt: date) -> tuple[date, Path] | None:
    """The newest committed ranker partition strictly before D, for warm start."""
    earlier = [d for d in io.committed_dates(out, DATASET) if d < dt]
    if not earlier:
        return None
    prev = earlier[-1]
    return prev, io.committed_path(out, DATASET, prev, MODEL_FILE)


def _spec_json(spec: BatchSpec) -> dict[str, Any]:
    return {
        "fields": list(spec.fields),
        "counts": list(spec.counts),
        "numeric": list(spec.numeric),
        "hist_len": spec.hist_len,
        "item_content": spec.item_content,
    }


def _spec_from_json(d: dict[str, Any], label: bool) -> BatchSpec:
    return BatchSpec(
        tuple(d["fields"]),
        tuple(d["counts"]),
        tuple(d["numeric"]),
        int(d["hist_len"]),
        bool(d["item_content"]),
        label,
    )


def train_ranker_stage(
    out: Path, dt: date, cfg: RankerConfig, seed: int, device: str, run: io.RunInfo
) -> dict[str, Any]:
    """Train the ranker of D on frames/dt=D and commit `ranker/dt=D/` (model.pt, metrics.json).

    Warm start (cfg.warm_start) copies every same-shaped tensor of the newest committed ranker before D.
    Metrics: valid (ranker_valid of D) and eval (eval_ranker of D+1, when present): AUC, logloss, GAUC,
    decile calibration and ECE; per-input permutation importance on eval (else valid); the singular values
    of each cross layer (DCN models); with cfg.quantize_int8, AUC change and CPU speed-up of INT8 scoring.
    Returns the scalar summary (also in the partition manifest).
    """
    out = Path(out)
    dev = resolve_device(device)
    data = prepare_data(out, dt)
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
        "inputs": {**_spec_json(data.spec), "text_dim": data.text_dim, "image_dim": data.image_dim},
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
    numeric_stats_path = io.committed_path(out, FRAMES, dt, "numeric_stats.json")
    meta = {
        "dt": dt.isoformat(),
        "seed": seed,
        "run_id": run.run_id,
        "vocab": data.vocab.to_json(),
        "spec": _spec_json(data.spec),
        "feature_stats": json.loads(numeric_stats_path.read_text()) if numeric_stats_path.is_file() else {},
        "valid_auc": metrics["valid"]["auc"],
    }
    with io.staged_partition(out, DATASET, dt, run) as stage:
        save_checkpoint(stage.path(MODEL_FILE), model.to("cpu"), meta)
        stage.write_json(METRICS_FILE, metrics)
        stage.add_inputs(
            f"{FRAMES}/dt={dt}", *([f"{EMBEDDINGS}/dt={dt}"] if data.content is not None else [])
        )
        if prev is not None:
            stage.add_inputs(f"{DATASET}/dt={prev[0]}")
        summary = _summary(metrics)
        stage.extra.update(summary)
    log.info("ranker dt=%s: %s", dt, summary)
    return {
        **summary,
        "dataset": DATASET,
        "dt": dt.isoformat(),
        "path": str(io.partition_dir(out, DATASET, dt)),
    }


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


# ---------------------------------------------------------------- scoring


def _raw_attributes(out: Path, dt: date, run: io.RunInfo) -> tuple[Path, int]:
    """Input data root and hash seed of the run that built frames/dt=D (else of this run)."""
    for source in (_frames_config(out, dt), run.config):
        data_dir = source.get("data", {}).get("dir")
        if data_dir is not None:
            return Path(data_dir), int(source.get("features", {}).get("hash_seed", 0))
    raise ValueError(
        f"{io.partition_dir(out, FRAMES, dt)}/{io.CONFIG_FILE}: no data.dir recorded, so the crossed fields of "
        "(user, candidate) pairs cannot be hashed from the raw attributes; fix: run the frames stage with a "
        "RunInfo carrying the resolved config"
    )


@dataclass(frozen=True)
class PairTables:
    """What the features of (user, candidate) pairs are joined from, read once per scoring run.

    users: frames users.parquet (features as of the end of D); items: frames items.parquet without `seen`;
    raw_users / raw_items: user_id / item_id and the raw attributes the crossed fields hash (None when the
    vocab has no crossed field); crosses: those fields; hash_seed: the frames run's mmh3 seed.
    """

    users: pl.DataFrame
    items: pl.DataFrame
    raw_users: pl.DataFrame | None
    raw_items: pl.DataFrame | None
    crosses: tuple[FieldSpec, ...]
    hash_seed: int


def pair_tables(out: Path, dt: date, vocab: Vocab, data_dir: Path, hash_seed: int) -> PairTables:
    """Read the tables `join_pair_features` needs (frames users/items of D, raw attributes under data_dir).

    Their size grows with the catalogue and the user base (one row each), never with the number of pairs.
    """
    users = io.read_table(out, FRAMES, dt, "users")
    items = io.read_table(out, FRAMES, dt, "items").drop("seen", strict=False)
    crosses = tuple(vocab.side("cross"))
    if not crosses:
        return PairTables(users, items, None, None, (), hash_seed)
    user_src = {s for f in vocab.side("user") for s in f.sources}
    item_src = {s for f in vocab.side("item") for s in f.sources}
    need = {s for f in crosses for s in f.sources}
    unknown = sorted(need - user_src - item_src)
    if unknown:
        raise ValueError(
            f"vocab of frames/dt={dt}: crossed sources {unknown} are neither user nor item attributes; "
            "fix: rebuild the frames with this code"
        )
    # String attributes as Categorical: they are joined onto every candidate pair before the crosses are hashed
    raw_u = io.read_users(data_dir)
    raw_u = raw_u.select("user_id", *strings_as_categorical(raw_u.schema, sorted(need & user_src)))
    raw_i = io.read_items(data_dir)
    raw_i = raw_i.select("item_id", *strings_as_categorical(raw_i.schema, sorted(need & item_src)))
    return PairTables(users, items, raw_u, raw_i, crosses, hash_seed)


def join_pair_features(pairs: pl.DataFrame, tables: PairTables) -> tuple[pl.DataFrame, int]:
    """Ranker features of (user_id, item_id) pairs from tables read by `pair_tables`.

    pairs: [P rows] with user_id, item_id (other columns are kept, row order too). Pairs whose user or
    item is not in the frames tables are dropped. Returns (features [P' rows], number of pairs dropped).
    """
    df = pairs.join(tables.users, on="user_id", how="inner", maintain_order="left").join(
        tables.items, on="item_id", how="inner", maintain_order="left"
    )
    dropped = pairs.height - df.height
    if tables.crosses:
        raw_u, raw_i = tables.raw_users, tables.raw_items
        df = df.join(raw_u, on="user_id", how="left", maintain_order="left").join(
            raw_i, on="item_id", how="left", maintain_order="left"
        )
        df = bucketize(df, list(tables.crosses), tables.hash_seed).drop(raw_u.columns[1:] + raw_i.columns[1:])
    return df, dropped


def pair_features(
    out: Path, dt: date, pairs: pl.DataFrame, vocab: Vocab, data_dir: Path, hash_seed: int
) -> tuple[pl.DataFrame, int]:
    """Ranker features of (user_id, item_id) pairs as of the end of D.

    pairs: [P rows] with user_id, item_id (other columns are kept). User fields, hist, cnt_* and num_user_*
    come from frames users.parquet; item fields, item_idx and num_item_* from frames items.parquet; each
    crossed field is hashed (`features.hashing.bucketize`) from the raw attributes of users.parquet /
    items.parquet under `data_dir`, as the frames stage did. Pairs whose user or item is not in the frames
    tables are dropped. Returns (features [P' rows], number of pairs dropped). Many blocks of pairs:
    read `pair_tables` once and call `join_pair_features` per block.
    """
    return join_pair_features(pairs, pair_tables(out, dt, vocab, data_dir, hash_seed))


def rank_by_score(df: pl.DataFrame) -> pl.DataFrame:
    """Rank each user's rows by `score` (descending; ties by `retriever_rank`, then item_id): rank 1..K.

    df: rows with user_id, item_id, score and optionally retriever_rank. Returns it sorted by user, rank.
    """
    tie = ["retriever_rank"] if "retriever_rank" in df.columns else []
    out = df.sort(
        ["user_id", "score", *tie, "item_id"], descending=[False, True, *([False] * len(tie)), False]
    )
    return out.with_columns((pl.int_range(pl.len(), dtype=pl.Int32).over("user_id") + 1).alias("rank"))


def _top_lists(df: pl.DataFrame, order: str, users: pl.DataFrame, k: int) -> np.ndarray:
    """[U, k] str item ids of each user of `users` by ascending `order`, padded with "" (no such id)."""
    lists = (
        df.sort(["user_id", order])
        .group_by("user_id", maintain_order=True)
        .agg(pl.col("item_id").head(k).alias("top"))
    )
    aligned = users.join(lists, on="user_id", how="left", maintain_order="left")
    pad = pl.lit([""] * k, dtype=pl.List(pl.String))
    arr = aligned.select(
        pl.concat_list([pl.col("top").fill_null(pl.lit([], dtype=pl.List(pl.String))), pad])
        .list.head(k)
        .list.to_array(k)
    ).to_series()
    return np.asarray(arr.to_numpy(), dtype=str).reshape(users.height, k)


def funnel_metrics(
    scored: pl.DataFrame, positives: pl.DataFrame, popular: list[str], k: int = FUNNEL_K
) -> dict[str, Any]:
    """NDCG@k and Recall@k of three orders against the positives of D+1, on the same users.

    scored: [P rows] user_id, item_id, rank (the ranker's order), retriever_rank (the retriever's order);
    positives: user_id, item_id pairs with a positive on D+1 (frames eval_retrieval); popular: the most
    popular item ids, best first. Users: those with a positive on D+1 and at least one candidate.
    candidate_recall is recall over all of a user's candidates (the ceiling of any re-ranking).
    """
    rel = positives.unique(["user_id", "item_id"]).group_by("user_id").agg(pl.col("item_id").alias("rel"))
    users = rel.join(scored.select("user_id").unique(), on="user_id", how="semi").sort("user_id")
    if users.height == 0:
        return {"users": 0, "k": k, "note": "no user with a D+1 positive has candidates"}
    relevant = [set(r) for r in users["rel"].to_list()]
    ids = users.select("user_id")
    ranker = _top_lists(scored, "rank", ids, k)
    retriever = _top_lists(scored, "retriever_rank", ids, k)
    pop = np.broadcast_to(np.asarray((list(popular) + [""] * k)[:k], dtype=str), (users.height, k))
    k_max = int(scored.group_by("user_id").len()["len"].max())
    all_cands = _top_lists(scored, "retriever_rank", ids, k_max)
    out: dict[str, Any] = {"users": users.height, "k": k, "positives_users_total": rel.height}
    for name, ranked in (("ranker", ranker), ("retriever", retriever), ("popularity", pop)):
        out[name] = {
            f"ndcg@{k}": ndcg_at_k(ranked, relevant, [k])[k],
            f"recall@{k}": recall_at_k(ranked, relevant, [k])[k],
        }
    out["candidate_recall"] = recall_at_k(all_cands, relevant, [k_max])[k_max]
    out["candidates_per_user_max"] = k_max
    return out


class FunnelAccumulator:
    """`funnel_metrics` computed block by block: feed disjoint groups of users, read the result at the end.

    Each `add` takes every scored candidate of some users (no user split across two calls) and adds the
    sums over those users of each NDCG@k / Recall@k (the block's mean times its number of users, from the
    same `retrieval.metrics` functions); `result` divides by the number of users. Equal to `funnel_metrics`
    over the concatenated blocks up to float rounding (~1e-16 relative).
    """

    _ORDERS = ("ranker", "retriever", "popularity")

    def __init__(self, positives: pl.DataFrame, popular: list[str], k: int = FUNNEL_K) -> None:
        """positives: user_id, item_id pairs with a positive on D+1; popular: item ids, best first."""
        self.k = k
        self._rel = (
            positives.unique(["user_id", "item_id"]).group_by("user_id").agg(pl.col("item_id").alias("rel"))
        )
        self._popular = np.asarray((list(popular) + [""] * k)[:k], dtype=str)  # (k,)
        self._users = 0
        self._k_max = 0
        self._sums: dict[str, float] = {}

    def add(self, scored: pl.DataFrame) -> None:
        """scored: [P rows] user_id, item_id, rank, retriever_rank of whole users (see the class)."""
        if scored.height == 0:
            return
        k = self.k
        k_block = int(scored.group_by("user_id").len()["len"].max())  # longest candidate list of the block
        self._k_max = max(self._k_max, k_block)
        users = self._rel.join(scored.select("user_id").unique(), on="user_id", how="semi").sort("user_id")
        n = users.height
        if n == 0:
            return
        relevant = [set(r) for r in users["rel"].to_list()]
        ids = users.select("user_id")
        lists = {
            "ranker": _top_lists(scored, "rank", ids, k),
            "retriever": _top_lists(scored, "retriever_rank", ids, k),
            "popularity": np.broadcast_to(self._popular, (n, k)),
        }
        for name, ranked in lists.items():
            for metric, fn in (("ndcg", ndcg_at_k), ("recall", recall_at_k)):
                key = f"{name}.{metric}"
                self._sums[key] = self._sums.get(key, 0.0) + fn(ranked, relevant, [k])[k] * n
        all_cands = _top_lists(scored, "retriever_rank", ids, k_block)
        key = "candidate_recall"
        self._sums[key] = self._sums.get(key, 0.0) + recall_at_k(all_cands, relevant, [k_block])[k_block] * n
        self._users += n

    def result(self) -> dict[str, Any]:
        """The dict `funnel_metrics` returns for all the users added so far."""
        k, n = self.k, self._users
        if n == 0:
            return {"users": 0, "k": k, "note": "no user with a D+1 positive has candidates"}
        out: dict[str, Any] = {"users": n, "k": k, "positives_users_total": self._rel.height}
        for name in self._ORDERS:
            out[name] = {
                f"ndcg@{k}": self._sums[f"{name}.ndcg"] / n,
                f"recall@{k}": self._sums[f"{name}.recall"] / n,
            }
        out["candidate_recall"] = self._sums["candidate_recall"] / n
        out["candidates_per_user_max"] = self._k_max
        return out


def popular_items(
    out: Path, dt: date, k: int, days: int = POPULARITY_DAYS
) -> tuple[list[str], dict[str, Any]]:
    """The k items with the most positives in the last `days` days up to D (frames retriever files)."""
    since = datetime.combine(dt - timedelta(days=days - 1), datetime.min.time(), tzinfo=UTC)
    frames = [
        io.scan_table(out, FRAMES, dt, name).select("item_id", "ts")
        for name in ("retriever_train", "retriever_valid")
    ]
    pos = pl.concat(frames).filter(pl.col("ts") >= since)
    counts = pos.group_by("item_id").len().sort(["len", "item_id"], descending=[True, False]).collect()
    first = pos.select(pl.col("ts").min()).collect().item()
    return counts["item_id"].head(k).to_list(), {
        "days": days,
        "since": since.isoformat(),
        "earliest_positive": None if first is None else first.isoformat(),
        "positives": int(counts["len"].sum()),
    }


def _load_model(out: Path, dt: date) -> tuple[nn.Module, dict[str, Any], date]:
    """The ranker of D, else the newest committed before D."""
    dates = [d for d in io.committed_dates(out, DATASET) if d <= dt]
    if not dates:
        raise FileNotFoundError(
            f"{io.dataset_dir(out, DATASET)}: no committed ranker at or before {dt}; fix: run the ranker stage first"
        )
    model, meta = load_checkpoint(io.committed_path(out, DATASET, dates[-1], MODEL_FILE))
    return model, meta, dates[-1]


def _score_frame(
    model: nn.Module, df: pl.DataFrame, spec: BatchSpec, content: ItemContent | None, device: torch.device
) -> np.ndarray:
    """[P] float64 probabilities of the rows of `df` (features as in the training frames), in chunks.

    Every forward pass has the one shape [SCORE_CHUNK, ...]: the last chunk is padded (`padded_batch`). The CPU
    matrix kernels (oneDNN/MKL) are chosen by the matrix shape, so on an AVX-512 machine a pair scored in a
    forward of 4 rows differed in its last float32 bits from the same pair scored among 24: a user's scores
    depended on how many users shared its block. With one shape they do not.
    """
    chunks = (df.slice(i, SCORE_CHUNK) for i in range(0, df.height, SCORE_CHUNK))
    parts = [
        predict(model, [padded_batch(to_batch(chunk, spec, content), SCORE_CHUNK)], device)[: chunk.height]
        for chunk in chunks
    ]
    return _sigmoid(np.concatenate(parts) if parts else np.zeros(0, np.float32))


def _candidate_blocks(path: Path, users: pl.Series, block_users: int) -> Iterator[pl.DataFrame]:
    """The candidates of `users` in `path`, in blocks of `block_users` users in ascending user_id order.

    users: [U] String, the users that can be scored (frames users.parquet); candidates of other users are
    never read (they would be dropped by the feature join anyway). Each block: user_id, item_id (String),
    retriever_rank, retriever_score, in file order within the block. A block is read with a range filter
    on user_id, so a file sorted by user (as the retriever stage writes it) is read through the Parquet
    statistics one row-group range per block; any other order still works, reading more.
    """
    if block_users < 1:
        raise ValueError(f"score_stage: block_users must be >= 1, got {block_users}")
    lf = pl.scan_parquet(path).select(
        pl.col("user_id").cast(pl.String),
        pl.col("item_id").cast(pl.String),
        pl.col("rank").alias("retriever_rank"),
        pl.col("score").alias("retriever_score"),
    )
    users = users.cast(pl.String).unique().sort()  # (U,)
    for lo in range(0, users.len(), block_users):
        block = users.slice(lo, block_users)
        in_range = pl.col("user_id").is_between(pl.lit(block[0]), pl.lit(block[-1]), closed="both")
        yield lf.filter(in_range & pl.col("user_id").is_in(block.implode())).collect()


def _scored_block(
    model: nn.Module,
    df: pl.DataFrame,
    spec: BatchSpec,
    content: ItemContent | None,
    device: torch.device,
    with_retriever_rank: bool,
) -> pl.DataFrame:
    """Score and rank the feature rows of whole users: user_id, item_id, [retriever_rank], score, rank."""
    probs = _score_frame(model, df, spec, content, device) if df.height else np.zeros(0)
    scored = df.select(
        "user_id", "item_id", *(["retriever_rank"] if with_retriever_rank else [])
    ).with_columns(pl.Series("score", probs, dtype=pl.Float32))
    return rank_by_score(scored)


def score_stage(
    out: Path,
    dt: date,
    cfg: RankerConfig,
    device: str,
    run: io.RunInfo,
    *,
    block_users: int = SCORE_BLOCK_USERS,
) -> dict[str, Any]:
    """Score every (user, candidate) pair of candidates/dt=D with the ranker of D -> scores/dt=D/part-0.

    Candidates are processed per block of `block_users` users (ascending user_id): features, scores, ranks
    and the funnel sums of one block at a time, each block appended to the scores file, so memory grows
    with the block, not with the number of pairs. The output is the same for any block size (rows sorted
    by user_id then rank). When candidates/dt=D is not committed, the distinct (user, item) pairs of
    eval_ranker (else ranker_valid) of frames/dt=D are scored instead (one block), with their own
    point-in-time features, and the manifest says so (`source`). With cfg.quantize_int8 and a CPU device
    the model runs with INT8 Linear layers. When frames has eval_retrieval (positives of D+1) and candidates
    were scored, the manifest and funnel.json carry NDCG@10 / Recall@10 of the ranker, retriever and
    popularity orders.
    """
    out = Path(out)
    dev = resolve_device(device)
    model, meta, model_dt = _load_model(out, dt)
    vocab = load_vocab(out, dt)
    if vocab.to_json() != meta["vocab"]:
        raise ValueError(
            f"ranker/dt={model_dt}/{MODEL_FILE} was trained with another vocab than frames/dt={dt}; "
            f"fix: run the ranker stage for {dt} (or rebuild the frames with the same features config)"
        )
    spec = _spec_from_json(meta["spec"], label=False)
    content = None
    if spec.item_content:
        if not io.is_committed(out, EMBEDDINGS, dt):
            raise ValueError(
                f"ranker/dt={model_dt} reads item text/image but embeddings/dt={dt} is not committed; "
                "fix: run the embeddings stage for this date"
            )
        content = load_item_content(out, dt)
        if (content.text_dim, content.image_dim) != (meta["text_dim"], meta["image_dim"]):
            raise ValueError(
                f"embeddings/dt={dt} has dims {(content.text_dim, content.image_dim)} but the ranker of "
                f"{model_dt} was trained on {(meta['text_dim'], meta['image_dim'])}; fix: retrain the ranker"
            )
    quantized = cfg.quantize_int8 and dev.type == "cpu"
    model = quantize_int8(model) if quantized else model.to(dev)
    inputs = [f"{DATASET}/dt={model_dt}", f"{FRAMES}/dt={dt}"]
    funnel: dict[str, Any] | None = None
    dropped = rows = users = 0
    columns = ["user_id", "item_id", "score", "rank"]
    with io.staged_partition(out, SCORES, dt, run) as stage:
        with stage.table_writer() as writer:
            if io.is_committed(out, CANDIDATES, dt):
                source = CANDIDATES
                data_dir, hash_seed = _raw_attributes(out, dt, run)
                tables = pair_tables(out, dt, vocab, data_dir, hash_seed)
                accumulator = None
                if (io.partition_dir(out, FRAMES, dt) / "eval_retrieval.parquet").is_file():
                    popular, pop_info = popular_items(out, dt, FUNNEL_K)
                    accumulator = FunnelAccumulator(io.read_table(out, FRAMES, dt, "eval_retrieval"), popular)
                path = io.committed_path(out, CANDIDATES, dt, "part-0.parquet")
                dropped = parquet_rows(path)  # minus every pair that gets features below
                for block in _candidate_blocks(path, tables.users["user_id"], block_users):
                    df, _ = join_pair_features(block, tables)
                    del block
                    dropped -= df.height
                    scored = _scored_block(model, df, spec, content, dev, with_retriever_rank=True)
                    del df
                    if accumulator is not None:
                        accumulator.add(scored)
                    writer.write(scored.select(columns))
                    rows += scored.height
                    users += scored["user_id"].n_unique()
                if accumulator is not None:
                    funnel = accumulator.result()
                    funnel["popularity_window"] = pop_info
                inputs.append(f"{CANDIDATES}/dt={dt}")
            else:
                eval_path = io.partition_dir(out, FRAMES, dt) / "eval_ranker.parquet"
                name = (
                    "eval_ranker" if eval_path.is_file() and parquet_rows(eval_path) > 0 else "ranker_valid"
                )
                source = f"{FRAMES}/{name}"
                log.warning(
                    "scores dt=%s: candidates/dt=%s is not committed; scoring %s pairs instead", dt, dt, name
                )
                df = io.read_table(out, FRAMES, dt, name).unique(
                    ["user_id", "item_id"], keep="first", maintain_order=True
                )
                scored = _scored_block(model, df, spec, content, dev, with_retriever_rank=False)
                writer.write(scored.select(columns))
                rows, users = scored.height, scored["user_id"].n_unique()
            if writer.rows == 0:  # no block at all: the file still exists, with the schema
                empty = {"user_id": pl.String, "item_id": pl.String, "score": pl.Float32, "rank": pl.Int32}
                writer.write(pl.DataFrame(schema=empty))
        stage.add_inputs(*inputs)
        stage.extra.update(
            {
                "source": source,
                "model_dt": model_dt.isoformat(),
                "quantized_int8": quantized,
                "pairs_dropped_unknown_user_or_item": dropped,
                "users": users,
                "funnel": funnel,
                "block_users": block_users,
            }
        )
        if funnel is not None:
            stage.write_json(FUNNEL_FILE, funnel)
    summary: dict[str, Any] = {
        "dataset": SCORES,
        "dt": dt.isoformat(),
        "source": source,
        "rows": rows,
        "model_dt": model_dt.isoformat(),
        "quantized_int8": quantized,
        "path": str(io.partition_dir(out, SCORES, dt)),
    }
    if funnel is not None and funnel.get("users"):
        for name in ("ranker", "retriever", "popularity"):
            summary[f"{name}_ndcg@{FUNNEL_K}"] = funnel[name][f"ndcg@{FUNNEL_K}"]
            summary[f"{name}_recall@{FUNNEL_K}"] = funnel[name][f"recall@{FUNNEL_K}"]
    log.info("scores dt=%s: %s", dt, summary)
    return summary
