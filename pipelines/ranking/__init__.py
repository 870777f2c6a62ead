"""The pointwise ranker stage: train DCN-Mix (or a baseline) on the frames' sampled negatives, evaluate it.

`train_ranker_stage` (docs/ranking.md): frames/dt=D ranker_train (training) and ranker_valid (early
stopping), streamed through `pipelines.batches` with every side (user, item, cross fields, history, counts,
numeric, item text/image) -> `models.train.train_ranker` -> `ranker/dt=D/` with `model.pt` (weights, build
arguments, batch spec, vocab, numeric statistics) and `metrics.json` (valid and, when frames has D+1, eval
metrics and diagnostics). The published order comes from the ranker the funnel trains on its own candidate
lists (`pipelines.funnel`); this stage's model and diagnostics describe the features.

The helpers (`prepare_data`, `fit`, `evaluate_split`) are public so the benchmarks train and evaluate
through exactly the same code. Modules: `layout` (names, sizes), `data` (frames -> batches, the model),
`train` (`fit`, `train_and_evaluate`, `commit_ranker`, `train_ranker_stage`), `evaluate` (metrics and
diagnostics), `ddp` (the torchrun launcher and each rank's entry point).
"""

from pipelines.names import MODEL_FILE
from pipelines.ranking.data import RankerData, build_model, prepare_data
from pipelines.ranking.evaluate import evaluate_split
from pipelines.ranking.layout import DATASET
from pipelines.ranking.train import TrainedRanker, commit_ranker, fit, train_and_evaluate, train_ranker_stage

__all__ = ["DATASET", "MODEL_FILE", "RankerData", "build_model", "evaluate_split", "fit", "prepare_data",
           "train_ranker_stage", "TrainedRanker", "commit_ranker", "train_and_evaluate"]  # fmt: skip
