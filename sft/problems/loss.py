"""The training loss: cross-entropy with optional label smoothing and class weights."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sft.errors import SftError


def class_weights(spec: Any, train_labels: Sequence[int], num_labels: int) -> torch.Tensor | None:
    """None for "none"; inverse class frequency for "auto" (mean 1, so the loss scale and the
    learning rate keep their meaning); or the given list, one weight per label."""
    if spec in (None, "none"):
        return None
    if spec == "auto":
        counts = np.bincount(np.asarray(train_labels), minlength=num_labels).astype(float)
        if (counts == 0).any():
            raise SftError("loss.class_weights=auto: a label has no train examples to weigh by")
        weights = counts.sum() / (num_labels * counts)
        return torch.tensor(weights / weights.mean(), dtype=torch.float32)
    if isinstance(spec, str) or len(spec) != num_labels:
        raise SftError(
            f"loss.class_weights={spec} must be none, auto, or a list of {num_labels} numbers "
            f"(one per label, in label order)"
        )
    return torch.tensor([float(w) for w in spec], dtype=torch.float32)


def cross_entropy(
    weights: torch.Tensor | None = None, label_smoothing: float = 0.0
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """loss(logits, labels) -> scalar."""
    return partial(_cross_entropy, weights=weights, label_smoothing=label_smoothing)


def _cross_entropy(logits, labels, weights, label_smoothing):
    weight = weights.to(logits.device) if weights is not None else None
    return F.cross_entropy(logits.float(), labels, weight=weight, label_smoothing=label_smoothing)
