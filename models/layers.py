"""Small building blocks shared by the ranker, the towers and the fusion strategies."""

from __future__ import annotations

from torch import nn


def mlp(
    in_dim: int,
    hidden: list[int],
    *,
    out_dim: int | None = None,
    dropout: float | None = None,
    batch_norm: bool = False,
) -> tuple[nn.Sequential, int]:
    """A multi-layer perceptron and its output width.

    Per hidden size h: ``Linear(d, h)``, ``BatchNorm1d(h)`` when `batch_norm`, ``ReLU``, ``Dropout(dropout)``
    when `dropout` is not None; then a final ``Linear(d, out_dim)`` without activation when `out_dim` is given.
    Layers are created (and so initialised from the RNG) in that order.

    `dropout=0.0` still adds a (no-op) Dropout layer: the position of every layer, hence the state_dict
    keys of a checkpoint (`mlp.3.weight`), then does not depend on the dropout rate. `None` adds none.

    Args:
        in_dim: width of the [B, in_dim] float32 input.
        hidden: hidden sizes, possibly empty.
        out_dim: width of a final linear layer, or None for none.
        dropout: dropout rate after each hidden layer, or None for no Dropout layer.
        batch_norm: BatchNorm1d after each hidden Linear.

    Returns:
        (the module mapping [B, in_dim] -> [B, out] float32, out).

    >>> net, width = mlp(6, [4, 3], out_dim=2)
    >>> width, [type(m).__name__ for m in net]
    (2, ['Linear', 'ReLU', 'Linear', 'ReLU', 'Linear'])
    """
    layers: list[nn.Module] = []
    d = in_dim
    for h in hidden:
        layers.append(nn.Linear(d, h))
        if batch_norm:
            layers.append(nn.BatchNorm1d(h))
        layers.append(nn.ReLU())
        if dropout is not None:
            layers.append(nn.Dropout(dropout))
        d = h
    if out_dim is not None:
        layers.append(nn.Linear(d, out_dim))
        d = out_dim
    return nn.Sequential(*layers), d
