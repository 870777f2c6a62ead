"""Tests of the model metrics on tiny hand-worked cases and a few invariants."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models.metrics import (
    auc,
    calibration,
    gauc,
    logloss,
    permutation_importance,
    singular_values,
    sparse_fields,
)


def test_auc_hand_case():
    # pos 0.35 beats neg 0.1 but not neg 0.4; pos 0.8 beats both -> 3 of 4 pairs
    assert auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)


def test_auc_single_class_is_an_error():
    with pytest.raises(ValueError, match="single class"):
        auc(np.array([1, 1]), np.array([0.2, 0.3]))


def test_logloss_hand_case():
    # -(ln 0.5 + ln 0.5)/2 = ln 2;  -(ln 0.8 + ln(1 - 0.4))/2 = -(ln 0.8 + ln 0.6)/2
    assert logloss(np.array([1, 0]), np.array([0.5, 0.5])) == pytest.approx(math.log(2))
    assert logloss(np.array([1, 0]), np.array([0.8, 0.4])) == pytest.approx(
        -(math.log(0.8) + math.log(0.6)) / 2
    )
    assert math.isfinite(logloss(np.array([1, 0]), np.array([0.0, 1.0])))  # clipped, not inf


def test_gauc_weights_by_impressions_and_skips_one_class_users():
    # user a: 3 impressions, labels [1,0,0], scores [.9,.5,.1] -> AUC 1
    # user b: 2 impressions, labels [0,1], scores [.7,.3]     -> AUC 0
    # user c: all positive -> skipped.  GAUC = (3*1 + 2*0) / 5 = 0.6  (the plain mean would be 0.5)
    labels = np.array([1, 0, 0, 0, 1, 1, 1])
    scores = np.array([0.9, 0.5, 0.1, 0.7, 0.3, 0.2, 0.6])
    users = np.array(["a", "a", "a", "b", "b", "c", "c"])
    assert gauc(labels, scores, users) == pytest.approx(0.6)


def test_gauc_ties_count_half():
    # one positive and one negative with the same score: AUC 0.5
    assert gauc(np.array([1, 0]), np.array([0.5, 0.5]), np.array([7, 7])) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="both a positive and a negative"):
        gauc(np.array([1, 1]), np.array([0.5, 0.2]), np.array([1, 2]))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 4)), min_size=2, max_size=30))
def test_gauc_of_one_user_is_auc(rows):
    # with a single user GAUC is plain AUC, ties included (scores drawn from 5 values: many ties)
    labels = np.array([r[0] for r in rows])
    scores = np.array([r[1] for r in rows], dtype=float)
    if labels.min() == labels.max():
        return
    assert gauc(labels, scores, np.zeros(len(rows))) == pytest.approx(auc(labels, scores))


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.integers(0, 1), min_size=4, max_size=20),
    st.lists(st.integers(0, 3), min_size=20, max_size=20),
    st.integers(0, 1000),
)
def test_gauc_is_invariant_to_row_order(labels, users, seed):
    y = np.array(labels)
    u = np.array(users[: y.size])
    s = np.random.default_rng(seed).random(y.size)
    try:
        expected = gauc(y, s, u)
    except ValueError:
        return
    p = np.random.default_rng(seed + 1).permutation(y.size)
    assert gauc(y[p], s[p], u[p]) == pytest.approx(expected)


def test_calibration_and_ece_by_hand():
    # 2 bins of 2 rows: bin 0 probs (.1, .2) mean .15, observed 1/2 -> |.35|;
    # bin 1 probs (.8, .9) mean .85, observed 1 -> |.15|;  ECE = .5 * .35 + .5 * .15 = .25
    cal = calibration(np.array([1, 0, 1, 1]), np.array([0.9, 0.1, 0.2, 0.8]), n_bins=2)
    np.testing.assert_allclose(cal.predicted, [0.15, 0.85])
    np.testing.assert_allclose(cal.observed, [0.5, 1.0])
    np.testing.assert_array_equal(cal.counts, [2, 2])
    assert cal.ece == pytest.approx(0.25)


def test_deciles_of_a_calibrated_model_have_small_ece():
    rng = np.random.default_rng(0)
    p = rng.random(20_000)
    y = (rng.random(20_000) < p).astype(float)  # labels drawn from p: perfectly calibrated
    cal = calibration(y, p)
    assert cal.counts.tolist() == [2000] * 10
    assert cal.ece < 0.02
    assert np.all(np.diff(cal.predicted) > 0)


def test_permutation_importance_finds_the_informative_field():
    # score = column 0 of sparse, which equals the label; column 1 is ignored by the model -> importance 0
    n = 400
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, n)
    sparse = torch.tensor(np.stack([y, rng.integers(0, 5, n)], axis=1))
    batch = {"sparse": sparse, "label": torch.tensor(y, dtype=torch.float32)}
    before = sparse.clone()
    imp = permutation_importance(
        lambda b: b["sparse"][:, 0].float(), batch, sparse_fields(("signal", "noise"))
    )
    assert sparse_fields(("signal", "noise")) == {"signal": ("sparse", 0), "noise": ("sparse", 1)}
    assert imp["noise"] == 0.0
    # permuted column 0 is independent of the label: AUC ~0.5, so the drop is ~1 - 0.5
    assert 0.4 < imp["signal"] < 0.6
    assert torch.equal(batch["sparse"], before)


def test_singular_values_by_hand():
    # diag(3, 1) -> [3, 1];  [[0, -2], [2, 0]] = 2 * rotation -> [2, 2]
    sv = singular_values([torch.diag(torch.tensor([1.0, 3.0])), np.array([[0.0, -2.0], [2.0, 0.0]])])
    np.testing.assert_allclose(sv[0], [3.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(sv[1], [2.0, 2.0], atol=1e-6)
