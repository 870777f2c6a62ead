"""The daily event simulation: popularity of the day, which items the views show, and the click / cart /
purchase funnel (index arrays; nothing is written here)."""

from __future__ import annotations

from datetime import timedelta

import numpy as np

from pipelines.datasets.synthetic.spec import S_DAY, SyntheticSpec, stream_rng
from pipelines.datasets.synthetic.vocab import (
    ADJECTIVES,
    CART_AFF,
    CART_BIAS,
    CART_CROSS,
    CART_DELAY_S,
    CATEGORIES_L1,
    CLICK_AFF,
    CLICK_BIAS,
    CLICK_CROSS,
    CLICK_DELAY_S,
    HOUR_WEIGHTS,
    L2_VOCAB,
    LAUNCH_BOOST,
    LAUNCH_BOOST_DAYS,
    PATTERNS,
    PURCHASE_AFF,
    PURCHASE_BIAS,
    PURCHASE_CROSS,
    PURCHASE_DELAY_S,
    PURCHASE_PRICE_SLOPE,
    SEASON_AMPLITUDE,
    SEASON_PERIOD_DAYS,
    WEEKDAY_FACTOR,
    WEEKEND_FACTOR,
)
from pipelines.datasets.synthetic.world import World

_DAY_US = 86_400_000_000
_VIEW_TAIL_US = 10_000  # views stop 10 ms before midnight so funnel steps fit strictly inside the day
_CHUNK_VIEWS = 16_384  # views scored per block (memory: CHUNK * K * D floats)


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


def content_term(world: World, spec: SyntheticSpec, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """The content-only part of the utility: content_signal * ([pattern_i = favourite pattern of u] - 1/4
    + [style_i = favourite style of u] - 1/6), each bracket only for users with that favourite
    (`content_properties`; 0 for users without any).

    1/4 and 1/6 are the shares of items of any one pattern (4, uniform) and style (6 adjectives, uniform),
    so the term averages to zero over the catalogue for every user, like u.v: a favourite makes its items
    more attractive than the others without making the user click more overall.

    users: [Q] int64 user indices; items: [Q, K] or [1, N] int64 item indices (row-wise candidates, or every
    item for every user). Returns [Q, K] (or [Q, N]) float32.
    """
    fav_pattern = world.user_pattern[users][:, None]  # (Q, 1)
    fav_style = world.user_style[users][:, None]  # (Q, 1)
    hits = (world.item_pattern[items] == fav_pattern).astype(np.float32)  # (Q, K)
    hits += world.item_style[items] == fav_style
    expected = (fav_pattern >= 0) / np.float32(len(PATTERNS)) + (fav_style >= 0) / np.float32(len(ADJECTIVES))
    return np.float32(spec.content_signal) * (hits - expected.astype(np.float32))  # (Q, K)


def utility(world: World, spec: SyntheticSpec, users: np.ndarray) -> np.ndarray:
    """The utility s(u, i) = u.v_i + content term of every item for each of `users`: what a view's pick
    among its candidates weighs by beta and what raises the click, cart and purchase logits.

    users: [Q] int64 user indices. Returns [Q, N] float32.
    """
    s = world.user_latent[users] @ world.item_latent.T  # (Q, N)
    if spec.content_signal > 0:
        s = s + content_term(world, spec, users, np.arange(world.item_l1.size)[None, :])
    return s


def view_log_weights(world: World, spec: SyntheticSpec, users: np.ndarray, day: int) -> np.ndarray:
    """Log of the unnormalised view distribution of each user on day index `day` (the SIR target).

    users: [Q] int64 user indices. Returns [Q, N] float64
    log p_i(t) + log g_u[c_i] + beta * s(u, i) (-inf for items not launched yet), s the `utility` (u.v_i
    plus the content term): a view of user u shows item i
    with probability proportional to exp of this as the number of candidates K grows (for finite K the
    ranking is the same and the distribution somewhat flatter). Ranking by it plus the log click
    probability is the generator's own (oracle) ranking of next-day positives.
    """
    p = daily_popularity(world, spec, day)  # (N,)
    with np.errstate(divide="ignore"):
        log_p = np.log(p)[None, :] + np.log(world.user_category_tilt[users][:, world.item_l2])  # (Q, N)
    return log_p + spec.affinity * utility(world, spec, users).astype(np.float64)


def cross_term(world: World, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """The planted crosses of the funnel logits, C_AP[age_u, price_bucket_i] + C_GC[gender_u, l1_i].

    users, items: int64 index arrays of broadcastable shapes ([P] and [P] for pairs, [Q, 1] and [1, N] for
    every item of each user). Returns float64 of the broadcast shape.
    """
    return (
        world.cross_ap[world.user_age[users], world.item_price_bucket[items]]
        + world.cross_gc[world.user_gender[users], world.item_l1[items]]
    )


def click_logit(s: np.ndarray, cross: np.ndarray) -> np.ndarray:
    """P(click | view) = sigmoid of CLICK_BIAS + CLICK_AFF * s + CLICK_CROSS * cross.

    s: utility (`utility`: u.v plus the content term); cross: `cross_term`; same shapes. Returns float64.
    """
    return CLICK_BIAS + CLICK_AFF * s + CLICK_CROSS * cross


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
    from P_c(t) * g_u[c], then an item of it by p(t)) and keeps one by Gumbel-max over beta * s, s the utility
    u.v plus the content term (`content_term`); then the click / cart / purchase funnel follows, each logit
    raised by the same s (docs/synthetic-data.md).

    Returns {"user": [E] int64 user index, "item": [E] int64 item index, "event": [E] int8 index into
    EVENTS, "ts_us": [E] int64 microseconds since the day's midnight UTC}. Depends only on (spec, day).
    """
    rng = stream_rng(spec.seed, S_DAY, day)
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
        if spec.content_signal > 0:
            s = s + content_term(world, spec, user[lo:hi], cand)  # (b, K) utility
        pick = np.argmax(spec.affinity * s + rng.gumbel(size=s.shape), axis=1)  # (b,)
        item[lo:hi] = cand[rows, pick]
        affinity[lo:hi] = s[rows, pick]
    hours = rng.choice(24, size=n_views, p=np.asarray(HOUR_WEIGHTS) / sum(HOUR_WEIGHTS))
    ts = hours * 3_600_000_000 + rng.integers(0, 3_600_000_000, n_views)
    ts = np.minimum(ts, _DAY_US - _VIEW_TAIL_US).astype(np.int64)  # (V,)

    cross = cross_term(world, user, item)  # (V,)
    s = affinity.astype(np.float64)
    z_click = click_logit(s, cross)
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
