"""The funnel stage: multi-source candidates for every user with history, a DCN-Mix ranker trained on the
lists it reorders, a publish guard, and an evaluation that counts every returning user (`stage` says what
it reads and writes).

Modules: `layout` (dataset and file names), `inputs` (the events and the catalogue), `lists` (the lists as
of an instant), `train` (the ranker on the lists, the guard), `evaluate` (the figures), `stage`
(`funnel_stage`: read, compute a block of users at a time, commit).
"""

from pipelines.funnel.evaluate import not_enough
from pipelines.funnel.layout import DATASET
from pipelines.funnel.stage import funnel_stage
from pipelines.names import CANDIDATES, FRAMES, METRICS_FILE, MODEL_FILE, RETRIEVER, SCORES, TWO_TOWER

__all__ = ["CANDIDATES", "DATASET", "FRAMES", "METRICS_FILE", "MODEL_FILE", "RETRIEVER", "SCORES", "TWO_TOWER",
           "funnel_stage", "not_enough"]  # fmt: skip
