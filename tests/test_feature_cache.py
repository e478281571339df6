"""Frozen-feature caching: on every architecture, a cached batch gives the logits and gradients
of the real model; where caching would change results it stays off, saying why; end to end, a
cached run's history and metrics equal the uncached run's."""

from __future__ import annotations

import json
import logging
import re

import datasets
import pytest
import torch

from sft.data.loaders import INDEX, keyed
from sft.data.splits import Splits
from sft.training import finetune
from sft.training.feature_cache import FeatureCache
from sft.training.finetune import train_mode
from sft.training.scoring import logits_of
from tests.conftest import KINDS, run_tiny_text
from tests.test_finetune import trainable


def synthetic(kind: str, n: int, offset: int = 0) -> datasets.Dataset:
    return datasets.Dataset.from_dict(
        {"seed": list(range(offset, offset + n)), "labels": [i % 3 for i in range(n)]}
    )


def collate_for(kind: str, masked: bool = True):
    """Model inputs made from each example's seed: variable-length token ids or waveforms
    (zero-padded, with an attention mask), fixed-size pixels or log-mel features."""

    def example(seed: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        if kind == "bert":
            length = 4 + seed % 7
            return {"input_ids": torch.randint(5, 30, (length,), generator=g)}
        if kind == "wav2vec2":
            return {"input_values": torch.randn(1200 + 160 * (seed % 5), generator=g)}
        if kind == "whisper":
            return {"input_features": torch.randn(80, 3000, generator=g)}
        return {"pixel_values": torch.randn(3, 32, 32, generator=g)}

    def collate(examples: list[dict]) -> dict[str, torch.Tensor]:
        items = [example(e["seed"]) for e in examples]
        batch = {}
        for key in items[0]:
            longest = max(item[key].shape[0] for item in items)
            padded = torch.zeros((len(items), longest, *items[0][key].shape[1:]))
            mask = torch.zeros(len(items), longest, dtype=torch.long)
            for i, item in enumerate(items):
                padded[i, : len(item[key])] = item[key]
                mask[i, : len(item[key])] = 1
            batch[key] = padded.long() if key == "input_ids" else padded
            if kind in ("bert", "wav2vec2") and masked:
                batch["attention_mask"] = mask
        batch["labels"] = torch.tensor([e["labels"] for e in examples])
        return batch

    return collate


def cached_model(models, kind: str, strategy: str, **config):
    model = models(kind)
    for key, value in config.items():
        setattr(model.config, key, value)
    finetune.apply_strategy(model, strategy, k=1)
    return model


def splits_for(kind: str) -> Splits:
    return Splits(synthetic(kind, 10), synthetic(kind, 4, offset=10), None, ["a", "b", "c"])


def loss_and_grads(model, batch):
    torch.manual_seed(0)  # the same dropout masks in the trainable part, both ways
    model.zero_grad()
    logits = logits_of(model, batch)
    torch.nn.functional.cross_entropy(logits, batch["labels"]).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return logits.detach(), grads


CASES = [(kind, "head_only") for kind in ["bert", *KINDS]] + [
    (kind, "top_k") for kind in ["bert", "vit", "resnet", "efficientnet", "whisper"]
]


@pytest.mark.parametrize(("kind", "strategy"), CASES)
def test_cached_batches_give_the_real_models_logits_and_gradients(models, kind, strategy):
    no_layerdrop = {"layerdrop": 0.0} if kind == "wav2vec2" else {}
    model = cached_model(models, kind, strategy, **no_layerdrop)
    cache = FeatureCache.create(model, strategy, None)
    assert cache is not None
    splits = cache.index(splits_for(kind))
    collate = collate_for(kind)
    assert cache.fill(splits, collate, 4, torch.device("cpu"), max_gib=1, progress=False)
    assert set(cache.features) == set(range(14))

    indexed = keyed(collate)
    for ds, rows in ((splits.train, [0, 3, 5, 9]), (splits.validation, [1, 2])):
        batch = indexed([ds[i] for i in rows])  # lengths differ within the batch
        plain_batch = {k: v for k, v in batch.items() if k != INDEX}
        with cache.serving():
            train_mode(model)
            cached, cached_grads = loss_and_grads(model, batch)
            assert cache.served
            plain, plain_grads = loss_and_grads(model, plain_batch)
        torch.testing.assert_close(cached, plain, rtol=1e-4, atol=1e-5)
        assert cached_grads.keys() == plain_grads.keys() == trainable(model)
        for name in plain_grads:
            torch.testing.assert_close(cached_grads[name], plain_grads[name], rtol=1e-3, atol=1e-5)

    # Outside `serving` the blocks are the model's own again.
    assert all("forward" not in vars(block) for block in cache.frozen)


def test_the_boundary_is_the_last_frozen_block(models):
    model = cached_model(models, "vit", "top_k")  # 4 blocks, the top one trains
    assert FeatureCache.create(model, "top_k", None).where == "vit.layers.2"
    model = cached_model(models, "vit", "head_only")
    assert FeatureCache.create(model, "head_only", None).where == "vit.layers.3"


@pytest.mark.parametrize(
    ("kind", "strategy", "randomness", "config", "reason"),
    [
        ("bert", "full", None, {}, "finetune=full trains"),
        ("bert", "gradual", None, {}, "finetune=gradual trains"),
        ("vit", "head_only", "image augmentation is on", {}, "image augmentation is on"),
        ("wav2vec2", "head_only", None, {"layerdrop": 0.1}, r"LayerDrop \(0.1\)"),
    ],
)
def test_caching_is_off_where_it_would_change_training(
    models, caplog, kind, strategy, randomness, config, reason
):
    model = cached_model(models, kind, "head_only" if strategy == "gradual" else strategy, **config)
    with caplog.at_level(logging.INFO, logger="sft.training.feature_cache"):
        assert FeatureCache.create(model, strategy, randomness) is None
    assert caplog.records[-1].getMessage().startswith("frozen-feature cache off:")
    assert any(re.search(reason, r.getMessage()) for r in caplog.records)


def test_pattern_training_the_embeddings_is_not_cached(models):
    model = models("bert")
    finetune.apply_strategy(model, "pattern", train=[r"embeddings\."])
    assert FeatureCache.create(model, "pattern", None) is None


def test_dropout_between_frozen_blocks_turns_caching_off(models, caplog):
    # wav2vec2 applies dropout to the feature projection's output inside the encoder, which
    # trains (its top layer does): frozen blocks see random inputs in training mode.
    model = cached_model(models, "wav2vec2", "top_k", layerdrop=0.0, hidden_dropout=0.5)
    cache = FeatureCache.create(model, "top_k", None)
    splits = cache.index(splits_for("wav2vec2"))
    with caplog.at_level(logging.INFO, logger="sft.training.feature_cache"):
        assert not cache.fill(splits, collate_for("wav2vec2"), 4, torch.device("cpu"), 1, False)
    assert "random in training mode" in caplog.text
    assert not cache.features


def test_padding_without_an_attention_mask_turns_caching_off(models, caplog):
    model = cached_model(models, "wav2vec2", "head_only", layerdrop=0.0)
    cache = FeatureCache.create(model, "head_only", None)
    splits = cache.index(splits_for("wav2vec2"))
    collate = collate_for("wav2vec2", masked=False)
    with caplog.at_level(logging.INFO, logger="sft.training.feature_cache"):
        assert not cache.fill(splits, collate, 4, torch.device("cpu"), 1, False)
    assert "no attention mask" in caplog.text


def test_features_over_the_memory_limit_are_not_cached(models, caplog):
    model = cached_model(models, "bert", "head_only")
    cache = FeatureCache.create(model, "head_only", None)
    splits = cache.index(splits_for("bert"))
    with caplog.at_level(logging.INFO, logger="sft.training.feature_cache"):
        assert not cache.fill(splits, collate_for("bert"), 4, torch.device("cpu"), 1e-9, False)
    assert "raise finetune.cache_max_gib" in caplog.text


def test_building_the_cache_leaves_the_global_rng_untouched(models):
    model = cached_model(models, "bert", "head_only")
    cache = FeatureCache.create(model, "head_only", None)
    splits = cache.index(splits_for("bert"))
    torch.manual_seed(123)
    cache.fill(splits, collate_for("bert"), 4, torch.device("cpu"), 1, False)
    after = torch.rand(3)
    torch.manual_seed(123)
    torch.testing.assert_close(after, torch.rand(3))


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["head_only", "top_k"])
def test_cached_run_equals_uncached_run(tmp_path, tiny_checkpoint, text_corpus, strategy):
    common = (f"finetune={strategy}", "finetune.k=1", "trainer.epochs=3", "optimizer.lr=1e-2")
    runs = {}
    for cached in ("true", "false"):
        (tmp_path / cached).mkdir()
        result, run_dir = run_tiny_text(
            tmp_path / cached,
            tiny_checkpoint,
            text_corpus,
            *common,
            f"finetune.cache_features={cached}",
        )
        said_cached = (
            "frozen-feature cache: output of bert.encoder.layer" in result.stdout + result.stderr
        )
        assert said_cached == (cached == "true"), result.stderr[-2000:]
        lines = (run_dir / "history.jsonl").read_text().splitlines()
        history = [json.loads(line) for line in lines]
        metrics = json.loads((run_dir / "metrics.json").read_text())
        runs[cached] = history, metrics
    (cached_history, cached_metrics), (plain_history, plain_metrics) = runs["true"], runs["false"]
    assert [r["kind"] for r in cached_history] == [r["kind"] for r in plain_history]
    for a, b in zip(cached_history, plain_history, strict=True):
        if "loss" in a:
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    for key in ("accuracy", "f1", "confusion_matrix", "best_step"):
        assert cached_metrics[key] == plain_metrics[key]
    assert cached_metrics["loss"] == pytest.approx(plain_metrics["loss"], rel=1e-5)
