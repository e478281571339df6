"""From config to batches: raw data -> checked splits -> encoded inputs -> data loaders (with the
train split's sampler: shuffled, balanced, or the modality's own)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import datasets
import numpy as np
import torch
from torch.utils.data import DataLoader

from sft.config import AugmentConfig, DataConfig, ModelConfig, TrainerConfig
from sft.data.columns import column_values
from sft.data.sources import load_raw
from sft.data.splits import LABELS, Splits, build_splits
from sft.data.windows import DOCUMENT

if TYPE_CHECKING:
    from sft.modalities import Inputs, Modality
    from sft.problems import Problem


INDEX = (
    "sft_example_index"  # the column carrying each example's key (sft/training/feature_cache.py)
)


class Data(NamedTuple):
    raw: Splits  # as read, with targets: what the report shows of an example (sft/reporting)
    encoded: Splits  # what the loaders batch
    inputs: Inputs  # how they batch it


def load_data(
    modality: Modality,
    model: ModelConfig,
    data: DataConfig,
    augment: AugmentConfig,
    seed: int,
    problem: Problem,
) -> Data:
    """The checked splits of `data`, with targets for `problem`, as read and encoded, and the
    `Inputs` that batch them."""
    inputs = modality.inputs(model.checkpoint, model.revision, data, augment)
    raw = load_raw_data(modality, data)
    splits = build_splits(
        raw,
        source=data.path,
        input_column=inputs.column,
        label_column=data.label_column,
        input_key=f"data.{modality.column_key}",
        eval_fraction=data.eval_fraction,
        test_fraction=data.test_fraction,
        max_train_samples=data.max_train_samples,
        max_eval_samples=data.max_eval_samples,
        seed=seed,
        problem=problem,
        label_columns=data.label_columns or (),
        label_separator=data.label_separator,
    )
    return Data(splits, inputs.encode(splits), inputs)


def load_raw_data(modality: Modality, data: DataConfig) -> datasets.DatasetDict:
    """Every split `data.path` holds, as read from it (see sft/data/sources.py)."""
    return load_raw(
        data.path,
        name=data.name,
        encodings=data.encodings,
        input_column=getattr(data, modality.column_key),
        label_column=data.label_column,
        input_is_path=modality.reads_files,
    )


class Loaders(NamedTuple):
    train: DataLoader
    validation: DataLoader
    test: DataLoader | None  # None without a test split
    shuffle: torch.Generator  # shuffles train; reseeded each epoch (exact resume)


def loaders(
    splits: Splits, inputs: Inputs, data: DataConfig, trainer: TrainerConfig, seed: int
) -> Loaders:
    """Train, validation and test loaders, and the generator that shuffles the train split.
    Batches carry feature-cache keys when the split has them (sft/training/feature_cache.py)."""
    generator = torch.Generator().manual_seed(seed)
    train = DataLoader(
        splits.train,
        batch_size=trainer.batch_size,
        sampler=train_sampler(splits.train, inputs, data.sampler, trainer.batch_size, generator),
        collate_fn=keyed(inputs.collator(train=True)),
        num_workers=data.num_workers,
        generator=generator,
    )
    validation = eval_loader(splits.validation, inputs, trainer.eval_batch_size, data.num_workers)
    test = None
    if splits.test is not None:
        test = eval_loader(splits.test, inputs, trainer.eval_batch_size, data.num_workers)
    return Loaders(train, validation, test, generator)


def train_sampler(
    ds, inputs: Inputs, kind: str, batch_size: int, generator: torch.Generator
) -> torch.utils.data.Sampler:
    """`data.sampler`: default = shuffled batches of similar length where examples differ in
    length (as Trainer's group_by_length: padding is work thrown away), else shuffled; shuffle =
    shuffled; balanced = every class equally often. All draw from `generator`."""
    if kind == "balanced":
        return balanced_sampler(column_values(ds, LABELS), generator)
    lengths = inputs.lengths(ds) if kind == "default" else None
    if lengths is not None:
        from transformers.trainer_pt_utils import LengthGroupedSampler

        return LengthGroupedSampler(batch_size, lengths=lengths, generator=generator)
    return torch.utils.data.RandomSampler(ds, generator=generator)  # validation.py: no others


def eval_loader(ds, inputs: Inputs, batch_size: int, num_workers: int = 0) -> DataLoader:
    """Batches of `ds`, never augmented; longest examples first where lengths differ (batches
    of similar length pad less, and a batch too big for memory fails at once). Predictions
    and references come out in that order, together."""
    return DataLoader(
        ds,
        batch_size=batch_size,
        sampler=eval_order(ds, inputs),
        collate_fn=keyed(inputs.collator(train=False)),
        num_workers=num_workers,
    )


def eval_order(ds, inputs: Inputs) -> list[int]:
    """The order `eval_loader` reads `ds` in, and so the order of an evaluation's outputs: row
    i of `scoring.evaluate`'s predictions is example `eval_order(ds, inputs)[i]` (several
    processes too: Accelerate deals whole batches out in turn and gathers them back in turn)."""
    lengths = inputs.lengths(ds)
    if lengths is None:
        return list(range(len(ds)))
    return sorted(range(len(ds)), key=lambda i: -lengths[i])


def output_order(ds, inputs: Inputs) -> list[int]:
    """Which example of the split (as read) each row of an evaluation's outputs is: those of
    `eval_order`, or where `ds` holds windows of long texts, pooled into one output per text
    in the texts' order (sft/data/windows.py), the texts in order."""
    if DOCUMENT in ds.column_names:
        return sorted(set(column_values(ds, DOCUMENT)))
    return eval_order(ds, inputs)


def balanced_sampler(labels, generator: torch.Generator) -> torch.utils.data.Sampler:
    """Draws examples with probability 1 / (size of their class): classes equally often."""
    labels = np.asarray(labels)
    counts = np.bincount(labels)
    weights = torch.as_tensor(1.0 / counts[labels], dtype=torch.double)
    return torch.utils.data.WeightedRandomSampler(weights, len(labels), generator=generator)


def keyed(collate: Callable[[list[dict]], dict]) -> Callable[[list[dict]], dict]:
    """`collate`, passing the examples' keys (INDEX, when they have one: a feature cache's) into
    the batch."""

    def indexed(examples: list[dict]) -> dict:
        if INDEX not in examples[0]:
            return collate(examples)
        batch = collate([{k: v for k, v in e.items() if k != INDEX} for e in examples])
        batch[INDEX] = torch.tensor([e[INDEX] for e in examples])
        return batch

    return indexed
