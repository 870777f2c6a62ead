"""Typed, frozen config of the FAISS index."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class IndexConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["auto", "flat", "ivf", "hnsw"] = "auto"  # auto: flat below `exact_below` items
    exact_below: int = Field(50_000, ge=1)
    nlist: int | None = Field(None, ge=1)  # None -> ~4*sqrt(N)
    nprobe: int | None = Field(None, ge=1)  # None -> smallest reaching target_recall on a sample
    hnsw_m: int = Field(32, ge=4)
    target_recall: float = Field(0.95, gt=0.0, le=1.0)
    use_gpu: Literal["auto", "never"] = "auto"

    @model_validator(mode="after")
    def _nprobe_le_nlist(self) -> IndexConfig:
        if self.nlist is not None and self.nprobe is not None and self.nprobe > self.nlist:
            raise ValueError(f"index.nprobe ({self.nprobe}) must be <= index.nlist ({self.nlist})")
        return self
