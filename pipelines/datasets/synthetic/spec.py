"""The spec of a synthetic data set (size, seed, knobs), the presets, and its random streams."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np

# stream ids of the random generators: default_rng([seed, STREAM, index])
S_USERS, S_ITEMS, S_IMAGES, S_DAY, S_PREFS, S_CONTENT = 1, 2, 3, 4, 5, 6


def stream_rng(seed: int, stream: int, index: int = 0) -> np.random.Generator:
    """The random generator of one purpose (`S_*`) and index (chunk or day) of a spec's seed."""
    return np.random.default_rng([seed, stream, index])


@dataclass(frozen=True)
class SyntheticSpec:
    """Size, seed and knobs of a synthetic data set; the same spec always gives the same bytes."""

    users: int  # number of users (all exist from day 0)
    items: int  # number of items (some launch later: cold start)
    days: int  # number of daily event partitions, from `start`
    start: date  # first event day (UTC)
    seed: int = 0
    events_per_user_day: float = 3.0  # mean views per user per day; clicks/carts/purchases add ~31%
    new_item_share: float = 0.2  # share of items launched on days 1..days-1 (no events before)
    null_title_share: float = 0.05
    null_image_share: float = 0.05
    latent_dim: int = 16  # D of the user and item latent vectors
    candidates: int = 32  # K candidates per view (popularity tilted by category preference), one kept
    affinity: float = 3.0  # beta: weight of u.v when a view picks among its candidates
    zipf_exponent: float = 0.8  # base popularity of the item of rank r: r ** -zipf_exponent
    # alpha: total Dirichlet concentration of each user's preference over category_l2 (smaller = a user
    # shops in fewer subcategories); None: no category preference (candidates drawn by popularity alone)
    category_concentration: float | None = 1.0
    cross_strength: float = 1.0  # multiplies both planted crosses (0 removes them)
    image_size: int = 64
    # content-only preferences (issue #17): the utility s = u.v gains content_signal for an item whose image
    # pattern, and again for one whose title style, is the user's favourite; 0 plants nothing (all images
    # plain, no preferences: the data of the generator before content signals)
    content_signal: float = 1.0
    content_user_share: float = 0.5  # share of users with a favourite pattern; the same, independently, style

    def __post_init__(self) -> None:
        checks = [
            (self.users >= 1, "users must be >= 1"),
            (self.items >= 1, "items must be >= 1"),
            (self.days >= 1, "days must be >= 1"),
            (self.events_per_user_day > 0, "events_per_user_day must be > 0"),
            (0.0 <= self.new_item_share < 1.0, "new_item_share must be in [0, 1)"),
            (0.0 <= self.null_title_share <= 1.0, "null_title_share must be in [0, 1]"),
            (0.0 <= self.null_image_share <= 1.0, "null_image_share must be in [0, 1]"),
            (self.latent_dim >= 1, "latent_dim must be >= 1"),
            (self.candidates >= 1, "candidates must be >= 1"),
            (
                self.category_concentration is None or self.category_concentration > 0,
                "category_concentration must be > 0 or None",
            ),
            (self.zipf_exponent >= 0, "zipf_exponent must be >= 0"),
            (self.image_size >= 8, "image_size must be >= 8"),
            (self.content_signal >= 0, "content_signal must be >= 0"),
            (0.0 <= self.content_user_share <= 1.0, "content_user_share must be in [0, 1]"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"SyntheticSpec: {msg}; fix: correct the value in the spec or preset")

    @property
    def end(self) -> date:
        """Last event day (inclusive)."""
        return self.start + timedelta(days=self.days - 1)


PRESETS: dict[str, SyntheticSpec] = {
    # CI: ~81k events, a few seconds
    "small": SyntheticSpec(
        users=2_000, items=1_000, days=10, start=date(2024, 3, 1), events_per_user_day=3.0
    ),
    # ~1.0M events
    "medium": SyntheticSpec(
        users=25_000, items=10_000, days=28, start=date(2024, 3, 1), events_per_user_day=1.05
    ),
    # ~20M events, written day by day
    "large": SyntheticSpec(
        users=200_000, items=50_000, days=30, start=date(2024, 3, 1), events_per_user_day=2.4
    ),
}
