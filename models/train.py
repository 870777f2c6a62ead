"""Training loop of the ranker (one code path for DCN-Mix, DCN-V2, LR and FM), checkpoints and warm start.

`train_ranker` streams batches from callables (one fresh iterable per epoch), minimises binary
cross-entropy + l2_embedding * (sum of squares of the embedding rows the batch reads) with Adam and gradient
clipping, evaluates validation AUC after every epoch, and stops early when it has not improved for
`cfg.patience` epochs. It returns the best weights (also loaded into the model).

Speed (docs/ranking.md, "Training speed"):

- Lazy Adam (default): the embedding tables emit sparse gradients (`nn.Embedding.sparse`) and are stepped by
  `torch.optim.SparseAdam`, which updates only the rows a batch read (their moments and values); every
  other parameter gets fused Adam. A dense table gradient would allocate, zero and step every row of every table
  on every step. `lazy_adam=False` gives plain Adam over all parameters (rows not read keep moving with
  their momentum). Gradient clipping uses the global norm over the dense gradients and the coalesced
  sparse ones, so it clips exactly what the dense path would.
- Prefetch (opt-in, `prefetch_batches` > 0): batches of the training stream are produced by a background
  thread into a bounded queue (`prefetch`), so reading and assembling the next batches overlaps the step on
  the current one. The order and content are those of the iterable; the producer must not draw from
  torch's global RNG.

Distributed data parallel (cfg.ddp=True) expects to run under torchrun: it reads RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT, joins the process group (gloo on CPU, nccl on CUDA) unless the
caller already did, wraps the model in DistributedDataParallel and lets rank r train on batch r of each full
round of W batches of the epoch's stream (every rank reads the same stream; the last W - 1 batches at most,
an incomplete round, are left out of that epoch). Every rank so runs the same steps and the same collectives:
no rank waits in a collective its peers never make (DDP's Join, which shadows them, is not needed).
Validation scores are gathered from every rank so that every rank computes the same AUC and takes the same
early-stopping decision.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from models import checkpoint
from models.config import RankerConfig
from models.early_stopping import EarlyStopping
from models.inputs import Batch, FieldLayout
from models.metrics import auc
from models.ranker import build_ranker

log = logging.getLogger(__name__)

_DDP_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
_CHECKPOINT_KIND = "ranker"
# batches read ahead by the background thread of train_ranker (0: read in the training thread); the
# stage passes ranker.prefetch_batches (docs/ranking.md, "Training speed", says when it pays)
PREFETCH_BATCHES: int = RankerConfig.model_fields["prefetch_batches"].default
_PUT_POLL_S = 0.1  # how often a blocked producer checks whether the consumer went away


@dataclass
class TrainResult:
    """Outcome of `train_ranker`.

    state_dict:    best weights (validation AUC), CPU tensors
    history:       validation AUC after each epoch run
    train_loss:    mean training BCE (without the L2 term) of each epoch, on this rank's batches
    best_epoch:    0-based epoch of the best validation AUC
    samples_per_s: training examples per second over all ranks (forward + backward + step, no validation)
    """

    state_dict: dict[str, torch.Tensor]
    history: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    best_epoch: int = -1
    samples_per_s: float = 0.0

    @property
    def best_auc(self) -> float:
        return self.history[self.best_epoch] if self.best_epoch >= 0 else float("nan")


@dataclass(frozen=True)
class _Dist:
    rank: int = 0
    world: int = 1
    on: bool = False  # running under DDP
    created: bool = False  # whether train_ranker created the process group (and so destroys it)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def _setup_ddp(device: torch.device) -> tuple[_Dist, torch.device]:
    missing = [k for k in _DDP_ENV if k not in os.environ]
    if missing:
        raise ValueError(
            f"train_ranker: ranker.ddp is true but the environment lacks {missing}; "
            f"fix: launch with `torchrun --nproc_per_node=N ...` or set ranker.ddp=false"
        )
    created = False
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        created = True
    return _Dist(rank=dist.get_rank(), world=dist.get_world_size(), on=True, created=created), device


def _to_device(batch: Batch, device: torch.device) -> Batch:
    if "label" not in batch:
        raise ValueError(
            f"train_ranker: batch has no 'label' (keys: {sorted(batch)}); fix: add label [B] float32"
        )
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _my_batches(batches: Iterable[Batch], info: _Dist) -> Iterator[Batch]:
    """Every world-th batch, starting at this rank's index (validation: ranks may get one batch fewer)."""
    for i, batch in enumerate(batches):
        if i % info.world == info.rank:
            yield batch


def _my_rounds(batches: Iterable[Batch], info: _Dist) -> Iterator[Batch]:
    """Batch `rank` of each full round of `world` batches: every rank gets the same number of batches (the
    training steps of all ranks match one to one); an incomplete last round is left out."""
    mine = None
    for i, batch in enumerate(batches):
        if i % info.world == info.rank:
            mine = batch
        if i % info.world == info.world - 1:
            yield mine
            mine = None


class _Failure:
    """Carries an exception of the producer thread to the consumer."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


_END = object()  # the producer's end-of-stream marker


def prefetch(items: Iterable[Any], depth: int = 4) -> Iterator[Any]:
    """Iterates `items` in a background thread, `depth` items ahead, and yields them in the same order.

    Memory is bounded by `depth` items in the queue (plus the one the producer is building). An exception
    raised by the iterable is re-raised here, at the position where it occurred. When the consumer stops
    early (break, exception, garbage collection of this generator), the producer is told to stop and is
    joined. `depth` 0 iterates in the calling thread. The iterable runs in another thread: it must not draw
    from torch's global RNG (the training loop's dropout does), or results stop being reproducible.

    >>> list(prefetch(range(5), depth=2))
    [0, 1, 2, 3, 4]
    """
    if depth < 0:
        raise ValueError(f"prefetch: depth={depth} must be >= 0")
    if depth == 0:
        yield from items
        return
    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        """Blocks until `item` is queued (True) or the consumer has gone away (False)."""
        while not stop.is_set():
            try:
                q.put(item, timeout=_PUT_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
        except BaseException as e:  # handed to the consumer, which re-raises it
            put(_Failure(e))
            return
        put(_END)

    worker = threading.Thread(target=produce, name="batch-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()
        worker.join()


def _sparse_grad_tables(model: nn.Module, on: bool) -> list[nn.Embedding]:
    """The ranker's embedding tables, switched to sparse gradients when `on` (see `sparse_grads`)."""
    return list(model.embedding_tables()) if on else []


@contextlib.contextmanager
def sparse_grads(tables: list[nn.Embedding]) -> Iterator[None]:
    """Inside the block the tables emit sparse gradients (for SparseAdam); the flags are restored on exit.

    Used by the ranker loop here and by the retriever loop (models/retriever_train.py).
    """
    before = [t.sparse for t in tables]
    for t in tables:
        t.sparse = True
    try:
        yield
    finally:
        for t, flag in zip(tables, before, strict=True):
            t.sparse = flag


def make_optimizers(
    model: nn.Module, lr: float, device: torch.device, sparse_tables: list[nn.Embedding]
) -> list[torch.optim.Optimizer]:
    """Fused Adam over the dense parameters, plus `torch.optim.SparseAdam` over `sparse_tables` if any.

    With no sparse tables this is one Adam over every parameter (the dense path).
    """
    table_ids = {id(t.weight) for t in sparse_tables}
    dense = [p for p in model.parameters() if p.requires_grad and id(p) not in table_ids]
    # fused: one kernel per step over all dense parameters instead of a Python loop of small ops
    opts: list[torch.optim.Optimizer] = [torch.optim.Adam(dense, lr=lr, fused=device.type in ("cpu", "cuda"))]
    if sparse_tables:
        opts.append(torch.optim.SparseAdam([t.weight for t in sparse_tables], lr=lr))
    return opts


@torch.no_grad()
def clip_grad_norm(params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """Scales all gradients so that their global L2 norm is at most `max_norm`; returns the norm before.

    Like `torch.nn.utils.clip_grad_norm_`, which rejects sparse gradients: a sparse gradient is coalesced
    first (duplicate rows summed, as in its dense form), so its norm is that of the dense gradient.
    """
    grads: list[torch.Tensor] = []
    for p in params:
        if p.grad is None:
            continue
        if p.grad.is_sparse:
            p.grad = p.grad.coalesce()
            grads.append(p.grad.values())  # (U, D), shares storage with the sparse gradient
        else:
            grads.append(p.grad)
    if not grads:
        return torch.zeros(())
    total = nn.utils.get_total_norm(grads, 2.0)
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    torch._foreach_mul_(grads, coef.to(grads[0].device))
    return total


def _autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    return torch.autocast(device_type=device.type, dtype=torch.float16, enabled=enabled)


def tensor_batches(
    tensors: Batch, batch_size: int, *, shuffle: bool = False, seed: int = 0
) -> Iterator[Batch]:
    """Batches of `batch_size` rows (the last one smaller) of in-memory tensors that share their first
    dimension, e.g. {"sparse": [n, F] int64, "label": [n] float32}; `shuffle` permutes the rows (seeded).

    >>> [b["x"].tolist() for b in tensor_batches({"x": torch.arange(5)}, 2)]
    [[0, 1], [2, 3], [4]]
    """
    if batch_size < 1:
        raise ValueError(f"tensor_batches: batch_size={batch_size} must be >= 1")
    sizes = {k: v.shape[0] for k, v in tensors.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"tensor_batches: the tensors have different numbers of rows {sizes}; align them")
    n = next(iter(sizes.values()), 0)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) if shuffle else None
    for lo in range(0, n, batch_size):
        if order is None:
            yield {k: v[lo : lo + batch_size] for k, v in tensors.items()}
        else:
            at = order[lo : lo + batch_size]
            yield {k: v[at] for k, v in tensors.items()}


def padded_batch(batch: Batch, rows: int) -> Batch:
    """Each tensor of `batch` ([m, ...], m <= rows) padded to [rows, ...] by repeating its first row (one
    forward shape for every chunk: scores then do not depend on how rows were chunked)."""
    m = next(iter(batch.values())).shape[0]
    if m == rows:
        return batch
    return {k: torch.cat([v, v[:1].expand(rows - m, *v.shape[1:])]) for k, v in batch.items()}


@torch.no_grad()
def predict(
    model: nn.Module, batches: Iterable[Batch], device: torch.device | str = "cpu", amp: bool = False
) -> np.ndarray:
    """Logits of a stream of batches in eval mode (labels not needed, ignored when present).
    Returns [n] float32 numpy; apply a sigmoid for probabilities."""
    device = torch.device(device)
    inner = unwrap(model)
    was_training = inner.training
    inner.eval()
    parts = []
    for batch in batches:
        b = {k: v.to(device, non_blocking=True) for k, v in batch.items() if k != "label"}
        with _autocast(device, amp and device.type == "cuda"):
            parts.append(inner(b).float().cpu())
    inner.train(was_training)
    return torch.cat(parts).numpy() if parts else np.zeros(0, np.float32)


@torch.no_grad()
def predict_logits(
    model: nn.Module, batches: Iterable[Batch], device: torch.device | str, amp: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Scores a stream of labelled batches in eval mode (validation). Returns (logits [n] float32, labels
    [n] float32) as numpy; `predict` scores batches without labels."""
    device = torch.device(device)
    inner = unwrap(model)
    was_training = inner.training
    inner.eval()
    logits, labels = [], []
    for batch in batches:
        b = _to_device(batch, device)
        with _autocast(device, amp and device.type == "cuda"):
            logits.append(inner(b).float().cpu())
        labels.append(b["label"].float().cpu())
    inner.train(was_training)
    if not logits:
        return np.zeros(0, np.float32), np.zeros(0, np.float32)
    return torch.cat(logits).numpy(), torch.cat(labels).numpy()


def _gather(arrays: tuple[np.ndarray, ...], info: _Dist) -> tuple[np.ndarray, ...]:
    """Concatenates each array over the ranks (identity without DDP)."""
    if not info.on:
        return arrays
    parts: list[Any] = [None] * info.world
    dist.all_gather_object(parts, arrays)
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(len(arrays)))


def _train_epoch(
    wrapped: nn.Module,
    inner: nn.Module,
    batches: Iterable[Batch],
    opts: list[torch.optim.Optimizer],
    scaler: torch.amp.GradScaler,
    cfg: RankerConfig,
    device: torch.device,
    use_amp: bool,
    info: _Dist,
    desc: str,
    progress: bool,
    prefetch_depth: int,
) -> tuple[float, int, float]:
    """One pass over this rank's batches. Returns (mean BCE, samples, seconds)."""
    wrapped.train()
    params = [p for p in inner.parameters() if p.requires_grad]
    loss_sum = torch.zeros((), device=device)
    n = 0
    start = time.perf_counter()
    stream = prefetch(_my_rounds(batches, info), prefetch_depth)
    for batch in tqdm(stream, desc=desc, disable=not progress or info.rank != 0, leave=False):
        b = _to_device(batch, device)
        label = b["label"].float()  # (B,)
        with _autocast(device, use_amp):
            logits = wrapped(b)  # (B,)
        loss = F.binary_cross_entropy_with_logits(logits.float(), label)
        total = loss
        if cfg.l2_embedding > 0:
            total = total + cfg.l2_embedding * inner.embedding_l2(b)
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        scaler.scale(total).backward()
        for opt in opts:
            scaler.unscale_(opt)
        clip_grad_norm(params, cfg.grad_clip)
        for opt in opts:
            scaler.step(opt)
        scaler.update()
        loss_sum += loss.detach() * label.shape[0]
        n += label.shape[0]
    seconds = time.perf_counter() - start
    return (float(loss_sum) / n if n else float("nan")), n, seconds


def train_ranker(
    model: nn.Module,
    train_batches: Callable[[], Iterable[Batch]],
    valid_batches: Callable[[], Iterable[Batch]],
    cfg: RankerConfig,
    seed: int,
    device: torch.device | str = "cpu",
    progress: bool = False,
    *,
    lazy_adam: bool = True,
    prefetch_batches: int = PREFETCH_BATCHES,
) -> TrainResult:
    """Trains `model` (from models.ranker.build_ranker) and returns the best state by validation AUC.

    train_batches / valid_batches: called once per epoch, each returns a fresh iterable of `Batch` dicts
    (with "label" [B] float32); the caller shuffles, batches and streams them (cfg.batch_size is what the
    pipelines batch by; `tensor_batches` does it for in-memory tensors). The batch contract (keys, shapes,
    dtypes) is in docs/ranking.md. `progress`: tqdm bars (off unless asked). `seed` seeds dropout and any other
    randomness of the loop through a forked RNG (the global RNG is left as it was), so on CPU two runs with
    the same seed, model and batches give the same weights. On CUDA with cfg.amp the forward runs under
    float16 autocast with a GradScaler. The best weights are loaded back into `model` before returning.

    lazy_adam: sparse embedding gradients + SparseAdam for the tables (see the module docstring); ignored
        (dense Adam) under DDP on CUDA, where NCCL has no sparse all-reduce.
    prefetch_batches: training batches read ahead in a background thread (0: none). The train iterable
        then runs in that thread and must not draw from torch's global RNG.
    """
    device = torch.device(device)
    info = _Dist()
    if cfg.ddp:
        info, device = _setup_ddp(device)
    use_amp = cfg.amp and device.type == "cuda"
    inner = unwrap(model).to(device)
    if not hasattr(inner, "embedding_l2"):
        raise ValueError(
            f"train_ranker: {type(inner).__name__} has no embedding_l2(batch); fix: build it with build_ranker"
        )
    cuda_devices = [device] if device.type == "cuda" else []
    result = TrainResult(state_dict={})
    total_n, total_s = 0, 0.0
    try:
        # the sparse flag must be set before DDP is built: its reducer buckets sparse gradients apart
        tables = _sparse_grad_tables(inner, lazy_adam and not (info.on and device.type == "cuda"))
        with torch.random.fork_rng(devices=cuda_devices), sparse_grads(tables):
            torch.manual_seed(seed)
            wrapped: nn.Module = inner
            if cfg.ddp:
                wrapped = DistributedDataParallel(
                    inner, device_ids=[device.index] if device.type == "cuda" else None
                )
            opts = make_optimizers(inner, cfg.lr, device, tables)
            scaler = torch.amp.GradScaler(device.type, enabled=use_amp)
            stopper = EarlyStopping(cfg.patience)
            for epoch in range(cfg.epochs):
                mean_loss, n, seconds = _train_epoch(
                    wrapped, inner, train_batches(), opts, scaler, cfg, device, use_amp, info,
                    f"epoch {epoch + 1}/{cfg.epochs}", progress, prefetch_batches,
                )  # fmt: skip
                total_n, total_s = total_n + n, total_s + seconds
                logits, labels = predict_logits(inner, _my_batches(valid_batches(), info), device, use_amp)
                logits, labels = _gather((logits, labels), info)
                val_auc = auc(labels, logits)
                result.history.append(val_auc)
                result.train_loss.append(mean_loss)
                log.info("epoch %d: train BCE %.5f, valid AUC %.5f", epoch, mean_loss, val_auc)
                stop = stopper.step(val_auc, epoch, inner)
                result.state_dict, result.best_epoch = stopper.state_dict, stopper.best_epoch
                if stop:
                    log.info(
                        "early stop after epoch %d: no AUC gain for %d epochs", epoch, stopper.bad_epochs
                    )
                    break
        if result.state_dict:
            inner.load_state_dict(result.state_dict)
        n_all, s_all = _gather((np.array([total_n]), np.array([total_s])), info)
        result.samples_per_s = float(n_all.sum() / s_all.max()) if s_all.max() > 0 else 0.0
    except BaseException:
        if info.created:  # no barrier here: a peer may be stuck in a collective and never reach it
            dist.destroy_process_group()
        raise
    if info.created:
        # Both ranks leave the last all_gather together before gloo is torn down: without this, one rank
        # could destroy its pairs while the peer still reads from them (the likely cause of one SIGABRT in CI).
        dist.barrier()
        dist.destroy_process_group()
    return result


def save_checkpoint(path: Path | str, model: nn.Module, meta: dict[str, Any] | None = None) -> Path:
    """Writes weights + meta atomically (temp file, then rename). Returns the path.

    The meta stored is `meta` (e.g. {"feature_stats": {...}, "run_id": ...}; plain Python types only) plus
    the build arguments of the model: "config" (cfg.model_dump()), "layout", "hist_field", "n_counts",
    "n_numeric", "text_dim", "image_dim", "n_affinity", which `load_checkpoint` uses to rebuild it.
    """
    path = Path(path)
    inner = unwrap(model)
    build = getattr(inner, "build_args", None)
    if build is None:
        raise ValueError(
            f"save_checkpoint({path}): the model has no build_args; fix: build it with build_ranker"
        )
    meta = dict(meta or {})
    clash = [k for k in build if k in meta and meta[k] != build[k]]
    if clash:
        raise ValueError(
            f"save_checkpoint({path}): meta keys {clash} disagree with the model; fix: drop them from meta"
        )
    return checkpoint.write(path, _CHECKPOINT_KIND, inner, {**meta, **build})


def _read(path: Path) -> dict[str, Any]:
    return checkpoint.read(path, _CHECKPOINT_KIND)


def load_checkpoint(path: Path | str) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuilds the model with build_ranker from the stored meta and loads its weights (CPU, eval mode).

    Returns (model, meta); meta holds the config dump, layout, dims and whatever the saver added.
    """
    path = Path(path)
    payload = _read(path)
    meta = payload["meta"]
    config = dict(meta["config"])
    config.setdefault("affinity_rank", 0)  # checkpoints written before the learned affinity had none
    model = build_ranker(
        RankerConfig.model_validate(config),
        FieldLayout(tuple(meta["layout"]["names"]), tuple(meta["layout"]["sizes"])),
        meta["hist_field"],
        meta["n_counts"],
        meta["n_numeric"],
        meta["text_dim"],
        meta["image_dim"],
        n_affinity=meta.get("n_affinity", 0),  # absent from checkpoints written before the input existed
    )
    model.load_state_dict(payload["state_dict"])
    return model.eval(), meta


def warm_start(model: nn.Module, path: Path | str) -> list[str]:
    """Copies into `model` every tensor of a previous checkpoint whose name and shape match.

    Returns the names copied; the others keep their current values (e.g. an embedding table whose bucket
    count changed, or a cross net of another width). Logs what was skipped.
    """
    return checkpoint.warm_start(unwrap(model), path, _CHECKPOINT_KIND)
