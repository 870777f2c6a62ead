"""Names shared by the funnel's modules: the datasets and files it reads and writes, the metric cut-offs."""

DATASET = "funnel"
CANDIDATES = "candidates"
SCORES = "scores"
TWO_TOWER = "two_tower"  # the retriever's user-tower lists (pipelines.retriever)
RETRIEVER = "retriever"
FRAMES = "frames"
MODEL_FILE = "model.pt"
METRICS_FILE = "metrics.json"
NDCG_K, RECALL_K = 10, 50  # the evaluation's and the guard's cut-offs
