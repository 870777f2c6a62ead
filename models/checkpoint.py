"""Checkpoint files shared by the trainers: weights + meta, written atomically, read with a kind check."""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path
from typing import Any

import torch
from torch import nn

FORMAT = 1  # bump when the payload layout changes


def write(path: Path | str, kind: str, model: nn.Module, meta: dict[str, Any]) -> Path:
    """Save {"format", "kind", "state_dict" (CPU tensors), "meta"} to `path` (temp file, then rename)."""
    path = Path(path)
    payload = {
        "format": FORMAT,
        "kind": kind,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta": meta,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def read(path: Path | str, kind: str) -> dict[str, Any]:
    """Load a payload written by `write` with the same `kind` (CPU, weights only)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist; fix: train first or point to an existing file")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or payload.get("kind") != kind:
        raise ValueError(
            f"checkpoint {path} is not a {kind} checkpoint (format {FORMAT}); fix: re-train, or load it "
            f"with the loader of its own kind"
        )
    return payload


def warm_start(model: nn.Module, path: Path | str, kind: str) -> list[str]:
    """Copy into `model` every tensor of the `kind` checkpoint at `path` whose name and shape match.

    Returns the names copied (sorted); the other tensors keep their current values (a table whose bucket
    count changed, a modality switched on, a layer of another width). Logs what was kept.
    """
    old = read(path, kind)["state_dict"]
    own = model.state_dict()
    matched = {k: v for k, v in old.items() if k in own and own[k].shape == v.shape}
    kept = sorted(set(own) - set(matched))
    model.load_state_dict(matched, strict=False)
    if kept:
        logging.getLogger(__name__).info(
            "warm start from %s: %d tensors copied, %d kept (new or reshaped): %s",
            path,
            len(matched),
            len(kept),
            kept,
        )
    return sorted(matched)
