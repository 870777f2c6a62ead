"""Tests of the shared building blocks: the MLP helper and early stopping."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from models.early_stopping import EarlyStopping
from models.layers import mlp


def test_mlp_layer_order_and_width():
    net, width = mlp(6, [4, 3], dropout=0.1, batch_norm=True)
    kinds = [type(m).__name__ for m in net]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Dropout"] * 2
    assert width == 3
    net, width = mlp(6, [4], out_dim=2)
    assert [type(m).__name__ for m in net] == ["Linear", "ReLU", "Linear"] and width == 2
    net, width = mlp(5, [])  # no hidden layer, no output layer: the identity, width unchanged
    x = torch.randn(2, 5)
    assert width == 5 and torch.equal(net(x), x)


def test_mlp_zero_dropout_keeps_the_checkpoint_keys_of_any_rate():
    a, _ = mlp(6, [4, 3], dropout=0.0)
    b, _ = mlp(6, [4, 3], dropout=0.5)
    assert list(a.state_dict()) == list(b.state_dict()) == ["0.weight", "0.bias", "3.weight", "3.bias"]


def test_mlp_same_seed_same_weights():
    torch.manual_seed(3)
    a, _ = mlp(6, [4], out_dim=2)
    torch.manual_seed(3)
    b, _ = mlp(6, [4], out_dim=2)
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), k


def test_early_stopping_keeps_the_first_best_and_stops_after_patience():
    model = nn.Linear(1, 1, bias=False)
    stop = EarlyStopping(patience=2)
    decisions = []
    # scores 0.5, 0.7 (best, weight 2.0), 0.7 (equal: no gain, weight 3.0), 0.6 -> stop at epoch 3
    for epoch, (score, w) in enumerate([(0.5, 1.0), (0.7, 2.0), (0.7, 3.0), (0.6, 4.0)]):
        with torch.no_grad():
            model.weight.fill_(w)
        decisions.append(stop.step(score, epoch, model))
    assert decisions == [False, False, False, True]
    assert stop.best_epoch == 1 and stop.best == 0.7
    assert stop.state_dict["weight"].item() == 2.0  # a copy: later changes of the model do not leak in


def test_early_stopping_nan_is_never_a_gain_and_gain_resets_the_count():
    model = nn.Linear(1, 1)
    stop = EarlyStopping(patience=2)
    assert stop.step(math.nan, 0, model) is False and stop.best_epoch == -1 and stop.state_dict == {}
    assert stop.step(0.1, 1, model) is False and stop.bad_epochs == 0
    assert stop.step(0.05, 2, model) is False and stop.bad_epochs == 1
    assert stop.step(0.2, 3, model) is False and stop.bad_epochs == 0
    with pytest.raises(ValueError, match="patience"):
        EarlyStopping(patience=0)
