"""The data layer: where examples come from (`sources`), how they split (`splits`), and how
each modality turns them into model inputs (`text`)."""

from sft.data.sources import load_raw
from sft.data.splits import LABELS, Splits, build_splits

__all__ = ["LABELS", "Splits", "build_splits", "load_raw"]
