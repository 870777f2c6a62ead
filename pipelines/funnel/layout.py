"""Names shared by the funnel's modules: the datasets and files it reads and writes, the metric cut-offs."""

from pipelines.names import FUNNEL

DATASET = FUNNEL
NDCG_K, RECALL_K = 10, 50  # the evaluation's and the guard's cut-offs
