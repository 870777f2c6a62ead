"""Fusion strategies: how the ids/attributes block meets the text and image tokens of an item.

One contract for every strategy, used by the ranker's input block (`models.ranker.InputBlock`) and the
retriever's item tower (`models.towers.ItemTower`), chosen by the config key `fusion` of `RankerConfig` and
`RetrieverConfig`:

    x    = fusion(ids, tokens, present)          ids [B, Di], tokens [B, M, W], present [B, M] -> [B, out_dim]
    out  = fusion.combine(main, tokens, present) main [B, K] -> [B, K]

`ids` is the concatenated ids/attributes block (hashed fields, history, counts, numeric), `tokens` the M
modality tokens (text, then image), each already projected to the common width W by its encoder
(`ModalityGate` in the ranker, `ModalityProjection` in the towers), and `present` the [B, M] 0/1 flags
(`has_text`, `has_image`). `x` is the input of the model's trunk (the cross network and MLP of the ranker,
the MLP of the item tower); `main` is the trunk's output (the ranker's logit, K = 1; the item tower's
embedding before its L2 norm, K = D), which `combine` may adjust; only late fusion does.

Missing modalities are masked, never silently zero-filled: a token whose flag is 0 is replaced by zeros
before anything reads it (so whatever sits in the slot, even inf, changes nothing), is a padded key of
every attention (`key_padding_mask`) and is left out of every pooling and weighting. The ids token is
always present, so no softmax is ever taken over nothing and a row with every modality missing gives finite
outputs.

Strategies (`build_fusion(kind, ...)`):

* ``concat`` (`ConcatFusion`, the default, the model as it was before this option): ``x = [ids, t_1, ..,
  t_M]`` (each followed by its 0/1 flag in the towers); no parameters.
* ``late`` (`LateFusion`): the trunk sees ``x = ids`` only; each modality gets its own head
  ``s_m = h_m(t_m)`` ([B, K]) and `combine` mixes the scores. Ranker (`weighting="sum"`):
  ``logit = main + sum_m present_m * w_m * s_m`` with learned w_m (init 1). Item tower
  (`weighting="softmax"`): ``v = sum_j alpha_j u_j`` over j in {ids, present modalities}, u_j the unit
  vectors of main and s_m, ``alpha = softmax_j(w_j)`` over the present ones (w init 0: equal shares); the tower
  then L2-normalises v. Under the dot product the retrieval score is
  ``<q, v/|v|> = sum_j alpha_j <q, u_j> / |v|``: a learned combination of one score per modality, up to the
  item's norm |v|, which the unit sphere of the index requires.
* ``attention`` (`AttentionFusion`): tokens ``[P ids, t_1, .., t_M]`` ([B, 1+M, W], P a Linear
  Di -> W), multi-head self-attention with the missing tokens as padded keys, residual + LayerNorm,
  masked mean over the present tokens -> [B, W]; ``x = [ids, pooled]``.
* ``cross_attention`` (`CrossAttentionFusion`): each modality attends to the others (text -> image and
  image -> text, one attention per direction), ``t_m' = LN_m(t_m + present(partner) * Attn_m(t_m,
  partners))``; a row whose partner is missing keeps the residual ``LN_m(t_m)``. Then the masked mean of
  ``[LN(P ids), t_1', .., t_M']``; ``x = [ids, pooled]``. With one token per modality, each attention has a
  single key, so its weight is 1 and the block is a presence-gated exchange ``W_o W_v t_partner``
  (Vaswani et al. 2017's formula; it becomes a choice among keys with several tokens per side).

In ``attention`` and ``cross_attention`` the raw ids block stays in x, so the ranker's cross network still
crosses every hashed field; the pooled vector is the modalities' summary, conditioned on the ids token.
With no modality at all (M = 0) there is nothing to fuse: every kind builds `ConcatFusion`, x = ids.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from models.config import FusionKind
from models.layers import mlp

FUSION_KINDS: tuple[str, ...] = get_args(FusionKind)


def _keep(tokens: torch.Tensor, present: torch.Tensor, n_modalities: int, who: str) -> torch.Tensor:
    """Checks tokens [B, M, W] and present [B, M]; returns the [B, M] bool mask of present tokens."""
    if tokens.dim() != 3 or tokens.shape[1] != n_modalities:
        raise ValueError(
            f"{who}: tokens must be [B, {n_modalities}, W], got {tuple(tokens.shape)}; fix: pass one token "
            f"per modality the fusion was built with"
        )
    if present.shape != tokens.shape[:2]:
        raise ValueError(
            f"{who}: present must be [B, M] = {list(tokens.shape[:2])}, got {tuple(present.shape)}; fix: "
            f"pass the has_text / has_image flags of the rows"
        )
    return present > 0  # (B, M)


def _masked(tokens: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """tokens [B, M, W] with the missing ones replaced by zeros (not multiplied: 0 * inf would be NaN)."""
    return torch.where(keep.unsqueeze(-1), tokens, torch.zeros((), dtype=tokens.dtype, device=tokens.device))


def masked_mean(h: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean of the kept tokens.

    Args:
        h: [B, T, W] float32 tokens.
        keep: [B, T] bool, at least one True per row (the ids token).

    Returns:
        [B, W] float32.
    """
    h = _masked(h, keep)  # (B, T, W)
    return h.sum(1) / keep.sum(1, keepdim=True).clamp(min=1).to(h.dtype)  # (B, W)


class Fusion(nn.Module):
    """The contract of every strategy (see the module docstring); `out_dim` is the width of x."""

    out_dim: int

    def __init__(self, ids_dim: int, n_modalities: int, width: int) -> None:
        super().__init__()
        self.ids_dim, self.n_modalities, self.width = ids_dim, n_modalities, width

    def combine(self, main: torch.Tensor, tokens: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """main: [B, K] float32 output of the trunk; tokens [B, M, W]; present [B, M]. Returns [B, K].

        The identity except for late fusion."""
        return main


class ConcatFusion(Fusion):
    """Early fusion by concatenation: ``x = [ids, t_1, (p_1), .., t_M, (p_M)]``, p_m the 0/1 flags.

    presence_flags: append each token's flag after it (the item tower's MLP learns an offset for "no image").
    """

    def __init__(self, ids_dim: int, n_modalities: int, width: int, presence_flags: bool = False) -> None:
        super().__init__(ids_dim, n_modalities, width)
        self.presence_flags = presence_flags
        self.out_dim = ids_dim + n_modalities * (width + int(presence_flags))

    def forward(self, ids: torch.Tensor, tokens: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """ids: [B, Di] float32; tokens: [B, M, W] float32; present: [B, M] float32 0/1. Returns [B, out_dim]."""
        keep = _keep(tokens, present, self.n_modalities, "concat fusion")
        tokens = _masked(tokens, keep)  # (B, M, W)
        parts = [ids]
        for m in range(self.n_modalities):
            parts.append(tokens[:, m])  # (B, W)
            if self.presence_flags:
                parts.append(present[:, m : m + 1].to(ids.dtype))  # (B, 1)
        return torch.cat(parts, dim=1)  # (B, out_dim)


class LateFusion(Fusion):
    """Late fusion: the trunk reads the ids block alone, each modality has its own scoring head.

    head_m: Linear(W, W) - ReLU - Linear(W, K). weighting "sum" (the ranker's logit, K = 1):
    ``main + sum_m present_m * w_m * s_m``, w_m learned, init 1. weighting "softmax" (the item tower, K = D):
    ``sum_j alpha_j unit(e_j)`` over e_j in {main, s_1, .., s_M} present, ``alpha = softmax(w)`` over the
    present ones, w init 0.
    """

    def __init__(
        self,
        ids_dim: int,
        n_modalities: int,
        width: int,
        score_dim: int,
        weighting: Literal["sum", "softmax"],
    ) -> None:
        super().__init__(ids_dim, n_modalities, width)
        if weighting not in ("sum", "softmax"):
            raise ValueError(f"LateFusion: weighting={weighting!r}; fix: 'sum' or 'softmax'")
        self.weighting = weighting
        self.out_dim = ids_dim
        self.heads = nn.ModuleList(mlp(width, [width], out_dim=score_dim)[0] for _ in range(n_modalities))
        if weighting == "sum":
            self.weight = nn.Parameter(torch.ones(n_modalities))  # (M,): w_m
        else:
            self.weight = nn.Parameter(torch.zeros(1 + n_modalities))  # (1+M,): ids, then the modalities

    def forward(self, ids: torch.Tensor, tokens: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """ids: [B, Di] float32 (tokens, present: unused here, checked). Returns ids, [B, Di]."""
        _keep(tokens, present, self.n_modalities, "late fusion")
        return ids

    def combine(self, main: torch.Tensor, tokens: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """main: [B, K] float32; tokens: [B, M, W] float32; present: [B, M] 0/1. Returns [B, K] float32."""
        keep = _keep(tokens, present, self.n_modalities, "late fusion")  # (B, M)
        tokens = _masked(tokens, keep)  # (B, M, W)
        scores = torch.stack([head(tokens[:, m]) for m, head in enumerate(self.heads)], 1)  # (B, M, K)
        scores = scores.to(main.dtype)
        if self.weighting == "sum":
            weighted = self.weight.to(main.dtype)[None, :, None] * scores  # (B, M, K)
            return main + _masked(weighted, keep).sum(1)  # (B, K)
        units = torch.cat([F.normalize(main, dim=-1)[:, None], F.normalize(scores, dim=-1)], 1)  # (B, 1+M, K)
        keep_all = torch.cat([torch.ones_like(keep[:, :1]), keep], 1)  # (B, 1+M): the ids part always
        logits = self.weight.to(main.dtype).expand(main.shape[0], -1)  # (B, 1+M)
        alpha = torch.softmax(
            logits.masked_fill(~keep_all, float("-inf")), dim=1
        )  # (B, 1+M), 0 where missing
        return (alpha.unsqueeze(-1) * units).sum(1)  # (B, K)

    def weights(self) -> torch.Tensor:
        """The learned weights, [M] (sum: w_m) or [1+M] (softmax: the shares when every modality is present)."""
        w = self.weight.detach()
        return w.clone() if self.weighting == "sum" else torch.softmax(w, 0)


class AttentionFusion(Fusion):
    """Multi-head self-attention over ``[P ids, t_1, .., t_M]``, missing tokens as padded keys.

    ``h = LN(T + MHA(T, T, T))``, ``pooled = mean of h over the present tokens``, ``x = [ids, pooled]``.
    """

    def __init__(self, ids_dim: int, n_modalities: int, width: int, heads: int) -> None:
        super().__init__(ids_dim, n_modalities, width)
        _check_heads(width, heads)
        self.ids_proj = nn.Linear(ids_dim, width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm = nn.LayerNorm(width)
        self.out_dim = ids_dim + width

    def forward(self, ids: torch.Tensor, tokens: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """ids: [B, Di] float32; tokens: [B, M, W] float32; present: [B, M] 0/1. Returns [B, Di + W] float32."""
        keep = _keep(tokens, present, self.n_modalities, "attention fusion")  # (B, M)
        keep = torch.cat([torch.ones_like(keep[:, :1]), keep], 1)  # (B, 1+M): the ids token is always there
        t = torch.cat([self.ids_proj(ids).unsqueeze(1), tokens.to(ids.dtype)], 1)  # (B, 1+M, W)
        t = _masked(t, keep)  # (B, 1+M, W)
        a, _ = self.attn(t, t, t, key_padding_mask=~keep, need_weights=False)  # (B, 1+M, W)
        h = self.norm(t + a)  # (B, 1+M, W)
        return torch.cat([ids, masked_mean(h, keep)], 1)  # (B, Di + W)


class CrossAttentionFusion(Fusion):
    """Each modality attends to the other ones (two-way text <-> image for M = 2), residual + LayerNorm.

    ``t_m' = LN_m(t_m + [any partner present] * MHA_m(t_m, partners, partners))``, missing partners as
    padded keys; ``pooled = mean of [LN(P ids), t_1', .., t_M']`` over the present ones; ``x = [ids, pooled]``.
    A row with no partner present skips the attention (its keys would all be padded: a softmax over
    nothing, NaN) and keeps the residual. With M = 1 there is no partner and no attention module.
    """

    def __init__(self, ids_dim: int, n_modalities: int, width: int, heads: int) -> None:
        super().__init__(ids_dim, n_modalities, width)
        _check_heads(width, heads)
        self.ids_proj = nn.Linear(ids_dim, width)
        self.ids_norm = nn.LayerNorm(width)
        n_attn = n_modalities if n_modalities > 1 else 0
        self.attn = nn.ModuleList(
            nn.MultiheadAttention(width, heads, batch_first=True) for _ in range(n_attn)
        )
        self.norm = nn.ModuleList(nn.LayerNorm(width) for _ in range(n_modalities))
        self.out_dim = ids_dim + width

    def forward(self, ids: torch.Tensor, tokens: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """ids: [B, Di] float32; tokens: [B, M, W] float32; present: [B, M] 0/1. Returns [B, Di + W] float32."""
        keep = _keep(tokens, present, self.n_modalities, "cross-attention fusion")  # (B, M)
        tokens = _masked(tokens.to(ids.dtype), keep)  # (B, M, W)
        outs = [self.ids_norm(self.ids_proj(ids)).unsqueeze(1)]  # [(B, 1, W)]
        for m in range(self.n_modalities):
            q = tokens[:, m : m + 1]  # (B, 1, W)
            a = torch.zeros_like(q)  # (B, 1, W): no partner, residual only
            if self.attn:
                others = [j for j in range(self.n_modalities) if j != m]
                kv, partner = tokens[:, others], keep[:, others]  # (B, M-1, W), (B, M-1)
                has_partner = partner.any(1)  # (B,)
                # rows without a partner attend over all (zeroed) keys instead of none; dropped just below
                pad = ~partner & has_partner.unsqueeze(1)  # (B, M-1)
                attended, _ = self.attn[m](q, kv, kv, key_padding_mask=pad, need_weights=False)  # (B, 1, W)
                a = torch.where(has_partner[:, None, None], attended, a)  # (B, 1, W)
            outs.append(self.norm[m](q + a))  # (B, 1, W)
        h = torch.cat(outs, 1)  # (B, 1+M, W)
        keep = torch.cat([torch.ones_like(keep[:, :1]), keep], 1)  # (B, 1+M)
        return torch.cat([ids, masked_mean(h, keep)], 1)  # (B, Di + W)


def _check_heads(width: int, heads: int) -> None:
    if heads < 1 or width % heads:
        raise ValueError(
            f"fusion: {heads} attention heads do not divide the token width {width}; fix: set fusion_heads to "
            f"a divisor of field_dim"
        )


def build_fusion(
    kind: str,
    *,
    ids_dim: int,
    n_modalities: int,
    width: int,
    heads: int = 2,
    score_dim: int = 1,
    weighting: Literal["sum", "softmax"] = "sum",
    presence_flags: bool = False,
) -> Fusion:
    """The fusion module of `kind` (the config key `fusion`).

    Args:
        kind: "concat", "late", "attention" or "cross_attention".
        ids_dim: Di, width of the ids/attributes block.
        n_modalities: M, number of modality tokens (0: every kind gives `ConcatFusion`, x = ids).
        width: W, width of each token (the field embedding width).
        heads: attention heads (attention, cross_attention); must divide W.
        score_dim: K, width of the trunk output that late fusion combines (1: ranker logit; D: tower).
        weighting: late fusion's combination, "sum" (ranker) or "softmax" (item tower).
        presence_flags: concat appends each token's 0/1 flag (item tower).

    >>> f = build_fusion("attention", ids_dim=5, n_modalities=2, width=4)
    >>> f(torch.randn(3, 5), torch.randn(3, 2, 4), torch.tensor([[1.0, 0], [0, 0], [1, 1]])).shape
    torch.Size([3, 9])
    """
    if kind not in FUSION_KINDS:
        raise ValueError(f"fusion={kind!r} is not one of {FUSION_KINDS}; fix: set fusion to one of them")
    if n_modalities == 0 or kind == "concat":
        return ConcatFusion(ids_dim, n_modalities, width, presence_flags)
    if kind == "late":
        return LateFusion(ids_dim, n_modalities, width, score_dim, weighting)
    if kind == "attention":
        return AttentionFusion(ids_dim, n_modalities, width, heads)
    return CrossAttentionFusion(ids_dim, n_modalities, width, heads)
