"""The metrics of benchmarks/multimodal.py, on hand-made embeddings; the myntra part's loader on the real data."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def mm():
    spec = importlib.util.spec_from_file_location("bench_multimodal", ROOT / "benchmarks" / "multimodal.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_recall_at_k_hand_values(mm) -> None:
    # targets on the unit circle at 0, 90, 180 degrees; query 0 points at target 0, query 1 halfway between
    # targets 0 and 1 but tilted to 0 (target 1 ranks 2nd), query 2 points at target 0 (its target 2 is last)
    t = np.array([[1, 0], [0, 1], [-1, 0]], np.float32)
    q = np.array([[1, 0], [0.8, 0.6], [1, 0]], np.float32)
    assert mm.recall_at_k(q, t, 1) == pytest.approx(1 / 3)  # only query 0
    assert mm.recall_at_k(q, t, 2) == pytest.approx(2 / 3)  # + query 1
    assert mm.recall_at_k(q, t, 3) == 1.0


def test_purity_at_k_hand_values(mm) -> None:
    # cluster A: items 0, 1, 2 (labels 0, 0, 1) near the x axis; cluster B: items 3, 4 (labels 1, 1) near y.
    # 2 nearest: item 0 -> 1, 2 (1 of 2 same); item 1 -> 0, 2 (1/2); item 2 -> 0, 1 (0/2); items 3 and 4 ->
    # each other and item 2, the member of A closest to y (label 1: 2/2 each). Mean (0.5+0.5+0+1+1)/5 = 0.6
    e = np.array([[1, 0], [0.99, 0.14], [0.98, 0.2], [0, 1], [0.14, 0.99]], np.float32)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    labels = np.array([0, 0, 1, 1, 1])
    assert mm.purity_at_k(e, labels, 2) == pytest.approx(0.6)


@pytest.mark.shared_data
def test_myntra_loader_reads_photos_and_titles(mm, shared_data: Path) -> None:
    items, pixels, images = mm.load_myntra(shared_data, 16)
    assert items.height == len(pixels) == len(images) > 1000
    assert pixels.shape[1:] == (16, 16, 3) and pixels.dtype == np.uint8
    assert items["title"].null_count() == 0 and items["articleType"].null_count() == 0
