"""Training loop of the dual-tower retriever (models/towers.py), checkpoints and warm start.

`train_retriever` minimises the sampled-softmax loss of models/losses.py (`info_nce`) over batches of
(user batch, item batch) pairs, one positive item per user row, with Adam. Per batch:

* in-batch negatives: every other positive of the batch is a negative of a row;
* logQ correction (cfg.logq_correction): ``log q_j = log(B * p_j)`` is subtracted from column j, where
  ``p_j`` is item j's share of the training positives (`item_log_q` holds ``log p_j``; B is the batch's
  size). ``B * p_j`` is the expected number of copies of item j in a batch of B positives drawn from the
  training stream, i.e. its probability of being a candidate of that batch (for small p_j), the scale
  models/losses.py asks for (Yi et al. 2019, eq. 3);
* accidental hits (cfg.remove_accidental_hits): a column holding row i's own item is masked for row i;
* mixed negatives (cfg.mixed_negatives = B' > 0): B' catalogue rows drawn uniformly each batch are appended
  as extra columns, with ``log q = log(B' / N)`` (Yang et al. 2020);
* symmetric (cfg.symmetric): each pair's loss also has the item -> user term, item j's softmax over the
  batch's users (`info_nce`'s docstring says which adjustments apply in that direction);
* temperature: cfg.temperature, or with cfg.learn_temperature a tau learnt with the weights
  (`LearnableTemperature`, initialised at cfg.temperature, clamped to [min_temperature, max_temperature]),
  held by the model (`TwoTower.tau`, so the checkpoint carries it) and reported after every epoch.

Optimiser: Adam for the dense weights and SparseAdam (lazy Adam: moments and updates only for the rows a
batch reads) for the embedding tables, whose gradients are made sparse for the duration of the call. The
hashed id tables are by far the largest tensors (e.g. 300k rows x 32) and a batch touches a few hundred
rows, so a dense Adam step would read and write every row of every table at every step: on the 2-core
development box that was ~0.2-0.4 s per step for the default buckets, against ~0.05 s for the forward and
backward passes.

After every epoch `valid_fn(model)` returns a validation score (e.g. full-catalogue Recall@50 on the
validation day); training stops early when it has not improved for cfg.patience epochs, and the best
weights are loaded back. Randomness of the loop runs on a forked, seeded torch RNG; the caller seeds the
data order and the uniform sampler, so the same seed, model and batches give the same weights on CPU.

Item batches carry ``item_idx`` [B] int64, the catalogue row of each positive: it indexes `item_log_q`,
identifies duplicates for the accidental-hit mask, and is the id space of the uniform sampler.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from models import checkpoint
from models.config import RetrieverConfig
from models.early_stopping import EarlyStopping
from models.inputs import Batch, FieldLayout
from models.losses import info_nce
from models.towers import TwoTower
from models.train import sparse_grads

log = logging.getLogger(__name__)

ITEM_IDX = "item_idx"  # key of the catalogue row of each positive in an item batch
_CHECKPOINT_KIND = "retriever"


class ItemSampler(Protocol):
    """Uniform catalogue rows for mixed negatives (features.sampling.UniformItemSampler fits)."""

    n_items: int

    def sample(self, n: int) -> np.ndarray:  # pragma: no cover - a protocol
        """Returns [n] int64 catalogue rows in [0, n_items)."""


@dataclass
class RetrieverTrainResult:
    """Outcome of `train_retriever`.

    state_dict:    best weights (validation score), CPU tensors
    history:       validation score after each epoch run
    train_loss:    mean InfoNCE of each epoch
    best_epoch:    0-based epoch of the best validation score
    samples_per_s: training rows per second (forward + backward + step; validation excluded)
    seconds:       wall time of the whole call, validation included
    temperature:   the learnt tau after each epoch (cfg.learn_temperature; empty otherwise)
    """

    state_dict: dict[str, torch.Tensor]
    history: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    best_epoch: int = -1
    samples_per_s: float = 0.0
    seconds: float = 0.0
    temperature: list[float] = field(default_factory=list)

    @property
    def best_score(self) -> float:
        return self.history[self.best_epoch] if self.best_epoch >= 0 else float("nan")

    def figures(self) -> dict[str, Any]:
        """Plain-JSON summary for manifests and metrics files (with a learnt tau: its value at the best
        epoch, the one saved with the model, and after each epoch)."""
        out = {
            "epochs_run": len(self.history),
            "best_epoch": self.best_epoch,
            "best_valid": self.best_score,
            "valid_history": [round(v, 6) for v in self.history],
            "train_loss": [round(v, 6) for v in self.train_loss],
            "samples_per_s": round(self.samples_per_s, 1),
            "seconds": round(self.seconds, 2),
        }
        if self.temperature:
            out["learnt_temperature"] = round(self.temperature[self.best_epoch], 6)
            out["temperature_history"] = [round(t, 6) for t in self.temperature]
        return out


def gather_rows(batch: Batch, rows: torch.Tensor) -> Batch:
    """Rows of every tensor of a batch.

    Args:
        batch: dict of tensors whose first dim is the same R (e.g. the whole catalogue's item batch).
        rows: [B] int64 positions in [0, R).

    Returns:
        dict with the same keys, each tensor [B, ...].
    """
    return {k: v.index_select(0, rows.to(v.device)) for k, v in batch.items()}


def _to(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _item_rows(item_batch: Batch) -> torch.Tensor:
    if ITEM_IDX not in item_batch:
        raise ValueError(
            f"train_retriever: the item batch has no '{ITEM_IDX}' (keys: {sorted(item_batch)}); fix: add "
            f"{ITEM_IDX} [B] int64, the catalogue row of each positive"
        )
    return item_batch[ITEM_IDX].long()


def batch_loss(
    model: TwoTower,
    user_batch: Batch,
    item_batch: Batch,
    cfg: RetrieverConfig,
    item_log_q: torch.Tensor | None,
    extra_rows: torch.Tensor | None = None,
    catalogue: Batch | None = None,
) -> torch.Tensor:
    """InfoNCE of one batch with the adjustments switched on in `cfg`.

    Args:
        model: the two towers.
        user_batch: user features of B rows (sparse, hist, counts, numeric).
        item_batch: item features of each row's positive, plus item_idx [B] int64 (catalogue rows).
        cfg: logq_correction, remove_accidental_hits, symmetric (the temperature is `model.temperature()`:
            cfg.temperature, or the learnt tau with cfg.learn_temperature).
        item_log_q: [N] float32 ``log p_j`` (share of training positives) per catalogue row, on the model's
            device; needed when cfg.logq_correction. The in-batch log q is ``log p_j + log B``.
        extra_rows: [B'] int64 catalogue rows of uniformly drawn mixed negatives, or None.
        catalogue: item batch of the whole catalogue ([N, ...] tensors); needed with extra_rows.

    Returns:
        [] float32 loss.
    """
    rows = _item_rows(item_batch)  # (B,)
    b = rows.shape[0]
    u = model.user_embedding(user_batch)  # (B, D)
    v = model.item_embedding(item_batch)  # (B, D)
    use_logq = cfg.logq_correction
    if use_logq and item_log_q is None:
        raise ValueError(
            "train_retriever: retriever.logq_correction is true but item_log_q is None; fix: pass the log "
            "share of training positives per item (features.sampling.item_sampling_probs)"
        )
    log_q = item_log_q[rows] + math.log(b) if use_logq else None  # (B,)
    extra_emb = extra_log_q = None
    if extra_rows is not None and extra_rows.numel():
        if catalogue is None:
            raise ValueError("train_retriever: mixed negatives need the catalogue item batch; pass catalogue")
        n_items = next(iter(catalogue.values())).shape[0]
        extra_emb = model.item_embedding(gather_rows(catalogue, extra_rows))  # (B', D)
        n_extra = extra_rows.shape[0]
        extra_log_q = torch.full((n_extra,), math.log(n_extra / n_items), device=u.device)  # (B',)
    else:
        extra_rows = None
    return info_nce(
        u,
        v,
        model.temperature(),
        item_log_q=log_q,
        item_ids=rows,
        extra_item_emb=extra_emb,
        extra_log_q=extra_log_q,
        extra_item_ids=extra_rows,
        use_logq=use_logq,
        use_remove_hits=cfg.remove_accidental_hits,
        symmetric=cfg.symmetric,
    )


def train_retriever(
    model: TwoTower,
    train_batches: Callable[[], Iterable[tuple[Batch, Batch]]],
    valid_fn: Callable[[TwoTower], float],
    cfg: RetrieverConfig,
    seed: int,
    device: torch.device | str,
    item_log_q: torch.Tensor | None,
    sampler: ItemSampler | None = None,
    catalogue: Batch | None = None,
    progress: bool = False,
) -> RetrieverTrainResult:
    """Train the two towers with InfoNCE and early stopping on `valid_fn`; returns the best state.

    Args:
        model: a `TwoTower` (moved to `device`).
        train_batches: called once per epoch; returns a fresh iterable of (user batch, item batch) pairs,
            the item batch with item_idx [B] int64. The caller orders (shuffles) the rows.
        valid_fn: model -> validation score, higher is better (called in eval mode after every epoch).
        cfg: the retriever config (lr, epochs, patience, temperature, loss switches, mixed_negatives).
        seed: seeds the forked torch RNG of the loop (the global RNG is left as it was).
        device: where to train.
        item_log_q: [N] float32 ``log p_j``, item j's share of the training positives (0 shares may hold
            any finite value: such items never occur in a batch); None only when cfg.logq_correction is off.
        sampler: draws cfg.mixed_negatives uniform catalogue rows per batch; needed when mixed_negatives > 0.
        catalogue: item batch of all N catalogue rows ([N, ...] tensors); needed when mixed_negatives > 0.
        progress: tqdm bar per epoch.
    """
    device = torch.device(device)
    start_all = time.perf_counter()
    if cfg.mixed_negatives and (sampler is None or catalogue is None):
        raise ValueError(
            f"train_retriever: retriever.mixed_negatives={cfg.mixed_negatives} needs a sampler and the "
            "catalogue item batch; fix: pass both or set retriever.mixed_negatives=0"
        )
    model = model.to(device)
    log_q = item_log_q.to(device=device, dtype=torch.float32) if item_log_q is not None else None
    if log_q is not None and not torch.isfinite(log_q).all():
        raise ValueError("train_retriever: item_log_q holds NaN or inf; clamp zero shares before the log")
    cat = _to(catalogue, device) if catalogue is not None and cfg.mixed_negatives else None
    cuda = [device] if device.type == "cuda" else []
    result = RetrieverTrainResult(state_dict={})
    n_total, s_total = 0, 0.0
    tables = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    table_ids = {id(m.weight) for m in tables}
    dense = [p for p in model.parameters() if id(p) not in table_ids]
    with torch.random.fork_rng(devices=cuda), sparse_grads(tables):
        torch.manual_seed(seed)
        opts = [torch.optim.Adam(dense, lr=cfg.lr)]
        if tables:
            opts.append(torch.optim.SparseAdam([m.weight for m in tables], lr=cfg.lr))
        stopper = EarlyStopping(cfg.patience)
        for epoch in range(cfg.epochs):
            model.train()
            loss_sum = torch.zeros((), device=device)
            n = 0
            t0 = time.perf_counter()
            bar = tqdm(train_batches(), desc=f"retriever {epoch + 1}/{cfg.epochs}", disable=not progress)
            for user_batch, item_batch in bar:
                ub, ib = _to(user_batch, device), _to(item_batch, device)
                extra = None
                if cfg.mixed_negatives:
                    extra = torch.from_numpy(np.asarray(sampler.sample(cfg.mixed_negatives), dtype=np.int64))
                    extra = extra.to(device)
                loss = batch_loss(model, ub, ib, cfg, log_q, extra, cat)
                for opt in opts:
                    opt.zero_grad(set_to_none=True)
                loss.backward()
                for opt in opts:
                    opt.step()
                b = ib[ITEM_IDX].shape[0]
                loss_sum += loss.detach() * b
                n += b
            s_total += time.perf_counter() - t0
            n_total += n
            if n == 0:
                raise ValueError("train_retriever: train_batches() yielded no rows; check the training frame")
            model.eval()
            with torch.no_grad():
                score = float(valid_fn(model))
            result.history.append(score)
            result.train_loss.append(float(loss_sum) / n)
            log.info("retriever epoch %d: loss %.5f, valid %.5f", epoch, result.train_loss[-1], score)
            if model.tau is not None:
                result.temperature.append(float(model.tau().detach()))
                log.info("retriever epoch %d: learnt temperature %.5f", epoch, result.temperature[-1])
            stop = stopper.step(score, epoch, model)
            result.state_dict, result.best_epoch = stopper.state_dict, stopper.best_epoch
            if stop:
                log.info(
                    "retriever: early stop after epoch %d (no gain for %d epochs)", epoch, stopper.bad_epochs
                )
                break
    model.load_state_dict(result.state_dict)
    model.eval()
    result.samples_per_s = n_total / s_total if s_total > 0 else 0.0
    result.seconds = time.perf_counter() - start_all
    return result


@torch.no_grad()
def encode(
    tower: Callable[[Batch], torch.Tensor], batch: Batch, chunk: int, device: torch.device | str
) -> torch.Tensor:
    """Run a tower over a large batch in chunks (no grad).

    Args:
        tower: e.g. ``model.item_embedding``; the model should be in eval mode.
        batch: dict of [R, ...] tensors (on any device).
        chunk: rows per forward pass.
        device: where the tower runs.

    Returns:
        [R, D] float32 on the CPU.
    """
    if chunk < 1:
        raise ValueError(f"encode: chunk must be >= 1, got {chunk}")
    r = next(iter(batch.values())).shape[0]
    parts = []
    for lo in range(0, r, chunk):
        part = {k: v[lo : lo + chunk].to(device) for k, v in batch.items()}
        parts.append(tower(part).float().cpu())
    if not parts:
        return torch.zeros(0, 0)
    return torch.cat(parts)  # (R, D)


# ---------------------------------------------------------------- checkpoints


def _layout_json(layout: FieldLayout) -> dict[str, list]:
    return {"names": list(layout.names), "sizes": list(layout.sizes)}


def build_args(model: TwoTower) -> dict[str, Any]:
    """The arguments `TwoTower` was built with, as plain JSON-able data (stored in every checkpoint)."""
    it, ut = model.item_tower, model.user_tower
    return {
        "config": model.cfg.model_dump(),
        "user_layout": _layout_json(ut.layout),
        "item_layout": _layout_json(it.layout),
        "n_counts": ut.n_counts,
        "n_user_numeric": ut.n_numeric,
        "n_item_numeric": it.n_numeric,
        "text_dim": it.text.proj.in_features if it.text is not None else 0,
        "image_dim": it.image.proj.in_features if it.image is not None else 0,
    }


def build_from_args(args: dict[str, Any]) -> TwoTower:
    """A fresh `TwoTower` from `build_args` output."""
    return TwoTower(
        RetrieverConfig.model_validate(args["config"]),
        FieldLayout(tuple(args["user_layout"]["names"]), tuple(args["user_layout"]["sizes"])),
        FieldLayout(tuple(args["item_layout"]["names"]), tuple(args["item_layout"]["sizes"])),
        int(args["n_counts"]),
        int(args["n_user_numeric"]),
        int(args["n_item_numeric"]),
        int(args["text_dim"]),
        int(args["image_dim"]),
    )


def save_retriever(path: Path | str, model: TwoTower, meta: dict[str, Any] | None = None) -> Path:
    """Write weights, build arguments (config, layouts, dims) and `meta` atomically (temp file + rename).

    `meta` holds plain Python values (e.g. run id, training figures); its keys must not clash with the
    build arguments.
    """
    path = Path(path)
    args = build_args(model)
    meta = dict(meta or {})
    clash = sorted(k for k in args if k in meta)
    if clash:
        raise ValueError(f"save_retriever({path}): meta keys {clash} are build arguments; fix: rename them")
    return checkpoint.write(path, _CHECKPOINT_KIND, model, {**meta, **args})


def _read(path: Path) -> dict[str, Any]:
    return checkpoint.read(path, _CHECKPOINT_KIND)


def load_retriever(path: Path | str) -> tuple[TwoTower, dict[str, Any]]:
    """Rebuild the towers from a checkpoint's build arguments and load the weights (CPU, eval mode).

    Returns (model, meta); meta holds the build arguments and whatever the saver added.
    """
    payload = _read(Path(path))
    model = build_from_args(payload["meta"])
    model.load_state_dict(payload["state_dict"])
    return model.eval(), payload["meta"]


def warm_start_retriever(model: nn.Module, path: Path | str) -> list[str]:
    """Copy into `model` every tensor of a previous retriever checkpoint whose name and shape match.

    Returns the names copied (sorted); the other tensors keep their values (a table whose bucket count
    changed, a modality switched on, a wider MLP). Logs what was kept.
    """
    return checkpoint.warm_start(model, path, _CHECKPOINT_KIND)
