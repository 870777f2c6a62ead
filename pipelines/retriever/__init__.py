"""The retriever stage: train the two towers, index every item, publish candidates, evaluate.

    frames/dt=D (items, users, retriever_train, retriever_valid, vocab, eval_retrieval when present)
    embeddings/dt=D/items.parquet (text and image embeddings, when the config uses them)
        -> retriever/dt=D/   model.pt, index.faiss + ids.npy + index.json, item_emb.npy, metrics.json
        -> candidates/dt=D/  part-0.parquet: user_id, item_id, rank (1..K), score

Training rows are the positives of retriever_train (item features gathered from the catalogue through
item_idx); validation is full-catalogue Recall@50 on retriever_valid, with each validation user's features
taken from its first positive of D (so the validation positives are never in the features that predict
them). Every catalogue item is embedded, cold-start items included (their vectors come from their hashed
attributes and content; their item_id row is untrained), and every user of frames users.parquet (features
as of the end of D) gets cfg.top_k candidates from the inner-product index. Search, purchase exclusion
and candidate rows run per block of users in user_id order (`write_candidates`), appended to the file, so
candidates/dt=D is sorted by user_id then rank and the memory of this step follows the block size.

Purchase exclusion (cfg.exclude_purchased): frames carry positives without their event type, so the
(user, item) purchase pairs of the training window (the frames manifest's train days and valid day) are
read from the input events through `io.scan_events`. The input folder is `data_dir`, or the `data.dir` of
the resolved config the run carries (`run.config`).

Evaluation (when frames has eval_retrieval, the positives of D+1): Recall, NDCG and HitRate at 10/50/100 and
catalogue coverage, over the eval users that have a row in users.parquet, for the model and, in the same
run and with the same exclusions, for two baselines: popularity over the last 7 days (positives of
retriever_train/valid with D-6 <= day <= D) and implicit ALS (package `implicit`, when installed; the
metrics say "not installed" otherwise).

Modules: `layout` (names, block sizes), `data` (inputs), `train` (`fit`), `evaluate` (baselines and
metrics), `lists` (index and per-user lists), `stage` (`train_retriever_stage`).
"""

from pipelines.names import ITEM_EMB_FILE, MODEL_FILE
from pipelines.retriever.data import (
    RetrieverInputs,
    compact_batch,
    load_inputs,
    read_compact_batch,
    widen_batch,
)
from pipelines.retriever.evaluate import (
    drop_excluded,
    evaluate,
    popularity_positions,
    purchase_mask,
    ranking_metrics,
    relevant_positions,
)
from pipelines.retriever.layout import CANDIDATES, DATASET, EVAL_KS
from pipelines.retriever.lists import candidates_frame, embed_and_index, write_candidates
from pipelines.retriever.stage import train_retriever_stage
from pipelines.retriever.train import build_model, fit

__all__ = [
    "CANDIDATES",
    "DATASET",
    "EVAL_KS",
    "ITEM_EMB_FILE",
    "MODEL_FILE",
    "RetrieverInputs",
    "build_model",
    "candidates_frame",
    "compact_batch",
    "drop_excluded",
    "embed_and_index",
    "evaluate",
    "fit",
    "load_inputs",
    "popularity_positions",
    "purchase_mask",
    "ranking_metrics",
    "read_compact_batch",
    "relevant_positions",
    "train_retriever_stage",
    "widen_batch",
    "write_candidates",
]
