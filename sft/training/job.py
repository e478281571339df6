"""`Job`: everything a run trains with, built once from its config by `sft.train.build` and
carried whole: the data, the model, what trains and how, and the problem it learns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from sft.data.loaders import Loaders
    from sft.data.splits import Splits
    from sft.modalities import Inputs, Modality
    from sft.problems import Problem
    from sft.training.feature_cache import FeatureCache
    from sft.training.finetune import GradualUnfreezing


@dataclass
class Job:
    modality: Modality
    raw: Splits  # as read: what the report shows of an example
    splits: Splits  # encoded: what the loaders batch
    inputs: Inputs
    model: torch.nn.Module  # prepared by Accelerate (wrapped for DDP on several processes)
    param_groups: dict  # optim.describe's summary, for param_groups.json and the log
    optimizer: torch.optim.Optimizer
    loaders: Loaders  # train and validation prepared by Accelerate
    cache: FeatureCache | None  # frozen features, where finetune.cache_features applies
    unfreezer: GradualUnfreezing | None  # finetune=gradual: started once DDP wraps the model
    problem: Problem  # fitted to the train targets
