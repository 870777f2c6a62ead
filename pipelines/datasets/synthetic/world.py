"""The world of a spec: users and items with their attributes and hidden variables (latent vectors,
activity, popularity, launch days, category preferences) and the planted cross tables."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import polars as pl

from pipelines.datasets.synthetic.spec import S_CONTENT, S_ITEMS, S_PREFS, S_USERS, SyntheticSpec, stream_rng
from pipelines.datasets.synthetic.vocab import (
    ADJECTIVES,
    AGE_BUCKETS,
    AGE_PROBS,
    AGE_SCORE,
    BRANDS,
    CATEGORIES_L1,
    CATEGORIES_L2,
    CITY_PROBS,
    CITY_TIERS,
    COLOUR_WORDS,
    COLOURS,
    CROSS_AP,
    CROSS_GC,
    DEVICE_PROBS,
    DEVICES,
    GENDER_PROBS,
    GENDER_SCORE,
    GENDERS,
    L1_MATERIALS,
    L1_MEDIAN_PRICE,
    L1_PROBS,
    L1_SCORE,
    L2_VOCAB,
    ORIGIN_PROBS,
    ORIGINS,
    PATTERNS,
    PRICE_BUCKETS,
    PRICE_EDGES,
    PRICE_SCORE,
    STYLE_CHOICES,
)


@dataclass(frozen=True)
class World:
    """Everything about users and items that the event simulation needs (one spec -> one world).

    Index arrays hold positions in the vocabularies of `vocab`; row n of every item array is item_ids[n].
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
    # content-only properties (`content_properties`): seen in the title or the image only, never in a column
    item_style: np.ndarray  # [N] int8, index into ADJECTIVES: the title's first word
    item_pattern: np.ndarray  # [N] int8, index into PATTERNS: drawn into the image (all 0 = plain when off)
    user_style: np.ndarray  # [U] int8, favourite style (index into ADJECTIVES), -1 for none
    user_pattern: np.ndarray  # [U] int8, favourite pattern (index into PATTERNS, never plain), -1 for none


def _ids(prefix: str, n: int) -> pl.Series:
    """'u0000001'-style ids 1..n as a String series."""
    return pl.select(
        (pl.lit(prefix) + pl.int_range(1, n + 1, dtype=pl.Int64).cast(pl.String).str.zfill(7)).alias("id")
    ).to_series()


def words(vocab: tuple[str, ...], idx: np.ndarray) -> pl.Series:
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
    rng = stream_rng(spec.seed, S_USERS)
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
            "age_bucket": words(AGE_BUCKETS, age),
            "gender": words(GENDERS, gender),
            "city_tier": words(CITY_TIERS, city),
            "device": words(DEVICES, device),
            "membership_years": years.astype(np.float64),
        }
    )
    arrays = {"latent": latent.astype(np.float32), "age": age, "gender": gender, "activity": activity}
    return df, arrays


def _make_items(spec: SyntheticSpec) -> tuple[pl.DataFrame, dict[str, np.ndarray]]:
    rng = stream_rng(spec.seed, S_ITEMS)
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
            "adjective": words(ADJECTIVES, adjective),
            "colour_word": words(_flat(COLOUR_WORDS), colour_word),
            "category_l1": words(CATEGORIES_L1, l1),
            "category_l2": words(l2_vocab, l2),
            "brand": words(BRANDS, brand),
            "origin": words(ORIGINS, origin),
            "price_bucket": words(PRICE_BUCKETS, pbucket),
            "colour": words(COLOURS, colour),
            "material": words(mat_vocab, material),
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
        "style": adjective.astype(np.int8),
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


def content_properties(spec: SyntheticSpec) -> dict[str, np.ndarray]:
    """The hidden variables that only content reveals: item patterns and the users' favourites.

    Returns {"item_pattern": [N] int8 index into PATTERNS (uniform over all four, plain included),
             "user_pattern": [U] int8 index into PATTERNS (uniform over the three non-plain) or -1,
             "user_style": [U] int8 index into ADJECTIVES (uniform over STYLE_CHOICES) or -1};
    each user has a favourite pattern with probability `spec.content_user_share` and, independently, a
    favourite style with the same probability. All are independent of every other variable. With
    `spec.content_signal == 0` nothing is drawn: every item is plain and nobody has a favourite, so the
    world (and the written data) is the generator's without content signals.

    >>> from datetime import date
    >>> spec = SyntheticSpec(users=2, items=3, days=1, start=date(2024, 1, 1), content_signal=0.0)
    >>> off = content_properties(spec)
    >>> off["item_pattern"].tolist(), off["user_pattern"].tolist(), off["user_style"].tolist()
    ([0, 0, 0], [-1, -1], [-1, -1])
    """
    if spec.content_signal == 0:
        none = np.full(spec.users, -1, dtype=np.int8)
        return {"item_pattern": np.zeros(spec.items, dtype=np.int8), "user_pattern": none, "user_style": none}
    rng = stream_rng(spec.seed, S_CONTENT)
    item_pattern = rng.integers(0, len(PATTERNS), size=spec.items).astype(np.int8)
    has_pattern = rng.random(spec.users) < spec.content_user_share
    pattern = rng.integers(1, len(PATTERNS), size=spec.users)
    has_style = rng.random(spec.users) < spec.content_user_share
    style = np.asarray(STYLE_CHOICES)[rng.integers(0, len(STYLE_CHOICES), size=spec.users)]
    return {
        "item_pattern": item_pattern,
        "user_pattern": np.where(has_pattern, pattern, -1).astype(np.int8),
        "user_style": np.where(has_style, style, -1).astype(np.int8),
    }


def build_world(spec: SyntheticSpec) -> World:
    """Users, items and their hidden variables for `spec` (deterministic in the spec)."""
    users, ua = _make_users(spec)
    items, ia = _make_items(spec)
    ap, gc = planted_crosses(spec.cross_strength)
    base = np.bincount(ia["l2"], weights=ia["popularity"], minlength=len(L2_VOCAB))
    base_share = base / base.sum()  # (C,)
    tilt = category_preferences(
        base_share, spec.users, spec.category_concentration, stream_rng(spec.seed, S_PREFS)
    )
    content = content_properties(spec)
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
        item_style=ia["style"],
        item_pattern=content["item_pattern"],
        user_style=content["user_style"],
        user_pattern=content["user_pattern"],
    )
