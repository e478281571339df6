"""A model that only infers (sft.evaluate, sft.report, sft.predict): cast to bf16 once where
bf16 runs, its output layer kept in fp32, a convolutional network in channels-last, linear layers
that add their bias inside oneDNN's matmul; autocast for what runs outside an Accelerator."""

from __future__ import annotations

import pytest
import torch

from sft.problems.head import bf16_but_head
from sft.training import accelerator as engine
from sft.training import inference
from sft.training.accelerator import decide_precision


def test_autocast_outside_an_accelerator_follows_the_precision_it_is_given():
    linear = torch.nn.Linear(4, 2)
    x = torch.randn(3, 4)
    with inference.autocast(decide_precision("bf16", "cpu", None), "cpu"):
        assert linear(x).dtype == torch.bfloat16
    with inference.autocast(decide_precision("fp32", "cpu", None), "cpu"):
        assert linear(x).dtype == torch.float32


@pytest.mark.parametrize("amx", [True, False])
def test_a_model_that_only_infers_runs_on_bf16_weights_where_bf16_runs(monkeypatch, models, amx):
    """sft.evaluate's and sft.predict's model: cast once, its output layer kept in fp32 with its
    decimals, inputs cast on the way in; the reason says so. Without AMX, untouched fp32."""
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"amx_bf16": amx})
    model = models("bert").eval()
    with torch.no_grad():
        model.classifier.bias += 2016.37  # a year, as a regression head with its scale folded in
        before = model(input_ids=torch.tensor([[2, 5, 6, 7, 3]])).logits
    bias = model.classifier.bias.clone()
    chosen = inference.inference_precision(model, "auto", "cpu")
    assert chosen.mixed_precision == "no"  # no autocast around it: nothing left to cast
    dtypes = {name: p.dtype for name, p in model.named_parameters()}
    head = {n: d for n, d in dtypes.items() if n.startswith("classifier.")}
    body = {d for n, d in dtypes.items() if n not in head}
    if not amx:
        assert set(dtypes.values()) == {torch.float32} and chosen.label == "fp32"
        return
    assert body == {torch.bfloat16} and set(head.values()) == {torch.float32}
    assert torch.equal(model.classifier.bias, bias)  # not cast to bf16 and back
    assert isinstance(model.bert.encoder.layer[0].intermediate.dense, inference.BiasInMatmul)
    assert type(model.classifier) is torch.nn.Linear  # fp32: torch's own linear
    with torch.no_grad():
        # The embeddings take floats too: given fp32, they are cast to the weights' bf16.
        embeds = model.get_input_embeddings()(torch.tensor([[2, 5, 6, 7, 3]])).float()
        after = model(inputs_embeds=embeds).logits
    assert after.dtype == torch.float32
    assert after == pytest.approx(before, abs=0.1)  # bf16's rounding, not a multiple of 8
    assert chosen.label == "bf16 weights"
    report = chosen.report(engine.fresh_accelerator(mixed_precision="no"))
    assert report["precision"] == "bf16"
    assert report["precision_reason"].endswith(
        "weights cast to bf16, the output layer kept in fp32"
    )


def test_a_model_with_batch_norm_keeps_fp32_weights_and_autocast(monkeypatch, models):
    """Batch norm on bf16 weights changed 12 of 1,000 EfficientNet predictions: autocast there.
    A convolutional network's filters go channels-last; the outputs stay what they were."""
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"amx_bf16": True})
    model = models("resnet").eval()
    pixels = torch.randn(2, model.config.num_channels, 32, 32)
    with torch.no_grad():
        before = model(pixel_values=pixels).logits
    chosen = inference.inference_precision(model, "auto", "cpu")
    assert chosen.mixed_precision == "bf16" and chosen.label == "bf16"
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    filters = [p for p in model.parameters() if p.dim() == 4]
    assert filters and all(p.is_contiguous(memory_format=torch.channels_last) for p in filters)
    with torch.no_grad():
        assert torch.allclose(model(pixel_values=pixels).logits, before, atol=1e-5)


def test_a_vit_keeps_its_layout(monkeypatch, models):
    """ViT's one convolution (the patch embedding) is not a convolutional network."""
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"amx_bf16": False})
    model = models("vit").eval()
    inference.inference_precision(model, "auto", "cpu")
    assert all(p.is_contiguous() for p in model.parameters())


def test_bf16_linear_layers_add_their_bias_inside_the_matmul_to_the_same_outputs(models):
    """Every bf16 nn.Linear becomes a BiasInMatmul with its weights as they were (not the fp32
    output layer); the model's outputs stay what they were: bit for bit where oneDNN runs both
    (AMX), within bf16's rounding where torch's own bf16 matmul ran before."""
    model = bf16_but_head(models("bert").eval())
    ids = torch.tensor([[2, 5, 6, 7, 3, 9, 4], [2, 8, 3, 0, 0, 0, 0]])
    mask = (ids != 0).long()
    weights = {name: p.data_ptr() for name, p in model.named_parameters()}
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask).logits
    bf16 = [
        m for m in model.modules() if type(m) is torch.nn.Linear and m.weight.dtype != torch.float32
    ]
    assert inference.bias_in_matmul(model) == len(bf16) > 0
    assert all(type(m) is inference.BiasInMatmul for m in bf16)
    assert type(model.classifier) is torch.nn.Linear
    assert {name: p.data_ptr() for name, p in model.named_parameters()} == weights
    with torch.no_grad():
        after = model(input_ids=ids, attention_mask=mask).logits
    if "amx_bf16" in engine.cpu_bf16_units():
        assert torch.equal(after, before)
    else:
        torch.testing.assert_close(after, before, rtol=2e-2, atol=2e-2)
