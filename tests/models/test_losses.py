"""Hand-worked cases for each adjustment of the InfoNCE loss, plus a shuffle-invariance property."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from models.losses import (
    LearnableTemperature,
    in_batch_logits,
    info_nce,
    logq_correction,
    mixed_negative_logits,
    remove_accidental_hits,
    symmetric_info_nce,
)

E = math.e


def test_in_batch_logits_2x2() -> None:
    q = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    v = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    # dot products [[0.6, 0.0], [0.36 + 0.64, 0.8]] = [[0.6, 0], [1.0, 0.8]]; / tau = 0.5 -> [[1.2, 0], [2, 1.6]]
    expected = torch.tensor([[1.2, 0.0], [2.0, 1.6]])
    torch.testing.assert_close(in_batch_logits(q, v, 0.5), expected)


def test_in_batch_logits_rejects_bad_input() -> None:
    q = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="temperature"):
        in_batch_logits(q, q, 0.0)
    with pytest.raises(ValueError, match=r"\[B, D\]"):
        in_batch_logits(q, torch.zeros(2, 4), 1.0)


def test_logq_correction_subtracts_per_column() -> None:
    logits = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    log_q = torch.tensor([-1.0, -2.0])
    # column 0 gains 1, column 1 gains 2: [[2, 4], [4, 6]]
    torch.testing.assert_close(logq_correction(logits, log_q), torch.tensor([[2.0, 4.0], [4.0, 6.0]]))
    with pytest.raises(ValueError, match="item_log_q"):
        logq_correction(logits, torch.zeros(3))


def test_remove_accidental_hits_masks_duplicates_but_not_the_positive() -> None:
    logits = torch.arange(9, dtype=torch.float32).reshape(3, 3)
    ids = torch.tensor([5, 7, 5])
    out = remove_accidental_hits(logits, ids)
    # rows 0 and 2 share item 5: (0, 2) and (2, 0) are masked; the diagonal and row 1 are kept
    masked = torch.tensor([[False, False, True], [False, False, False], [True, False, False]])
    assert (out[masked] < -1e30).all()
    torch.testing.assert_close(out[~masked], logits[~masked])


def test_remove_accidental_hits_with_extra_candidates() -> None:
    logits = torch.zeros(2, 3)
    ids = torch.tensor([0, 1])
    cand = torch.tensor([0, 1, 1])  # the extra column holds item 1, row 1's positive
    out = remove_accidental_hits(logits, ids, cand)
    assert out[1, 2] < -1e30
    assert (out[0] == 0).all() and out[1, 0] == 0 and out[1, 1] == 0


def test_mixed_negative_logits_hand_case() -> None:
    q = torch.eye(2)
    extra = torch.tensor([[0.0, 1.0], [0.6, 0.8], [1.0, 0.0]])
    # q0 = e0 picks the first coordinate: [0, 0.6, 1]; q1 = e1 the second: [1, 0.8, 0]; tau = 1
    expected = torch.tensor([[0.0, 0.6, 1.0], [1.0, 0.8, 0.0]])
    torch.testing.assert_close(mixed_negative_logits(q, extra, 1.0), expected)
    # uniform draws of B' = 3 from N = 6 items: log q = log(1/2) for every column, subtracted -> + log 2
    log_q = torch.full((3,), math.log(0.5))
    torch.testing.assert_close(mixed_negative_logits(q, extra, 1.0, log_q), expected + math.log(2.0))


def test_info_nce_plain_2x2() -> None:
    eye = torch.eye(2)
    # logits [[1, 0], [0, 1]]: each row's loss is -log(e / (e + 1)) = log(1 + 1/e)
    loss = info_nce(eye, eye, 1.0, use_logq=False, use_remove_hits=False)
    assert loss.item() == pytest.approx(math.log(1 + 1 / E), rel=1e-6)


def test_info_nce_logq_2x2() -> None:
    eye = torch.eye(2)
    log_q = torch.tensor([0.0, math.log(2.0)])
    # corrected logits [[1, -log 2], [0, 1 - log 2]]
    # row 0: -log(e / (e + 1/2)) = log(1 + 1/(2e)); row 1: -log((e/2) / (1 + e/2)) = log(1 + 2/e)
    expected = (math.log(1 + 1 / (2 * E)) + math.log(1 + 2 / E)) / 2
    loss = info_nce(eye, eye, 1.0, item_log_q=log_q, use_logq=True, use_remove_hits=False)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_info_nce_accidental_hits_remove_the_only_negative() -> None:
    eye = torch.eye(2)
    ids = torch.tensor([3, 3])
    # both rows hold the same item: the off-diagonal is masked, softmax over one column -> loss 0
    loss = info_nce(eye, eye, 1.0, item_ids=ids, use_logq=False, use_remove_hits=True)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


def test_info_nce_mixed_negatives_and_hits() -> None:
    eye = torch.eye(2)
    extra = torch.tensor([[0.0, 1.0]])
    # logits [[1, 0, 0], [0, 1, 1]]: row 0 log(1 + 2/e); row 1 -log(e / (1 + 2e)) = log(2 + 1/e)
    loss = info_nce(eye, eye, 1.0, extra_item_emb=extra, use_logq=False, use_remove_hits=False)
    assert loss.item() == pytest.approx((math.log(1 + 2 / E) + math.log(2 + 1 / E)) / 2, rel=1e-6)
    # the extra item is row 1's own positive (id 1): its column is masked for row 1 only
    # row 0 still log(1 + 2/e); row 1 becomes [0, 1, -big] -> log(1 + 1/e)
    loss = info_nce(
        eye,
        eye,
        1.0,
        item_ids=torch.tensor([0, 1]),
        extra_item_emb=extra,
        extra_item_ids=torch.tensor([1]),
        use_logq=False,
        use_remove_hits=True,
    )
    assert loss.item() == pytest.approx((math.log(1 + 2 / E) + math.log(1 + 1 / E)) / 2, rel=1e-6)


def test_info_nce_sample_weight() -> None:
    eye = torch.eye(2)
    extra = torch.tensor([[0.0, 1.0]])
    # per-row losses as above: log(1 + 2/e) and log(2 + 1/e); weights (0, 1) keep row 1 only
    loss = info_nce(
        eye,
        eye,
        1.0,
        extra_item_emb=extra,
        use_logq=False,
        use_remove_hits=False,
        sample_weight=torch.tensor([0.0, 1.0]),
    )
    assert loss.item() == pytest.approx(math.log(2 + 1 / E), rel=1e-6)


def test_info_nce_missing_inputs_are_errors() -> None:
    eye = torch.eye(2)
    with pytest.raises(ValueError, match="item_log_q"):
        info_nce(eye, eye, 1.0, use_logq=True, use_remove_hits=False)
    with pytest.raises(ValueError, match="item_ids"):
        info_nce(eye, eye, 1.0, use_logq=False, use_remove_hits=True)
    with pytest.raises(ValueError, match="extra_log_q"):
        info_nce(eye, eye, 1.0, item_log_q=torch.zeros(2), extra_item_emb=eye, use_remove_hits=False)


@pytest.mark.parametrize("b", [1, 7])
def test_shapes_and_gradient(b: int) -> None:
    g = torch.Generator().manual_seed(b)
    q = F.normalize(torch.randn(b, 4, generator=g), dim=1).requires_grad_()
    v = F.normalize(torch.randn(b, 4, generator=g), dim=1)
    extra = F.normalize(torch.randn(3, 4, generator=g), dim=1)
    assert in_batch_logits(q, v, 0.1).shape == (b, b)
    assert mixed_negative_logits(q, extra, 0.1).shape == (b, 3)
    loss = info_nce(
        q,
        v,
        0.1,
        item_log_q=torch.full((b,), -2.0),
        item_ids=torch.arange(b),
        extra_item_emb=extra,
        extra_log_q=torch.full((3,), -5.0),
        extra_item_ids=torch.arange(100, 103),
    )
    assert loss.shape == ()
    assert torch.isfinite(loss)
    loss.backward()
    assert q.grad is not None and q.grad.shape == (b, 4)


def test_batch_of_one_without_extras_has_zero_loss() -> None:
    # a single pair: the softmax runs over one column, so the loss is exactly 0
    q = F.normalize(torch.tensor([[0.3, -0.2, 0.9]]), dim=1)
    assert info_nce(q, q, 0.05, use_logq=False, use_remove_hits=False).item() == pytest.approx(0.0, abs=1e-7)


@settings(max_examples=40, deadline=None)
@given(b=st.integers(1, 8), seed=st.integers(0, 10_000), data=st.data())
def test_info_nce_invariant_to_shuffling_pairs_together(b: int, seed: int, data: st.DataObject) -> None:
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(b, 5, generator=g, dtype=torch.float64), dim=1)
    v = F.normalize(torch.randn(b, 5, generator=g, dtype=torch.float64), dim=1)
    log_q = -torch.rand(b, generator=g, dtype=torch.float64) * 5
    ids = torch.randint(0, 3, (b,), generator=g)  # small id range: accidental hits happen
    extra = F.normalize(torch.randn(2, 5, generator=g, dtype=torch.float64), dim=1)
    extra_log_q = torch.full((2,), -4.0, dtype=torch.float64)
    extra_ids = torch.randint(0, 3, (2,), generator=g)
    perm = torch.tensor(data.draw(st.permutations(list(range(b)))))

    def loss(p: torch.Tensor) -> float:
        return info_nce(
            q[p],
            v[p],
            0.2,
            item_log_q=log_q[p],
            item_ids=ids[p],
            extra_item_emb=extra,
            extra_log_q=extra_log_q,
            extra_item_ids=extra_ids,
        ).item()

    assert loss(perm) == pytest.approx(loss(torch.arange(b)), rel=1e-9, abs=1e-12)


def test_symmetric_info_nce_is_the_mean_of_both_directions():
    torch.manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(6, 4), dim=1)
    b = torch.nn.functional.normalize(torch.randn(6, 4), dim=1)
    logits = a @ b.T / 0.1
    target = torch.arange(6)
    want = 0.5 * (
        torch.nn.functional.cross_entropy(logits, target)
        + torch.nn.functional.cross_entropy(logits.T, target)
    )
    assert torch.allclose(symmetric_info_nce(a, b, 0.1), want)
    # symmetric in its arguments
    assert torch.allclose(symmetric_info_nce(a, b, 0.1), symmetric_info_nce(b, a, 0.1))


def test_symmetric_info_nce_mask_drops_rows_entirely():
    torch.manual_seed(1)
    a = torch.nn.functional.normalize(torch.randn(5, 3), dim=1)
    b = torch.nn.functional.normalize(torch.randn(5, 3), dim=1)
    keep = torch.tensor([True, False, True, True, False])
    assert torch.allclose(symmetric_info_nce(a, b, 0.2, mask=keep), symmetric_info_nce(a[keep], b[keep], 0.2))
    one = torch.tensor([True, False, False, False, False])
    assert float(symmetric_info_nce(a, b, 0.2, mask=one)) == 0.0


def test_learnable_temperature_starts_at_init_and_stays_clamped():
    t = LearnableTemperature(init=0.07)
    assert abs(float(t()) - 0.07) < 1e-6
    with torch.no_grad():
        t.log_scale.fill_(50.0)
    assert abs(float(t()) - 0.01) < 1e-6
    with torch.no_grad():
        t.log_scale.fill_(-50.0)
    assert abs(float(t()) - 1.0) < 1e-6
    with pytest.raises(ValueError):
        LearnableTemperature(init=0.001)


def test_learnable_temperature_gets_a_gradient_through_the_loss():
    t = LearnableTemperature()
    a = torch.nn.functional.normalize(torch.randn(4, 3), dim=1)
    symmetric_info_nce(a, a, t()).backward()
    assert t.log_scale.grad is not None and float(t.log_scale.grad) != 0.0


def test_symmetric_info_nce_plain_equals_the_two_way_loss():
    g = torch.Generator().manual_seed(2)
    q = F.normalize(torch.randn(5, 3, generator=g), dim=1)
    v = F.normalize(torch.randn(5, 3, generator=g), dim=1)
    two_way = info_nce(q, v, 0.2, use_logq=False, use_remove_hits=False, symmetric=True)
    torch.testing.assert_close(two_way, symmetric_info_nce(q, v, 0.2))
    assert not torch.allclose(two_way, info_nce(q, v, 0.2, use_logq=False, use_remove_hits=False))


def test_symmetric_info_nce_2x2_with_logq_by_hand() -> None:
    eye = torch.eye(2)
    log_q = torch.tensor([0.0, math.log(2.0)])
    # user -> item (as in test_info_nce_logq_2x2): rows log(1 + 1/(2e)) and log(1 + 2/e)
    # item -> user: the columns of [[1, 0], [0, 1]] without log q (a constant per column, it cancels):
    # log(1 + 1/e) each. Per pair the mean of both; the loss the mean over pairs.
    forward = (math.log(1 + 1 / (2 * E)) + math.log(1 + 2 / E)) / 2
    expected = 0.5 * (forward + math.log(1 + 1 / E))
    loss = info_nce(eye, eye, 1.0, item_log_q=log_q, use_remove_hits=False, symmetric=True)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_symmetric_item_to_user_term_ignores_log_q_and_masks_the_same_hits() -> None:
    g = torch.Generator().manual_seed(3)
    q = F.normalize(torch.randn(4, 3, generator=g), dim=1)
    v = F.normalize(torch.randn(4, 3, generator=g), dim=1)
    ids = torch.tensor([7, 1, 7, 2])  # rows 0 and 2 hold the same item
    a, b = torch.log(torch.tensor([0.1, 0.2, 0.1, 0.4])), torch.log(torch.tensor([0.3, 0.01, 0.3, 0.05]))

    def both(log_q: torch.Tensor, symmetric: bool) -> torch.Tensor:
        return info_nce(q, v, 0.5, item_log_q=log_q, item_ids=ids, symmetric=symmetric)

    # only the user -> item half depends on log q
    torch.testing.assert_close(both(a, True) - both(b, True), 0.5 * (both(a, False) - both(b, False)))
    # the item -> user half by hand: item j's softmax over users, users 0 and 2 masked for each other
    s = q @ v.T / 0.5
    back = torch.stack(
        [torch.logsumexp(s[[i for i in range(4) if not (ids[i] == ids[j] and i != j)], j], 0) - s[j, j]
         for j in range(4)]
    )  # fmt: skip
    torch.testing.assert_close(2 * both(a, True) - both(a, False), back.mean())


def test_symmetric_info_nce_accepts_a_learnt_temperature_and_stays_shuffle_invariant() -> None:
    g = torch.Generator().manual_seed(4)
    q = F.normalize(torch.randn(6, 3, generator=g, dtype=torch.float64), dim=1)
    v = F.normalize(torch.randn(6, 3, generator=g, dtype=torch.float64), dim=1)
    log_q = -torch.rand(6, generator=g, dtype=torch.float64)
    ids = torch.tensor([0, 1, 0, 2, 3, 1])
    extra = F.normalize(torch.randn(2, 3, generator=g, dtype=torch.float64), dim=1)
    tau = LearnableTemperature(init=0.1)

    def loss(p: torch.Tensor) -> torch.Tensor:
        return info_nce(
            q[p], v[p], tau().double(), item_log_q=log_q[p], item_ids=ids[p], extra_item_emb=extra,
            extra_log_q=torch.full((2,), -3.0, dtype=torch.float64), extra_item_ids=torch.tensor([1, 5]),
            symmetric=True,
        )  # fmt: skip

    base = loss(torch.arange(6))
    torch.testing.assert_close(loss(torch.tensor([3, 1, 5, 0, 2, 4])), base)
    base.backward()
    assert tau.log_scale.grad is not None and float(tau.log_scale.grad) != 0.0
