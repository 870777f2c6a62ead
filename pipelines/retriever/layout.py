"""Names and block sizes shared by the retriever stage's modules."""

from models.config import RetrieverConfig
from pipelines.names import RETRIEVER, TWO_TOWER

DATASET = RETRIEVER
CANDIDATES = TWO_TOWER  # the user tower's lists; the published candidates/ come from pipelines.funnel
EVAL_KS = (10, 50, 100)
VALID_K = 50  # early stopping watches full-catalogue Recall@50 on retriever_valid
POPULARITY_DAYS = 7
# defaults of the library functions; the stage passes the config's values
EVAL_BLOCK_USERS: int = RetrieverConfig.model_fields["eval_block_users"].default
CANDIDATE_BLOCK_USERS: int = RetrieverConfig.model_fields["candidate_block_users"].default
TRAIN_READ_ROWS = 131_072  # rows per part when reading retriever_train into tensors (memory)
ENCODE_CHUNK = 4096  # rows per forward pass when embedding users / items
VALID_SCORE_MB = 64  # validation scores users against the catalogue in [rows, N] chunks of about this size
