"""The data layer: where examples come from (`sources`), how they split (`splits`), and how
they reach the model in batches (`loaders`). How each modality encodes them: sft/modalities/."""

from sft.data.sources import load_raw
from sft.data.splits import LABELS, Splits, build_splits

__all__ = ["LABELS", "Splits", "build_splits", "load_raw"]
