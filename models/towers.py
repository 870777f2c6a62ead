"""Dual-tower retriever: a user tower and an item tower mapping to the same unit sphere in R^D.

The score of a (user, item) pair is the dot product of the two L2-normalised outputs, the same score the
FAISS inner-product index ranks by (retrieval/index.py), so training and serving agree.

User tower::

    sparse [B, Fu] -> one table, field offsets -> [B, Fu, Fd] -> [B, Fu*Fd]
    hist   [B, L]  -> item_id embedding (shared with the item tower), mean over non-padding -> [B, Fd]
    counts [B, C], numeric [B, Mu]
    concat -> MLP(hidden) -> Linear -> [B, D] -> L2-normalise

Item tower::

    sparse [B, Fi] -> one table -> [B, Fi*Fd]
    numeric [B, Mi]
    text  [B, Dt] -> unit norm -> Linear -> [B, Fd] * has_text  * gate_text     (when cfg.use_text)
    image [B, Di] -> unit norm -> Linear -> [B, Fd] * has_image * gate_image    (when cfg.use_image)
    has_text, has_image as two 0/1 inputs
    concat -> MLP(hidden) -> Linear -> [B, D] -> L2-normalise

That is the default fusion, `cfg.fusion = "concat"`; models/fusion.py holds the others ("late": per-modality
item embeddings mixed by learned softmax weights over the present modalities; "attention",
"cross_attention": a pooled attention summary of [ids, text, image] appended to the ids block).

Missing modalities: the projection of a missing text/image is multiplied by its 0 mask, so whatever sits in
the slot (zeros or garbage) contributes nothing, and the 0/1 presence flag is an input of the MLP, which can
learn an offset for "no image". Each modality's input is L2-normalised before its projection and scaled by a
learned scalar gate, so a large-norm embedding cannot dominate the hashed fields: the gate is learned.

History pooling shares the item tower's item_id embedding. Reasons: `hist` holds item_id buckets in the same
bucket space as the item tower's item_id field (models/inputs.py), the item_id table is by far the largest
table, and sharing it lets items that are seldom a positive in a batch but often in histories still get a
trained vector. The two towers have separate MLPs, so the shared vector can still play different roles as
context and as target.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.config import RetrieverConfig
from models.fusion import build_fusion
from models.inputs import Batch, FieldLayout
from models.layers import mlp
from models.losses import LearnableTemperature

HIST_FIELD = "item_id"  # the item field whose buckets `hist` holds


def _check_sparse(batch: Batch, layout: FieldLayout, tower: str) -> torch.Tensor:
    sparse = batch["sparse"]
    if sparse.ndim != 2 or sparse.shape[1] != len(layout.names):
        raise ValueError(
            f"{tower} tower: batch['sparse'] must be [B, {len(layout.names)}] for fields {layout.names}, "
            f"got {tuple(sparse.shape)}"
        )
    return sparse


def _check_width(batch: Batch, key: str, width: int, tower: str) -> torch.Tensor:
    x = batch[key]
    if x.ndim != 2 or x.shape[1] != width:
        raise ValueError(f"{tower} tower: batch['{key}'] must be [B, {width}], got {tuple(x.shape)}")
    return x


class FieldEmbedding(nn.Module):
    """All hashed fields of one side in one table; field f owns rows [offsets[f], offsets[f] + sizes[f])."""

    def __init__(self, layout: FieldLayout, field_dim: int) -> None:
        super().__init__()
        self.layout = layout
        self.table = nn.Embedding(layout.total, field_dim)
        nn.init.normal_(self.table.weight, std=field_dim**-0.5)
        self.register_buffer("offsets", layout.offsets_tensor(), persistent=False)

    def forward(self, sparse: torch.Tensor) -> torch.Tensor:
        """sparse: [B, F] int64 local bucket ids -> [B, F * Fd] float32."""
        emb = self.table(sparse + self.offsets[None, :])  # (B, F, Fd)
        return emb.flatten(1)  # (B, F*Fd)

    def rows_of(self, field: str, buckets: torch.Tensor) -> torch.Tensor:
        """buckets: [...] int64 local bucket ids of `field` -> [..., Fd] float32 embeddings."""
        f = self.layout.names.index(field)
        return self.table(buckets + self.layout.offsets[f])


class UserTower(nn.Module):
    """Hashed user fields + mean-pooled history items + log counts + numeric -> MLP -> [B, D] unit norm."""

    def __init__(
        self,
        cfg: RetrieverConfig,
        layout: FieldLayout,
        item_fields: FieldEmbedding,
        n_counts: int,
        n_numeric: int,
    ) -> None:
        super().__init__()
        self.layout = layout
        self.n_counts = n_counts
        self.n_numeric = n_numeric
        self.fields = FieldEmbedding(layout, cfg.field_dim)
        # a plain attribute would register the shared module twice in state_dict; a tuple keeps it out
        self._item_fields = (item_fields,)
        in_dim = len(layout.names) * cfg.field_dim + cfg.field_dim + n_counts + n_numeric
        self.mlp, _ = mlp(in_dim, list(cfg.hidden), out_dim=cfg.dim)

    def pool_history(self, hist: torch.Tensor) -> torch.Tensor:
        """hist: [B, L] int64 item_id buckets, 0 = padding -> [B, Fd] mean of the non-padding embeddings.

        A user with no history gets the zero vector.
        """
        emb = self._item_fields[0].rows_of(HIST_FIELD, hist)  # (B, L, Fd)
        mask = (hist != 0).to(emb.dtype)  # (B, L)
        total = (emb * mask[:, :, None]).sum(dim=1)  # (B, Fd)
        return total / mask.sum(dim=1, keepdim=True).clamp_min(1.0)  # (B, Fd)

    def forward(self, batch: Batch) -> torch.Tensor:
        """batch: sparse [B, Fu] int64, hist [B, L] int64, counts [B, C] float32, numeric [B, Mu] float32
        (numeric/counts may be absent when their width is 0) -> [B, D] float32, L2-normalised."""
        parts = [self.fields(_check_sparse(batch, self.layout, "user"))]  # (B, Fu*Fd)
        hist = batch["hist"]
        if hist.ndim != 2:
            raise ValueError(f"user tower: batch['hist'] must be [B, L], got {tuple(hist.shape)}")
        parts.append(self.pool_history(hist))  # (B, Fd)
        if self.n_counts:
            parts.append(_check_width(batch, "counts", self.n_counts, "user"))  # (B, C)
        if self.n_numeric:
            parts.append(_check_width(batch, "numeric", self.n_numeric, "user"))  # (B, Mu)
        x = torch.cat(parts, dim=1)  # (B, in_dim)
        return F.normalize(self.mlp(x), dim=1)  # (B, D)


class ModalityProjection(nn.Module):
    """Project a (possibly missing) text or image embedding: ``gate * has * W (x / |x|)``.

    The input is L2-normalised first (zero stays zero), so its scale cannot dominate; the projection is
    multiplied by the 0/1 mask, so a missing modality contributes exactly zero whatever the slot holds; the
    learned scalar gate (initialised to 1) sets how much the modality weighs relative to the hashed fields.
    """

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, out_dim)
        self.gate = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor, has: torch.Tensor) -> torch.Tensor:
        """x: [B, Din] float32; has: [B] float32 0/1 -> [B, Fd] float32."""
        x = F.normalize(x * has[:, None], dim=1)  # (B, Din); a masked row is all zeros
        return self.gate * self.proj(x) * has[:, None]  # (B, Fd)


class ItemTower(nn.Module):
    """Hashed item fields + numeric + gated text/image projections and presence flags -> [B, D] unit norm."""

    def __init__(
        self,
        cfg: RetrieverConfig,
        layout: FieldLayout,
        fields: FieldEmbedding,
        n_numeric: int,
        text_dim: int,
        image_dim: int,
    ) -> None:
        super().__init__()
        self.layout = layout
        self.fields = fields
        self.n_numeric = n_numeric
        self.text_dim = text_dim if cfg.use_text else 0
        self.image_dim = image_dim if cfg.use_image else 0
        self.field_dim = cfg.field_dim
        self.text = ModalityProjection(text_dim, cfg.field_dim) if self.text_dim else None
        self.image = ModalityProjection(image_dim, cfg.field_dim) if self.image_dim else None
        self.fusion = build_fusion(
            cfg.fusion,
            ids_dim=len(layout.names) * cfg.field_dim + n_numeric,
            n_modalities=(self.text is not None) + (self.image is not None),
            width=cfg.field_dim,
            heads=cfg.fusion_heads,
            score_dim=cfg.dim,
            weighting="softmax",
            presence_flags=True,
        )
        self.mlp, _ = mlp(self.fusion.out_dim, list(cfg.hidden), out_dim=cfg.dim)

    def _modality(
        self, batch: Batch, key: str, width: int, proj: ModalityProjection
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = _check_width(batch, key, width, "item")
        has = batch[f"has_{key}"].to(x.dtype)
        if has.shape != (x.shape[0],):
            raise ValueError(f"item tower: batch['has_{key}'] must be [B], got {tuple(has.shape)}")
        return proj(x, has), has  # (B, Fd), (B,)

    def forward(self, batch: Batch) -> torch.Tensor:
        """batch: sparse [B, Fi] int64, numeric [B, Mi] float32, text [B, Dt] float32, has_text [B] float32,
        image [B, Di] float32, has_image [B] float32 -> [B, D] float32, L2-normalised."""
        parts = [self.fields(_check_sparse(batch, self.layout, "item"))]  # (B, Fi*Fd)
        if self.n_numeric:
            parts.append(_check_width(batch, "numeric", self.n_numeric, "item"))  # (B, Mi)
        ids = torch.cat(parts, dim=1)  # (B, Fi*Fd + Mi)
        mods = [
            self._modality(batch, key, width, proj)
            for key, width, proj in (
                ("text", self.text_dim, self.text),
                ("image", self.image_dim, self.image),
            )
            if proj is not None
        ]
        if mods:
            tokens = torch.stack([t for t, _ in mods], 1)  # (B, M, Fd)
            present = torch.stack([h for _, h in mods], 1)  # (B, M)
        else:
            tokens, present = ids.new_zeros(ids.shape[0], 0, self.field_dim), ids.new_zeros(ids.shape[0], 0)
        x = self.fusion(ids, tokens, present)  # (B, in_dim)
        return F.normalize(self.fusion.combine(self.mlp(x), tokens, present), dim=1)  # (B, D)


class TwoTower(nn.Module):
    """User and item towers of the retriever; the loss lives in models/losses.py.

    Args:
        cfg: the retriever config (dim D, field_dim, hidden, use_text, use_image, fusion, learn_temperature).
        user_layout: hashed user fields of the user batch's `sparse`.
        item_layout: hashed item fields of the item batch's `sparse`; must contain an "item_id" field, whose
            buckets are also the ids in the user batch's `hist`.
        n_counts: C, width of `counts`.
        n_user_numeric: Mu, width of the user batch's `numeric`.
        n_item_numeric: Mi, width of the item batch's `numeric`.
        text_dim: Dt, width of `text` (ignored when cfg.use_text is false).
        image_dim: Di, width of `image` (ignored when cfg.use_image is false).

    >>> cfg = RetrieverConfig(dim=8, field_dim=4, hidden=[16])
    >>> m = TwoTower(cfg, FieldLayout(("gender",), (3,)), FieldLayout(("item_id",), (10,)), 1, 0, 0, 6, 5)
    >>> u = m.user_embedding({"sparse": torch.tensor([[1]]), "hist": torch.tensor([[4, 0]]),
    ...                       "counts": torch.tensor([[0.7]])})
    >>> u.shape
    torch.Size([1, 8])
    """

    def __init__(
        self,
        cfg: RetrieverConfig,
        user_layout: FieldLayout,
        item_layout: FieldLayout,
        n_counts: int,
        n_user_numeric: int,
        n_item_numeric: int,
        text_dim: int,
        image_dim: int,
    ) -> None:
        super().__init__()
        if HIST_FIELD not in item_layout.names:
            raise ValueError(
                f"TwoTower: item_layout {item_layout.names} has no '{HIST_FIELD}' field; the user history "
                f"holds {HIST_FIELD} buckets and shares its embedding, so add '{HIST_FIELD}' to the item fields"
            )
        for name, value in [
            ("n_counts", n_counts),
            ("n_user_numeric", n_user_numeric),
            ("n_item_numeric", n_item_numeric),
            ("text_dim", text_dim),
            ("image_dim", image_dim),
        ]:
            if value < 0:
                raise ValueError(f"TwoTower: {name} must be >= 0, got {value}")
        if cfg.use_text and text_dim == 0:
            raise ValueError("TwoTower: retriever.use_text is true but text_dim is 0; set use_text=false")
        if cfg.use_image and image_dim == 0:
            raise ValueError("TwoTower: retriever.use_image is true but image_dim is 0; set use_image=false")
        self.cfg = cfg
        item_fields = FieldEmbedding(item_layout, cfg.field_dim)
        self.item_tower = ItemTower(cfg, item_layout, item_fields, n_item_numeric, text_dim, image_dim)
        self.user_tower = UserTower(cfg, user_layout, item_fields, n_counts, n_user_numeric)
        # the loss's learnt tau (retriever.learn_temperature): not used to score, kept here so that the
        # checkpoint and the warm start carry it with the weights it was learnt with
        self.tau = (
            LearnableTemperature(cfg.temperature, cfg.min_temperature, cfg.max_temperature)
            if cfg.learn_temperature
            else None
        )

    def temperature(self) -> float | torch.Tensor:
        """The loss's tau: the learnt one ([] float32 tensor, with gradient) or `cfg.temperature` (float)."""
        return self.tau() if self.tau is not None else self.cfg.temperature

    def user_embedding(self, batch: Batch) -> torch.Tensor:
        """User batch (sparse, hist, counts, numeric; see models/inputs.py) -> [B, D] float32, unit norm."""
        return self.user_tower(batch)

    def item_embedding(self, batch: Batch) -> torch.Tensor:
        """Item batch (sparse, numeric, text, has_text, image, has_image) -> [B, D] float32, unit norm."""
        return self.item_tower(batch)

    def forward(self, user_batch: Batch, item_batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """-> ([B, D] user embeddings, [B, D] item embeddings), both float32 and L2-normalised."""
        return self.user_embedding(user_batch), self.item_embedding(item_batch)
