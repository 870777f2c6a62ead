"""The content-only signals of the synthetic generator (issue #17): a pattern drawn only into the image and a
style word written only in the title, which some users favour; nothing of them in the other columns; off at
content_signal = 0, where the data are those of the generator before content signals."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import date
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from pipelines import io
from pipelines.datasets.synthetic import (
    ADJECTIVES,
    COLOUR_RGB,
    PATTERNS,
    STYLE_CHOICES,
    SyntheticSpec,
    build_world,
    generate,
    render_images,
    simulate_day,
)
from pipelines.datasets.synthetic.ceiling import content_ceiling

# the tiny spec of test_synthetic.py: a Saturday start, 300 users, 200 items, 4 days
TINY = SyntheticSpec(users=300, items=200, days=4, start=date(2024, 1, 6), seed=7, events_per_user_day=4.0)

# Fingerprint (`_fingerprint`) of TINY as written by the generator before content signals existed: computed
# at commit fdbbeaa (the split package) and at f24d5e9 (the one-module generator), both gave this value.
BEFORE_CONTENT = "7cf45c919a58254511e79cc6cbbdcbdc1bb20c0432359a86f1cdceedc58aa4e7"


def _fingerprint(root: Path) -> str:
    """sha256 over every file's path and content: parquet as its CSV text (independent of the parquet
    writer's version), PNG as its decoded RGB pixels (independent of the zlib build)."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if not p.is_file():
            continue
        h.update(p.relative_to(root).as_posix().encode())
        if p.suffix == ".parquet":
            h.update(pl.read_parquet(p).write_csv().encode())
        else:
            with Image.open(p) as img:
                h.update(np.asarray(img.convert("RGB")).tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------- off: the generator before content signals


def test_strength_zero_reproduces_the_generator_before_content(tmp_path: Path) -> None:
    # the share of users is irrelevant when the strength is 0: nothing is drawn
    off = replace(TINY, content_signal=0.0, content_user_share=0.9)
    generate(tmp_path / "off", off)
    assert _fingerprint(tmp_path / "off") == BEFORE_CONTENT
    world = build_world(off)
    assert (
        not world.item_pattern.any() and (world.user_pattern == -1).all() and (world.user_style == -1).all()
    )
    # and the default (on) changes the data
    generate(tmp_path / "on", TINY)
    assert TINY.content_signal > 0 and _fingerprint(tmp_path / "on") != BEFORE_CONTENT


def test_spec_rejects_bad_content_values() -> None:
    with pytest.raises(ValueError, match="content_signal"):
        replace(TINY, content_signal=-0.1)
    with pytest.raises(ValueError, match="content_user_share"):
        replace(TINY, content_user_share=1.5)


# ---------------------------------------------------------------- the pattern is in the image only


def _pattern_share(px: np.ndarray, colour: int) -> float:
    """Share of the object's pixels that are neither the fill colour (within 45 of COLOUR_RGB) nor the
    background (within 40 of the corner pixel), inside the bounding box of the fill. px: [S, S, 3] float."""
    target = np.asarray(COLOUR_RGB[colour], dtype=np.float32)
    fill = np.abs(px - target).max(axis=-1) < 45
    ys, xs = np.nonzero(fill)
    box = px[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    background = np.abs(box - px[0, 0]).max(axis=-1) < 40
    in_fill = np.abs(box - target).max(axis=-1) < 45
    return float((~background & ~in_fill).sum() / max((~background).sum(), 1))


def test_patterns_are_drawn_inside_the_shape() -> None:
    # one square (category shoes) per colour and pattern: the pattern covers 1/3 (stripes), pi 0.28^2 = 25%
    # (dots) and 1 - 0.8^2 = 36% (checks) of the lattice, none for plain; pixelation moves these a little
    colour = np.repeat(np.arange(len(COLOUR_RGB), dtype=np.int8), len(PATTERNS))
    pattern = np.tile(np.arange(len(PATTERNS), dtype=np.int8), len(COLOUR_RGB))
    imgs = render_images(colour, np.ones_like(colour), np.random.default_rng(3), 64, pattern).astype(
        np.float32
    )
    want = {"plain": (0.0, 0.01), "stripes": (0.25, 0.42), "dots": (0.15, 0.33), "checks": (0.27, 0.45)}
    for k in range(colour.size):
        lo, hi = want[PATTERNS[pattern[k]]]
        share = _pattern_share(imgs[k], int(colour[k]))
        assert lo <= share <= hi, (k, PATTERNS[pattern[k]], share)
    # checks are the only pattern with image rows entirely in the pattern tone (its horizontal lines)
    for k in range(colour.size):
        target = np.asarray(COLOUR_RGB[colour[k]], dtype=np.float32)
        inner = imgs[k][24:40, 24:40]  # inside the square (radius >= 14 px, centre offset <= 8 px)
        off_fill = (np.abs(inner - target).max(axis=-1) > 45).mean(axis=1)  # (16,) per row
        assert (off_fill.max() > 0.9) == (PATTERNS[pattern[k]] == "checks"), (k, off_fill.max())


def test_plain_images_do_not_change_when_others_get_a_pattern() -> None:
    # the lattice offsets are drawn after every other random number of the block, so a plain item's picture
    # is the one the generator drew before patterns existed, whatever its neighbours' patterns
    rng_colour = np.random.default_rng(1)
    colour = rng_colour.integers(0, len(COLOUR_RGB), 30).astype(np.int8)
    shape = rng_colour.integers(0, 8, 30).astype(np.int8)
    pattern = rng_colour.integers(0, len(PATTERNS), 30).astype(np.int8)
    before = render_images(colour, shape, np.random.default_rng(5), 64)
    after = render_images(colour, shape, np.random.default_rng(5), 64, pattern)
    plain = pattern == 0
    assert plain.any() and (~plain).any()
    assert np.array_equal(before[plain], after[plain]) and not np.array_equal(before[~plain], after[~plain])


def test_written_images_carry_the_pattern(tmp_path: Path) -> None:
    spec = replace(TINY, days=1)
    generate(tmp_path, spec)
    world = build_world(spec)
    items = io.read_items(tmp_path)
    shares = {k: [] for k in range(len(PATTERNS))}
    for n, path in enumerate(items["image_path"].to_list()):
        if path is None:
            continue
        with Image.open(io.image_file(tmp_path, path)) as img:
            px = np.asarray(img.convert("RGB"), dtype=np.float32)
        shares[int(world.item_pattern[n])].append(_pattern_share(px, int(world.item_colour[n])))
    # every pattern occurs (200 items, 1/4 each); plain pictures have no off-fill object pixels, patterned
    # ones at least 5% (a checks lattice can mostly miss a thin bar: ~6% at worst)
    assert all(len(v) > 20 for v in shares.values())
    assert max(shares[0]) < 0.01
    assert min(min(v) for k, v in shares.items() if k) > 0.05


# ---------------------------------------------------------------- the style is in the title only


def test_content_properties_are_only_in_title_and_image() -> None:
    spec = SyntheticSpec(users=1, items=20_000, days=1, start=date(2024, 1, 1), seed=4)
    world = build_world(spec)
    items = world.items
    # the style is the title's first word
    titled = items["title"].is_not_null().to_numpy()
    first = items["title"].drop_nulls().str.split(" ").list.first().to_list()
    assert first == [ADJECTIVES[k] for k in world.item_style[titled]]
    # no column holds a pattern name or a style word (price_bucket's "premium" is why it is no style choice)
    styles = {ADJECTIVES[k] for k in STYLE_CHOICES}
    for name in items.columns:
        values = items[name].drop_nulls().cast(pl.String)
        words = set(values.str.split(" ").explode().to_list()) if name == "title" else set(values.to_list())
        assert not words & set(PATTERNS), name
        if name != "title":
            assert not words & styles, name
    # and none carries information about them: within each value held by >= 1,000 items the shares of the
    # patterns stay at 1/4 and of the styles at 1/6 (binomial std <= 0.014 and 0.012: tolerance >= 4 std)
    for name in ["category_l1", "category_l2", "brand", "origin", "price_bucket", "colour", "material"]:
        codes = items[name].cast(pl.Categorical).to_physical().to_numpy()
        for v in np.flatnonzero(np.bincount(codes) >= 1_000):
            sel = codes == v
            assert np.abs(np.bincount(world.item_pattern[sel], minlength=4) / sel.sum() - 0.25).max() < 0.06
            assert np.abs(np.bincount(world.item_style[sel], minlength=6) / sel.sum() - 1 / 6).max() < 0.06
    # nor does the title about the pattern
    for k in range(len(ADJECTIVES)):
        sel = world.item_style == k
        assert np.abs(np.bincount(world.item_pattern[sel], minlength=4) / sel.sum() - 0.25).max() < 0.06


# ---------------------------------------------------------------- the favourites steer the choices


def _match_share(ev: dict, event: int, fav: np.ndarray, prop: np.ndarray, users: np.ndarray) -> float:
    """Share of the events of type `event` by `users` ([U] bool) on items whose `prop` is the user's `fav`."""
    sel = (ev["event"] == event) & users[ev["user"]]
    return float((prop[ev["item"][sel]] == fav[ev["user"][sel]]).mean())


def test_users_choose_their_favourites() -> None:
    # 3,000 users x 2 days x 3 views: ~18k views, half of them by holders of each favourite. A candidate has
    # the favourite pattern with probability 1/4 and style 1/6; the pick weighs it by exp(beta * 0.5) = 4.5,
    # so for large K the views' share would be 4.5/4 / (4.5/4 + 3/4) = 0.60 (pattern) and 0.47 (style); the
    # latent term spreads the picks (0.475 and 0.34 measured on medium). Control: users without the
    # favourite, scored against a pseudo-favourite drawn the same way (share 1/4 and 1/6; std ~0.005).
    spec = SyntheticSpec(users=3_000, items=600, days=2, start=date(2024, 1, 8), seed=11, content_signal=0.5)
    world = build_world(spec)
    rng = np.random.default_rng(0)
    pseudo_pattern = np.where(world.user_pattern < 0, rng.integers(1, 4, spec.users), world.user_pattern)
    pseudo_style = np.where(
        world.user_style < 0, np.asarray(STYLE_CHOICES)[rng.integers(0, 5, spec.users)], world.user_style
    )
    assert 0.45 < (world.user_pattern >= 0).mean() < 0.55 and 0.45 < (world.user_style >= 0).mean() < 0.55
    ev = {
        k: np.concatenate([simulate_day(world, spec, d)[k] for d in range(spec.days)])
        for k in ("user", "item", "event")
    }
    for event in (0, 1):  # views, clicks
        has_pattern, has_style = world.user_pattern >= 0, world.user_style >= 0
        pattern_fav = _match_share(ev, event, world.user_pattern, world.item_pattern, has_pattern)
        pattern_ctl = _match_share(ev, event, pseudo_pattern, world.item_pattern, ~has_pattern)
        style_fav = _match_share(ev, event, world.user_style, world.item_style, has_style)
        style_ctl = _match_share(ev, event, pseudo_style, world.item_style, ~has_style)
        assert abs(pattern_ctl - 0.25) < 0.04 and abs(style_ctl - 1 / 6) < 0.04, (pattern_ctl, style_ctl)
        assert pattern_fav > pattern_ctl + 0.12 and style_fav > style_ctl + 0.08, (pattern_fav, style_fav)
    # strength 0: the same users would show no preference (no favourites drawn at all)
    off = build_world(replace(spec, content_signal=0.0))
    assert (off.user_pattern < 0).all()


def test_ceiling_counts_the_content_terms() -> None:
    spec = SyntheticSpec(users=3_000, items=600, days=2, start=date(2024, 1, 8), seed=11, content_signal=1.0)
    on = content_ceiling(spec)
    # the true logit beats the one without the content term; the content term alone beats chance
    assert on["click_auc"]["full"] > on["click_auc"]["without_content"] + 0.01
    assert on["click_auc"]["content_only"] > 0.53
    assert on["view_auc"]["full"] > on["view_auc"]["without_content"]
    assert (
        on["pattern_match"]["purchase"]["with_favourite"] > on["pattern_match"]["purchase"]["control"] + 0.2
    )
    off = content_ceiling(replace(spec, content_signal=0.0))
    assert off["click_auc"]["full"] == off["click_auc"]["without_content"]
    assert off["click_auc"]["content_only"] == 0.5  # a constant score


def test_the_image_descriptor_sees_the_pattern() -> None:
    # The project's training-free image encoder must be able to tell patterns apart, or the signal would be
    # planted where no model of the project looks. 1-nearest-neighbour by descriptor cosine over images of
    # random colour, shape and pattern: measured 0.64 here (400 / 200 images), 0.74 with 800 / 400 (edge
    # block alone 0.89); chance is 0.25.
    from features.embeddings import ColourEdgeDescriptor

    rng = np.random.default_rng(0)
    n, n_train = 600, 400
    colour, shape, pattern = (rng.integers(0, k, n) for k in (len(COLOUR_RGB), 8, len(PATTERNS)))
    imgs = render_images(colour, shape, np.random.default_rng(1), 64, pattern)
    emb = ColourEdgeDescriptor().encode([Image.fromarray(x) for x in imgs])  # (n, d), L2-normalised blocks
    nearest = np.argmax(emb[n_train:] @ emb[:n_train].T, axis=1)  # (200,)
    accuracy = float((pattern[:n_train][nearest] == pattern[n_train:]).mean())
    assert accuracy > 0.5, accuracy
