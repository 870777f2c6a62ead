"""The ranker stages: train DCN-Mix (or a baseline) nightly, score the retriever's candidates, evaluate.

Two stages, one call each (docs/ranking.md):

* `train_ranker_stage`: frames/dt=D ranker_train (training) and ranker_valid (early stopping), streamed
  through `pipelines.batches` with every side (user, item, cross fields, history, counts, numeric, item
  text/image) -> `models.train.train_ranker` -> `ranker/dt=D/` with `model.pt` (weights, build arguments,
  batch spec, vocab, numeric statistics) and `metrics.json` (valid and, when frames has D+1, eval metrics).
* `score_stage`: candidates/dt=D (user_id, item_id, rank, score) -> ranker features of every (user,
  candidate) pair, built from frames users.parquet (features as of the end of D), items.parquet and the
  crossed fields hashed from the raw attributes -> `scores/dt=D/part-0.parquet` (user_id, item_id, score,
  rank), plus the full-funnel NDCG@10 / Recall@10 of ranker, retriever and popularity orders. Candidates
  are read, featurised, scored, ranked and appended per block of users (`ranker.score_block_users`), and the
  funnel is summed per block (`FunnelAccumulator`), so memory follows the block, not the pair count.

The helpers (`prepare_data`, `fit`, `evaluate_split`, `pair_features`, `rank_by_score`, `funnel_metrics`)
are public so the benchmarks train and evaluate through exactly the same code. Modules: `layout` (names,
block sizes), `data` (frames -> batches, the model), `train` (`fit`, `train_ranker_stage`), `evaluate`
(metrics and diagnostics), `pairs` (features of candidate pairs), `funnel_metrics`, `score` (`score_stage`).
"""

from pipelines.names import MODEL_FILE, SCORES
from pipelines.ranking.data import RankerData, build_model, prepare_data
from pipelines.ranking.evaluate import evaluate_split
from pipelines.ranking.funnel_metrics import FunnelAccumulator, funnel_metrics, popular_items, rank_by_score
from pipelines.ranking.layout import DATASET, FUNNEL_K
from pipelines.ranking.pairs import pair_features
from pipelines.ranking.score import score_stage
from pipelines.ranking.train import TrainedRanker, commit_ranker, fit, train_and_evaluate, train_ranker_stage

__all__ = ["DATASET", "FUNNEL_K", "MODEL_FILE", "SCORES", "FunnelAccumulator", "RankerData", "build_model",
           "evaluate_split", "fit", "funnel_metrics", "pair_features", "popular_items", "prepare_data",
           "rank_by_score", "score_stage", "train_ranker_stage", "TrainedRanker", "commit_ranker", "train_and_evaluate"]  # fmt: skip
