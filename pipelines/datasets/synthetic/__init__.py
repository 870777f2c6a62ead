"""Synthetic e-commerce data in the input contract: the project's embedded default data set.

`generate(data_dir, spec)` writes, through `pipelines.io` only::

    <data>/users.parquet                       one row per user
    <data>/items.parquet                       one row per item (title and image_path ~5% null each)
    <data>/images/iNNNNNNN.png                 a 64x64 RGB product image per item with an image_path
    <data>/events/dt=YYYY-MM-DD/part-0.parquet view/click/cart/purchase events of that UTC day

The generative model (docs/synthetic-data.md gives every constant and the planted signals):

* users have attributes, a latent taste vector u (dim D) built from city tier, device and noise, a
  Dirichlet preference over the 27 subcategories (category_l2) that tilts which items they are shown, and
  (half of them each) a favourite image pattern and a favourite title style;
* items have attributes, a latent vector v built from category, brand, colour and noise, a Zipf-like base
  popularity, a launch day (~20% launch after day 0: cold start), a title composed from the attributes and
  a style word (the adjective), and an image whose colour and shape come from the item's colour and
  category, with a pattern (plain, stripes, dots, checks) that no column or title names;
* the utility of item i for user u is s = u.v plus `content_signal` for each of the pattern and the style
  that is u's favourite (`utility`): the only planted preference that the title and the image alone reveal;
* each day, every user views Poisson(rate) items; a view picks one of K candidates drawn from popularity
  tilted by the user's subcategory preference, with probability proportional to exp(beta * s)
  (sampling-importance-resampling of pop(t) * g_u[category] * exp(beta s); `view_log_weights`);
  popularity drifts with a per-category season and a launch boost of new items;
* each view may become a click, each click a cart, each cart a purchase, by logistic propensities that add
  the utility s to two planted feature crosses (age_bucket x price_bucket, gender x category_l1)
  whose cells flip sign and whose row and column means are zero, so one-hot marginals cannot explain them.

Everything is vectorised with numpy: loops run over days, chunks of views, event types and shapes, never
over single events or users. Randomness comes from `numpy.random.default_rng` streams keyed by
(seed, purpose, day or chunk), so a spec always yields the same bytes and any day can be made alone; memory
is bounded by one day of events (plus the user and item tables), whatever the number of days.

The package holds one concern per module: `vocab` (the constants of the model), `spec` (`SyntheticSpec`,
`PRESETS`, the random streams), `world` (users, items and their hidden variables), `images` (rendering and
writing the product images), `simulation` (one day of events), `writer` (`generate`, the only one that
writes) and `ceiling` (what a perfect model reaches, from the hidden variables; not imported here, it
needs torch). Every other public name is importable from `pipelines.datasets.synthetic`.
"""

from pipelines.datasets.synthetic.images import pattern_mask, render_images, write_images
from pipelines.datasets.synthetic.simulation import (
    click_logit,
    content_term,
    cross_term,
    daily_popularity,
    simulate_day,
    utility,
    view_log_weights,
)
from pipelines.datasets.synthetic.spec import PRESETS, SyntheticSpec
from pipelines.datasets.synthetic.vocab import (
    ADJECTIVES,
    AGE_BUCKETS,
    AGE_PROBS,
    AGE_SCORE,
    BRANDS,
    CART_AFF,
    CART_BIAS,
    CART_CROSS,
    CART_DELAY_S,
    CATEGORIES_L1,
    CATEGORIES_L2,
    CITY_PROBS,
    CITY_TIERS,
    CLICK_AFF,
    CLICK_BIAS,
    CLICK_CROSS,
    CLICK_DELAY_S,
    COLOUR_RGB,
    COLOUR_WORDS,
    COLOURS,
    CROSS_AP,
    CROSS_GC,
    DEVICE_PROBS,
    DEVICES,
    EVENTS,
    GENDER_PROBS,
    GENDER_SCORE,
    GENDERS,
    HOUR_WEIGHTS,
    L1_MATERIALS,
    L1_MEDIAN_PRICE,
    L1_PROBS,
    L1_SCORE,
    L1_SHAPES,
    L2_VOCAB,
    LAUNCH_BOOST,
    LAUNCH_BOOST_DAYS,
    ORIGIN_PROBS,
    ORIGINS,
    PATTERN_DARKEN_ABOVE,
    PATTERN_PERIOD,
    PATTERN_TONE,
    PATTERNS,
    PRICE_BUCKETS,
    PRICE_EDGES,
    PRICE_SCORE,
    PURCHASE_AFF,
    PURCHASE_BIAS,
    PURCHASE_CROSS,
    PURCHASE_DELAY_S,
    PURCHASE_PRICE_SLOPE,
    SEASON_AMPLITUDE,
    SEASON_PERIOD_DAYS,
    STYLE_CHOICES,
    WEEKDAY_FACTOR,
    WEEKEND_FACTOR,
)
from pipelines.datasets.synthetic.world import (
    World,
    build_world,
    category_preferences,
    content_properties,
    planted_crosses,
    price_bucket_of,
)
from pipelines.datasets.synthetic.writer import generate

__all__ = [
    "ADJECTIVES",
    "AGE_BUCKETS",
    "AGE_PROBS",
    "AGE_SCORE",
    "BRANDS",
    "CART_AFF",
    "CART_BIAS",
    "CART_CROSS",
    "CART_DELAY_S",
    "CATEGORIES_L1",
    "CATEGORIES_L2",
    "CITY_PROBS",
    "CITY_TIERS",
    "CLICK_AFF",
    "CLICK_BIAS",
    "CLICK_CROSS",
    "CLICK_DELAY_S",
    "COLOURS",
    "COLOUR_RGB",
    "COLOUR_WORDS",
    "CROSS_AP",
    "CROSS_GC",
    "DEVICES",
    "DEVICE_PROBS",
    "EVENTS",
    "GENDERS",
    "GENDER_PROBS",
    "GENDER_SCORE",
    "HOUR_WEIGHTS",
    "L1_MATERIALS",
    "L1_MEDIAN_PRICE",
    "L1_PROBS",
    "L1_SCORE",
    "L1_SHAPES",
    "L2_VOCAB",
    "LAUNCH_BOOST",
    "LAUNCH_BOOST_DAYS",
    "ORIGINS",
    "ORIGIN_PROBS",
    "PATTERNS",
    "PATTERN_DARKEN_ABOVE",
    "PATTERN_PERIOD",
    "PATTERN_TONE",
    "PRESETS",
    "PRICE_BUCKETS",
    "PRICE_EDGES",
    "PRICE_SCORE",
    "PURCHASE_AFF",
    "PURCHASE_BIAS",
    "PURCHASE_CROSS",
    "PURCHASE_DELAY_S",
    "PURCHASE_PRICE_SLOPE",
    "SEASON_AMPLITUDE",
    "SEASON_PERIOD_DAYS",
    "STYLE_CHOICES",
    "SyntheticSpec",
    "WEEKDAY_FACTOR",
    "WEEKEND_FACTOR",
    "World",
    "build_world",
    "category_preferences",
    "click_logit",
    "content_properties",
    "content_term",
    "cross_term",
    "daily_popularity",
    "generate",
    "pattern_mask",
    "planted_crosses",
    "price_bucket_of",
    "render_images",
    "simulate_day",
    "utility",
    "view_log_weights",
    "write_images",
]
