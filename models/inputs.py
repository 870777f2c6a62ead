"""Tensor inputs shared by the towers and the ranker.

A batch is a dict of tensors; every model reads the keys it needs and ignores the rest:

    sparse     [B, F] int64    local bucket id of each hashed field, in [0, sizes[f]); 0 = null bucket
    hist       [B, L] int64    item_id buckets of the user's last L items, most recent first; 0 = padding
    counts     [B, C] float32  log1p of the user's event counts over the history windows
    numeric    [B, M] float32  standardised numeric attributes (0 where missing)
    text       [B, Dt] float32 text embedding of the item, L2-normalised (zeros when missing)
    has_text   [B] float32     1.0 when the item has a text embedding
    image      [B, Di] float32 image embedding of the item (zeros when missing)
    has_image  [B] float32     1.0 when the item has an image embedding
    label      [B] float32     1.0 for a positive (ranker only)

The towers take a user batch (user fields, hist, counts, user numeric) and an item batch (item fields,
item numeric, text, image and masks); the ranker takes one batch with all fields of the example.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

Batch = dict[str, torch.Tensor]


@dataclass(frozen=True)
class FieldLayout:
    """Names and bucket counts of the hashed fields in `sparse`, in column order.

    One embedding table holds every field; field f owns rows [offsets[f], offsets[f] + sizes[f]).

    >>> FieldLayout(("gender", "item_id"), (3, 10)).offsets
    (0, 3)
    """

    names: tuple[str, ...]
    sizes: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.names) != len(self.sizes):
            raise ValueError(f"FieldLayout: {len(self.names)} names but {len(self.sizes)} sizes")

    @property
    def offsets(self) -> tuple[int, ...]:
        out, acc = [], 0
        for s in self.sizes:
            out.append(acc)
            acc += s
        return tuple(out)

    @property
    def total(self) -> int:
        return sum(self.sizes)

    def offsets_tensor(self, device: torch.device | str | None = None) -> torch.Tensor:
        return torch.tensor(self.offsets, dtype=torch.long, device=device)
