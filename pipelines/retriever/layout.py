"""Names and block sizes shared by the retriever stage's modules."""

DATASET = "retriever"
CANDIDATES = "two_tower"  # the user-tower lists; the published candidates/ come from pipelines.funnel
MODEL_FILE = "model.pt"
ITEM_EMB_FILE = "item_emb.npy"
METRICS_FILE = "metrics.json"
EVAL_KS = (10, 50, 100)
VALID_K = 50  # early stopping watches full-catalogue Recall@50 on retriever_valid
POPULARITY_DAYS = 7
# Users per block of the evaluation's metrics and popularity ranking: their [Q, 100] temporaries (sorts of
# every (user, item) key) held ~0.5 GB for the 71.5k eval users of the large preset when done at once.
EVAL_BLOCK_USERS = 8_192
TRAIN_READ_ROWS = 131_072  # rows per part when reading retriever_train into tensors
ENCODE_CHUNK = 4096  # rows per forward pass when embedding users / items
# validation scores every user against the whole catalogue in chunks of about this many MB ([rows, N] float32);
# 4,096 users x 50k items was 0.8 GB
VALID_SCORE_MB = 64
CANDIDATE_BLOCK_USERS = (
    16_384  # users per search block: a multiple of the 4096 queries FAISS scores per BLAS call
)
