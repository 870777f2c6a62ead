"""Shared fixtures: the real-data folder (skipped when absent) and tiny helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(
    os.environ.get("RECSYS_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data")
)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data beside the project root; tests using it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent (real public data sets are not part of the repo)")
    return SHARED_DATA


TINY_WORDS = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "red",
    "blue",
    "green",
    "black",
    "cotton",
    "wool",
    "dress",
    "shirt",
    "shoe",
    "bag",
]


@pytest.fixture(scope="session")
def tiny_text_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-layer, 8-dim BERT with a 15-word vocabulary, saved as a local sentence-transformers folder.

    Loads in well under a second, so tests that do not check meaning need not load MiniLM; it also exercises
    the "local path" branch of the text encoder.
    """
    import warnings

    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    with warnings.catch_warnings():  # `models` moved in sentence-transformers 6; the old path still works
        warnings.simplefilter("ignore", DeprecationWarning)
        from sentence_transformers import SentenceTransformer, models

    root = tmp_path_factory.mktemp("tiny_st")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(TINY_WORDS),
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(root / "hf")
    BertTokenizerFast(vocab={w: i for i, w in enumerate(TINY_WORDS)}).save_pretrained(root / "hf")
    SentenceTransformer(modules=[models.Transformer(str(root / "hf")), models.Pooling(8)]).save(
        str(root / "st")
    )
    return root / "st"
