"""Names and settings shared by the ranker stage's modules: dataset, vocab sides, sample sizes."""

from pipelines.names import RANKER

DATASET = RANKER
SIDES = ("user", "item", "cross")
IMPORTANCE_ROWS = 20_000  # rows of the permutation-importance sample
