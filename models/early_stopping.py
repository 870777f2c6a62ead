"""Early stopping on a validation score, shared by the ranker and retriever training loops."""

from __future__ import annotations

import math

import torch
from torch import nn


class EarlyStopping:
    """Keeps the best validation score, its epoch and the weights at it; says when to stop.

    A score counts as a gain only when it is strictly greater than the best so far (the first of equal
    scores is kept; NaN is never a gain). Training should stop once `patience` epochs in a row brought no
    gain. The weights are copied to the CPU at each gain, so the caller can load the best ones back.

    >>> stop = EarlyStopping(patience=2)
    >>> m = nn.Linear(1, 1)
    >>> [stop.step(s, epoch, m) for epoch, s in enumerate([0.5, 0.7, 0.7, 0.6])]
    [False, False, False, True]
    >>> stop.best_epoch, stop.best
    (1, 0.7)
    """

    def __init__(self, patience: int) -> None:
        if patience < 1:
            raise ValueError(
                f"EarlyStopping: patience={patience} must be >= 1; fix: set <section>.patience >= 1"
            )
        self.patience = patience
        self.best = -math.inf
        self.best_epoch = -1
        self.bad_epochs = 0
        self.state_dict: dict[str, torch.Tensor] = {}

    def step(self, score: float, epoch: int, model: nn.Module) -> bool:
        """Record the score of `epoch` (model: the weights it was reached with). Returns True to stop."""
        if score > self.best:
            self.best, self.best_epoch, self.bad_epochs = score, epoch, 0
            self.state_dict = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            return False
        self.bad_epochs += 1
        return self.bad_epochs >= self.patience
