"""Names and settings shared by the ranker stages: datasets, files, block and chunk sizes."""

from pipelines.names import RANKER, TWO_TOWER

DATASET = RANKER
CANDIDATES = TWO_TOWER  # what the score stage reorders: the retriever's lists
FUNNEL_FILE = "funnel.json"
SIDES = ("user", "item", "cross")
FUNNEL_K = 10
POPULARITY_DAYS = 7
IMPORTANCE_ROWS = 20_000  # rows of the permutation-importance sample
SCORE_CHUNK = 8_192  # pairs per forward pass when scoring (same scores as 65,536; a tenth of the activations)
DEFAULT_HIST_LEN = 10
