"""Typed, frozen configs of the retriever and ranker models."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

FusionKind = Literal["concat", "late", "attention", "cross_attention"]  # models/fusion.py


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RetrieverConfig(_Frozen):
    """Dual-tower retriever trained with InfoNCE."""

    dim: int = Field(64, ge=2)  # D: output dim of both towers == FAISS index dim
    field_dim: int = Field(32, ge=2)  # width of each hashed-field embedding
    hidden: list[int] = Field(default_factory=lambda: [128])  # tower MLP hidden sizes
    temperature: float = Field(0.05, gt=0.0)  # tau of the softmax
    logq_correction: bool = True
    remove_accidental_hits: bool = True
    mixed_negatives: int = Field(0, ge=0)  # B': extra uniformly sampled items per batch
    use_text: bool = True
    use_image: bool = True
    fusion: FusionKind = "concat"  # how the item tower fuses ids, text and image (models/fusion.py)
    fusion_heads: int = Field(
        2, ge=1
    )  # attention heads of fusion attention / cross_attention; divides field_dim
    symmetric: bool = False  # add the item -> user InfoNCE term (models/losses.py, info_nce)
    learn_temperature: bool = (
        False  # learn tau (init `temperature`, clamped to [min_temperature, max_temperature])
    )
    min_temperature: float = Field(0.01, gt=0.0)  # lower clamp of a learnt tau (CLIP: 0.01)
    max_temperature: float = Field(1.0, gt=0.0)  # upper clamp of a learnt tau
    batch_size: int = Field(512, ge=1)
    lr: float = Field(1e-3, gt=0.0)
    epochs: int = Field(5, ge=1)
    patience: int = Field(2, ge=1)
    warm_start: bool = True
    top_k: int = Field(100, ge=1)  # candidates per user
    exclude_purchased: bool = True
    candidate_block_users: int = Field(16_384, ge=1)  # users per search block (memory; a multiple of 4096)
    eval_block_users: int = Field(8_192, ge=1)  # users per block of the evaluation's metrics (memory)

    @model_validator(mode="after")
    def _check(self) -> RetrieverConfig:
        _check_fusion_heads("retriever", self.fusion, self.fusion_heads, self.field_dim)
        if self.learn_temperature and not self.min_temperature <= self.temperature <= self.max_temperature:
            raise ValueError(
                f"retriever.learn_temperature: the initial temperature {self.temperature} is outside "
                f"[min_temperature, max_temperature] = [{self.min_temperature}, {self.max_temperature}]; fix: "
                f"set retriever.temperature inside that range or widen it"
            )
        return self


class RankerConfig(_Frozen):
    """DCN-Mix ranker and its baselines (same code path)."""

    model: Literal["lr", "fm", "dcnv2", "dcnmix"] = "dcnmix"
    structure: Literal["stacked", "parallel", "crossnet_only"] = "stacked"
    field_dim: int = Field(16, ge=2)
    cross_layers: int = Field(2, ge=1)  # L
    experts: int = Field(4, ge=1)  # K
    rank: int = Field(32, ge=1)  # R
    gate: Literal["softmax", "sigmoid", "constant"] = "softmax"
    activation: Literal["identity", "relu", "tanh", "hard_tanh"] = "tanh"  # g
    inner_matrix: bool = True  # C_i on/off
    fusion: FusionKind = "concat"  # how the input block fuses ids, text and image (models/fusion.py)
    fusion_heads: int = Field(
        2, ge=1
    )  # attention heads of fusion attention / cross_attention; divides field_dim
    mlp: list[int] = Field(default_factory=lambda: [256, 128])
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    batch_norm: bool = False
    batch_size: int = Field(1024, ge=1)
    lr: float = Field(1e-3, gt=0.0)
    l2_embedding: float = Field(1e-6, ge=0.0)
    grad_clip: float = Field(10.0, gt=0.0)
    epochs: int = Field(5, ge=1)
    patience: int = Field(2, ge=1)
    amp: bool = True  # autocast + GradScaler, CUDA only
    ddp: bool = False  # torchrun data-parallel
    quantize_int8: bool = False  # dynamic INT8 Linear layers for CPU scoring
    use_text: bool = True  # the items' text embedding as an input (when embeddings/dt=D is committed)
    use_image: bool = True  # the items' image embedding as an input
    content_affinity: bool = (
        True  # per modality, cos(user's history items, item) as inputs (pipelines.batches)
    )
    # with content_affinity: the width K per modality of the learned affinity (models.ranker.LearnedAffinity;
    # 0: the fixed cosines only)
    affinity_rank: int = Field(16, ge=0)
    warm_start: bool = True
    prefetch_batches: int = Field(0, ge=0)  # training batches read ahead by a thread (0: none)

    @model_validator(mode="after")
    def _check(self) -> RankerConfig:
        _check_fusion_heads("ranker", self.fusion, self.fusion_heads, self.field_dim)
        return self


def _check_fusion_heads(section: str, fusion: str, heads: int, field_dim: int) -> None:
    if fusion in ("attention", "cross_attention") and field_dim % heads:
        raise ValueError(
            f"{section}.fusion={fusion}: {section}.fusion_heads={heads} does not divide {section}.field_dim="
            f"{field_dim} (the token width); fix: set fusion_heads to a divisor of field_dim"
        )


class CrossModalConfig(_Frozen):
    """Cross-modal item encoder (models/crossmodal.py): a CNN image tower trained against frozen title
    embeddings; used by the embedding stage when embeddings.image_encoder picks it (docs/embeddings.md)."""

    min_items: int = Field(500, ge=2)  # items with a title and a readable image needed for image_encoder=auto
    max_train_items: int = Field(20_000, ge=2)  # pairs sampled (seeded) for training on a larger catalogue
    dim: int = Field(64, ge=2)  # D of the joint space (= image_emb dim)
    image_size: int = Field(32, ge=8)  # S: images are resized to S x S (a multiple of 8)
    width: int = Field(16, ge=1)  # channels of the CNN's first block (doubled thrice)
    grid: int = Field(1, ge=1)  # G: the last feature map is average-pooled to G x G cells (1: global pool)
    epochs: int = Field(20, ge=1)  # epochs of a training from scratch
    warm_epochs: int = Field(5, ge=1)  # epochs of an incremental training, warm-started from the last encoder
    batch_size: int = Field(128, ge=2)  # pairs per step (the other pairs of the batch are the negatives)
    lr: float = Field(2e-3, gt=0.0)  # AdamW learning rate, cosine-decayed to 0 over the run
    weight_decay: float = Field(1e-4, ge=0.0)
    temperature_init: float = Field(0.07, gt=0.0)  # tau of the learnt temperature at initialisation
    min_temperature: float = Field(0.01, gt=0.0)  # clamp of tau (CLIP: logits scaled by at most 100)
    modality_dropout: float = Field(0.0, ge=0.0, lt=1.0)  # share of pairs with one side hidden per step
    augment: bool = True  # random flip, zoom, shift, brightness of the training images
    # weight of the image-image term (two augmented views of a photo, models/crossmodal.py; 0: titles only,
    # the default: docs/embeddings.md has the measurements)
    image_loss_weight: float = Field(0.0, ge=0.0)
    image_temperature: float = Field(0.1, gt=0.0)  # fixed tau of that term (SimCLR's)
    seed: int = 0  # init, shuffling, augmentation and dropout
    threads: int = Field(
        0, ge=0
    )  # torch CPU threads of the training (0: half the cores; it runs beside frames)

    @model_validator(mode="after")
    def _checks(self) -> CrossModalConfig:
        if self.image_size % 8:
            raise ValueError(
                f"crossmodal.image_size={self.image_size} is not a multiple of 8; fix: use e.g. 64"
            )
        if self.min_temperature > self.temperature_init:
            raise ValueError(
                "crossmodal.min_temperature > crossmodal.temperature_init; fix: lower the minimum"
            )
        return self
