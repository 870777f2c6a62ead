"""The training-frames stage: one partition `frames/dt=D/` with every table the models train and score on.

Time split of a run date D with window W = data.train_window_days (docs/frames.md has the whole contract):

    history lookback   D-W+1-L .. D-W     read only as history (L = data.history_lookback_days)
    train              D-W+1   .. D-1     retriever_train / ranker_train rows
    valid              D                  retriever_valid / ranker_valid rows
    eval               D+1                eval_retrieval / eval_ranker, only when events/dt=D+1 exists

Every example carries features of its user as of its own `ts` (features.history.point_in_time_history):
no feature reads an event at or after the example's time. users.parquet holds features as of the end of D.

Memory is bounded by one user block, not by the number of events: users are split into blocks by murmur3
of user_id, every per-user piece (positives, negatives, history, counts) is computed one block at a time
and appended to the output files; only the global pieces (catalogue, items available per day, numeric
moments, users.parquet rows) are held whole (see `build_frames` and docs/frames.md).

The package's modules: layout (public: file names, manifest, window), tables, numeric, blocks, scratch, examples, stage.
"""

from pipelines.frames.stage import build_frames

__all__ = ["build_frames"]
