"""Calibrated probabilities: one temperature T, fitted on the validation split's logits by
minimising the negative log-likelihood (Guo et al. 2017), and the measures that say how well
probabilities match outcomes: expected calibration error (ECE, 15 equal-width bins), NLL and
Brier score. Dividing logits by T changes no argmax; the output layer carries it (bake)."""

from __future__ import annotations

import numpy as np
import torch

BINS = 15


def fit_temperature(logits: np.ndarray, nll) -> float:
    """The T > 0 minimising `nll(logits / T)`: LBFGS on log T, from T = 1."""
    x = torch.as_tensor(logits, dtype=torch.float64)
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = nll(x / log_t.exp())
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp().clamp(0.01, 100.0))


def ece(confidence: np.ndarray, correct: np.ndarray, bins: int = BINS) -> float:
    """Expected calibration error: per equal-width confidence bin, |accuracy - confidence|,
    weighted by the bin's share of the predictions."""
    points = reliability(confidence, correct, bins)
    total = sum(count for _, _, count in points)
    return float(sum(count / total * abs(acc - conf) for conf, acc, count in points))


def reliability(confidence: np.ndarray, correct: np.ndarray, bins: int = BINS):
    """(mean confidence, accuracy, count) per non-empty bin: the reliability diagram's points."""
    confidence, correct = np.ravel(confidence), np.ravel(correct).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    return [
        (float(confidence[which == b].mean()), float(correct[which == b].mean()),
         int((which == b).sum()))
        for b in range(bins) if (which == b).any()
    ]  # fmt: skip
