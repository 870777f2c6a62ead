"""The ranker's inputs: frames of D streamed as batches (`RankerData`), the model built for them."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import polars as pl
from torch import nn

from features.hashing import Vocab
from models.config import RankerConfig
from models.ranker import build_ranker
from pipelines import io
from pipelines.batches import (
    BatchSpec,
    ItemContent,
    load_item_content,
    load_vocab,
    spec_for,
)
from pipelines.frames import layout as frames
from pipelines.names import EMBEDDINGS, FRAMES
from pipelines.ranking.layout import SIDES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RankerData:
    """Everything a ranker needs from one frames partition: files, vocab, batch spec and item content.

    `content` is None when the embeddings partition of D is absent (or item content was turned off); the
    model is then built without the text/image inputs.
    """

    train: Path
    valid: Path
    eval: Path | None
    vocab: Vocab
    spec: BatchSpec
    content: ItemContent | None
    hist_field: str | None

    @property
    def text_dim(self) -> int:
        return self.content.text_dim if self.content is not None else 0

    @property
    def image_dim(self) -> int:
        return self.content.image_dim if self.content is not None else 0

    @property
    def n_affinity(self) -> int:
        """A: the columns of the `affinity` input (0 when the spec does not ask for it)."""
        return self.content.affinity_dim if self.spec.affinity and self.content is not None else 0


def prepare_data(
    out: Path,
    dt: date,
    *,
    item_content: bool = True,
    sides: tuple[str, ...] = SIDES,
    use_text: bool = True,
    use_image: bool = True,
    content_affinity: bool = True,
) -> RankerData:
    """Paths, vocab and the batch spec of the ranker files of frames/dt=D.

    item_content: use the text/image embeddings of embeddings/dt=D when that partition is committed;
    use_text / use_image: keep that modality (a dropped one has width 0, so the model has no input for it);
    content_affinity: add `affinity` (`pipelines.batches.content_affinity`) for the kept modalities.
    sides: vocab sides whose hashed fields enter the model (all three for the nightly ranker).
    """
    out = Path(out)
    train = io.committed_path(out, FRAMES, dt, f"{frames.RANKER_TRAIN}.parquet")
    valid = io.committed_path(out, FRAMES, dt, f"{frames.RANKER_VALID}.parquet")
    eval_path = io.partition_dir(out, FRAMES, dt) / f"{frames.EVAL_RANKER}.parquet"
    vocab = load_vocab(out, dt)
    content = None
    if item_content and io.is_committed(out, EMBEDDINGS, dt):
        content = load_item_content(out, dt).only(text=use_text, image=use_image)
    elif item_content:
        log.warning("ranker dt=%s: embeddings/dt=%s is not committed; training without text/image", dt, dt)
    schema = pl.read_parquet_schema(train)
    spec = spec_for(
        vocab,
        schema,
        sides,
        hist_len=max(1, frames.read_manifest(out, dt).history_len),
        item_content=content is not None,
        label=True,
    )
    hist_field = _hist_field(vocab) if spec.hist_len else None
    if spec.hist_len and hist_field not in spec.fields:
        hist_field = None  # no item_id field among the chosen sides: the history has no table to read
        spec = BatchSpec(spec.fields, spec.counts, spec.numeric, 0, spec.item_content, spec.label)
    if content_affinity and spec.hist_len and content is not None and content.affinity_dim:
        spec = dataclasses.replace(spec, affinity=True)
    return RankerData(
        train=train,
        valid=valid,
        eval=eval_path if eval_path.is_file() else None,
        vocab=vocab,
        spec=spec,
        content=content,
        hist_field=hist_field,
    )


def build_model(cfg: RankerConfig, data: RankerData, seed: int) -> nn.Module:
    """`models.ranker.build_ranker` with the widths of `data`'s batch spec."""
    return build_ranker(
        cfg,
        data.spec.layout(data.vocab),
        data.hist_field,
        len(data.spec.counts),
        len(data.spec.numeric),
        data.text_dim,
        data.image_dim,
        n_affinity=data.n_affinity,
        seed=seed,
    )


def _hist_field(vocab: Vocab) -> str | None:
    field = vocab.item_id_field()
    return None if field is None else field.name
