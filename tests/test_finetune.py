"""Fine-tuning control on tiny models of each architecture: the structure sft finds, exactly
which parameters each strategy trains, learning rates per group, frozen weights untouched."""

from __future__ import annotations

import json
import math

import pytest
import torch

from sft.errors import SftError
from sft.problems import PROBLEMS
from sft.problems.loss import class_weights, cross_entropy
from sft.training import finetune, optim
from tests.conftest import KINDS, run_tiny_text


def trainable(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize(
    ("kind", "blocks", "head"),
    [
        ("bert", 2, {"classifier.weight", "classifier.bias"}),
        ("vit", 4, {"classifier.weight", "classifier.bias"}),
        ("resnet", 4, {"classifier.1.weight", "classifier.1.bias"}),
        ("efficientnet", 7, {"classifier.weight", "classifier.bias"}),
        (
            "wav2vec2",
            2,
            {"projector.weight", "projector.bias", "classifier.weight", "classifier.bias"},
        ),
        (
            "whisper",
            2,
            {"projector.weight", "projector.bias", "classifier.weight", "classifier.bias"},
        ),
    ],
)
def test_layout_finds_blocks_and_head_from_structure(models, kind, blocks, head):
    layout = finetune.find_layout(models(kind))
    assert len(layout.blocks) == blocks
    assert set(layout.head) == head
    assert all(f"{layout.blocks_path}.{i}." in block[0] for i, block in enumerate(layout.blocks))


def test_bert_layout_places_embeddings_below_and_pooler_above(models):
    layout = finetune.find_layout(models("bert"))
    assert layout.blocks_path == "bert.encoder.layer"
    assert all(n.startswith("bert.embeddings.") for n in layout.below)
    assert set(layout.above) == {"bert.pooler.dense.weight", "bert.pooler.dense.bias"}


@pytest.mark.parametrize("kind", ["bert", *KINDS])
def test_head_only_trains_exactly_the_head(models, kind):
    model = models(kind)
    finetune.apply_strategy(model, "head_only")
    assert trainable(model) == set(finetune.find_layout(model).head)


@pytest.mark.parametrize("kind", ["bert", *KINDS])
def test_top_k_trains_the_top_blocks_what_is_above_and_the_head(models, kind):
    model = models(kind)
    layout = finetune.find_layout(model)
    finetune.apply_strategy(model, "top_k", k=1)
    expected = set(layout.blocks[-1]) | set(layout.above) | set(layout.head)
    assert trainable(model) == expected
    assert not any(n in trainable(model) for n in layout.blocks[0])


def test_top_k_larger_than_the_block_count_is_an_error(models):
    with pytest.raises(SftError, match=r"finetune.k=3.*has 2 blocks"):
        finetune.apply_strategy(models("bert"), "top_k", k=3)


def test_pattern_trains_matches_plus_head_minus_freezes(models):
    model = models("bert")
    finetune.apply_strategy(model, "pattern", train=[r"encoder\.layer\.1\."], freeze=["LayerNorm"])
    names = trainable(model)
    assert {"classifier.weight", "classifier.bias"} <= names
    assert "bert.encoder.layer.1.attention.self.query.weight" in names
    assert not any("LayerNorm" in n or "layer.0." in n or "embeddings" in n for n in names)


def test_pattern_matching_nothing_is_an_error(models):
    with pytest.raises(SftError, match=r"finetune.train pattern 'decoder\\.' matches no"):
        finetune.apply_strategy(models("bert"), "pattern", train=[r"decoder\."])


def test_freezing_everything_is_an_error(models):
    with pytest.raises(SftError, match="leaves no parameter trainable"):
        finetune.apply_strategy(models("bert"), "pattern", freeze=[".*"])


def test_feature_encoder_stays_frozen_under_every_strategy(models):
    for strategy in ("full", "top_k", "pattern"):
        model = models("wav2vec2", freeze_feature_encoder=True)
        finetune.apply_strategy(model, strategy, k=1)
        assert not any(n.startswith("wav2vec2.feature_extractor.") for n in trainable(model))
        assert "classifier.weight" in trainable(model)


def test_layer_decay_gives_each_block_its_rate(models):
    model = models("vit")
    groups = optim.param_groups(model, lr=1e-3, weight_decay=0.01, layer_decay=0.5, head_lr=5e-3)
    rates = {g["name"]: g["lr"] for g in groups}
    n = 4
    for i in range(n):
        assert rates[f"block.{i}"] == pytest.approx(1e-3 * 0.5 ** (n - i))
    assert rates["below"] == pytest.approx(1e-3 * 0.5 ** (n + 1))
    assert rates["above.no_decay"] == pytest.approx(1e-3)  # the final LayerNorm
    assert rates["head"] == rates["head.no_decay"] == pytest.approx(5e-3)


def test_biases_and_norms_get_no_weight_decay(models):
    model = models("bert")
    for group in optim.param_groups(model, lr=1e-3, weight_decay=0.1):
        params = dict(model.named_parameters())
        dims = {params[n].ndim for n in group["names"]}
        assert group["weight_decay"] == (0.1 if dims == {2} or min(dims) >= 2 else 0.0)
        if group["weight_decay"] == 0.0:
            assert all(params[n].ndim < 2 for n in group["names"])


def test_describe_counts_trainable_and_frozen_parameters(models):
    model = models("bert")
    finetune.apply_strategy(model, "head_only")
    summary = optim.describe(optim.param_groups(model, lr=1e-3, weight_decay=0.01))
    total = sum(p.numel() for p in model.parameters())
    assert summary["total_params"] == total
    assert summary["trainable_params"] == model.classifier.weight.numel() + 3
    names = [n for g in summary["groups"] if g["trainable"] for n in g["params"]]
    assert sorted(names) == ["classifier.bias", "classifier.weight"]
    assert "trainable" in optim.format_table(summary)


def test_frozen_weights_are_bit_identical_after_training(models):
    model = models("bert")
    finetune.apply_strategy(model, "top_k", k=1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    groups = optim.param_groups(model, lr=1e-2, weight_decay=0.01)
    optimizer = torch.optim.AdamW(
        [{"params": [p for p in g["params"] if p.requires_grad], "lr": g["lr"]} for g in groups]
    )
    ids = torch.randint(5, 30, (4, 8))
    for _ in range(3):
        loss = model(input_ids=ids, labels=torch.tensor([0, 1, 2, 0])).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert not torch.equal(param, before[name]), name
        else:
            assert torch.equal(param, before[name]), name


def test_auto_class_weights_are_inverse_frequency_with_mean_one():
    weights = class_weights("auto", [0, 0, 0, 1], num_labels=2)
    assert weights.mean().item() == pytest.approx(1.0)
    assert weights[1] / weights[0] == pytest.approx(3.0)
    assert class_weights("none", [0, 1], 2) is None
    with pytest.raises(SftError, match="one per label"):
        class_weights([1.0], [0, 1], 2)


def test_cross_entropy_applies_smoothing_and_weights():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1])
    plain = cross_entropy()(logits, labels)
    assert plain == pytest.approx(torch.nn.functional.cross_entropy(logits, labels))
    smoothed = cross_entropy(label_smoothing=0.2)(logits, labels)
    log_p = logits.log_softmax(-1)
    manual = -(0.9 * log_p[[0, 1], [0, 1]] + 0.1 * log_p[[0, 1], [1, 0]]).mean()
    assert smoothed == pytest.approx(manual)
    weighted = cross_entropy(torch.tensor([1.0, 3.0]))(logits, labels)
    manual_w = -(1.0 * log_p[0, 0] + 3.0 * log_p[1, 1]) / 4.0
    assert weighted == pytest.approx(manual_w)
    assert math.isfinite(weighted.item())


@pytest.mark.slow
def test_dry_run_prints_the_table_writes_param_groups_and_trains_nothing(
    tmp_path, tiny_checkpoint, text_corpus
):
    result, run_dir = run_tiny_text(
        tmp_path,
        tiny_checkpoint,
        text_corpus,
        "finetune=top_k",
        "finetune.k=1",
        "optimizer.layer_decay=0.8",
        "trainer.metric=loss",
        "dry_run=true",
    )
    assert "block.1" in result.stdout + result.stderr and "frozen" in result.stdout + result.stderr
    summary = json.loads((run_dir / "param_groups.json").read_text())
    frozen = {n for g in summary["groups"] if not g["trainable"] for n in g["params"]}
    assert "bert.encoder.layer.0.attention.self.query.weight" in frozen
    assert not (run_dir / "model").exists() and not (run_dir / "metrics.json").exists()
    assert not (run_dir / "history.jsonl").exists()


def test_lora_adapts_the_blocks_chosen_per_architecture_and_trains_the_head(models):
    model = finetune.apply_lora(models("bert"), r=4)
    names = trainable(model)
    assert names and all("lora_" in n or "classifier.modules_to_save" in n for n in names)
    adapted = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in names if "lora_" in n}
    assert adapted == {"query", "value"}  # peft's choice for BERT
    assert not any("pooler" in n for n in names)


@pytest.mark.parametrize("kind", list(KINDS))
def test_lora_falls_back_to_every_layer_in_the_blocks(models, kind):
    model = finetune.apply_lora(models(kind), r=2)
    layout = finetune.find_layout(finetune.inner_model(model))
    lora = [n for n in trainable(model) if "lora_" in n]
    assert lora and all(layout.blocks_path in n for n in lora)


def test_lora_target_absent_from_the_model_is_an_error(models):
    with pytest.raises(SftError, match=r"\['qkv'\] are not layers"):
        finetune.apply_lora(models("bert"), target_modules=["qkv"])


def test_lora_merged_model_computes_what_the_adapted_one_did(models):
    model = finetune.apply_lora(models("bert"), r=4)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)  # B starts at zero: make the adapter matter
    ids = torch.randint(5, 30, (3, 7))
    model.eval()
    adapted = model(input_ids=ids).logits
    merged = model.merge_and_unload()
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(merged(input_ids=ids).logits, adapted, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("merge", [True, False])
def test_lora_run_saves_a_model_that_reloads_with_equal_outputs(
    tmp_path, tiny_checkpoint, text_corpus, merge
):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    _, run_dir = run_tiny_text(
        tmp_path,
        tiny_checkpoint,
        text_corpus,
        "finetune=lora",
        f"finetune.merge={str(merge).lower()}",
        "optimizer.lr=1e-2",
        "trainer.epochs=2",
        "data.max_length=32",
        "trainer.progress=false",
    )
    model_dir = run_dir / "model"
    assert (model_dir / "adapter_config.json").exists() != merge
    if merge:
        model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    else:
        from peft import PeftModel

        base = AutoModelForSequenceClassification.from_pretrained(
            tiny_checkpoint, num_labels=3, ignore_mismatched_sizes=True
        )
        model = PeftModel.from_pretrained(base, model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    texts = (text_corpus / "test.csv").read_text().splitlines()[1:]
    batch = tokenizer([t.rsplit(",", 1)[0] for t in texts], padding=True, return_tensors="pt")
    predictions = model.eval()(**batch).logits.argmax(-1)
    labels = {"politics": 0, "sport": 1, "tech": 2}
    truth = torch.tensor([labels[t.rsplit(",", 1)[1]] for t in texts])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (predictions == truth).float().mean().item() == pytest.approx(metrics["accuracy"])


def test_gradient_checkpointing_keeps_gradients_above_frozen_layers(models):
    from sft.training.model import enable_gradient_checkpointing

    ids = torch.randint(5, 30, (4, 8))
    labels = torch.tensor([0, 1, 2, 0])
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)  # the same new head in both runs
        model = models("bert")
        if checkpointing:
            enable_gradient_checkpointing(model)
        finetune.apply_strategy(model, "top_k", k=1)
        for module in model.modules():  # no dropout: both runs compute the same function
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        model.train()  # checkpointing is active in training mode only
        model(input_ids=ids, labels=labels).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    plain, checkpointed = grads
    assert set(plain) == set(checkpointed)
    for name, grad in plain.items():
        assert checkpointed[name] is not None, name
        torch.testing.assert_close(checkpointed[name], grad)


def test_gradual_unfreezing_opens_one_block_from_the_top_every_n_epochs(models):
    model = models("vit")  # 4 blocks
    layout = finetune.find_layout(model)
    schedule = finetune.GradualUnfreezing(model, every=2)
    for epoch, open_blocks in [(0, 0), (1, 0), (2, 1), (3, 1), (4, 2), (8, 4), (20, 4)]:
        assert schedule.apply(epoch) == open_blocks
        expected = set(layout.head)
        if open_blocks:
            expected |= set(layout.above)
            expected |= {n for block in layout.blocks[4 - open_blocks :] for n in block}
        assert trainable(model) == expected, epoch


def test_gradual_unfreezing_trains_newly_opened_blocks_with_the_same_optimizer(models):
    model = models("bert")  # 2 blocks
    layout = finetune.find_layout(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)  # every parameter, from the start
    schedule = finetune.GradualUnfreezing(model, every=1)
    ids, labels = torch.randint(5, 30, (4, 8)), torch.tensor([0, 1, 2, 0])

    def step() -> dict[str, torch.Tensor]:
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        model(input_ids=ids, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return {n: not torch.equal(p, before[n]) for n, p in model.named_parameters()}

    schedule.apply(0)
    moved = step()
    assert {n for n, m in moved.items() if m} == set(layout.head)
    schedule.apply(1)
    moved = step()
    assert all(moved[n] for n in layout.blocks[1] if n.endswith("weight"))
    assert not any(moved[n] for n in layout.blocks[0])


@pytest.mark.slow
def test_gradual_run_follows_its_schedule(tmp_path, tiny_checkpoint, text_corpus):
    _, run_dir = run_tiny_text(
        tmp_path,
        tiny_checkpoint,
        text_corpus,
        "finetune=gradual",
        "trainer.epochs=4",
        "data.max_length=32",
        "trainer.progress=false",
    )
    rows = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert [r["blocks_training"] for r in rows if r["kind"] == "unfreeze"] == [0, 1, 2, 2]
    summary = json.loads((run_dir / "param_groups.json").read_text())
    trained = {n for g in summary["groups"] if g["trainable"] for n in g["params"]}
    assert trained == {"classifier.weight", "classifier.bias"}  # the schedule's start


def test_frozen_batchnorm_statistics_do_not_move_during_training(models, tmp_path):
    import numpy as np
    from accelerate import Accelerator
    from torch.utils.data import DataLoader
    from transformers import get_scheduler

    from sft.config import TrainerConfig
    from sft.training import loop

    model = models("resnet")
    finetune.apply_strategy(model, "head_only")
    before = {n: b.clone() for n, b in model.named_buffers()}
    rng = np.random.default_rng(0)
    rows = [
        {
            "pixel_values": torch.tensor(rng.random((3, 32, 32)), dtype=torch.float32),
            "labels": i % 3,
        }
        for i in range(16)
    ]
    collate = torch.utils.data.default_collate
    train = DataLoader(rows, batch_size=4, collate_fn=collate)
    groups = optim.param_groups(model, lr=1e-2, weight_decay=0.0)
    optimizer = torch.optim.AdamW(
        [{"params": [p for p in g["params"] if p.requires_grad], "lr": g["lr"]} for g in groups]
    )
    accelerator = Accelerator(cpu=True)
    settings = TrainerConfig(progress=False, log_every=1)
    scheduler = get_scheduler("constant", optimizer)
    parts = loop.Parts(
        accelerator, model, optimizer, scheduler, train, train, PROBLEMS["single_label"]
    )
    loop.fit(parts, settings, 4, lambda r: None)
    for name, buffer in model.named_buffers():
        assert torch.equal(buffer, before[name]), name
    assert any(m.training for m in model.modules())  # the head itself still trains


def test_lora_adapts_gpt2s_conv1d_layers():
    # GPT-2's linear layers are transformers' Conv1D (weights stored transposed): peft adapts
    # them given fan_in_fan_out; they were once refused as "not layers ... choose among []".
    from transformers import GPT2Config, GPT2ForSequenceClassification

    from sft.training.finetune import apply_lora

    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, num_labels=3)
    config.pad_token_id = 0
    torch.manual_seed(0)
    model = apply_lora(GPT2ForSequenceClassification(config).eval(), 4, 8, 0.0, None)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("c_attn.lora_A" in n for n in trainable)
    assert model.peft_config["default"].fan_in_fan_out
    ids = torch.tensor([[5, 6, 7, 8]])
    assert model(input_ids=ids).logits.shape == (1, 3)
