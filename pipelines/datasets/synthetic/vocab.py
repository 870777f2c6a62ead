"""Constants of the synthetic generator's model: vocabularies and their probabilities, the planted
signals, funnel propensities, delays and drift (docs/synthetic-data.md quotes every one of them)."""

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
# the adjective is the item's style: written in its title only (no column, not in the image); users with a
# style preference like one of STYLE_CHOICES ("premium" is left out: it is also a price_bucket value)
STYLE_CHOICES: tuple[int, ...] = (0, 1, 3, 4, 5)  # indices into ADJECTIVES
# a pattern drawn over the item's shape in its image only (no column, not in the title); "plain" is none.
# Users with a pattern preference like one of the others. Geometry in pixels of the rendered image:
PATTERNS: tuple[str, ...] = ("plain", "stripes", "dots", "checks")
PATTERN_PERIOD = 0.09  # lattice period as a share of the image size (5.8 px at 64 px)
PATTERN_TONE = 0.5  # pattern pixels move this share of the way from the fill colour to black or to white:
PATTERN_DARKEN_ABOVE = 110.0  # to black for fills of a luminance above this, to white below (far from both
# the fill and the background for every colour of COLOURS)
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
