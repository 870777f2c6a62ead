"""The ranker: DCN-Mix (and full-rank DCN-V2) over an early-fusion input block, plus the LR and FM baselines.

Every model built by `build_ranker` has the same contract, `forward(batch) -> logits [B] float32`, and the
same `embedding_l2(batch)` used by the training loop, so training and evaluation share one code path.

Input block (DCN models): the ids/attributes block and the modality tokens, fused into x0: [B, N]:

    fields   [B, F*D]  one embedding table for all hashed fields, field f at rows offsets[f] + sparse[:, f]
    history  [B, D]    mean of the `hist_field` rows of `hist` (bucket 0 = padding, masked out)
    counts   [B, C]    log1p event counts, as given
    numeric  [B, M]    standardised numeric attributes, as given
    ------------------ the ids block [B, Di] = the four above, concatenated
    text     [B, D]    has_text * sigmoid(a_t . p_t + c_t) * p_t,  p_t = P_t text   (Dt -> D projection)
    image    [B, D]    has_image * sigmoid(a_i . p_i + c_i) * p_i, p_i = P_i image  (Di -> D projection)

The per-modality gate is a sigmoid, so it stays in (0, 1) whatever the input, and the mask multiplies the
gated vector. `cfg.fusion` (models/fusion.py) says how the ids block and the two tokens meet: "concat" (the
default) concatenates them, x0 = [ids, text, image], so a missing modality adds exactly zero to x0 (and no
gradient to its projection); "attention" and "cross_attention" append a pooled attention summary to the ids
block; "late" feeds the ids block alone to the cross network and adds a per-modality score to the logit.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from models.config import RankerConfig
from models.crossnet import CrossNetMix, CrossNetV2
from models.fusion import build_fusion
from models.inputs import Batch, FieldLayout
from models.layers import mlp

_EMB_STD = 0.05  # init std of the field embeddings


def _require(batch: Batch, key: str, width: int, who: str) -> torch.Tensor:
    """The [B, width] tensor `batch[key]`, or a ValueError naming the key and the fix."""
    if key not in batch:
        raise ValueError(
            f"{who}: batch has no {key!r} (keys: {sorted(batch)}); fix: add it or build with {key} width 0"
        )
    t = batch[key]
    if t.dim() != 2 or t.shape[1] != width:
        raise ValueError(
            f"{who}: batch[{key!r}] is {tuple(t.shape)}, expected [B, {width}]; fix: match the build dims"
        )
    return t


def lookup_distinct(table: nn.Embedding, *rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """`table(r)` for each `r` in `rows`, reading each distinct row of the table once for all of them.

    rows: one or more [...] int64 tensors of table rows. Returns one [..., D] float32 tensor per input,
    equal to `table(r)`.

    A batch reads the same rows many times (popular items, small fields such as gender, the history):
    looking up the distinct rows once and expanding them on the batch side gives the table a gradient with
    one entry per distinct row. With `table.sparse` that makes the sparse gradient small and its coalescing
    cheap (the lazy Adam of models.train); the expansion's gradient is summed into a small [U, D] block.
    Without autograd (scoring) it is the plain lookup.

    >>> t = nn.Embedding(4, 2)
    >>> a, b = torch.tensor([[3, 1], [1, 1]]), torch.tensor([2, 3])
    >>> [torch.equal(x, t(r)) for x, r in zip(lookup_distinct(t, a, b), (a, b))]
    [True, True]
    """
    if not (torch.is_grad_enabled() and table.weight.requires_grad):
        return tuple(table(r) for r in rows)  # scoring: no gradient to shrink, skip the sort
    flat = torch.cat([r.reshape(-1) for r in rows])  # (sum of sizes,)
    uniq, inverse = torch.unique(flat, return_inverse=True)  # (U,), (sum of sizes,)
    distinct = table(uniq)  # (U, D): the only read of the table
    out, start = [], 0
    for r in rows:
        # F.embedding, not distinct[idx]: the backward of advanced indexing on CPU accumulates with atomic
        # adds across threads (summation order, hence the weights, varies between runs); embedding's
        # backward is deterministic
        out.append(F.embedding(inverse[start : start + r.numel()].reshape(r.shape), distinct))  # (..., D)
        start += r.numel()
    return tuple(out)


class _SparseRows(nn.Module):
    """Maps the `sparse` [B, F] local buckets to rows of the shared table and checks their range."""

    def __init__(self, layout: FieldLayout) -> None:
        super().__init__()
        self.layout = layout
        self.register_buffer("offsets", layout.offsets_tensor(), persistent=False)  # (F,)
        self.register_buffer("sizes", torch.tensor(layout.sizes, dtype=torch.long), persistent=False)  # (F,)

    def forward(self, batch: Batch) -> torch.Tensor:
        """batch["sparse"]: [B, F] int64 local buckets. Returns [B, F] int64 global rows."""
        sparse = _require(batch, "sparse", len(self.layout.names), "ranker")
        bad = (sparse < 0) | (sparse >= self.sizes)  # (B, F)
        if bool(bad.any()):
            f = int(bad.any(0).nonzero()[0, 0])
            raise ValueError(
                f"ranker: sparse column {f} ({self.layout.names[f]!r}) has buckets outside [0, {self.layout.sizes[f]}); "
                f"fix: hash with the same bucket sizes as the FieldLayout"
            )
        return sparse + self.offsets  # (B, F)


class ModalityGate(nn.Module):
    """Projects one modality embedding to the field width, gated and masked.

    out = mask * sigmoid(a . p + c) * p,  p = P x + q
    """

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, out_dim)
        self.gate = nn.Linear(out_dim, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x: [B, Din] float32 modality embedding; mask: [B] float32, 1.0 when present. Returns [B, D] float32."""
        p = self.proj(x)  # (B, D)
        g = torch.sigmoid(self.gate(p))  # (B, 1), in (0, 1)
        return mask.unsqueeze(1).to(p.dtype) * g * p  # (B, D)


class LearnedAffinity(nn.Module):
    """A learned similarity between the user's history and the item, per modality: (P p) * (P e), [B, K].

    p [B, Dm] is the mean unit vector of the user's other history items (`batch["profile"]`, see
    pipelines.batches.content_affinity), e = x / |x| the item's own unit vector, P a [K, Dm] projection
    learnt with the ranker; the K products are a rank-K bilinear form p^T P^T diag(.) P e, so the model can
    weigh the few directions that carry a preference (a word of the titles, a pattern of the photos) that a
    plain cosine drowns among the rest (P = I summed gives the mean cosine back). Zero when the item lacks
    the modality or no other history item has it.
    """

    def __init__(self, dims: tuple[int, ...], rank: int) -> None:
        super().__init__()
        self.dims = tuple(d for d in dims if d > 0)
        self.proj = nn.ModuleList(nn.Linear(d, rank, bias=False) for d in self.dims)
        self.out_dim = rank * len(self.dims)

    def forward(self, profile: torch.Tensor, items: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """profile: [B, sum Dm] float32; items: per modality (x [B, Dm], has [B]). Returns [B, K * M]."""
        parts = []
        for proj, p, (x, has) in zip(self.proj, profile.split(self.dims, dim=1), items, strict=True):
            e = nn.functional.normalize(x, dim=1) * has.unsqueeze(1).to(x.dtype)  # (B, Dm)
            parts.append(proj(p) * proj(e))  # (B, K)
        return torch.cat(parts, dim=1)


class Fused(NamedTuple):
    """What the input block hands to the model: x0 and, for `Fusion.combine`, the tokens and their flags."""

    x: torch.Tensor  # [B, N] float32, input of the cross network
    tokens: torch.Tensor  # [B, M, D] float32 modality tokens (text, image), M in {0, 1, 2}
    present: torch.Tensor  # [B, M] float32 0/1 flags


class InputBlock(nn.Module):
    """Input block: x0 [B, N] from the hashed fields, history, dense features and modalities, fused by
    `fusion` (models/fusion.py; "concat" is early fusion by concatenation)."""

    def __init__(
        self,
        layout: FieldLayout,
        field_dim: int,
        hist_field: str | None,
        n_counts: int,
        n_numeric: int,
        text_dim: int,
        image_dim: int,
        fusion: str = "concat",
        fusion_heads: int = 2,
        n_affinity: int = 0,
        affinity_rank: int = 0,
    ) -> None:
        super().__init__()
        if hist_field is not None and hist_field not in layout.names:
            raise ValueError(
                f"ranker: hist_field={hist_field!r} is not a field of the layout {layout.names}; "
                f"fix: pass the field whose buckets fill `hist` (e.g. 'item_id') or None"
            )
        self.rows = _SparseRows(layout)
        self.embedding = nn.Embedding(layout.total, field_dim)
        nn.init.normal_(self.embedding.weight, std=_EMB_STD)
        self.field_dim = field_dim
        self.n_fields = len(layout.names)
        self.hist_offset = None if hist_field is None else layout.offsets[layout.names.index(hist_field)]
        self.hist_size = None if hist_field is None else layout.sizes[layout.names.index(hist_field)]
        self.n_counts, self.n_numeric, self.n_affinity = n_counts, n_numeric, n_affinity
        self.text = ModalityGate(text_dim, field_dim) if text_dim > 0 else None
        self.image = ModalityGate(image_dim, field_dim) if image_dim > 0 else None
        self.text_dim, self.image_dim = text_dim, image_dim
        # the learned affinity reads `profile` beside `affinity` (both come with the spec's affinity)
        self.learned = (
            LearnedAffinity((text_dim, image_dim), affinity_rank)
            if n_affinity and affinity_rank and (text_dim or image_dim)
            else None
        )
        ids_dim = (
            self.n_fields * field_dim
            + (field_dim if hist_field is not None else 0)
            + n_counts
            + n_numeric
            + n_affinity
            + (self.learned.out_dim if self.learned is not None else 0)
        )
        self.fusion = build_fusion(
            fusion,
            ids_dim=ids_dim,
            n_modalities=(self.text is not None) + (self.image is not None),
            width=field_dim,
            heads=fusion_heads,
            score_dim=1,
            weighting="sum",
        )
        self.out_dim = self.fusion.out_dim

    def hist_rows(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """batch["hist"]: [B, L] int64. Returns ([B, L] int64 table rows, [B, L] bool mask of non-padding)."""
        hist = batch.get("hist")
        if hist is None or hist.dim() != 2:
            raise ValueError(
                "ranker: batch needs 'hist' [B, L] int64 when hist_field is set; fix: add it or pass hist_field=None"
            )
        if bool(((hist < 0) | (hist >= self.hist_size)).any()):
            raise ValueError(
                f"ranker: 'hist' has buckets outside [0, {self.hist_size}); fix: hash history like the item field"
            )
        return hist + self.hist_offset, hist != 0  # (B, L), (B, L)

    def used_rows(self, batch: Batch) -> torch.Tensor:
        """Distinct rows of the embedding table read by `batch`, [U] int64."""
        rows = [self.rows(batch).reshape(-1)]
        if self.hist_offset is not None:
            hrows, mask = self.hist_rows(batch)
            rows.append(hrows[mask])
        return torch.unique(torch.cat(rows))

    def forward(self, batch: Batch) -> torch.Tensor:
        """batch: a `Batch` (see models.inputs). Returns x0, [B, N] float32."""
        return self.encode(batch).x

    def encode(self, batch: Batch) -> Fused:
        """batch: a `Batch`. Returns x0 [B, N] float32 with the modality tokens [B, M, D] and flags [B, M]."""
        rows = self.rows(batch)  # (B, F)
        B = rows.shape[0]
        if self.hist_offset is None:
            (field_emb,) = lookup_distinct(self.embedding, rows)  # (B, F, D)
        else:
            hrows, mask = self.hist_rows(batch)  # (B, L)
            field_emb, hist_emb = lookup_distinct(self.embedding, rows, hrows)  # (B, F, D), (B, L, D)
        parts = [field_emb.reshape(B, self.n_fields * self.field_dim)]  # (B, F*D)
        if self.hist_offset is not None:
            m = mask.unsqueeze(-1).to(self.embedding.weight.dtype)  # (B, L, 1)
            summed = (hist_emb * m).sum(1)  # (B, D)
            parts.append(summed / m.sum(1).clamp(min=1.0))  # (B, D); empty history -> zeros
        if self.n_counts:
            parts.append(_require(batch, "counts", self.n_counts, "ranker").float())  # (B, C)
        if self.n_numeric:
            parts.append(_require(batch, "numeric", self.n_numeric, "ranker").float())  # (B, M)
        if self.n_affinity:
            parts.append(_require(batch, "affinity", self.n_affinity, "ranker").float())  # (B, A)
        if self.learned is not None:
            profile = _require(batch, "profile", sum(self.learned.dims), "ranker").float()  # (B, Dt + Di)
            own = [
                (_require(batch, key, width, "ranker").float(), batch.get(f"has_{key}", profile.new_ones(B)))
                for key, width in (("text", self.text_dim), ("image", self.image_dim))
                if width
            ]
            parts.append(self.learned(profile, own))  # (B, K * M)
        ids = torch.cat(parts, dim=1)  # (B, Di)
        tokens, present = [], []
        for key, width, gate in (("text", self.text_dim, self.text), ("image", self.image_dim, self.image)):
            if gate is not None:
                x = _require(batch, key, width, "ranker").float()  # (B, Dm)
                has = batch.get(f"has_{key}", torch.ones(B, device=x.device)).to(x.dtype)  # (B,)
                tokens.append(gate(x, has))  # (B, D)
                present.append(has)
        if tokens:
            token_t, present_t = torch.stack(tokens, 1), torch.stack(present, 1)  # (B, M, D), (B, M)
        else:
            token_t, present_t = ids.new_zeros(B, 0, self.field_dim), ids.new_zeros(B, 0)
        return Fused(self.fusion(ids, token_t, present_t), token_t, present_t)


class _Ranker(nn.Module):
    """Shared bits: the build arguments (for checkpoints) and the L2 of the embedding rows a batch reads."""

    build_args: dict[str, Any]

    def embedding_tables(self) -> list[nn.Embedding]:
        raise NotImplementedError

    def used_rows(self, batch: Batch) -> torch.Tensor:
        raise NotImplementedError

    def embedding_l2(self, batch: Batch) -> torch.Tensor:
        """Sum of squares of the embedding rows read by `batch` (each distinct row once), [] float32.

        The rows are read through the table (not `weight[rows]`), so a table with `sparse=True` gets a
        sparse gradient here too (lazy Adam in models.train).
        """
        rows = self.used_rows(batch)  # (U,)
        return sum(t(rows).pow(2).sum() for t in self.embedding_tables())


class DCNRanker(_Ranker):
    """DCN-V2 / DCN-Mix ranker: input block -> cross network and deep MLP -> logit.

    structure "stacked":       logit = w . MLP(Cross(x0))
    structure "parallel":      logit = w . [Cross(x0), MLP(x0)]
    structure "crossnet_only": logit = w . Cross(x0)
    """

    def __init__(self, cfg: RankerConfig, inputs: InputBlock) -> None:
        super().__init__()
        self.inputs = inputs
        N = inputs.out_dim
        if cfg.model == "dcnmix":
            self.cross: CrossNetMix | CrossNetV2 = CrossNetMix(
                N, cfg.cross_layers, cfg.experts, cfg.rank, cfg.gate, cfg.activation, cfg.inner_matrix
            )
        else:
            self.cross = CrossNetV2(N, cfg.cross_layers)
        self.structure = cfg.structure
        if cfg.structure == "stacked":
            self.mlp, head_in = mlp(N, cfg.mlp, dropout=cfg.dropout, batch_norm=cfg.batch_norm)
        elif cfg.structure == "parallel":
            self.mlp, deep_out = mlp(N, cfg.mlp, dropout=cfg.dropout, batch_norm=cfg.batch_norm)
            head_in = N + deep_out
        else:
            self.mlp, head_in = None, N
        self.head = nn.Linear(head_in, 1)

    def embedding_tables(self) -> list[nn.Embedding]:
        return [self.inputs.embedding]

    def used_rows(self, batch: Batch) -> torch.Tensor:
        return self.inputs.used_rows(batch)

    def forward(self, batch: Batch) -> torch.Tensor:
        """batch: a `Batch`. Returns logits, [B] float32."""
        fused = self.inputs.encode(batch)
        x0 = fused.x  # (B, N)
        crossed = self.cross(x0)  # (B, N)
        if self.structure == "stacked":
            h = self.mlp(crossed)  # (B, H)
        elif self.structure == "parallel":
            h = torch.cat([crossed, self.mlp(x0)], dim=1)  # (B, N + H)
        else:
            h = crossed  # (B, N)
        logit = self.inputs.fusion.combine(self.head(h), fused.tokens, fused.present)  # (B, 1)
        return logit.squeeze(-1).float()  # (B,)


class LogisticRegression(_Ranker):
    """logit = bias + sum_f w[row_f] + a . [counts, numeric]: one scalar weight per hashed bucket plus a linear."""

    def __init__(self, layout: FieldLayout, n_counts: int, n_numeric: int) -> None:
        super().__init__()
        self.rows = _SparseRows(layout)
        self.weights = nn.Embedding(layout.total, 1)
        nn.init.zeros_(self.weights.weight)
        self.n_counts, self.n_numeric = n_counts, n_numeric
        self.linear = nn.Linear(n_counts + n_numeric, 1) if n_counts + n_numeric > 0 else None
        self.bias = nn.Parameter(torch.zeros(()))

    def embedding_tables(self) -> list[nn.Embedding]:
        return [self.weights]

    def used_rows(self, batch: Batch) -> torch.Tensor:
        return torch.unique(self.rows(batch))

    def linear_term(self, batch: Batch, rows: torch.Tensor) -> torch.Tensor:
        """rows: [B, F] int64 table rows. Returns [B] float32, the first-order part of the logit."""
        out = self.bias + lookup_distinct(self.weights, rows)[0].squeeze(-1).sum(1)  # (B,)
        if self.linear is not None:
            dense = []
            if self.n_counts:
                dense.append(_require(batch, "counts", self.n_counts, "ranker").float())
            if self.n_numeric:
                dense.append(_require(batch, "numeric", self.n_numeric, "ranker").float())
            out = out + self.linear(torch.cat(dense, dim=1)).squeeze(-1)  # (B,)
        return out

    def forward(self, batch: Batch) -> torch.Tensor:
        """batch: a `Batch`. Returns logits, [B] float32."""
        return self.linear_term(batch, self.rows(batch)).float()


class FactorizationMachine(LogisticRegression):
    """Rendle's FM: LR + sum_{f<g} <v_f, v_g> over the field embeddings v_f = V[row_f] ([B, F, D]).

    The pairwise sum uses the O(F*D) identity sum_{f<g} <v_f, v_g> = 1/2 sum_d ((sum_f v_fd)^2 - sum_f v_fd^2).
    """

    def __init__(self, layout: FieldLayout, field_dim: int, n_counts: int, n_numeric: int) -> None:
        super().__init__(layout, n_counts, n_numeric)
        self.embedding = nn.Embedding(layout.total, field_dim)
        nn.init.normal_(self.embedding.weight, std=_EMB_STD)

    def embedding_tables(self) -> list[nn.Embedding]:
        return [self.weights, self.embedding]

    @staticmethod
    def pairwise(v: torch.Tensor) -> torch.Tensor:
        """v: [B, F, D] float32 field embeddings. Returns [B] float32, sum_{f<g} <v_f, v_g>."""
        return 0.5 * (v.sum(1).pow(2) - v.pow(2).sum(1)).sum(-1)  # (B,)

    def forward(self, batch: Batch) -> torch.Tensor:
        """batch: a `Batch`. Returns logits, [B] float32."""
        rows = self.rows(batch)  # (B, F)
        (v,) = lookup_distinct(self.embedding, rows)  # (B, F, D)
        return (self.linear_term(batch, rows) + self.pairwise(v)).float()  # (B,)


def build_ranker(
    cfg: RankerConfig,
    layout: FieldLayout,
    hist_field: str | None = None,
    n_counts: int = 0,
    n_numeric: int = 0,
    text_dim: int = 0,
    image_dim: int = 0,
    *,
    n_affinity: int = 0,
    seed: int | None = None,
) -> nn.Module:
    """The ranker chosen by `cfg.model` ("dcnmix", "dcnv2", "lr", "fm"); forward(batch) -> logits [B] float32.

    `hist_field` names the layout field whose buckets fill `hist` (None: no history input); `n_counts`,
    `n_numeric`, `text_dim`, `image_dim`, `n_affinity` are the widths of those batch entries (0 = not used;
    `affinity` [B, A]: the content affinity of the user's history to the item, `pipelines.batches`; with it
    and cfg.affinity_rank > 0 the model also reads `profile` [B, Dt + Di] through `LearnedAffinity`). LR and FM
    read the hashed fields, counts and numeric only. With `seed` the initial weights are drawn from that seed
    without touching the global RNG.

    >>> m = build_ranker(RankerConfig(), FieldLayout(("user", "item_id"), (5, 9)), hist_field="item_id", seed=0)
    >>> m({"sparse": torch.tensor([[1, 2]]), "hist": torch.tensor([[3, 0]])}).shape
    torch.Size([1])
    """
    for name, v in (
        ("n_counts", n_counts),
        ("n_numeric", n_numeric),
        ("text_dim", text_dim),
        ("image_dim", image_dim),
        ("n_affinity", n_affinity),
    ):
        if v < 0:
            raise ValueError(f"build_ranker: {name}={v} must be >= 0")
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        model: _Ranker
        if cfg.model == "lr":
            model = LogisticRegression(layout, n_counts, n_numeric)
        elif cfg.model == "fm":
            model = FactorizationMachine(layout, cfg.field_dim, n_counts, n_numeric)
        else:
            inputs = InputBlock(
                layout, cfg.field_dim, hist_field, n_counts, n_numeric, text_dim, image_dim,
                fusion=cfg.fusion, fusion_heads=cfg.fusion_heads, n_affinity=n_affinity,
                affinity_rank=cfg.affinity_rank,
            )  # fmt: skip
            model = DCNRanker(cfg, inputs)
    model.build_args = {
        "config": cfg.model_dump(mode="json"),
        "layout": {"names": list(layout.names), "sizes": list(layout.sizes)},
        "hist_field": hist_field,
        "n_counts": n_counts,
        "n_numeric": n_numeric,
        "text_dim": text_dim,
        "image_dim": image_dim,
        "n_affinity": n_affinity,
    }
    return model


def cross_matrices(model: nn.Module) -> list[torch.Tensor]:
    """Each cross layer's effective matrix, [N, N] float32: sum_i U_i C_i V_i^T for DCN-Mix, W_l for DCN-V2.

    For the singular-value diagnostic (models.metrics.singular_values). Accepts a DDP-wrapped model.
    """
    inner = getattr(model, "module", model)
    cross = getattr(inner, "cross", None)
    if cross is None:
        raise ValueError(
            f"cross_matrices: {type(inner).__name__} has no cross network; fix: use model 'dcnmix' or 'dcnv2'"
        )
    return cross.effective_matrices()


def quantize_int8(model: nn.Module) -> nn.Module:
    """A copy of `model` whose nn.Linear layers run with dynamic INT8 weights (CPU scoring only).

    Weights are quantised once (one symmetric qint8 scale per tensor); activations are quantised per batch
    at run time (`torch.ao.quantization.quantize_dynamic`). Embedding tables and the cross
    network's U/V/C/W parameters are plain tensors, not nn.Linear, and stay float32: only the MLP, the
    head and the modality projections are quantised. The input model is not modified.

    >>> m = build_ranker(RankerConfig(), FieldLayout(("user", "item_id"), (5, 9)), hist_field="item_id", seed=0)
    >>> type(quantize_int8(m).head).__module__.startswith("torch.ao.nn.quantized")
    True
    """
    import warnings

    inner = getattr(model, "module", model)
    with warnings.catch_warnings():
        # torch >= 2.10 flags torch.ao.quantization as deprecated in favour of torchao, which this project
        # does not depend on; the eager dynamic path still works and is what CPU scoring needs.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantized tensor creation", category=UserWarning)
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(inner, {nn.Linear}, dtype=torch.qint8, inplace=False).eval()
