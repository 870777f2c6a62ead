"""InfoNCE retrieval loss of the dual-tower model, one small function per adjustment.

The towers return L2-normalised embeddings; this module turns a batch of (query, item) pairs into logits
and a loss. Each adjustment is its own function so it can be tested by hand and switched by a flag:

* `in_batch_logits`: every other item of the batch is a negative of a query, ``s_ij = <q_i, v_j> / tau``.
* `logq_correction`: subtract ``log q_j``, the log probability that item j is sampled as a candidate, so
  that popular items (in many batches) are not over-penalised as negatives (Yi et al. 2019, "Sampling-bias-
  corrected neural modeling for large corpus item recommendations", eq. 3: ``s^c(x_i, y_j) = s(x_i, y_j) -
  log(p_j)``).
* `remove_accidental_hits`: the positive item of row i may appear again elsewhere in the batch; that column
  is not a negative of row i and gets a large negative logit.
* `mixed_negative_logits`: B' extra items sampled uniformly from the whole catalogue, appended as extra
  columns, so that cold items are also seen as negatives (Yang et al. 2020, "Mixed Negative Sampling for
  Learning Two-tower Neural Networks in Recommendations").
* `info_nce`: softmax cross-entropy with the diagonal (row i's own item) as the target, composing the pieces.
* `symmetric_info_nce`: the two-way loss of aligned pairs (a->b and b->a), and `LearnableTemperature`, a
  clamped learnt tau (CLIP), used by the cross-modal item encoder; the retriever's options are
  `info_nce(..., symmetric=True)` (the two-way loss with the adjustments above, where they apply) and a
  learnt tau (`retriever.learn_temperature`, held by `models.towers.TwoTower`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _masked_value(dtype: torch.dtype) -> float:
    """A large negative logit that stays finite after adding a log-probability or a temperature.

    ``finfo.min / 100`` (as TFRS does) leaves room to subtract and add O(100) values without overflow to
    -inf, which would turn a whole row into NaN if every column were masked.
    """
    return torch.finfo(dtype).min / 100.0


def in_batch_logits(
    query_emb: torch.Tensor, item_emb: torch.Tensor, temperature: float | torch.Tensor
) -> torch.Tensor:
    """All-pairs scores of a batch divided by the temperature.

    Args:
        query_emb: [B, D] float32, L2-normalised user (query) embeddings.
        item_emb: [B, D] float32, L2-normalised embeddings of each query's positive item (row i of
            `item_emb` is the positive of row i of `query_emb`).
        temperature: tau > 0 of the softmax; smaller sharpens it. A float, or a [] float32 tensor (a learnt
            tau, `LearnableTemperature`), through which the gradient then flows.

    Returns:
        [B, B] float32 logits, ``logits[i, j] = <query_emb[i], item_emb[j]> / tau``; the diagonal holds the
        positives.

    >>> q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    >>> in_batch_logits(q, q, 0.5)
    tensor([[2., 0.],
            [0., 2.]])
    """
    if temperature <= 0:
        raise ValueError(
            f"in_batch_logits: temperature must be > 0, got {temperature}; set retriever.temperature"
        )
    if query_emb.ndim != 2 or item_emb.ndim != 2 or query_emb.shape[1] != item_emb.shape[1]:
        raise ValueError(
            f"in_batch_logits: expected query_emb [B, D] and item_emb [B, D], got {tuple(query_emb.shape)} "
            f"and {tuple(item_emb.shape)}"
        )
    return query_emb @ item_emb.T / temperature  # (B, B)


def logq_correction(logits: torch.Tensor, item_log_q: torch.Tensor) -> torch.Tensor:
    """Subtract each candidate column's log sampling probability (Yi et al. 2019).

    Args:
        logits: [B, N] float32 scores of B queries against N candidate columns.
        item_log_q: [N] float32, ``log q_j`` of candidate column j (log of the probability that item j is
            in a batch, e.g. estimated from its streaming frequency). It is subtracted from every row,
            the positive column included, as in the paper.

    Returns:
        [B, N] float32, ``logits[i, j] - item_log_q[j]``.
    """
    if item_log_q.ndim != 1 or item_log_q.shape[0] != logits.shape[1]:
        raise ValueError(
            f"logq_correction: item_log_q must be [N] with N = logits.shape[1] = {logits.shape[1]}, "
            f"got {tuple(item_log_q.shape)}"
        )
    return logits - item_log_q.to(logits.dtype)[None, :]  # (B, N)


def remove_accidental_hits(
    logits: torch.Tensor, item_ids: torch.Tensor, candidate_ids: torch.Tensor | None = None
) -> torch.Tensor:
    """Mask the columns that hold row i's own positive item, except the positive column itself.

    Args:
        logits: [B, N] float32 scores, N >= B; column i (i < B) is row i's positive.
        item_ids: [B] int64 id of each row's positive item.
        candidate_ids: [N] int64 id of every candidate column; defaults to `item_ids` (then N == B). With
            mixed negatives pass ``torch.cat([item_ids, extra_item_ids])``.

    Returns:
        [B, N] float32 where ``candidate_ids[j] == item_ids[i]`` and ``j != i`` is set to a large negative
        number (the same item elsewhere in the batch is not a negative of row i).
    """
    b, n = logits.shape
    if candidate_ids is None:
        candidate_ids = item_ids
    if item_ids.shape != (b,) or candidate_ids.shape != (n,):
        raise ValueError(
            f"remove_accidental_hits: logits is {tuple(logits.shape)}, so item_ids must be [{b}] and "
            f"candidate_ids [{n}]; got {tuple(item_ids.shape)} and {tuple(candidate_ids.shape)}"
        )
    same = item_ids[:, None] == candidate_ids[None, :]  # (B, N)
    own = torch.eye(b, n, dtype=torch.bool, device=logits.device)  # (B, N): the positive columns
    return logits.masked_fill(same & ~own, _masked_value(logits.dtype))


def mixed_negative_logits(
    query_emb: torch.Tensor,
    extra_item_emb: torch.Tensor,
    temperature: float | torch.Tensor,
    extra_log_q: torch.Tensor | None = None,
) -> torch.Tensor:
    """Logits of every query against B' extra items sampled uniformly from the catalogue (Yang et al. 2020).

    The result is meant to be appended to the in-batch logits as extra negative columns:
    ``torch.cat([in_batch, mixed], dim=1)``.

    Args:
        query_emb: [B, D] float32, L2-normalised.
        extra_item_emb: [B', D] float32, L2-normalised embeddings of the uniformly sampled items.
        temperature: tau > 0, the same as for the in-batch logits.
        extra_log_q: [B'] float32 or None; when given, subtracted as in `logq_correction`. It must be on
            the same scale as the in-batch ``item_log_q`` (probability of being a candidate in one batch);
            for B' uniform draws from N items that is ``log(B' / N)`` for every column.

    Returns:
        [B, B'] float32 logits.
    """
    logits = in_batch_logits(query_emb, extra_item_emb, temperature)  # (B, B')
    if extra_log_q is not None:
        logits = logq_correction(logits, extra_log_q)
    return logits


def info_nce(
    query_emb: torch.Tensor,
    item_emb: torch.Tensor,
    temperature: float | torch.Tensor,
    *,
    item_log_q: torch.Tensor | None = None,
    item_ids: torch.Tensor | None = None,
    extra_item_emb: torch.Tensor | None = None,
    extra_log_q: torch.Tensor | None = None,
    extra_item_ids: torch.Tensor | None = None,
    use_logq: bool = True,
    use_remove_hits: bool = True,
    sample_weight: torch.Tensor | None = None,
    symmetric: bool = False,
) -> torch.Tensor:
    """Sampled-softmax (InfoNCE) loss of a batch of (query, positive item) pairs.

    ``loss = mean_i w_i * (-log softmax_j(logits[i, :])[i])`` where the logits are the in-batch scores,
    optionally with the mixed negatives appended, the logQ correction subtracted and the accidental hits
    masked, in that order.

    With `symmetric`, each pair's loss is the mean of that user -> item term and an item -> user term,
    ``-log softmax_i(s[:, j])[j]``: item j's softmax over the B users of the batch (CLIP's two-way loss,
    `symmetric_info_nce`, with the adjustments below). In that direction:

    * logQ: the candidates are users, not items. Item j's ``log q_j`` is one constant over the whole
      column j, so it cancels in item j's softmax; that term uses the in-batch scores without it. The
      correction that would matter there is the users' own sampling bias (an active user is in many batches,
      so is over-penalised as a negative of other users' items); it is not applied (no user log q is known
      to the loss).
    * accidental hits: the mask is symmetric (rows i and j hold the same item), so a user whose positive is
      item j too is not a negative of item j; the same masked scores are used, transposed. Two rows of the
      same user with different items are not detected (the loss sees no user ids), in either direction.
    * mixed negatives are items: they are extra columns of the user -> item term only.

    Args:
        query_emb: [B, D] float32, L2-normalised.
        item_emb: [B, D] float32, L2-normalised; row i is the positive of query i.
        temperature: tau > 0.
        item_log_q: [B] float32 log sampling probability of each in-batch item; needed when use_logq.
        item_ids: [B] int64 item ids; needed when use_remove_hits.
        extra_item_emb: [B', D] float32 uniformly sampled extra negatives (mixed negative sampling) or None.
        extra_log_q: [B'] float32 log sampling probability of the extra items; needed when use_logq and
            extra_item_emb is given.
        extra_item_ids: [B'] int64 ids of the extra items; needed when use_remove_hits and extra_item_emb is
            given (a uniformly drawn item can be a query's own positive).
        use_logq: subtract the log sampling probabilities (`logq_correction`).
        use_remove_hits: mask duplicates of a row's positive (`remove_accidental_hits`).
        sample_weight: [B] float32 per-example weight or None (all ones).
        symmetric: add the item -> user term (see above).

    Returns:
        [] float32 scalar loss (weighted mean over the batch).
    """
    scores = in_batch_logits(query_emb, item_emb, temperature)  # (B, B)
    logits = scores
    b = logits.shape[0]
    if use_logq and item_log_q is None:
        raise ValueError(
            "info_nce: use_logq=True needs item_log_q [B]; pass it or set retriever.logq_correction=false"
        )
    if use_remove_hits and item_ids is None:
        raise ValueError(
            "info_nce: use_remove_hits=True needs item_ids [B]; pass them or set retriever.remove_accidental_hits=false"
        )
    if use_logq:
        logits = logq_correction(logits, item_log_q)
    candidate_ids = item_ids
    if extra_item_emb is not None:
        if use_logq and extra_log_q is None:
            raise ValueError("info_nce: use_logq=True with extra_item_emb needs extra_log_q [B']")
        if use_remove_hits and extra_item_ids is None:
            raise ValueError("info_nce: use_remove_hits=True with extra_item_emb needs extra_item_ids [B']")
        extra = mixed_negative_logits(
            query_emb, extra_item_emb, temperature, extra_log_q if use_logq else None
        )
        logits = torch.cat([logits, extra], dim=1)  # (B, B + B')
        if use_remove_hits:
            candidate_ids = torch.cat([item_ids, extra_item_ids.to(item_ids.dtype)])  # (B + B',)
    if use_remove_hits:
        logits = remove_accidental_hits(logits, item_ids, candidate_ids)
    target = torch.arange(b, device=logits.device)
    per_row = F.cross_entropy(logits, target, reduction="none")  # (B,)
    if symmetric:
        back = remove_accidental_hits(scores, item_ids) if use_remove_hits else scores  # (B, B), no log q
        per_row = 0.5 * (per_row + F.cross_entropy(back.T, target, reduction="none"))  # (B,)
    if sample_weight is None:
        return per_row.mean()
    return (per_row * sample_weight).sum() / sample_weight.sum().clamp_min(torch.finfo(per_row.dtype).tiny)


class LearnableTemperature(torch.nn.Module):
    """A softmax temperature learnt as ``log(1 / tau)``, clamped to ``[min_tau, max_tau]``.

    CLIP (Radford et al. 2021, section 2.5) learns the logit scale ``1 / tau`` in log space, initialised at
    ``tau = 0.07`` and clipped so the logits are never scaled by more than 100 (``tau >= 0.01``); the same
    bounds are the defaults here. The clamp keeps a gradient at the bounds from pushing the scale further.

    Calling the module returns the current tau as a [] float32 tensor (with gradient), to pass as the
    `temperature` of `in_batch_logits` / `info_nce` / `symmetric_info_nce`.
    """

    def __init__(self, init: float = 0.07, min_tau: float = 0.01, max_tau: float = 1.0) -> None:
        super().__init__()
        if not 0.0 < min_tau <= init <= max_tau:
            raise ValueError(
                f"LearnableTemperature: need 0 < min_tau <= init <= max_tau, got {min_tau}, {init}, {max_tau}"
            )
        self.min_tau = float(min_tau)
        self.max_tau = float(max_tau)
        self.log_scale = torch.nn.Parameter(torch.tensor(-math.log(init), dtype=torch.float32))

    def forward(self) -> torch.Tensor:
        scale = self.log_scale.clamp(-math.log(self.max_tau), -math.log(self.min_tau)).exp()
        return 1.0 / scale


def symmetric_info_nce(
    a_emb: torch.Tensor,
    b_emb: torch.Tensor,
    temperature: float | torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Two-way InfoNCE of a batch of aligned pairs: ``(CE(a -> b) + CE(b -> a)) / 2``.

    Row i of `a_emb` and row i of `b_emb` are a positive pair (an item's image and its title, or a user and
    the item it chose); every other row of the other side is a negative. The a->b term is a softmax over
    the rows of b for each row of a, the b->a term over the rows of a for each row of b (the transpose of
    the same logits), as in CLIP's loss.

    Args:
        a_emb: [B, D] float32, L2-normalised.
        b_emb: [B, D] float32, L2-normalised; row i pairs with row i of `a_emb`.
        temperature: tau > 0, a float or a [] tensor (e.g. `LearnableTemperature()`).
        mask: [B] bool, rows that take part (pairs with both sides present) or None (all). Masked rows are
            neither anchors nor negatives. Fewer than 2 kept rows give a zero loss (nothing to contrast).

    Returns:
        [] float32 scalar loss.

    >>> x = torch.eye(3)
    >>> bool(symmetric_info_nce(x, x, 0.1) < symmetric_info_nce(x, x.roll(1, 0), 0.1))
    True
    """
    if a_emb.ndim != 2 or a_emb.shape != b_emb.shape:
        raise ValueError(
            f"symmetric_info_nce: expected a_emb and b_emb of the same shape [B, D], got "
            f"{tuple(a_emb.shape)} and {tuple(b_emb.shape)}"
        )
    tau = torch.as_tensor(temperature, dtype=a_emb.dtype, device=a_emb.device)
    if bool((tau <= 0).any()):
        raise ValueError(f"symmetric_info_nce: temperature must be > 0, got {float(tau)}")
    if mask is not None:
        if mask.shape != (a_emb.shape[0],):
            raise ValueError(
                f"symmetric_info_nce: mask must be [B] = [{a_emb.shape[0]}], got {tuple(mask.shape)}"
            )
        a_emb, b_emb = a_emb[mask], b_emb[mask]
    b = a_emb.shape[0]
    if b < 2:
        return (a_emb.sum() + b_emb.sum()) * 0.0
    logits = a_emb @ b_emb.T / tau  # (B, B)
    target = torch.arange(b, device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
