"""Synthetic e-commerce data in the input contract: the project's embedded default data set.

`generate(data_dir, spec)` writes, through `pipelines.io` only::

    <data>/users.parquet                       one row per user
    <data>/items.parquet                       one row per item (title and image_path ~5% null each)
    <data>/images/iNNNNNNN.png                 a 64x64 RGB product image per item with an image_path
    <data>/events/dt=YYYY-MM-DD/part-0.parquet view/click/cart/purchase events of that UTC day

The generative model (docs/synthetic-data.md gives every constant and the planted signals):

* users have attributes, a latent taste vector u (dim D) built from city tier, device and noise, and a
  Dirichlet preference over the 27 subcategories (category_l2) that tilts which items they are shown;
* items have attributes, a latent vector v built from category, brand, colour and noise, a Zipf-like base
  popularity, a launch day (~20% launch after day 0: cold start), a title composed from the attributes and
  an image whose colour and shape come from the item's colour and category;
* each day, every user views Poisson(rate) items; a view picks one of K candidates drawn from popularity
  tilted by the user's subcategory preference, with probability proportional to exp(beta * u.v)
  (sampling-importance-resampling of pop(t) * g_u[category] * exp(beta u.v); `view_log_weights`);
  popularity drifts with a per-category season and a launch boost of new items;
* each view may become a click, each click a cart, each cart a purchase, by logistic propensities that add
  the latent affinity u.v to two planted feature crosses (age_bucket x price_bucket, gender x category_l1)
  whose cells flip sign and whose row and column means are zero, so one-hot marginals cannot explain them.

Everything is vectorised with numpy: loops run over days, chunks of views, event types and shapes, never
over single events or users. Randomness comes from `numpy.random.default_rng` streams keyed by
(seed, purpose, day or chunk), so a spec always yields the same bytes and any day can be made alone; memory
is bounded by one day of events (plus the user and item tables), whatever the number of days.
"""

from __future__ import annotations

import io as _bytes_io
import logging
import math
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from PIL import Image

from pipelines import io

log = logging.getLogger(__name__)

# ---------------------------------------------------------------- vocabularies (constants of the model)

AGE_BUCKETS: tuple[str, ...] = ("18-24", "25-34", "35-44", "45-54", "55+")
AGE_PROBS: tuple[float, ...] = (0.18, 0.30, 0.24, 0.16, 0.12)
GENDERS: tuple[str, ...] = ("female", "male", "unknown")
GENDER_PROBS: tuple[float, ...] = (0.49, 0.46, 0.05)
CITY_TIERS: tuple[str, ...] = ("tier1", "tier2", "tier3")
CITY_PROBS: tuple[float, ...] = (0.30, 0.40, 0.30)
DEVICES: tuple[str, ...] = ("ios", "android", "web")
DEVICE_PROBS: tuple[float, ...] = (0.35, 0.45, 0.20)

CATEGORIES_L1: tuple[str, ...] = (
    "apparel",
    "shoes",
    "electronics",
    "home",
    "beauty",
    "sports",
    "toys",
    "grocery",
)
CATEGORIES_L2: tuple[tuple[str, ...], ...] = (
    ("dress", "shirt", "jacket", "jeans"),
    ("sneakers", "boots", "sandals"),
    ("headphones", "phone case", "speaker", "charger"),
    ("lamp", "cushion", "mug", "vase"),
    ("lipstick", "moisturiser", "perfume"),
    ("yoga mat", "water bottle", "racket"),
    ("puzzle", "plush toy", "building blocks"),
    ("coffee", "tea", "chocolate"),
)
# subcategories in sorted order: the index space of World.item_l2 and of the users' category preferences
L2_VOCAB: tuple[str, ...] = tuple(sorted({w for x in CATEGORIES_L2 for w in x}))
L1_PROBS: tuple[float, ...] = (0.22, 0.12, 0.12, 0.14, 0.10, 0.10, 0.08, 0.12)
L1_MEDIAN_PRICE: tuple[float, ...] = (40.0, 70.0, 120.0, 60.0, 25.0, 45.0, 25.0, 10.0)
# the image shape of each category_l1, in the order of CATEGORIES_L1
L1_SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "ring", "plus", "hbar", "vbar")
L1_MATERIALS: tuple[tuple[str, ...], ...] = (
    ("cotton", "linen", "wool", "silk", "polyester"),
    ("leather", "canvas", "rubber", "suede"),
    ("plastic", "aluminium", "glass"),
    ("ceramic", "wood", "glass", "cotton", "metal"),
    ("glass", "plastic"),
    ("rubber", "foam", "aluminium", "polyester"),
    ("plastic", "wood", "plush"),
    ("paper", "tin", "glass"),
)
# colour name, RGB, words used in titles (the first is the name itself)
COLOURS: tuple[str, ...] = (
    "red",
    "orange",
    "yellow",
    "green",
    "teal",
    "blue",
    "purple",
    "pink",
    "brown",
    "black",
    "white",
    "grey",
)
COLOUR_RGB: tuple[tuple[int, int, int], ...] = (
    (200, 30, 30),
    (240, 130, 20),
    (235, 205, 30),
    (40, 160, 60),
    (0, 140, 140),
    (30, 80, 200),
    (130, 50, 170),
    (240, 120, 170),
    (120, 75, 40),
    (25, 25, 25),
    (240, 240, 240),
    (128, 128, 128),
)
COLOUR_WORDS: tuple[tuple[str, ...], ...] = (
    ("red", "crimson", "scarlet"),
    ("orange", "tangerine"),
    ("yellow", "mustard"),
    ("green", "emerald"),
    ("teal", "turquoise"),
    ("blue", "cobalt"),
    ("purple", "violet"),
    ("pink", "rose"),
    ("brown", "walnut"),
    ("black", "jet black"),
    ("white", "ivory"),
    ("grey", "slate"),
)
BRANDS: tuple[str, ...] = (
    "acme",
    "northwind",
    "bluepeak",
    "lumen",
    "oakridge",
    "zenith",
    "kestrel",
    "marlow",
    "orbit",
    "pinecrest",
    "quill",
    "rivet",
    "solace",
    "tundra",
    "vantage",
    "willow",
    "yarrow",
    "aurora",
    "brio",
    "delta",
    "ember",
    "fable",
    "harbor",
    "ion",
    "juniper",
    "koda",
    "lark",
    "meridian",
    "nova",
    "sable",
)
ORIGINS: tuple[str, ...] = ("cn", "us", "de", "jp", "it", "vn", "in", "fr", "kr", "tr")
ORIGIN_PROBS: tuple[float, ...] = (0.30, 0.14, 0.08, 0.08, 0.06, 0.10, 0.10, 0.05, 0.05, 0.04)
ADJECTIVES: tuple[str, ...] = ("classic", "everyday", "premium", "compact", "vintage", "modern")
PRICE_BUCKETS: tuple[str, ...] = ("budget", "low", "mid", "high", "premium")
PRICE_EDGES: tuple[float, ...] = (15.0, 30.0, 60.0, 120.0)  # bucket k: EDGES[k-1] <= price < EDGES[k]

EVENTS: tuple[str, ...] = ("view", "click", "cart", "purchase")

# ---------------------------------------------------------------- planted signals (exact, documented)

# age_bucket x price_bucket: C_AP[a, p] = CROSS_AP * AGE_SCORE[a] * PRICE_SCORE[p]
AGE_SCORE: tuple[float, ...] = (-1.0, -0.5, 0.0, 0.5, 1.0)
PRICE_SCORE: tuple[float, ...] = (-1.0, -0.5, 0.0, 0.5, 1.0)
CROSS_AP = 1.0
# gender x category_l1: C_GC[g, c] = CROSS_GC * GENDER_SCORE[g] * L1_SCORE[c]
GENDER_SCORE: tuple[float, ...] = (1.0, -1.0, 0.0)
L1_SCORE: tuple[float, ...] = (1.0, 0.0, -1.0, 0.5, 1.0, -1.0, 0.0, -0.5)
CROSS_GC = 0.8

# funnel propensities: logit = BIAS + AFF * s + CROSS_W * X (+ PRICE_SLOPE * ln(price / 50) for purchase)
CLICK_BIAS, CLICK_AFF, CLICK_CROSS = -2.6, 0.8, 1.0
CART_BIAS, CART_AFF, CART_CROSS = -1.8, 0.4, 0.5
PURCHASE_BIAS, PURCHASE_AFF, PURCHASE_CROSS, PURCHASE_PRICE_SLOPE = -1.0, 0.4, 1.0, -0.3

# delays after the previous funnel step (exponential means, seconds)
CLICK_DELAY_S, CART_DELAY_S, PURCHASE_DELAY_S = 20.0, 90.0, 600.0
# drift
SEASON_AMPLITUDE = 0.4  # popularity multiplier exp(A sin(2 pi t / P + 2 pi c / L1))
SEASON_PERIOD_DAYS = 28.0
LAUNCH_BOOST = 3.0  # new items: multiplier 1 + B exp(-(day - launch) / T)
LAUNCH_BOOST_DAYS = 4.0
WEEKEND_FACTOR, WEEKDAY_FACTOR = 1.2, 0.92  # views per user per day (mean over a week ~1)
# share of views per UTC hour (evening peak)
HOUR_WEIGHTS: tuple[float, ...] = (
    2, 1, 1, 1, 1, 1, 2, 3, 4, 4, 4, 4, 5, 5, 4, 4, 4, 5, 6, 7, 8, 8, 6, 4,
)  # fmt: skip

_DAY_US = 86_400_000_000
_VIEW_TAIL_US = 10_000  # views stop 10 ms before midnight so funnel steps fit strictly inside the day
_CHUNK_VIEWS = 16_384  # views scored per block (memory: CHUNK * K * D floats)
_IMAGE_CHUNK = 256  # images rendered per block

# stream ids of the random generators: default_rng([seed, STREAM, index])
_S_USERS, _S_ITEMS, _S_IMAGES, _S_DAY, _S_PREFS = 1, 2, 3, 4, 5


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


@dataclass(frozen=True)
class World:
    """Everything about users and items that the event simulation needs (one spec -> one world).

    Index arrays hold positions in the vocabularies above; row n of every item array is item_ids[n].
    """

    users: pl.DataFrame  # users.parquet content, row u = user index u
    items: pl.DataFrame  # items.parquet content, row n = item index n
    user_latent: np.ndarray  # [U, D] float32
    item_latent: np.ndarray  # [N, D] float32
    user_age: np.ndarray  # [U] int8, index into AGE_BUCKETS
    user_gender: np.ndarray  # [U] int8, index into GENDERS
    user_activity: np.ndarray  # [U] float64, mean 1: multiplies the views per day
    item_l1: np.ndarray  # [N] int8, index into CATEGORIES_L1
    item_l2: np.ndarray  # [N] int64, index into L2_VOCAB (sorted subcategory names)
    item_colour: np.ndarray  # [N] int8, index into COLOURS
    item_price_bucket: np.ndarray  # [N] int8, index into PRICE_BUCKETS
    item_price: np.ndarray  # [N] float64
    item_popularity: np.ndarray  # [N] float64, Zipf-like base popularity
    item_launch_day: np.ndarray  # [N] int32, day index (0 = start) from which the item can have events
    cross_ap: np.ndarray  # [5, 5] float64, planted age_bucket x price_bucket logit term
    cross_gc: np.ndarray  # [3, 8] float64, planted gender x category_l1 logit term
    l2_base_share: np.ndarray  # [C] float64, share of base popularity of each subcategory (m_c)
    user_category_tilt: np.ndarray  # [U, C] float64, g_u[c] = pref_u[c] / m_c (all 1 without preference)


def _rng(seed: int, stream: int, index: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, stream, index])


def _ids(prefix: str, n: int) -> pl.Series:
    """'u0000001'-style ids 1..n as a String series."""
    return pl.select(
        (pl.lit(prefix) + pl.int_range(1, n + 1, dtype=pl.Int64).cast(pl.String).str.zfill(7)).alias("id")
    ).to_series()


def _words(vocab: tuple[str, ...], idx: np.ndarray) -> pl.Series:
    """[n] int index array -> String series of vocab[idx]."""
    return pl.Series(values=vocab).gather(idx.astype(np.int64))


def _pick_from_lists(lists: tuple[tuple[str, ...], ...], group: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Uniform pick from lists[group[n]] for every n.

    group: [n] int index of the list; u: [n] float64 uniform in [0, 1). Returns [n] int64 indices into the
    flattened vocabulary `_flat(lists)` (sorted distinct words).
    """
    vocab = _flat(lists)
    pos = {w: k for k, w in enumerate(vocab)}
    width = max(len(x) for x in lists)
    table = np.array([[pos[x[min(j, len(x) - 1)]] for j in range(width)] for x in lists], dtype=np.int64)
    lens = np.array([len(x) for x in lists], dtype=np.int64)
    col = np.minimum((u * lens[group]).astype(np.int64), lens[group] - 1)
    return table[group, col]


def _flat(lists: tuple[tuple[str, ...], ...]) -> tuple[str, ...]:
    return tuple(sorted({w for x in lists for w in x}))


def _latent_scale(dim: int) -> float:
    """Per-component std so that u.v of two independent latents has variance ~1: (D ** -1/4)."""
    return dim**-0.25


def planted_crosses(strength: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """The two planted cross terms added to the click/cart/purchase logits.

    Returns (C_AP [5, 5] float64 indexed [age_bucket, price_bucket],
             C_GC [3, 8] float64 indexed [gender, category_l1]);
    C_AP = strength * CROSS_AP * outer(AGE_SCORE, PRICE_SCORE), C_GC likewise. Both are rank-1 outer
    products of zero-mean score vectors, so every row and column mean is zero (for C_GC over categories)
    and the signs flip across cells.

    >>> ap, gc = planted_crosses()
    >>> float(ap[0, 0]), float(ap[0, 4]), float(gc[1, 2])
    (1.0, -1.0, 0.8)
    """
    ap = strength * CROSS_AP * np.outer(AGE_SCORE, PRICE_SCORE)
    gc = strength * CROSS_GC * np.outer(GENDER_SCORE, L1_SCORE)
    return ap, gc


def price_bucket_of(price: np.ndarray) -> np.ndarray:
    """price: [n] float64 -> [n] int8 index into PRICE_BUCKETS by the fixed PRICE_EDGES.

    >>> price_bucket_of(np.array([9.99, 15.0, 99.0, 300.0])).tolist()
    [0, 1, 3, 4]
    """
    return np.searchsorted(np.asarray(PRICE_EDGES), price, side="right").astype(np.int8)


def _make_users(spec: SyntheticSpec) -> tuple[pl.DataFrame, dict[str, np.ndarray]]:
    rng = _rng(spec.seed, _S_USERS)
    n, d = spec.users, spec.latent_dim
    age = rng.choice(len(AGE_BUCKETS), size=n, p=AGE_PROBS).astype(np.int8)
    gender = rng.choice(len(GENDERS), size=n, p=GENDER_PROBS).astype(np.int8)
    city = rng.choice(len(CITY_TIERS), size=n, p=CITY_PROBS).astype(np.int8)
    device = rng.choice(len(DEVICES), size=n, p=DEVICE_PROBS).astype(np.int8)
    years = np.round(rng.gamma(2.0, 0.6 + 0.3 * age, size=n), 1).clip(0.0, 20.0)
    # latent taste: city and device tables plus a personal part twice as large in std, variance -> scale^2
    scale = _latent_scale(d)
    city_tab = rng.normal(0, 1, (len(CITY_TIERS), d))
    device_tab = rng.normal(0, 1, (len(DEVICES), d))
    personal = rng.normal(0, 1, (n, d))
    latent = scale * (city_tab[city] + device_tab[device] + 2.0 * personal) / math.sqrt(6.0)  # (U, D)
    activity = rng.lognormal(0.0, 0.8, size=n)
    activity /= activity.mean()
    df = pl.DataFrame(
        {
            "user_id": _ids("u", n),
            "age_bucket": _words(AGE_BUCKETS, age),
            "gender": _words(GENDERS, gender),
            "city_tier": _words(CITY_TIERS, city),
            "device": _words(DEVICES, device),
            "membership_years": years.astype(np.float64),
        }
    )
    arrays = {"latent": latent.astype(np.float32), "age": age, "gender": gender, "activity": activity}
    return df, arrays


def _make_items(spec: SyntheticSpec) -> tuple[pl.DataFrame, dict[str, np.ndarray]]:
    rng = _rng(spec.seed, _S_ITEMS)
    n, d = spec.items, spec.latent_dim
    l1 = rng.choice(len(CATEGORIES_L1), size=n, p=L1_PROBS).astype(np.int8)
    l2_vocab = L2_VOCAB
    l2 = _pick_from_lists(CATEGORIES_L2, l1, rng.random(n))
    brand_w = 1.0 / np.arange(1, len(BRANDS) + 1) ** 0.8
    brand = rng.choice(len(BRANDS), size=n, p=brand_w / brand_w.sum())
    brand_premium = np.exp(rng.normal(0.0, 0.3, len(BRANDS)))
    origin = rng.choice(len(ORIGINS), size=n, p=ORIGIN_PROBS)
    colour = rng.integers(0, len(COLOURS), size=n).astype(np.int8)
    mat_vocab = _flat(L1_MATERIALS)
    material = _pick_from_lists(L1_MATERIALS, l1, rng.random(n))
    price = np.round(
        np.asarray(L1_MEDIAN_PRICE)[l1] * brand_premium[brand] * np.exp(rng.normal(0.0, 0.6, n)), 2
    ).clip(0.5, None)
    pbucket = price_bucket_of(price)
    # latent: category, subcategory, brand and colour tables plus noise
    scale = _latent_scale(d)
    l1_tab = rng.normal(0, 1, (len(CATEGORIES_L1), d))
    l2_tab = rng.normal(0, 1, (len(l2_vocab), d))
    brand_tab = rng.normal(0, 1, (len(BRANDS), d))
    colour_tab = rng.normal(0, 1, (len(COLOURS), d))
    noise = rng.normal(0, 1, (n, d))
    latent = (
        scale
        * (l1_tab[l1] + l2_tab[l2] + 0.5 * brand_tab[brand] + 0.5 * colour_tab[colour] + noise)
        / math.sqrt(3.5)
    )  # (N, D)
    # base popularity: Zipf over a random rank order
    rank = rng.permutation(n) + 1
    popularity = rank.astype(np.float64) ** -spec.zipf_exponent
    # cold start: new items launch on a day in 1..days-1; the most popular item always launches on day 0
    is_new = rng.random(n) < spec.new_item_share if spec.days > 1 else np.zeros(n, dtype=bool)
    is_new[np.argmax(popularity)] = False
    launch = np.where(is_new, rng.integers(1, max(spec.days, 2), size=n), 0).astype(np.int32)
    # title and image presence
    adjective = rng.integers(0, len(ADJECTIVES), size=n)
    colour_word = _pick_from_lists(COLOUR_WORDS, colour, rng.random(n))
    no_title = rng.random(n) < spec.null_title_share
    no_image = rng.random(n) < spec.null_image_share

    ids = _ids("i", n)
    df = pl.DataFrame(
        {
            "item_id": ids,
            "adjective": _words(ADJECTIVES, adjective),
            "colour_word": _words(_flat(COLOUR_WORDS), colour_word),
            "category_l1": _words(CATEGORIES_L1, l1),
            "category_l2": _words(l2_vocab, l2),
            "brand": _words(BRANDS, brand),
            "origin": _words(ORIGINS, origin),
            "price_bucket": _words(PRICE_BUCKETS, pbucket),
            "colour": _words(COLOURS, colour),
            "material": _words(mat_vocab, material),
            "price": price.astype(np.float64),
            "no_title": no_title,
            "no_image": no_image,
        }
    )
    null = pl.lit(None, dtype=pl.String)
    title = pl.format("{} {} {} {} - {}", "adjective", "colour_word", "material", "category_l2", "brand")
    df = df.select(
        "item_id",
        pl.when(pl.col("no_title")).then(null).otherwise(title).alias("title"),
        pl.when(pl.col("no_image"))
        .then(null)
        .otherwise(pl.format("images/{}.png", "item_id"))
        .alias("image_path"),
        "category_l1",
        "category_l2",
        "brand",
        "origin",
        "price_bucket",
        "colour",
        "material",
        "price",
    )
    arrays = {
        "latent": latent.astype(np.float32),
        "l1": l1,
        "l2": l2.astype(np.int64),
        "colour": colour,
        "price_bucket": pbucket,
        "price": price,
        "popularity": popularity,
        "launch": launch,
    }
    return df, arrays


def category_preferences(
    l2_base_share: np.ndarray, users: int, concentration: float | None, rng: np.random.Generator
) -> np.ndarray:
    """Each user's tilt of the candidate distribution towards the subcategories she shops in.

    l2_base_share: [C] float64, m_c = share of the base popularity held by subcategory c (sums to 1).
    Returns [users, C] float64 g_u[c] = pref_u[c] / m_c with pref_u ~ Dirichlet(concentration * m), so that
    E[g_u[c]] = 1: on average over users the market shares of the subcategories are unchanged, while each user
    concentrates on a few of them: two draws from pref_u share a subcategory with probability
    E[sum_c pref_u[c]^2] = (1 + alpha * sum_c m_c^2) / (1 + alpha), ~0.5 at alpha = 1 (sum m^2 small).
    `concentration=None` gives g = 1 everywhere (no preference).
    Subcategories without items (m_c = 0) get g = 0.

    >>> g = category_preferences(np.array([0.5, 0.5]), 2, None, np.random.default_rng(0))
    >>> g.tolist()
    [[1.0, 1.0], [1.0, 1.0]]
    """
    m = np.asarray(l2_base_share, dtype=np.float64)
    if concentration is None:
        return np.broadcast_to((m > 0).astype(np.float64), (users, m.size)).copy()
    shape = np.maximum(concentration * m, 1e-6)  # (C,) an empty subcategory still gets a valid shape
    gam = rng.gamma(shape[None, :], 1.0, (users, m.size)) + 1e-300  # (U, C) no all-zero row
    pref = gam / gam.sum(axis=1, keepdims=True)  # (U, C) Dirichlet(alpha * m)
    return np.where(m > 0, pref / np.where(m > 0, m, 1.0), 0.0)


def build_world(spec: SyntheticSpec) -> World:
    """Users, items and their hidden variables for `spec` (deterministic in the spec)."""
    users, ua = _make_users(spec)
    items, ia = _make_items(spec)
    ap, gc = planted_crosses(spec.cross_strength)
    base = np.bincount(ia["l2"], weights=ia["popularity"], minlength=len(L2_VOCAB))
    base_share = base / base.sum()  # (C,)
    tilt = category_preferences(
        base_share, spec.users, spec.category_concentration, _rng(spec.seed, _S_PREFS)
    )
    return World(
        users=users,
        items=items,
        user_latent=ua["latent"],
        item_latent=ia["latent"],
        user_age=ua["age"],
        user_gender=ua["gender"],
        user_activity=ua["activity"],
        item_l1=ia["l1"],
        item_l2=ia["l2"],
        item_colour=ia["colour"],
        item_price_bucket=ia["price_bucket"],
        item_price=ia["price"],
        item_popularity=ia["popularity"],
        item_launch_day=ia["launch"],
        cross_ap=ap,
        cross_gc=gc,
        l2_base_share=base_share,
        user_category_tilt=tilt,
    )


# ---------------------------------------------------------------- images


def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """dx, dy: [n, S, S] float32 pixel offsets from the centre in units of the item's radius (y down).

    Returns [n, S, S] bool, True inside the shape.
    """
    ax, ay = np.abs(dx), np.abs(dy)
    if shape == "circle":
        return dx * dx + dy * dy <= 1.0
    if shape == "square":
        return np.maximum(ax, ay) <= 0.8
    if shape == "triangle":  # apex up, base at dy = 0.8
        return (dy <= 0.8) & (dy >= -0.9) & (ax <= (dy + 0.9) * 0.55)
    if shape == "diamond":
        return ax + ay <= 1.0
    if shape == "ring":
        r2 = dx * dx + dy * dy
        return (r2 <= 1.0) & (r2 >= 0.3)
    if shape == "plus":
        return ((ax <= 0.3) & (ay <= 0.95)) | ((ay <= 0.3) & (ax <= 0.95))
    if shape == "hbar":
        return (ax <= 1.0) & (ay <= 0.35)
    if shape == "vbar":
        return (ax <= 0.35) & (ay <= 1.0)
    raise ValueError(f"unknown shape {shape!r}; fix: use one of {L1_SHAPES}")


def render_images(
    colour: np.ndarray, category_l1: np.ndarray, rng: np.random.Generator, size: int = 64
) -> np.ndarray:
    """Render product images: a shape of the item's category filled with the item's colour.

    colour: [n] int, index into COLOURS; category_l1: [n] int, index into CATEGORIES_L1 (shape L1_SHAPES).
    Returns [n, size, size, 3] uint8 RGB. Variation per image: centre offset (std size/20 px), radius
    (0.22..0.34 of size), colour jitter (std 10 per channel), background (light behind dark colours, dark
    behind light ones, per-image level and a linear lighting gradient) and pixel noise (std 3).
    """
    n = len(colour)
    rgb = np.asarray(COLOUR_RGB, dtype=np.float32)[colour]  # (n, 3)
    rgb = rgb + rng.normal(0.0, 10.0, (n, 3)).astype(np.float32)
    luminance = np.asarray(COLOUR_RGB, dtype=np.float32)[colour] @ np.array([0.299, 0.587, 0.114], np.float32)
    bg_level = np.where(luminance > 160.0, 50.0, 225.0) + rng.normal(0.0, 8.0, n)  # (n,)
    centre = size / 2 + rng.normal(0.0, size / 20, (n, 2)).clip(-size / 8, size / 8)  # (n, 2) x, y
    radius = size * rng.uniform(0.22, 0.34, n)  # (n,)
    grad = rng.normal(0.0, 12.0, (n, 2))  # lighting gradient (x, y), grey levels across the image
    coords = (np.arange(size, dtype=np.float32) + 0.5)[None, :]  # (1, S)
    xs = (coords - centre[:, :1]) / radius[:, None]  # (n, S)
    ys = (coords - centre[:, 1:]) / radius[:, None]  # (n, S)
    dx = np.broadcast_to(xs[:, None, :], (n, size, size)).astype(np.float32)  # (n, S, S)
    dy = np.broadcast_to(ys[:, :, None], (n, size, size)).astype(np.float32)  # (n, S, S)
    mask = np.zeros((n, size, size), dtype=bool)
    for k, shape in enumerate(L1_SHAPES):
        sel = np.flatnonzero(category_l1 == k)
        if sel.size:
            mask[sel] = _shape_mask(shape, dx[sel], dy[sel])
    ramp = np.linspace(-0.5, 0.5, size, dtype=np.float32)
    light = grad[:, 0, None, None] * ramp[None, None, :] + grad[:, 1, None, None] * ramp[None, :, None]
    background = (bg_level[:, None, None] + light)[..., None]  # (n, S, S, 1)
    img = np.where(mask[..., None], rgb[:, None, None, :], background)  # (n, S, S, 3)
    img = img + rng.normal(0.0, 3.0, img.shape).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _png(img: np.ndarray) -> bytes:
    """img: [S, S, 3] uint8 -> PNG bytes."""
    buf = _bytes_io.BytesIO()
    Image.fromarray(img, mode="RGB").save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _write_images(data_dir: Path, world: World, spec: SyntheticSpec) -> int:
    items = world.items
    has_image = items["image_path"].is_not_null().to_numpy()
    paths = items["image_path"].to_list()
    written = 0
    for c, lo in enumerate(range(0, spec.items, _IMAGE_CHUNK)):
        hi = min(lo + _IMAGE_CHUNK, spec.items)
        # rendered for every item of the chunk (so an item's picture does not depend on its neighbours'
        # null flags), written only for items with an image_path
        imgs = render_images(
            world.item_colour[lo:hi], world.item_l1[lo:hi], _rng(spec.seed, _S_IMAGES, c), spec.image_size
        )
        for k in np.flatnonzero(has_image[lo:hi]):
            io.write_input_file(data_dir, paths[lo + k], _png(imgs[k]))
            written += 1
    return written


# ---------------------------------------------------------------- events


def daily_popularity(world: World, spec: SyntheticSpec, day: int) -> np.ndarray:
    """[N] float64 item weights of day index `day`: base * season(category, date) * launch boost, 0 before
    launch. season = exp(SEASON_AMPLITUDE * sin(2 pi (ordinal(date) / SEASON_PERIOD_DAYS + c / L1))).
    """
    t = (spec.start + timedelta(days=day)).toordinal()
    phase = 2 * np.pi * (t / SEASON_PERIOD_DAYS + np.arange(len(CATEGORIES_L1)) / len(CATEGORIES_L1))
    season = np.exp(SEASON_AMPLITUDE * np.sin(phase))[world.item_l1]
    age = day - world.item_launch_day
    boost = np.where(
        world.item_launch_day > 0, 1.0 + LAUNCH_BOOST * np.exp(-np.maximum(age, 0) / LAUNCH_BOOST_DAYS), 1.0
    )
    return np.where(age >= 0, world.item_popularity * season * boost, 0.0)


def view_log_weights(world: World, spec: SyntheticSpec, users: np.ndarray, day: int) -> np.ndarray:
    """Log of the unnormalised view distribution of each user on day index `day` (the SIR target).

    users: [Q] int64 user indices. Returns [Q, N] float64
    log p_i(t) + log g_u[c_i] + beta * u.v_i (-inf for items not launched yet): a view of user u shows item i
    with probability proportional to exp of this as the number of candidates K grows (for finite K the
    ranking is the same and the distribution somewhat flatter). Ranking by it plus the log click
    probability is the generator's own (oracle) ranking of next-day positives.
    """
    p = daily_popularity(world, spec, day)  # (N,)
    with np.errstate(divide="ignore"):
        log_p = np.log(p)[None, :] + np.log(world.user_category_tilt[users][:, world.item_l2])  # (Q, N)
    return log_p + spec.affinity * (world.user_latent[users] @ world.item_latent.T).astype(np.float64)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    """z: [m] float64 logits -> [m] float64 probabilities."""
    return 1.0 / (1.0 + np.exp(-z))


def _delay(prev: np.ndarray, mean_s: float, rng: np.random.Generator) -> np.ndarray:
    """prev: [m] int64 us since midnight -> [m] int64, strictly later and still before midnight."""
    d = np.rint(rng.exponential(mean_s * 1e6, prev.shape)).astype(np.int64)
    room = (_DAY_US - 1 - prev) // 2
    return prev + np.clip(d, 1, np.maximum(room, 1))


def simulate_day(world: World, spec: SyntheticSpec, day: int) -> dict[str, np.ndarray]:
    """Events of day index `day` (0 = spec.start), as index arrays sorted by time.

    Each view draws `spec.candidates` candidates from the user's proposal p_i(t) * g_u[c_i] (a subcategory
    from P_c(t) * g_u[c], then an item of it by p(t)) and keeps one by Gumbel-max over beta * u.v; then the
    click / cart / purchase funnel follows (docs/synthetic-data.md).

    Returns {"user": [E] int64 user index, "item": [E] int64 item index, "event": [E] int8 index into
    EVENTS, "ts_us": [E] int64 microseconds since the day's midnight UTC}. Depends only on (spec, day).
    """
    rng = _rng(spec.seed, _S_DAY, day)
    weekday = (spec.start + timedelta(days=day)).weekday()
    factor = WEEKEND_FACTOR if weekday >= 5 else WEEKDAY_FACTOR
    counts = rng.poisson(spec.events_per_user_day * factor * world.user_activity)  # (U,)
    user = np.repeat(np.arange(spec.users, dtype=np.int64), counts)  # (V,)
    n_views = user.size
    weights = daily_popularity(world, spec, day)  # (N,)
    k = spec.candidates
    n_cat = len(L2_VOCAB)
    # items grouped by subcategory: segment c of `order` holds subcategory c; cum is the running weight
    order = np.argsort(world.item_l2, kind="stable")  # (N,)
    cum = np.cumsum(weights[order])  # (N,)
    seg_end = np.cumsum(np.bincount(world.item_l2, minlength=n_cat))  # (C,) one past each segment
    seg_start = seg_end - np.bincount(world.item_l2, minlength=n_cat)  # (C,)
    cum0 = np.concatenate([[0.0], cum])  # (N + 1,) cum0[j] = weight of order[:j]
    cat_lo, cat_hi = cum0[seg_start], cum0[seg_end]  # (C,) each segment's range of running weight
    cat_mass = cat_hi - cat_lo  # (C,) P_c(t) up to a constant
    item = np.empty(n_views, dtype=np.int64)
    affinity = np.empty(n_views, dtype=np.float32)
    for lo in range(0, n_views, _CHUNK_VIEWS):
        hi = min(lo + _CHUNK_VIEWS, n_views)
        b = hi - lo
        rows = np.arange(b)
        # subcategory of each candidate ~ P_c(t) * g_u[c]: inverse CDF per row, rows offset by their index
        # so that one searchsorted serves the whole block
        cdf = np.cumsum(world.user_category_tilt[user[lo:hi]] * cat_mass, axis=1)  # (b, C)
        cdf /= np.maximum(cdf[:, -1:], 1e-300)
        r = rng.random((b, k)) + rows[:, None]  # (b, K)
        flat = np.searchsorted((cdf + rows[:, None]).ravel(), r.ravel(), side="right")  # (b*K,)
        cat = np.minimum(flat.reshape(b, k) - rows[:, None] * n_cat, n_cat - 1)  # (b, K)
        # candidate within its subcategory ~ p_i(t): a point of the segment's running-weight range
        draws = cat_lo[cat] + rng.random((b, k)) * cat_mass[cat]  # (b, K)
        pos = np.clip(np.searchsorted(cum, draws, side="right"), seg_start[cat], seg_end[cat] - 1)
        cand = order[pos]  # (b, K)
        s = np.einsum("bd,bkd->bk", world.user_latent[user[lo:hi]], world.item_latent[cand])  # (b, K)
        pick = np.argmax(spec.affinity * s + rng.gumbel(size=s.shape), axis=1)  # (b,)
        item[lo:hi] = cand[rows, pick]
        affinity[lo:hi] = s[rows, pick]
    hours = rng.choice(24, size=n_views, p=np.asarray(HOUR_WEIGHTS) / sum(HOUR_WEIGHTS))
    ts = hours * 3_600_000_000 + rng.integers(0, 3_600_000_000, n_views)
    ts = np.minimum(ts, _DAY_US - _VIEW_TAIL_US).astype(np.int64)  # (V,)

    cross = (
        world.cross_ap[world.user_age[user], world.item_price_bucket[item]]
        + world.cross_gc[world.user_gender[user], world.item_l1[item]]
    )  # (V,)
    s = affinity.astype(np.float64)
    z_click = CLICK_BIAS + CLICK_AFF * s + CLICK_CROSS * cross
    clicked = np.flatnonzero(rng.random(n_views) < _sigmoid(z_click))
    t_click = _delay(ts[clicked], CLICK_DELAY_S, rng)
    z_cart = CART_BIAS + CART_AFF * s[clicked] + CART_CROSS * cross[clicked]
    keep = rng.random(clicked.size) < _sigmoid(z_cart)
    carted, t_cart = clicked[keep], _delay(t_click[keep], CART_DELAY_S, rng)
    z_buy = (
        PURCHASE_BIAS
        + PURCHASE_AFF * s[carted]
        + PURCHASE_CROSS * cross[carted]
        + PURCHASE_PRICE_SLOPE * np.log(world.item_price[item[carted]] / 50.0)
    )
    keep = rng.random(carted.size) < _sigmoid(z_buy)
    bought, t_buy = carted[keep], _delay(t_cart[keep], PURCHASE_DELAY_S, rng)

    steps = (np.arange(n_views), clicked, carted, bought)
    out_user = np.concatenate([user[x] for x in steps])
    out_item = np.concatenate([item[x] for x in steps])
    out_event = np.concatenate([np.full(x.size, e, dtype=np.int8) for e, x in enumerate(steps)])
    out_ts = np.concatenate([ts, t_click, t_cart, t_buy])
    order = np.lexsort((out_event, out_item, out_user, out_ts))  # by time, ties broken stably
    return {
        "user": out_user[order],
        "item": out_item[order],
        "event": out_event[order],
        "ts_us": out_ts[order],
    }


def _events_frame(ev: dict[str, np.ndarray], world: World, day_start_us: int) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "user_id": world.users["user_id"].gather(ev["user"]),
            "item_id": world.items["item_id"].gather(ev["item"]),
            "event": _words(EVENTS, ev["event"]),
            "ts": pl.Series(ev["ts_us"] + day_start_us, dtype=pl.Int64).cast(pl.Datetime("us", "UTC")),
        }
    )


def generate(data_dir: Path, spec: SyntheticSpec) -> dict[str, Any]:
    """Write users, items, images and daily event partitions of `spec` under `data_dir`.

    Memory holds the user/item tables and one day of events at a time. Returns a JSON-able summary:
    rows per table, events per day and per event type, items without title/image, items launched after
    day 0, images written, wall seconds.
    """
    t0 = time.perf_counter()
    data_dir = Path(data_dir)
    stale = [d for d in io.event_dates(data_dir) if not spec.start <= d <= spec.end]
    if stale:
        raise ValueError(
            f"{io.events_root(data_dir)} already holds partitions outside {spec.start}..{spec.end} "
            f"(e.g. dt={stale[0]}); fix: generate into an empty folder or delete the old data set"
        )
    world = build_world(spec)
    io.write_input_table(data_dir, "users", world.users)
    io.write_input_table(data_dir, "items", world.items)
    images = _write_images(data_dir, world, spec)
    log.info("wrote %d users, %d items, %d images to %s", spec.users, spec.items, images, data_dir)
    per_day: dict[str, int] = {}
    per_type = np.zeros(len(EVENTS), dtype=np.int64)
    for day in range(spec.days):
        dt = spec.start + timedelta(days=day)
        ev = simulate_day(world, spec, day)
        day_start_us = int(datetime(dt.year, dt.month, dt.day, tzinfo=UTC).timestamp()) * 1_000_000
        io.write_input_events(data_dir, dt, _events_frame(ev, world, day_start_us))
        per_day[dt.isoformat()] = int(ev["event"].size)
        per_type += np.bincount(ev["event"], minlength=len(EVENTS))
        log.info("events dt=%s: %d", dt, ev["event"].size)
    return {
        "data_dir": str(data_dir),
        "users": spec.users,
        "items": spec.items,
        "events": int(per_type.sum()),
        "events_per_day": per_day,
        "events_per_type": {name: int(c) for name, c in zip(EVENTS, per_type, strict=True)},
        "items_no_title": int(world.items["title"].null_count()),
        "items_no_image": int(world.items["image_path"].null_count()),
        "items_launched_after_day0": int((world.item_launch_day > 0).sum()),
        "images_written": images,
        "wall_s": round(time.perf_counter() - t0, 3),
    }
