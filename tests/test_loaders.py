"""How batches are drawn (sft/data/loaders.py): text of varying length is trained in shuffled
batches of similar length and evaluated longest first; `data.sampler=shuffle` restores plain
shuffling; inputs of one size (images) are shuffled as they are."""

from __future__ import annotations

import random

import datasets
import numpy as np
import pytest
import torch
from accelerate import Accelerator

from sft.config import DataConfig, TrainerConfig
from sft.data import build_splits
from sft.data.loaders import loaders
from sft.modalities.text import TextInputs
from sft.problems import PROBLEMS
from sft.training import scoring
from sft.training.model import load_classifier

BATCH = 4


@pytest.fixture(scope="module")
def varied(tiny_checkpoint):
    """Texts of 1 to 40 words, shuffled, with labels that do not follow length."""
    rng = random.Random(0)
    rows = [
        {"text": " ".join(["news"] * n), "label": ["a", "b"][rng.randrange(2)]}
        for n in range(1, 41)
        for _ in range(10)
    ]
    rng.shuffle(rows)
    raw = datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)})
    splits = build_splits(
        raw,
        source="mem",
        input_column="text",
        label_column="label",
        test_fraction=0.25,
        problem=PROBLEMS["single_label"],
    )
    inputs = TextInputs(str(tiny_checkpoint), "text", max_length=64)
    return inputs.encode(splits), inputs


def draw(varied, sampler: str):
    splits, inputs = varied
    trainer = TrainerConfig(batch_size=BATCH, eval_batch_size=BATCH)
    return loaders(splits, inputs, DataConfig(sampler=sampler), trainer, seed=0)


def token_spread(batches) -> float:
    """Mean over batches of (longest - shortest) real tokens: what padding costs."""
    sizes = [b["attention_mask"].sum(1) for b in batches]
    return float(np.mean([(s.max() - s.min()).item() for s in sizes]))


def test_text_trains_on_shuffled_batches_of_similar_length(varied):
    splits, inputs = varied
    grouped = draw(varied, "default")
    shuffled = draw(varied, "shuffle")
    lengths = inputs.lengths(splits.train)
    assert sorted(lengths) != lengths  # the split itself is not in length order
    order = list(grouped.train.sampler)
    assert sorted(order) == list(range(len(splits.train)))  # every example once
    assert token_spread(grouped.train) < token_spread(shuffled.train) / 3
    padded = sum(b["input_ids"].numel() for b in grouped.train)
    assert padded < sum(b["input_ids"].numel() for b in shuffled.train)


def test_length_grouped_order_is_seeded_and_differs_between_epochs(varied):
    first = draw(varied, "default")
    epoch_1 = list(first.train.sampler)
    assert epoch_1 == list(draw(varied, "default").train.sampler)  # same seed, same order
    assert list(first.train.sampler) != epoch_1  # the generator moved on: a new order


def test_shuffle_sampler_is_plain_shuffling(varied):
    splits, _ = varied
    order = list(draw(varied, "shuffle").train.sampler)
    expected = torch.randperm(len(splits.train), generator=torch.Generator().manual_seed(0))
    assert order == expected.tolist()


def test_evaluation_runs_longest_first_with_predictions_beside_labels(varied, tiny_checkpoint):
    splits, inputs = varied
    test = draw(varied, "default").test
    sizes = [n for b in test for n in b["attention_mask"].sum(1).tolist()]
    assert sizes == sorted(sizes, reverse=True)
    assert len(sizes) == len(splits.test)

    model = load_classifier(str(tiny_checkpoint), splits.labels).eval()
    result = scoring.evaluate(Accelerator(cpu=True), model, test, PROBLEMS["single_label"])
    assert sorted(result.references.tolist()) == sorted(splits.test["labels"])
    with torch.no_grad():  # each example alone, in the split's own order
        alone = {}
        for i in range(len(splits.test)):
            batch = inputs.collator(train=False)([splits.test[i]])
            alone[i] = scoring.logits_of(model, batch).argmax(-1).item()
    order = list(test.sampler)
    assert result.predictions.tolist() == [alone[i] for i in order]
    assert result.references.tolist() == [splits.test["labels"][i] for i in order]
