"""Log probabilities from a logits vector: the sampled token's and the most likely tokens'."""

from __future__ import annotations

import numpy as np


def log_softmax_at(
    logits: np.ndarray, token: int, top: int
) -> tuple[float, list[tuple[int, float]]]:
    """log p(token) under the model, and the `top` most likely (token, log p), best first."""
    values = np.asarray(logits, dtype=np.float64).reshape(-1)
    peak = values.max()
    normaliser = peak + np.log(np.exp(values - peak).sum())
    best: list[tuple[int, float]] = []
    if top > 0:
        candidates = np.argpartition(-values, min(top, values.size - 1))[:top]
        ordered = candidates[np.argsort(-values[candidates])]
        best = [(int(index), float(values[index] - normaliser)) for index in ordered]
    return float(values[token] - normaliser), best
