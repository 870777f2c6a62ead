"""What a perfect model could reach on synthetic data, from the generator's own hidden variables.

`content_ceiling(spec)` simulates one day and scores that day's exposures with the true quantities:

* click given view (the ranker's task): the true click logit (`click_logit`) of each viewed (user, item)
  pair, s the utility u.v plus
  the content term; its AUC and GAUC are the ceiling of any ranker (no model can beat the Bayes score in
  expectation). The same logit without the content term is the ceiling of a model blind to what only the
  title and the image reveal (for a new item, whose id has no history, that is every model without content).
* which items are viewed (the retriever's task): the view log weight log p_i(t) + log g_u[c_i] + beta * s of
  each viewed pair against the same user and the item of a random view of the day (so popularity is
  matched and what separates them is the user's own tilt and utility), with and without the content term
  (AUC).
* the oracle retriever: every item ranked for each user by the view log weight, with and without the content
  term; recall@k of the items the user viewed that day.
* how much the favourites steer choices: among the views, clicks and purchases of users with a favourite
  pattern (style), the share on items of that pattern (style), against a control of users without one,
  each given a pseudo-favourite drawn the same way.

`python -m pipelines.datasets.synthetic.ceiling medium` prints the figures of a preset as JSON
(docs/synthetic-data.md, "Content-only signals").
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from datetime import timedelta
from typing import Any

import numpy as np

from models.metrics import auc, gauc
from pipelines.datasets.synthetic.simulation import (
    click_logit,
    content_term,
    cross_term,
    daily_popularity,
    simulate_day,
    view_log_weights,
)
from pipelines.datasets.synthetic.spec import PRESETS, SyntheticSpec
from pipelines.datasets.synthetic.vocab import (
    EVENTS,
    PATTERNS,
    STYLE_CHOICES,
)
from pipelines.datasets.synthetic.world import World, build_world


def _pair_scores(world: World, spec: SyntheticSpec, user: np.ndarray, item: np.ndarray, day: int) -> dict:
    """user, item: [P] int64 pairs. Returns {"latent": u.v, "content": content term, "cross": planted crosses,
    "view_base": log p_i(t) + log g_u[c_i]}, each [P] float64."""
    latent = np.einsum("pd,pd->p", world.user_latent[user], world.item_latent[item]).astype(np.float64)
    content = content_term(world, spec, user, item[:, None])[:, 0].astype(np.float64)  # (P,)
    cross = cross_term(world, user, item)  # (P,)
    with np.errstate(divide="ignore"):
        base = np.log(daily_popularity(world, spec, day)[item]) + np.log(
            world.user_category_tilt[user, world.item_l2[item]]
        )  # (P,)
    return {"latent": latent, "content": content, "cross": cross, "view_base": base}


def _match_shares(
    ev: dict[str, np.ndarray], fav: np.ndarray, item_prop: np.ndarray, control: np.ndarray
) -> dict[str, dict[str, float]]:
    """Per event type: share of the events of users with a favourite (fav >= 0) on items whose property is
    that favourite, and the same share for users without one against their pseudo-favourite `control`."""
    out: dict[str, dict[str, float]] = {}
    has = fav[ev["user"]] >= 0  # (E,)
    hit_fav = item_prop[ev["item"]] == fav[ev["user"]]
    hit_ctl = item_prop[ev["item"]] == control[ev["user"]]
    for k, name in enumerate(EVENTS):
        sel = ev["event"] == k
        out[name] = {
            "with_favourite": float(hit_fav[sel & has].mean()) if (sel & has).any() else float("nan"),
            "control": float(hit_ctl[sel & ~has].mean()) if (sel & ~has).any() else float("nan"),
        }
    return out


def _oracle_recall(
    world: World, spec: SyntheticSpec, user: np.ndarray, item: np.ndarray, day: int, k: int, block: int
) -> float:
    """Mean over users of |top-k by view_log_weights of `day` & items the user viewed| / |items viewed|.

    user, item: [P] int64 distinct viewed pairs, sorted by user. Users are scored `block` at a time."""
    users, first, counts = np.unique(user, return_index=True, return_counts=True)  # (Q,)
    recall = np.empty(users.size)
    for lo in range(0, users.size, block):
        hi = min(lo + block, users.size)
        w = view_log_weights(world, spec, users[lo:hi], day)  # (b, N)
        top = np.argpartition(-w, k, axis=1)[:, :k]  # (b, k) unordered top-k
        hit = np.zeros(w.shape, dtype=bool)
        np.put_along_axis(hit, top, True, axis=1)
        rows = np.repeat(np.arange(hi - lo), counts[lo:hi])  # (pairs of the block,)
        seg = slice(first[lo], first[hi - 1] + counts[hi - 1])
        recall[lo:hi] = np.bincount(rows, weights=hit[rows, item[seg]], minlength=hi - lo) / counts[lo:hi]
    return float(recall.mean())


def content_ceiling(
    spec: SyntheticSpec, day: int | None = None, seed: int = 0, k: int = 50, block: int = 1024
) -> dict[str, Any]:
    """The ceiling figures of one simulated day of `spec` (default: its last day); see the module doc.

    seed: of the negatives of the view AUC and of the control group's pseudo-favourites.
    Returns a JSON-able dict: {"day", "viewed_pairs", "click_rate", "click_auc": {"full",
    "without_content", "content_only"}, "click_gauc": {"full", "without_content"}, "view_auc": {"full",
    "without_content"}, "view_recall@k": {"full", "without_content"}, "pattern_match": {event:
    {"with_favourite", "control"}}, "style_match": {...}}.
    """
    world = build_world(spec)
    day = spec.days - 1 if day is None else day
    if not 0 <= day < spec.days:
        raise ValueError(
            f"content_ceiling: day {day} outside 0..{spec.days - 1}; fix: pass a day of the spec"
        )
    ev = simulate_day(world, spec, day)
    n_items = spec.items
    key = ev["user"] * n_items + ev["item"]  # (E,) one code per (user, item)
    pairs = np.unique(key[ev["event"] == 0])  # (P,) distinct viewed pairs
    clicked = np.isin(pairs, key[ev["event"] == 1])  # (P,)
    user, item = pairs // n_items, pairs % n_items
    sc = _pair_scores(world, spec, user, item, day)
    z_full = click_logit(sc["latent"] + sc["content"], sc["cross"])  # (P,) the true click logit
    z_blind = click_logit(sc["latent"], sc["cross"])  # (P,) the same without the content term

    blind = replace(spec, content_signal=0.0)  # the same world scored without the content term
    rng = np.random.default_rng([seed, spec.seed, day])
    viewed = ev["item"][ev["event"] == 0]  # (V,) the day's views: popularity-weighted exposure
    neg = viewed[rng.integers(0, viewed.size, size=pairs.size)]  # (P,) one item per pair
    sn = _pair_scores(world, spec, user, neg, day)
    labels = np.concatenate([np.ones(pairs.size), np.zeros(pairs.size)])

    def view_score(s: dict, with_content: bool) -> np.ndarray:
        return s["view_base"] + spec.affinity * (s["latent"] + (s["content"] if with_content else 0.0))

    def control(fav: np.ndarray, choices: np.ndarray) -> np.ndarray:
        return np.where(fav < 0, choices[rng.integers(0, choices.size, size=fav.size)], -1)

    return {
        "day": (spec.start + timedelta(days=day)).isoformat(),
        "viewed_pairs": int(pairs.size),
        "click_rate": float(clicked.mean()),
        "click_auc": {
            "full": auc(clicked, z_full),
            "without_content": auc(clicked, z_blind),
            "content_only": auc(clicked, sc["content"]),
        },
        "click_gauc": {"full": gauc(clicked, z_full, user), "without_content": gauc(clicked, z_blind, user)},
        "view_auc": {
            "full": auc(labels, np.concatenate([view_score(sc, True), view_score(sn, True)])),
            "without_content": auc(labels, np.concatenate([view_score(sc, False), view_score(sn, False)])),
        },
        f"view_recall@{k}": {
            "full": _oracle_recall(world, spec, user, item, day, k, block),
            "without_content": _oracle_recall(world, blind, user, item, day, k, block),
        },
        "pattern_match": _match_shares(
            ev,
            world.user_pattern,
            world.item_pattern,
            control(world.user_pattern, np.arange(1, len(PATTERNS))),
        ),
        "style_match": _match_shares(
            ev,
            world.user_style,
            world.item_style,
            control(world.user_style, np.asarray(STYLE_CHOICES)),
        ),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("preset", choices=sorted(PRESETS))
    p.add_argument("--day", type=int, default=None, help="day index (default: the preset's last day)")
    p.add_argument("--content-signal", type=float, default=None, help="override the preset's strength")
    args = p.parse_args(argv)
    spec = PRESETS[args.preset]
    if args.content_signal is not None:
        spec = replace(spec, content_signal=args.content_signal)
    report = {"preset": args.preset, "content_signal": spec.content_signal, **content_ceiling(spec, args.day)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
