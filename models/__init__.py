"""Torch models: towers, cross networks, ranker, losses, training loops and model metrics."""
