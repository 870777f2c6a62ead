"""User blocks: which block a user falls in, how many blocks, and each block's sampling seed."""

from __future__ import annotations

import logging

import numpy as np
import polars as pl

from features.hashing import (
    hash_series,
)
from pipelines.config import DataConfig

log = logging.getLogger(__name__)


EVENTS_PER_BLOCK: int = DataConfig.model_fields["events_per_block"].default  # choose_blocks' default
_BLOCK_HASH_SEED = 0x0B10C5  # murmur3 seed of user_id -> block (not the features' hash seed)


def choose_blocks(n_events: int, events_per_block: int = EVENTS_PER_BLOCK) -> int:
    """Number of user blocks for `n_events` events read: ceil(n_events / events_per_block), at least 1.

    >>> choose_blocks(0), choose_blocks(1_000_000), choose_blocks(18_500_000)
    (1, 1, 19)
    """
    if events_per_block < 1:
        raise ValueError(f"choose_blocks: events_per_block={events_per_block}; fix: pass a value >= 1")
    return max(1, -(-n_events // events_per_block))


def user_block(user_id: pl.Series, n_blocks: int) -> pl.Series:
    """[n] String user ids -> [n] Int32 block in [0, n_blocks): murmur3_x86_32(user_id) mod n_blocks.

    Stable across processes and library versions (mmh3 through features.hashing.hash_series, which hashes
    the distinct ids only); every event of a user lands in the same block.
    """
    if n_blocks < 1:
        raise ValueError(f"user_block: n_blocks={n_blocks}; fix: pass n_blocks >= 1")
    if n_blocks == 1:
        return pl.Series(user_id.name, [0] * user_id.len(), dtype=pl.Int32)
    # hash_series gives 1 + h mod n_blocks (0 only for a missing / empty id, which goes to block 0)
    return (hash_series(user_id, n_blocks + 1, _BLOCK_HASH_SEED) - 1).clip(lower_bound=0).cast(pl.Int32)


def block_seed(seed: int, block: int) -> int:
    """Seed of the negative sampling of one (split, block): a SeedSequence of (seed, block), so blocks
    draw independent streams and the same seed and block count give the same negatives."""
    return int(np.random.SeedSequence([seed % 2**63, block]).generate_state(1, dtype=np.uint64)[0] >> 1)
