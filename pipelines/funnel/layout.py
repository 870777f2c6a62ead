"""Names shared by the funnel's modules: the datasets and files it reads and writes, the metric cut-offs."""

from features.funnel import feature_names
from pipelines.names import FUNNEL
from retrieval.sources import SOURCES

DATASET = FUNNEL
NDCG_K, RECALL_K = 10, 50  # the evaluation's and the guard's cut-offs
FEATURES = feature_names(SOURCES)  # the columns of the funnel ranker's numeric input, in order
