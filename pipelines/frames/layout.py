"""The public layout of a frames partition: its file names, its date window and its typed manifest.

Later stages read `frames/dt=D/` through these names and through `read_manifest` (never through string
literals or the run's `_config.json`); docs/frames.md describes every file's columns.

    retriever_train / retriever_valid    positives of the train days / of D (user features as of ts)
    ranker_train / ranker_valid          positives and negatives of the train days / of D, labelled
    eval_retrieval / eval_ranker         the same for D+1, only when events/dt=D+1 exists
    users / items                        features as of the end of D; the bucketised catalogue
    vocab.json / numeric_stats.json      the hashed fields; mean and std of every numeric feature
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from features.config import ColumnsConfig
from pipelines import io
from pipelines.config import DataConfig
from pipelines.names import FRAMES

# tables (read with io.read_table / io.committed_path(..., f"{name}.parquet"))
RETRIEVER_TRAIN = "retriever_train"
RETRIEVER_VALID = "retriever_valid"
RANKER_TRAIN = "ranker_train"
RANKER_VALID = "ranker_valid"
EVAL_RETRIEVAL = "eval_retrieval"
EVAL_RANKER = "eval_ranker"
USERS = "users"
ITEMS = "items"
# JSON files
VOCAB_FILE = "vocab.json"
NUMERIC_STATS_FILE = "numeric_stats.json"


@dataclass(frozen=True)
class Window:
    """The days of a frames run of date D (W = data.train_window_days, L = data.history_lookback_days).

    history_from = D-W+1-L (first day read, as history only); train_days = D-W+1 .. D-1 (empty when W = 1);
    valid_day = D; eval_day = D+1 (read when its partition exists).
    """

    history_from: date
    train_days: tuple[date, ...]
    valid_day: date
    eval_day: date

    @classmethod
    def of(cls, data: DataConfig, dt: date) -> Window:
        """
        >>> w = Window.of(DataConfig(train_window_days=3, history_lookback_days=2), date(2024, 3, 10))
        >>> w.history_from, w.train_days[0], w.eval_day
        (datetime.date(2024, 3, 6), datetime.date(2024, 3, 8), datetime.date(2024, 3, 11))
        """
        first = dt - timedelta(days=data.train_window_days - 1)
        return cls(
            history_from=first - timedelta(days=data.history_lookback_days),
            train_days=tuple(first + timedelta(days=i) for i in range(data.train_window_days - 1)),
            valid_day=dt,
            eval_day=dt + timedelta(days=1),
        )

    @property
    def days(self) -> tuple[date, ...]:
        """The train days and D: the days whose active users get a users.parquet row."""
        return (*self.train_days, self.valid_day)

    def input_files(self, data_dir: Path) -> list[Path]:
        """The input files a frames run of this window reads: users, items, the event files of every day
        of [history_from, eval_day] present under `data_dir`."""
        return io.input_files(data_dir, self.history_from, self.eval_day)


class FramesManifest(BaseModel):
    """What later stages need to know of how frames/dt=D was built: the `frames` section of its manifest.

    data_dir and hash_seed: to hash the crossed fields of new (user, item) pairs like the frames did;
    history_len: the length `hist` lists are padded to; columns: the resolved attribute columns.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    data_dir: str
    hash_seed: int
    history_len: int
    history_windows_days: list[int]
    columns: ColumnsConfig
    history_from: date
    train_days: list[date]
    valid_day: date
    eval_day: date
    eval_present: bool
    users_as_of: datetime


def read_manifest(out: Path, dt: date) -> FramesManifest:
    """The typed `frames` section of the committed frames/dt=D manifest.

    Raises FileNotFoundError when frames/dt=D is not committed, ValueError when it was written by a version
    without the section.
    """
    manifest = io.read_manifest(out, FRAMES, dt)
    section = manifest.get("frames")
    if section is None:
        raise ValueError(
            f"{io.partition_dir(out, FRAMES, dt)}/{io.MANIFEST}: no 'frames' section (written by an older "
            f"version); fix: rebuild the partition (recsys run --date {dt.isoformat()} --force)"
        )
    return FramesManifest.model_validate(section)
