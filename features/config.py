"""Typed, frozen configs of the feature stages (received by the functions in `features/`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

EVENT_TYPES: tuple[str, ...] = ("view", "click", "cart", "purchase")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ColumnsConfig(_Frozen):
    """Which attribute columns of users.parquet / items.parquet are categorical or numeric.

    `None` means "infer from the file" (strings -> categorical, numbers -> numeric); `recsys validate`
    prints the section it inferred so it can be pasted into a config file.
    """

    user_categorical: list[str] | None = None  # e.g. ["age_bucket", "gender", "city_tier", "device"]
    user_numeric: list[str] | None = None  # e.g. ["membership_years"]
    item_categorical: list[str] | None = None  # e.g. ["category_l1", "brand", "price_bucket"]
    item_numeric: list[str] | None = None  # e.g. ["price"]

    @model_validator(mode="after")
    def _disjoint(self) -> ColumnsConfig:
        for side in ("user", "item"):
            cat = set(getattr(self, f"{side}_categorical") or [])
            num = set(getattr(self, f"{side}_numeric") or [])
            both = sorted(cat & num)
            if both:
                raise ValueError(
                    f"columns.{side}_categorical and columns.{side}_numeric both list {both}; "
                    "fix: keep each column in one list"
                )
        return self


class FeaturesConfig(_Frozen):
    """mmh3 hash bucketing and point-in-time history features."""

    hash_seed: int = Field(0, ge=0, lt=2**32)  # murmur3_x86_32 seed (unsigned); part of the bucket contract
    default_buckets: int = Field(1_000, ge=2)  # buckets of a categorical field not listed in `buckets`
    id_buckets: dict[str, int] = Field(
        default_factory=lambda: {"user_id": 200_000, "item_id": 100_000}
    )  # buckets of the id fields
    buckets: dict[str, int] = Field(default_factory=dict)  # per-field overrides, e.g. {"brand": 5000}
    crosses: list[tuple[str, str]] = Field(
        default_factory=lambda: [("age_bucket", "price_bucket"), ("gender", "category_l1")]
    )  # crossed fields hashed from the pair; fields absent from the data are skipped with a warning
    cross_buckets: int = Field(1_000, ge=2)  # buckets of each crossed field
    history_len: int = Field(10, ge=1)  # last N interacted items strictly before t
    history_windows_days: list[int] = Field(default_factory=lambda: [1, 7, 30])  # event counts windows

    @field_validator("buckets", "id_buckets")
    @classmethod
    def _positive(cls, v: dict[str, int]) -> dict[str, int]:
        bad = {k: n for k, n in v.items() if n < 2}
        if bad:
            raise ValueError(f"bucket counts must be >= 2 (one is reserved for null), got {bad}")
        return v


class SamplingConfig(_Frozen):
    """Negative sampling for the ranker and sampling probabilities for the retriever."""

    positive_events: list[Literal["view", "click", "cart", "purchase"]] = Field(
        default_factory=lambda: ["click", "cart", "purchase"]
    )
    ratio: int = Field(4, ge=1)  # negatives per positive
    strategy: Literal["uniform", "popularity"] = "popularity"
    alpha: float = Field(0.75, ge=0.0)  # popularity ** alpha
    real_negative_share: float = Field(0.5, ge=0.0, le=1.0)  # share of negatives from views without click


class EmbeddingsConfig(_Frozen):
    """Text and image encoders of items."""

    text_model: str = "packaged:all-MiniLM-L6-v2"  # or any sentence-transformers id / local path
    image_model: str | None = None  # CLIP checkpoint (hub id or local dir); when set it is the image encoder
    image_encoder: Literal["auto", "crossmodal", "descriptor"] = "auto"  # without image_model: crossmodal =
    # a CNN trained on the catalogue's (image, title) pairs (config section `crossmodal`); descriptor = the
    # training-free colour/edge descriptor; auto = crossmodal when crossmodal.min_items items have both
    batch_size: int = Field(64, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    max_image_bytes: int = Field(20_000_000, ge=1)  # larger image files are never opened (20 MB)
    max_image_pixels: int = Field(50_000_000, ge=1)  # larger images (width x height, from the header) are
    # never decoded (50 megapixels)
